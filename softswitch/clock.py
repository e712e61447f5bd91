"""Time for everything that waits: queue timers, retries, free-TTL, interdigit timeouts.

Production code asks a `Clock` for the time and schedules on `Timers`; tests pass a
`VirtualClock` and advance it, so a 30-second queue loop runs in microseconds and never flakes.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences matter)."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """A clock that only moves when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a virtual clock cannot go backwards")
        self._now += seconds


@dataclass(order=True)
class _Entry:
    deadline: float
    seq: int
    handle: "TimerHandle" = field(compare=False)


def _cancelled_timer() -> None:
    pass


class TimerHandle:
    """What `Timers.schedule` returns: cancel it to stop the callback from running."""

    __slots__ = ("callback", "deadline", "cancelled", "fired", "name", "_timers")

    def __init__(self, callback: Callable[[], None], deadline: float, name: str,
                 timers: "Timers | None" = None) -> None:
        self.callback = callback
        self.deadline = deadline
        self.cancelled = False
        self.fired = False
        self.name = name
        self._timers = timers

    def cancel(self) -> None:
        """Stop the timer and let go of its callback now. The heap entry stays until it is
        popped or compacted away; holding the callback till the deadline kept whatever it
        closes over (a finished hour-long call.wait: its legs, flow items and recordings)."""
        if self.cancelled or self.fired:
            return
        self.cancelled = True
        self.callback = _cancelled_timer
        if self._timers is not None:
            self._timers._note_cancelled()

    @property
    def active(self) -> bool:
        return not (self.cancelled or self.fired)


class Timers:
    """One-shot timers run by their owner's loop (the UA thread), never by a thread of their own.

    `run_due` is called by the loop on every turn; a callback that raises is reported through
    `on_error` and does not stop the other timers.
    """

    def __init__(self, clock: Clock, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.clock = clock
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._on_error = on_error
        self._cancelled = 0  # cancelled entries still in the heap

    def schedule(self, delay: float, callback: Callable[[], None], name: str = "timer") -> TimerHandle:
        handle = TimerHandle(callback, self.clock.now() + max(0.0, delay), name, self)
        heapq.heappush(self._heap, _Entry(handle.deadline, next(self._seq), handle))
        return handle

    def _note_cancelled(self) -> None:
        """Rebuild the heap without cancelled entries once they are most of it, so timers
        cancelled long before their deadline do not pile up."""
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e.handle.active]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _pop_cancelled(self) -> None:
        heapq.heappop(self._heap)
        self._cancelled = max(0, self._cancelled - 1)

    def next_deadline(self) -> float | None:
        while self._heap and not self._heap[0].handle.active:
            self._pop_cancelled()
        return self._heap[0].deadline if self._heap else None

    def run_due(self) -> int:
        """Fire every timer whose deadline has passed, in deadline order; returns how many ran."""
        fired = 0
        while self._heap:
            entry = self._heap[0]
            if not entry.handle.active:
                self._pop_cancelled()
                continue
            if entry.deadline > self.clock.now():
                break
            heapq.heappop(self._heap)
            entry.handle.fired = True
            fired += 1
            try:
                entry.handle.callback()
            except Exception as exc:  # a broken timer must not take the loop down
                if self._on_error is None:
                    raise
                self._on_error(entry.handle.name, exc)
        return fired

    def __len__(self) -> int:
        return sum(1 for e in self._heap if e.handle.active)
