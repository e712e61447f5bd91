"""Timers: cancelling one lets go of what its callback holds at once (a finished hour-long
call.wait kept its whole call alive for the hour), and cancelled entries do not pile up."""

from __future__ import annotations

import gc
import weakref

from softswitch.clock import Timers, VirtualClock


class _CallState:
    """Stands for what a wait's callback closes over: legs, flow items, recordings."""


def test_cancelled_timer_releases_what_its_callback_holds_before_its_deadline():
    timers = Timers(VirtualClock())
    state = _CallState()
    alive = weakref.ref(state)
    handle = timers.schedule(3600, lambda held=state: held)
    del state
    handle.cancel()
    gc.collect()
    assert alive() is None
    assert not handle.active


def test_cancelled_timer_never_fires_and_others_still_do():
    clock = VirtualClock()
    timers = Timers(clock)
    fired: list[str] = []
    kept = timers.schedule(5, lambda: fired.append("kept"))
    dropped = timers.schedule(3, lambda: fired.append("dropped"))
    dropped.cancel()
    clock.advance(10)
    assert timers.run_due() == 1
    assert fired == ["kept"]
    assert not kept.active


def test_thousands_of_timers_cancelled_long_before_their_deadline_do_not_accumulate():
    clock = VirtualClock()
    timers = Timers(clock)
    live = [timers.schedule(7200, lambda: None) for _ in range(10)]
    for _ in range(10_000):
        timers.schedule(3600, lambda: None).cancel()
    assert len(timers) == 10
    assert len(timers._heap) < 200  # compacted, not 10,010 entries waiting for their hour
    clock.advance(7200)
    assert timers.run_due() == 10
    assert all(not h.active for h in live)
