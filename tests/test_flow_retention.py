"""Leg/dial lifetime (reference §1.5) on virtual time: retention tickets and the free-TTL,
terminal snapshots, and the bounded per-leg event queue."""

from __future__ import annotations

import pytest

from softswitch.clock import Timers, VirtualClock
from softswitch.flow.retention import (
    DIAL_EVENT_QUEUE_LEN,
    LEG_EVENT_QUEUE_LEN,
    EntityGone,
    EventQueue,
    LegInterrupt,
    Retention,
    TerminalSnapshots,
)
from softswitch.sip.events import LegDtmf, LegEnded


class Lifetime:
    """A clock, its timers and one retained leg whose expiries are recorded."""

    def __init__(self, free_ttl_s: float | None = None) -> None:
        self.clock = VirtualClock()
        self.timers = Timers(self.clock)
        self.expired: list[str] = []
        kwargs = {} if free_ttl_s is None else {"free_ttl_s": free_ttl_s}
        self.leg = Retention("leg_a", self.timers, self.expired.append, **kwargs)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.timers.run_due()


def test_new_leg_is_armed_at_creation_and_hung_up_after_5_s_without_a_ticket():
    life = Lifetime()
    assert life.leg.free_deadline == life.clock.now() + 5.0
    life.advance(4.999)
    assert life.expired == []
    life.advance(0.001)
    assert life.expired == ["leg_a"]
    assert life.leg.expired and life.leg.closed


@pytest.mark.parametrize(
    "held_for, expires_after_release",
    [(0.0, 5.0), (3.0, 5.0), (60.0, 5.0)],
    ids=["released-at-once", "held-3s", "held-a-minute"],
)
def test_free_ttl_fires_5_s_after_the_last_release_not_before(held_for, expires_after_release):
    life = Lifetime()
    ticket = life.leg.acquire("wait:w1")
    life.advance(held_for)
    assert life.expired == []
    ticket.release()
    life.advance(expires_after_release - 0.001)
    assert life.expired == []
    life.advance(0.001)
    assert life.expired == ["leg_a"]


def test_acquire_cancels_the_armed_timer():
    life = Lifetime()
    life.advance(4.0)
    life.leg.acquire("bridge:leg_b")
    assert life.leg.free_deadline is None
    life.advance(30.0)
    assert life.expired == []


def test_re_acquire_during_the_free_ttl_cancels_it_and_the_next_release_restarts_it():
    life = Lifetime()
    first = life.leg.acquire("wait:w1")
    first.release()
    life.advance(4.0)
    second = life.leg.acquire("queue:queue_entry_1")
    life.advance(10.0)
    assert life.expired == []
    second.release()
    life.advance(4.999)
    assert life.expired == []
    life.advance(0.001)
    assert life.expired == ["leg_a"]


def test_releasing_one_of_several_tickets_keeps_the_leg():
    life = Lifetime()
    wait = life.leg.acquire("wait:w1")
    bridge = life.leg.acquire("bridge:leg_b")
    wait.release()
    life.advance(20.0)
    assert life.expired == [] and life.leg.tags == ["bridge:leg_b"]
    bridge.release()
    life.advance(5.0)
    assert life.expired == ["leg_a"]


def test_same_tag_twice_is_two_tickets():
    life = Lifetime()
    a = life.leg.acquire("bridge:leg_b")
    life.leg.acquire("bridge:leg_b")
    a.release()
    life.advance(10.0)
    assert life.expired == []


def test_double_release_is_harmless():
    life = Lifetime()
    ticket = life.leg.acquire("bridge:leg_b")
    ticket.release()
    life.advance(3.0)
    ticket.release()  # a second teardown path must not restart the timer
    life.advance(2.0)
    assert life.expired == ["leg_a"]


def test_free_ttl_is_configurable():
    life = Lifetime(free_ttl_s=0.5)
    life.advance(0.499)
    assert life.expired == []
    life.advance(0.001)
    assert life.expired == ["leg_a"]


