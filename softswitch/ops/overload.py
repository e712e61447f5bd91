"""Overload control, the measuring half: process CPU and UA-loop lag, turned into one
"overloaded" flag with hysteresis so the gate does not flap.

The refusing half is native (`native/reg_admission.c`): while the flag is set, and whenever live
inbound calls or the new-call rate are at their limits, a new INVITE the gate would admit is
answered 503 with Retry-After, before pjsua creates a call. Everything here runs on the UA
thread; the clock and the samplers are parameters, so tests drive it with injected samples.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..clock import Clock, TimerHandle, Timers
from ..sip.events import LegEnded

log = logging.getLogger("softswitch.overload")

SAMPLE_SECONDS = 0.5  # how often CPU and loop lag are sampled
WINDOW_SECONDS = 2.0  # CPU is averaged over this sliding window
CLEAR_FRACTION = 0.8  # overload clears only below this fraction of every limit...
CLEAR_SECONDS = 2.0  # ...held for this long


@dataclass(frozen=True)
class OverloadState:
    """What metrics and status show: the last measures and whether new calls are refused."""

    cpu_percent: float  # process CPU over the window; 100 = one core busy
    loop_lag_ms: float  # worst UA-loop lag in the last complete second
    overloaded: str | None  # "cpu", "loop_lag", or None


class OverloadMonitor:
    """Samples CPU and loop lag; calls `on_change(reason | None)` when the overloaded state
    changes. Set when a measure is over its limit; cleared once every measure has stayed under
    `CLEAR_FRACTION` of its limit for `CLEAR_SECONDS`. A limit of 0 is off."""

    def __init__(self, *, clock: Clock, max_cpu_percent: float = 0, max_loop_lag_ms: float = 0,
                 cpu_seconds: Callable[[], float] = time.process_time,
                 loop_lag_ms: Callable[[], float] = lambda: 0.0,
                 on_change: Callable[[str | None], None] | None = None) -> None:
        self.clock = clock
        self.max_cpu_percent = max_cpu_percent
        self.max_loop_lag_ms = max_loop_lag_ms
        self._cpu_seconds = cpu_seconds
        self._loop_lag_ms = loop_lag_ms
        self._on_change = on_change
        # (time, process CPU seconds); the oldest is the newest one at least WINDOW_SECONDS old.
        self._samples: collections.deque[tuple[float, float]] = collections.deque([(clock.now(), cpu_seconds())])
        self._cpu_percent = 0.0
        self._lag_ms = 0.0
        self._reason: str | None = None
        self._calm_since: float | None = None
        self._timer: TimerHandle | None = None

    # ---- configuration ----------------------------------------------------------------------
    def set_limits(self, max_cpu_percent: float, max_loop_lag_ms: float) -> None:
        self.max_cpu_percent = max_cpu_percent
        self.max_loop_lag_ms = max_loop_lag_ms
        if self._reason is not None and not max_cpu_percent and not max_loop_lag_ms:
            self._change(None, "limits turned off")  # nothing left to wait for

    # ---- sampling -----------------------------------------------------------------------------
    def start(self, timers: Timers) -> None:
        """Sample every `SAMPLE_SECONDS` on `timers` (the UA loop's) until `stop`."""
        def tick() -> None:
            self._timer = timers.schedule(SAMPLE_SECONDS, tick, "overload-sample")
            self.sample()

        self._timer = timers.schedule(SAMPLE_SECONDS, tick, "overload-sample")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sample(self) -> None:
        """Take one sample now and update the overloaded state."""
        now, cpu = self.clock.now(), self._cpu_seconds()
        samples = self._samples
        samples.append((now, cpu))
        while len(samples) > 2 and samples[1][0] <= now - WINDOW_SECONDS:
            samples.popleft()
        t0, c0 = samples[0]
        self._cpu_percent = max(0.0, (cpu - c0) / (now - t0) * 100.0) if now > t0 else 0.0
        self._lag_ms = max(0.0, float(self._loop_lag_ms()))
        self._decide(now)

    def _decide(self, now: float) -> None:
        cpu_limit, lag_limit = self.max_cpu_percent, self.max_loop_lag_ms
        over = None
        if cpu_limit and self._cpu_percent > cpu_limit:
            over = "cpu"
        elif lag_limit and self._lag_ms > lag_limit:
            over = "loop_lag"
        if over is not None:
            self._calm_since = None
            if over != self._reason:
                self._change(over, self._describe())
            return
        if self._reason is None:
            return
        calm = ((not cpu_limit or self._cpu_percent < CLEAR_FRACTION * cpu_limit)
                and (not lag_limit or self._lag_ms < CLEAR_FRACTION * lag_limit))
        if not calm:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= CLEAR_SECONDS:
            self._change(None, self._describe())

    def _describe(self) -> str:
        return (f"cpu {self._cpu_percent:.1f}% (limit {self.max_cpu_percent or 'off'}), "
                f"loop lag {self._lag_ms:.0f} ms (limit {self.max_loop_lag_ms or 'off'})")

    def _change(self, reason: str | None, detail: str) -> None:
        self._reason = reason
        self._calm_since = None
        if reason is None:
            log.warning("overload cleared, new calls admitted again: %s", detail,
                        extra={"event": {"overload": None}})
        else:
            log.warning("overloaded (%s), refusing new calls with 503: %s", reason, detail,
                        extra={"event": {"overload": reason}})
        if self._on_change is not None:
            self._on_change(reason)

    # ---- reading ------------------------------------------------------------------------------
    @property
    def overloaded(self) -> str | None:
        return self._reason

    def state(self) -> OverloadState:
        return OverloadState(cpu_percent=round(self._cpu_percent, 1), loop_lag_ms=round(self._lag_ms, 1),
                             overloaded=self._reason)


class LiveInbound:
    """A leg watcher (`UserAgent.watch_legs`) counting live inbound legs: created inbound and
    not ended. The gate is told this count every loop turn, so its concurrent-call limit is
    exact without walking every leg on every turn."""

    def __init__(self) -> None:
        self._ids: set[str] = set()

    @property
    def count(self) -> int:
        return len(self._ids)

    def leg_created(self, leg: Any) -> None:
        if getattr(leg, "direction", None) == "inbound" and not leg.ended:
            self._ids.add(leg.id)

    def leg_event(self, leg: Any, event: Any) -> None:
        if isinstance(event, LegEnded):
            self._ids.discard(leg.id)


class RefusalLog:
    """Logs the gate's overload refusals on `softswitch.overload`, aggregated: at most one
    line per `interval`, never one per INVITE (a flood would flood the log too)."""

    REASONS = ("concurrent", "rate", "cpu", "loop_lag", "trunk_rate")

    def __init__(self, clock: Clock, read_counts: Callable[[], tuple[int, ...]], interval: float = 1.0) -> None:
        self.clock = clock
        self._read = read_counts
        self.interval = interval
        self._last = tuple(read_counts())
        self._at = clock.now()

    def poll(self) -> None:
        now = self.clock.now()
        if now - self._at < self.interval:
            return
        counts = tuple(self._read())
        delta = [c - p for c, p in zip(counts, self._last)]
        self._last, self._at = counts, now
        total = sum(delta)
        if total:
            by_reason = dict(zip(self.REASONS, delta))
            log.warning("refused %d new calls in the last second: %s", total,
                        ", ".join(f"{k}={v}" for k, v in by_reason.items()),
                        extra={"event": {"overload_refused": total, **by_reason}})
