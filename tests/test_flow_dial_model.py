"""The dial model on virtual time, without SIP: sequential schedules (attempt timeout, CANCEL,
gap, next), first answer wins, a bridge claiming an unanswered attempt, finalization listeners
and the free-TTL. Attempts are fake legs the test rings, answers and rejects by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from softswitch.clock import Timers, VirtualClock
from softswitch.flow.dial import AttemptPlan, DialAnswered, DialFailed, DialFinalized, DialRejected, DialRinging, Dials
from softswitch.flow.retention import EventQueue, Retention
from softswitch.flow.runtime import FlowLeg
from softswitch.ids import IdFactory
from softswitch.sip.dialer import DialError
from softswitch.sip.events import LegAnswered, LegEnded, LegRinging


class FakeLeg:
    """An outbound attempt: records hang-ups; the test decides what the far end does."""

    def __init__(self, leg_id: str) -> None:
        self.id = leg_id
        self.direction = "outbound"
        self.answered = False
        self.ended = False
        self.end_reason: str | None = None
        self.hangups: list[tuple[int, str]] = []
        self._listeners: list = []

    def subscribe(self, listener):
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def hangup(self, code: int = 200, reason: str = "hangup") -> None:
        self.hangups.append((code, reason))

    def _publish(self, event) -> None:
        for listener in list(self._listeners):
            listener(event)

    # the far end
    def rings(self) -> None:
        self._publish(LegRinging(self.id))

    def answers(self) -> None:
        self.answered = True
        self._publish(LegAnswered(self.id))

    def ends(self, reason: str, code: int = 487) -> None:
        self.ended, self.end_reason = True, reason
        self._publish(LegEnded(self.id, reason, code))


class World:
    """A FlowEngine's dial-facing parts on a VirtualClock."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.timers = Timers(self.clock)
        self.ua = SimpleNamespace(timers=self.timers, ids=IdFactory(), dialer=None)
        self.legs: dict[str, FlowLeg] = {}
        self.dials = Dials(self)  # type: ignore[arg-type]
        self.placed: list[str] = []  # leg ids, in placing order
        self.fakes: dict[str, FakeLeg] = {}

    def tell(self, hook) -> None:
        """FlowEngine.tell: no operations observers (call records) in these tests."""

    def track(self, leg) -> FlowLeg:
        flow_leg = FlowLeg(leg, EventQueue(), Retention(leg.id, self.timers, lambda _id: None))
        self.legs[leg.id] = flow_leg
        return flow_leg

    def plan(self, name: str, fail: str | None = None) -> AttemptPlan:
        def place(on_event):
            if fail:
                raise DialError(fail)
            leg = FakeLeg(f"leg_{name}")
            leg.subscribe(on_event)
            self.fakes[name] = leg
            self.placed.append(name)
            return leg

        return AttemptPlan(name, place)

    def advance(self, seconds: float) -> None:
        step = 0.1
        while seconds > 1e-9:
            self.clock.advance(min(step, seconds))
            seconds -= step
            self.timers.run_due()


def events(dial) -> list:
    return list(dial.queue)


def finals(dial, hold: bool = True) -> list[DialFinalized]:
    """What the dial's finalization listeners hear; held like a dial.wait would (no free-TTL)."""
    seen: list[DialFinalized] = []
    dial.on_finalized(seen.append)
    if hold:
        dial.retention.acquire("test")
    return seen


def test_sequential_rings_one_target_at_a_time_then_the_next_after_timeout_and_gap():
    w = World()
    dial = w.dials.start([w.plan("a"), w.plan("b")], mode="extension", strategy="sequential",
                         attempt_timeout_s=10, gap_s=2)
    done = finals(dial)
    assert w.placed == ["a"]
    w.fakes["a"].rings()
    w.advance(9.9)
    assert w.placed == ["a"] and w.fakes["a"].hangups == []
    w.advance(0.2)  # the attempt timeout: CANCEL, rejected with reason timeout
    assert w.fakes["a"].hangups == [(487, "timeout")]
    assert w.placed == ["a"]  # the gap first
    w.advance(1.8)
    assert w.placed == ["a"]
    w.advance(0.3)
    assert w.placed == ["a", "b"]
    w.fakes["a"].ends("timeout")  # the 487 after our CANCEL: no second rejection
    w.fakes["b"].rings()
    w.fakes["b"].answers()
    kinds = [(type(e), e.leg_id) for e in events(dial)]
    assert kinds == [(DialRinging, "leg_a"), (DialRejected, "leg_a"), (DialRinging, "leg_b"),
                     (DialAnswered, "leg_b")]
    assert [e.reason for e in events(dial) if isinstance(e, DialRejected)] == ["timeout"]
    assert done == [DialFinalized(dial.id, "answered", None, "leg_b")]
    assert "dial-winner:" + dial.id in w.legs["leg_b"].retention.tags
    w.advance(60)  # nothing more is placed once answered
    assert w.placed == ["a", "b"]