def test_expired_entity_refuses_new_tickets():
    life = Lifetime()
    life.advance(5.0)
    with pytest.raises(EntityGone):
        life.leg.acquire("wait:late")


def test_close_stops_the_free_ttl_for_an_entity_that_ended_otherwise():
    life = Lifetime()
    life.leg.close()
    life.advance(10.0)
    assert life.expired == []
    assert len(life.timers) == 0


def test_ticket_of_another_entity_is_rejected():
    life = Lifetime()
    other = Retention("dial_1", life.timers, life.expired.append)
    ticket = other.acquire("dial-winner:dial_1")
    with pytest.raises(ValueError):
        life.leg.release(ticket)


def test_expiry_callback_runs_once_per_entity_even_with_many_legs():
    life = Lifetime()
    dial = Retention("dial_1", life.timers, life.expired.append)
    dial.acquire("dial-attempt:dial_1")
    life.advance(5.0)
    life.advance(5.0)
    assert life.expired == ["leg_a"]


# Terminal snapshots

def test_snapshot_is_visible_for_5_s_then_gone():
    clock = VirtualClock()
    timers = Timers(clock)
    snapshots: TerminalSnapshots[LegEnded] = TerminalSnapshots(timers)
    final = LegEnded("leg_a", "remote_hangup", 200)
    snapshots.put("leg_a", final)
    clock.advance(4.999)
    timers.run_due()
    assert snapshots.get("leg_a") == final and "leg_a" in snapshots
    clock.advance(0.001)
    assert snapshots.get("leg_a") is None  # gone even before the timer runs
    timers.run_due()
    assert len(snapshots) == 0 and "leg_a" not in snapshots


def test_newer_snapshot_replaces_the_old_one_and_restarts_its_5_s():
    clock = VirtualClock()
    timers = Timers(clock)
    snapshots: TerminalSnapshots[str] = TerminalSnapshots(timers)
    snapshots.put("media_1", "playing")
    clock.advance(4.0)
    snapshots.put("media_1", "finished")
    clock.advance(4.0)
    timers.run_due()
    assert snapshots.get("media_1") == "finished"
    clock.advance(1.0)
    timers.run_due()
    assert snapshots.get("media_1") is None


# Event queues

@pytest.mark.parametrize("maxlen", [LEG_EVENT_QUEUE_LEN, DIAL_EVENT_QUEUE_LEN], ids=["leg-128", "dial-64"])
def test_queue_overflow_drops_the_oldest_and_counts_drops(maxlen):
    queue: EventQueue[LegDtmf] = EventQueue(maxlen)
    events = [LegDtmf("leg_a", str(i % 10), "rfc2833") for i in range(maxlen + 3)]
    dropped = [queue.push(e) for e in events]
    assert dropped[:maxlen] == [None] * maxlen
    assert dropped[maxlen:] == events[:3]
    assert queue.dropped == 3 and len(queue) == maxlen
    assert list(queue) == events[3:]


def test_take_first_leaves_the_other_events_in_order():
    queue: EventQueue[str] = EventQueue(64)
    for e in ["ringing", "progress", "answered", "ringing"]:
        queue.push(e)
    assert queue.take_first(lambda e: e == "answered") == "answered"
    assert list(queue) == ["ringing", "progress", "ringing"]
    assert queue.take_first(lambda e: e == "failed") is None


def test_discard_drops_only_matching_events():
    queue: EventQueue[object] = EventQueue()
    kept = [LegInterrupt("leg_a", "call_queue_placed"), LegEnded("leg_a", "remote_hangup", 200)]
    queue.push(LegDtmf("leg_a", "1", "rfc2833"))
    queue.push(kept[0])
    queue.push(LegDtmf("leg_a", "2", "info"))
    queue.push(kept[1])
    assert queue.discard(lambda e: isinstance(e, LegDtmf)) == 2
    assert list(queue) == kept
    assert queue.pop() == kept[0] and queue.pop() == kept[1] and queue.pop() is None
