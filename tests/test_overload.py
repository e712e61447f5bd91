"""Overload control's measuring half on a virtual clock: CPU over a sliding window, loop lag,
hysteresis (set above the limit, cleared only after 2 s under 80 % of it), limits of 0 off,
the live inbound count and the aggregated refusal log."""

from __future__ import annotations

import logging

import pytest

from softswitch.clock import Timers, VirtualClock
from softswitch.ops.overload import LiveInbound, OverloadMonitor, RefusalLog
from softswitch.sip.events import LegAnswered, LegEnded


class Process:
    """Injected samples: CPU seconds that grow at a set percentage of one core, and a lag."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.cpu = 0.0
        self.lag_ms = 0.0
        self.changes: list[str | None] = []

    def monitor(self, cpu_limit: float = 0, lag_limit: float = 0) -> OverloadMonitor:
        return OverloadMonitor(clock=self.clock, max_cpu_percent=cpu_limit, max_loop_lag_ms=lag_limit,
                               cpu_seconds=lambda: self.cpu, loop_lag_ms=lambda: self.lag_ms,
                               on_change=self.changes.append)

    def run(self, monitor: OverloadMonitor, seconds: float, cpu_percent: float, lag_ms: float = 0.0) -> None:
        """Half-second samples for `seconds` at this CPU load and lag."""
        self.lag_ms = lag_ms
        for _ in range(round(seconds / 0.5)):
            self.clock.advance(0.5)
            self.cpu += 0.5 * cpu_percent / 100.0
            monitor.sample()


@pytest.fixture
def proc() -> Process:
    return Process(VirtualClock())


def test_cpu_over_the_limit_sets_overloaded_and_reports_the_measure(proc):
    m = proc.monitor(cpu_limit=80)
    proc.run(m, 2.0, cpu_percent=50)
    assert m.overloaded is None and proc.changes == []
    assert m.state().cpu_percent == pytest.approx(50, abs=0.5)
    proc.run(m, 2.0, cpu_percent=95)
    assert m.overloaded == "cpu"
    assert proc.changes == ["cpu"]
    assert m.state().overloaded == "cpu" and m.state().cpu_percent == pytest.approx(95, abs=0.5)


def test_overload_clears_only_after_two_seconds_under_80_percent_of_the_limit(proc):
    m = proc.monitor(cpu_limit=50)
    proc.run(m, 2.0, cpu_percent=90)
    assert proc.changes == ["cpu"]
    # Under the limit but above 80 % of it (45 %): stays overloaded however long.
    proc.run(m, 6.0, cpu_percent=45)
    assert m.overloaded == "cpu" and proc.changes == ["cpu"]
    # Calm (10 %): the 2 s window must first drain the busy samples, then 2 s of calm.
    proc.run(m, 2.0, cpu_percent=10)
    assert m.overloaded == "cpu"
    proc.run(m, 2.5, cpu_percent=10)
    assert m.overloaded is None
    assert proc.changes == ["cpu", None]


def test_a_busy_moment_during_the_calm_period_restarts_it(proc):
    m = proc.monitor(lag_limit=100)
    proc.run(m, 0.5, cpu_percent=0, lag_ms=150)
    assert proc.changes == ["loop_lag"]
    proc.run(m, 1.5, cpu_percent=0, lag_ms=10)  # calm for 1 s (first calm sample starts it)
    proc.run(m, 0.5, cpu_percent=0, lag_ms=90)  # above 80 ms: not calm, timer restarts
    proc.run(m, 2.0, cpu_percent=0, lag_ms=10)
    assert m.overloaded == "loop_lag"
    proc.run(m, 1.0, cpu_percent=0, lag_ms=10)
    assert m.overloaded is None
    assert proc.changes == ["loop_lag", None]


def test_it_does_not_flap_around_the_limit(proc):
    m = proc.monitor(lag_limit=100)
    for lag in (110, 95, 105, 98, 120, 90, 101, 99) * 3:
        proc.run(m, 0.5, cpu_percent=0, lag_ms=lag)
    assert proc.changes == ["loop_lag"]


def test_cpu_is_measured_over_a_sliding_two_second_window(proc):
    m = proc.monitor(cpu_limit=500)
    proc.run(m, 1.0, cpu_percent=100)
    proc.run(m, 1.0, cpu_percent=0)
    assert m.state().cpu_percent == pytest.approx(50, abs=1)
    proc.run(m, 2.0, cpu_percent=0)  # the busy second has left the window
    assert m.state().cpu_percent == pytest.approx(0, abs=1)


def test_limits_of_zero_are_off(proc):
    m = proc.monitor(cpu_limit=0, lag_limit=0)
    proc.run(m, 5.0, cpu_percent=190, lag_ms=5000)
    assert m.overloaded is None and proc.changes == []
    assert m.state().cpu_percent == pytest.approx(190, abs=1)
    assert m.state().loop_lag_ms == 5000


def test_turning_the_limits_off_clears_overload_at_once(proc):
    m = proc.monitor(cpu_limit=10)
    proc.run(m, 1.0, cpu_percent=100)
    assert m.overloaded == "cpu"
    m.set_limits(0, 0)
    assert m.overloaded is None and proc.changes == ["cpu", None]


def test_the_reason_follows_the_measure_that_is_over(proc):
    m = proc.monitor(cpu_limit=50, lag_limit=100)
    proc.run(m, 1.0, cpu_percent=0, lag_ms=200)
    assert m.overloaded == "loop_lag"
    proc.run(m, 3.0, cpu_percent=90, lag_ms=200)
    assert m.overloaded == "cpu"  # CPU is checked first
    assert proc.changes == ["loop_lag", "cpu"]


def test_started_on_timers_it_samples_every_half_second(proc):
    timers = Timers(proc.clock)
    m = proc.monitor(cpu_limit=50)
    m.start(timers)
    proc.cpu = 0.0
    for _ in range(8):  # 2 s at 80 % of a core
        proc.clock.advance(0.25)
        proc.cpu += 0.25 * 0.8
        timers.run_due()
    assert m.overloaded == "cpu"
    m.stop()
    assert len(timers) == 0


class FakeLeg:
    def __init__(self, leg_id: str, direction: str, ended: bool = False) -> None:
        self.id, self.direction, self.ended = leg_id, direction, ended


def test_live_inbound_counts_inbound_legs_until_they_end():
    live = LiveInbound()
    a, b, out = FakeLeg("a", "inbound"), FakeLeg("b", "inbound"), FakeLeg("o", "outbound")
    for leg in (a, b, out):
        live.leg_created(leg)
    live.leg_event(a, LegAnswered("a"))
    assert live.count == 2
    live.leg_event(a, LegEnded("a", "remote_hangup", 200))
    live.leg_event(out, LegEnded("o", "remote_hangup", 200))
    assert live.count == 1
    live.leg_event(b, LegEnded("b", "remote_hangup", 200))
    assert live.count == 0


def test_refusals_are_logged_at_most_once_a_second(proc, caplog):
    counts = [0, 0, 0, 0]
    log = RefusalLog(proc.clock, lambda: tuple(counts))
    caplog.set_level(logging.WARNING, logger="softswitch.overload")
    for _ in range(100):  # a flood: 100 loop turns of 10 ms, 3 refusals each
        counts[0] += 2
        counts[1] += 1
        proc.clock.advance(0.01)
        log.poll()
    proc.clock.advance(0.01)  # the second is over (100 x 0.01 falls just short of 1.0 in floats)
    log.poll()
    lines = [r.getMessage() for r in caplog.records if r.name == "softswitch.overload"]
    assert lines == ["refused 300 new calls in the last second: concurrent=200, rate=100, cpu=0, loop_lag=0"]
    proc.clock.advance(5)
    log.poll()  # nothing new: no line
    assert len([r for r in caplog.records if r.name == "softswitch.overload"]) == 1