def test_sequential_moves_on_at_once_when_an_attempt_is_rejected_and_fails_with_the_last_reason():
    w = World()
    dial = w.dials.start([w.plan("a"), w.plan("b")], strategy="sequential", attempt_timeout_s=10, gap_s=0)
    done = finals(dial)
    w.fakes["a"].ends("sip_486", 486)
    w.advance(0.1)  # a zero gap still waits for the next loop turn
    assert w.placed == ["a", "b"]
    w.advance(10.1)
    assert w.fakes["b"].hangups == [(487, "timeout")]
    assert done == [DialFinalized(dial.id, "failed", "timeout", None)]
    assert [e.reason for e in events(dial) if isinstance(e, DialRejected)] == ["sip_486", "timeout"]
    assert isinstance(events(dial)[-1], DialFailed)
    assert w.dials.get(dial.id) is dial and dial.id not in w.dials.live  # the terminal snapshot


def test_sequential_skips_a_target_that_cannot_be_placed():
    w = World()
    dial = w.dials.start([w.plan("a", fail="busy now"), w.plan("b")], strategy="sequential")
    assert w.placed == ["b"] and dial.errors == ["a: busy now"]
    with pytest.raises(DialError, match="x: gone; y: gone"):
        w.dials.start([w.plan("x", fail="gone"), w.plan("y", fail="gone")], strategy="sequential")


def test_parallel_first_answer_wins_and_the_others_are_cancelled():
    w = World()
    dial = w.dials.start([w.plan("a"), w.plan("b"), w.plan("c")])
    finals(dial)
    assert w.placed == ["a", "b", "c"] and dial.still_dialing == 3
    w.fakes["b"].answers()
    assert w.fakes["a"].hangups == [(487, "parallel_loser")] and w.fakes["c"].hangups == [(487, "parallel_loser")]
    assert dial.status == "answered" and dial.winner == "leg_b"
    w.fakes["c"].answers()  # its 200 crossed our CANCEL: hung up, not a second winner
    assert w.fakes["c"].hangups[-1] == (200, "parallel_loser")
    assert [type(e) for e in events(dial)] == [DialAnswered]


def test_bridging_an_unanswered_attempt_makes_it_the_winner_when_it_answers():
    w = World()
    dial = w.dials.start([w.plan("a"), w.plan("b")])
    finals(dial)
    assert w.dials.of_attempt("leg_b") is dial
    assert dial.claim("leg_b")
    assert w.fakes["a"].hangups == [(487, "parallel_loser")] and w.fakes["b"].hangups == []
    assert not dial.finalized  # still ringing: Answered comes with the answer
    w.fakes["a"].ends("parallel_loser")
    assert not [e for e in events(dial) if isinstance(e, DialRejected)]
    w.fakes["b"].answers()
    assert dial.status == "answered" and dial.winner == "leg_b"
    assert w.dials.of_attempt("leg_b") is None


def test_a_claimed_sequential_attempt_stops_the_schedule_and_its_rejection_fails_the_dial():
    w = World()
    dial = w.dials.start([w.plan("a"), w.plan("b")], strategy="sequential", attempt_timeout_s=5)
    done = finals(dial)
    dial.claim("leg_a")
    w.advance(20)  # no attempt timeout for the bridged attempt, and no next target
    assert w.placed == ["a"] and w.fakes["a"].hangups == []
    w.fakes["a"].ends("sip_603", 603)
    assert done == [DialFinalized(dial.id, "failed", "sip_603", None)]


def test_cancel_breaks_the_dial_and_listeners_hear_it_once():
    w = World()
    dial = w.dials.start([w.plan("a"), w.plan("b")], strategy="sequential", attempt_timeout_s=5, gap_s=1)
    done = finals(dial)
    dial.cancel("queue_callback")
    dial.cancel("again")  # no-op once finalized
    w.advance(20)
    assert w.placed == ["a"] and w.fakes["a"].hangups == [(487, "queue_callback")]
    assert done == [DialFinalized(dial.id, "failed", "queue_callback", None)]
    late: list = []
    dial.on_finalized(late.append)  # already final: told at once
    assert late == done


def test_a_dial_nobody_holds_fails_by_free_ttl():
    w = World()
    dial = w.dials.start([w.plan("a")])
    done = finals(dial, hold=False)
    w.advance(4.9)
    assert not dial.finalized
    w.advance(0.2)
    assert done == [DialFinalized(dial.id, "failed", "free_ttl", None)]
    assert w.fakes["a"].hangups == [(487, "free_ttl")]
    held = w.dials.start([w.plan("b")])
    ticket = held.retention.acquire("queue:test")
    w.advance(30)
    assert not held.finalized
    ticket.release()
    w.advance(5.1)
    assert held.reason == "free_ttl"
