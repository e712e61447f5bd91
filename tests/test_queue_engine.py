"""The queue engine on virtual time, with fake operators, dialer and trigger sink (§3.2–§3.5):
placement order, dispatch, Placed once, Offline, retries and cooldown, callback on hang-up,
rejoin, stats, and recovery after a restart from the SQLite store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from softswitch.clock import Timers, VirtualClock
from softswitch.queue.engine import DialOutcome, OperatorDialRequest, QueueEngine, QueueError
from softswitch.queue.model import DialConfig, EntryMode, QueueDispatch, QueueOffline, QueuePlaced
from softswitch.queue.store import QueueStore

EPOCH = 1_700_000_000.0
SCOPE = "flow"


class Operators:
    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # extension -> "free" | "busy" (absent: offline)

    def online(self, extension: str) -> bool:
        return extension in self.state

    def free(self, extension: str) -> bool:
        return self.state.get(extension) == "free"


@dataclass
class Dialer:
    started: list[tuple[str, OperatorDialRequest]] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    callbacks: dict = field(default_factory=dict)
    refuse: bool = False

    def start(self, request, on_final):
        if self.refuse:
            return None
        dial_id = f"dial_{len(self.started) + 1}"
        self.started.append((dial_id, request))
        self.callbacks[dial_id] = on_final
        return dial_id

    def cancel(self, dial_id, reason):
        self.cancelled.append((dial_id, reason))
        # A broken dial is finalized too: the engine must not count that as a failed attempt.
        self.callbacks[dial_id](DialOutcome(dial_id, False, reason))

    def last(self) -> str:
        return self.started[-1][0]


@dataclass
class Sink:
    events: list = field(default_factory=list)
    interrupts: list[tuple[str, str]] = field(default_factory=list)
    queued: dict[str, bool] = field(default_factory=dict)

    def publish(self, event):
        self.events.append(event)

    def interrupt(self, leg_id, reason):
        self.interrupts.append((leg_id, reason))

    def set_queued(self, leg_id, queued):
        self.queued[leg_id] = queued

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


class Triggers:
    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], tuple[str, ...]] = {(SCOPE, "support"): ("1001", "1002")}

    def extensions_of(self, scope, ref):
        return self.queues.get((scope, ref))


class Ticket:
    def __init__(self) -> None:
        self.released = False

    def release(self) -> None:
        self.released = True


class World:
    """One engine and its fakes; `restart()` builds a new engine on the same database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = VirtualClock()
        self.timers = Timers(self.clock)
        self.operators = Operators()
        self.triggers = Triggers()
        self.ids = 0
        self.restart()

    def restart(self, grace_s: float = 60.0) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()
        self.dialer = Dialer()
        self.sink = Sink()
        self.engine = QueueEngine(QueueStore(self.path), self.timers, self.operators, self.dialer, self.sink,
                                  self.triggers, wall=lambda: EPOCH + self.clock.now(), new_id=self._new_id,
                                  recovery_grace_s=grace_s)
        self.report = self.engine.recover()

    def _new_id(self) -> str:
        self.ids += 1
        return f"queue_entry_{self.ids}"

    def put(self, leg_id: str, number: str = "5551234", **kw):
        ticket = Ticket()
        kw.setdefault("retry_pause_s", 30)
        entry = self.engine.put(scope=SCOPE, ref=kw.pop("ref", "support"), leg_id=leg_id, trunk_ref="trunk_main",
                                dial=DialConfig(caller_number=number, caller_name="Caller"),
                                retain=lambda entry_id: ticket, **kw)
        return entry, ticket

    def run(self, seconds: float = 0.0) -> None:
        """Let `seconds` of virtual time pass, firing timers on the way in order."""
        end = self.clock.now() + seconds
        while True:
            self.timers.run_due()
            deadline = self.timers.next_deadline()
            if deadline is None or deadline > end:
                break
            self.clock.advance(max(0.0, deadline - self.clock.now()))
        self.clock.advance(max(0.0, end - self.clock.now()))
        self.timers.run_due()

    def finish(self, dial_id: str, answered: bool, reason: str | None = None) -> None:
        self.dialer.callbacks[dial_id](DialOutcome(dial_id, answered, reason, "leg_agent" if answered else None))


@pytest.fixture
def world(tmp_path) -> World:
    w = World(tmp_path / "queues.sqlite3")
    yield w
    w.engine.close()


# ---- placement and dispatch -------------------------------------------------------------------
def test_a_free_operator_gets_a_dispatch_without_placed(world):
    world.operators.state = {"1001": "free"}
    entry, _ = world.put("leg_a")
    assert world.sink.interrupts == [("leg_a", "call_queue_placed")] and world.sink.queued == {"leg_a": True}
    assert world.dialer.started == []  # evaluated on the next loop turn, after the acknowledgement
    world.run()
    (dial_id, request), = world.dialer.started
    assert request.extensions == ("1001",) and request.dial.caller_number == "5551234"
    assert world.sink.of(QueuePlaced) == []
    (dispatch,) = world.sink.of(QueueDispatch)
    assert (dispatch.mode, dispatch.dial_id, dispatch.leg_id, dispatch.trunk_ref) == ("live", dial_id, "leg_a",
                                                                                     "trunk_main")
    assert entry.dispatching and entry.reserved_extensions == ("1001",)


def test_no_operator_online_sends_the_caller_offline(world):
    entry, ticket = world.put("leg_a")
    world.run()
    (offline,) = world.sink.of(QueueOffline)
    assert (offline.mode, offline.leg_id) == ("live", "leg_a")
    assert world.sink.interrupts == [("leg_a", "call_queue_placed"), ("leg_a", "call_queue_removed")]
    assert world.sink.queued["leg_a"] is False and ticket.released and entry.ended
    assert world.engine.stats(SCOPE, "support").size == 0 and world.engine.store.load() == []


def test_busy_operators_place_the_caller_once_then_dispatch_when_one_frees_up(world):
    world.operators.state = {"1001": "busy", "1002": "busy"}
    world.put("leg_a")
    world.run()
    world.engine.availability_changed("1002")  # e.g. a refresh: still busy
    world.run(5)
    assert len(world.sink.of(QueuePlaced)) == 1 and world.dialer.started == []
    world.operators.state["1002"] = "free"
    world.engine.availability_changed("1002")
    world.run()
    (dispatch,) = world.sink.of(QueueDispatch)
    assert world.dialer.started[0][1].extensions == ("1002",)
    assert len(world.sink.of(QueuePlaced)) == 1


def test_back_and_front_placement_order_the_queue(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a", "1")
    world.put("leg_b", "2")
    world.put("leg_c", "3", placement="front")
    world.run()
    assert [e.leg_id for e in world.engine.entries(SCOPE, "support")] == ["leg_c", "leg_a", "leg_b"]
    assert [world.engine.stats_for_leg(x).position for x in ("leg_a", "leg_b", "leg_c")] == [2, 3, 1]
    world.operators.state["1001"] = "free"
    world.engine.availability_changed("1001")
    world.run()
    # The head of the queue gets the free operator; the others are not dispatched to it too.
    assert [d.leg_id for d in world.sink.of(QueueDispatch)] == ["leg_c"]


def test_an_operator_reserved_by_a_dispatching_entry_is_not_offered_twice(world):
    world.operators.state = {"1001": "free", "1002": "busy"}
    world.put("leg_a")
    world.put("leg_b")
    world.run()
    assert [d.leg_id for d in world.sink.of(QueueDispatch)] == ["leg_a"]
    assert [p.leg_id for p in world.sink.of(QueuePlaced)] == ["leg_b"]


def test_a_leg_owns_one_entry_and_the_queue_must_have_an_active_trigger(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a")
    with pytest.raises(QueueError, match="already queued"):
        world.put("leg_a")
    with pytest.raises(QueueError, match="no active queue trigger"):
        world.put("leg_b", ref="sales")
    with pytest.raises(QueueError, match="no queue entry"):
        world.engine.set_callback("leg_zzz", True)
    with pytest.raises(QueueError, match="not queued"):
        world.engine.stats_for_leg("leg_zzz")


# ---- dial outcomes ----------------------------------------------------------------------------
def test_an_answered_operator_takes_the_entry_with_stats(world):
    world.operators.state = {"1001": "free"}
    entry, ticket = world.put("leg_a")
    world.run(12)
    world.finish(world.dialer.last(), answered=True)
    assert entry.ended and ticket.released and world.sink.queued["leg_a"] is False
    assert world.sink.interrupts[-1] == ("leg_a", "call_queue_removed")
    stats = world.engine.stats(SCOPE, "support")
    assert (stats.size, stats.completed_count, stats.average_wait_s) == (0, 1, 12.0)
    assert stats.updated_at_ms == int((EPOCH + world.clock.now()) * 1000)
    # The next caller's estimate is the average wait times its position.
    world.operators.state = {"1001": "busy"}
    world.put("leg_b")
    world.put("leg_c")
    world.run()
    est = world.engine.stats_for_leg("leg_c")
    assert (est.position, est.size, est.estimated_answer_s) == (2, 2, 24.0)
    assert est.payload()["estimatedAnswerSeconds"] == 24.0 and est.payload()["legId"] == "leg_c"


def test_estimates_are_zero_without_history(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a")
    assert world.engine.stats_for_leg("leg_a").estimated_answer_s == 0.0


def test_unanswered_dials_retry_after_the_cooldown_then_go_offline(world):
    world.operators.state = {"1001": "free"}
    entry, ticket = world.put("leg_a", retry_attempts=3, retry_pause_s=30)
    world.run()
    for attempt in range(1, 4):
        world.finish(world.dialer.last(), answered=False, reason="broken")
        assert len(world.sink.of(QueuePlaced)) == 1  # once per live period
        world.run(29.9)
        assert len(world.dialer.started) == attempt  # cooling down
        world.run(0.2)
        assert len(world.dialer.started) == attempt + 1
    world.finish(world.dialer.last(), answered=False, reason="broken")  # the fourth failure
    (offline,) = world.sink.of(QueueOffline)
    assert offline.reason == "queue_retries_exhausted" and offline.leg_id == "leg_a"
    assert world.sink.interrupts[-1] == ("leg_a", "call_queue_removed") and ticket.released
    world.run(60)
    assert len(world.dialer.started) == 4


def test_zero_retry_attempts_go_offline_on_the_first_failure(world):
    world.operators.state = {"1001": "free"}
    world.put("leg_a", retry_attempts=0)
    world.run()
    world.finish(world.dialer.last(), answered=False, reason="sip_486")
    assert len(world.sink.of(QueueOffline)) == 1


def test_retry_state_is_stored(world):
    world.operators.state = {"1001": "free"}
    world.put("leg_a", retry_pause_s=30)
    world.run()
    world.finish(world.dialer.last(), answered=False, reason="broken")
    (stored,) = world.engine.store.load()
    assert stored.retry_count == 1 and stored.retry_not_before == pytest.approx(EPOCH + world.clock.now() + 30)


# ---- caller hang-up and callback -------------------------------------------------------------------
def test_hang_up_with_callback_keeps_the_position_and_dispatches_a_callback(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a", "1")
    b, ticket_b = world.put("leg_b", "2")
    world.put("leg_c", "3")
    world.run()
    world.engine.set_callback("leg_b", True)
    assert world.engine.store.load()[1].callback_enabled
    world.engine.leg_ended("leg_b")
    assert b.mode is EntryMode.CALLBACK and ticket_b.released and b.leg_id is None
    assert [e.id for e in world.engine.entries(SCOPE, "support")][1] == b.id
    assert world.engine.stats(SCOPE, "support").size == 3
    assert ("leg_b", "call_queue_removed") not in world.sink.interrupts
    # The two live callers hang up without callback: silently removed.
    world.engine.leg_ended("leg_a")
    world.engine.leg_ended("leg_c")
    assert world.sink.of(QueueOffline) == [] and world.engine.stats(SCOPE, "support").size == 1
    world.operators.state["1001"] = "free"
    world.engine.availability_changed("1001")
    world.run(29)
    assert world.dialer.started == []  # the callback waits for the retry cooldown
    world.run(2)
    (dispatch,) = world.sink.of(QueueDispatch)
    assert (dispatch.mode, dispatch.leg_id, dispatch.caller_number) == ("callback", None, "2")
    assert dispatch.payload().keys() >= {"ref", "mode", "dialId", "callerNumber", "callerName", "trunkRef"}
    assert "legId" not in dispatch.payload()


def test_hang_up_during_dispatch_breaks_the_operator_dial(world):
    world.operators.state = {"1001": "free"}
    world.put("leg_a")
    world.put("leg_b", "5559999")
    world.run()
    dial_a = world.dialer.last()
    world.engine.set_callback("leg_a", True)
    world.engine.leg_ended("leg_a")
    assert world.dialer.cancelled == [(dial_a, "queue_callback")]
    world.engine.leg_ended("leg_b")  # not dispatched, no callback: nothing to break
    assert world.dialer.cancelled == [(dial_a, "queue_callback")]
    # The broken dial's finalization is not counted as a failed attempt.
    (entry,) = world.engine.entries(SCOPE, "support")
    assert entry.retry_count == 0 and not world.sink.of(QueueOffline)


def test_hang_up_without_callback_removes_silently_and_breaks_the_dial(world):
    world.operators.state = {"1001": "free"}
    world.put("leg_a")
    world.run()
    events = list(world.sink.events)
    world.engine.leg_ended("leg_a")
    assert world.dialer.cancelled == [(world.dialer.last(), "queue_entry_removed")]
    assert world.sink.events == events and world.sink.interrupts == [("leg_a", "call_queue_placed")]
    assert world.engine.store.load() == []


def test_a_new_call_from_the_same_number_rejoins_the_oldest_callback_entry(world):
    world.operators.state = {"1001": "busy"}
    first, _ = world.put("leg_a", "5551234")
    world.clock.advance(1)
    world.put("leg_x", "5550000")
    world.clock.advance(1)
    second, _ = world.put("leg_b", "5551234", rejoin=False)
    world.run()
    for leg in ("leg_a", "leg_b"):
        world.engine.set_callback(leg, True)
        world.engine.leg_ended(leg)
    placed_before = len(world.sink.of(QueuePlaced))
    rejoined, ticket = world.put("leg_new", "5551234")
    assert rejoined is first and first.mode is EntryMode.LIVE and first.leg_id == "leg_new"
    assert first.callback_enabled  # kept
    assert world.engine.stats_for_leg("leg_new").position == 1
    assert world.sink.interrupts[-1] == ("leg_new", "call_queue_placed")
    world.run()
    assert len(world.sink.of(QueuePlaced)) == placed_before + 1  # a new live period
    # Without rejoin the same caller gets a new entry at the back.
    other, _ = world.put("leg_other", "5551234", rejoin=False)
    assert other is not second and world.engine.stats_for_leg("leg_other").position == 4


# ---- triggers and dialer edge cases ----------------------------------------------------------------
def test_an_entry_waits_for_its_trigger_to_come_back(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a")
    world.run()
    saved = world.triggers.queues.pop((SCOPE, "support"))
    world.operators.state["1001"] = "free"
    world.engine.availability_changed("1001")
    world.run()
    assert world.dialer.started == [] and not world.sink.of(QueueOffline)
    world.triggers.queues[(SCOPE, "support")] = saved
    world.engine.refresh()
    world.run()
    assert len(world.sink.of(QueueDispatch)) == 1


def test_nobody_dialable_after_all_places_and_waits(world):
    world.operators.state = {"1001": "free"}
    world.dialer.refuse = True
    world.put("leg_a")
    world.run()
    assert len(world.sink.of(QueuePlaced)) == 1 and not world.sink.of(QueueDispatch)
    world.dialer.refuse = False
    world.engine.availability_changed("1001")
    world.run()
    assert len(world.sink.of(QueueDispatch)) == 1


# ---- restart -------------------------------------------------------------------------------------
def test_restart_keeps_callbacks_converts_flagged_live_entries_and_drops_the_rest(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a", "1")
    world.put("leg_b", "2")
    world.put("leg_c", "3")
    world.put("leg_d", "4", placement="front")
    world.run()
    world.engine.set_callback("leg_b", True)
    world.engine.leg_ended("leg_b")  # callback entry, cooling down for 30 s
    world.engine.set_callback("leg_c", True)  # still live when the process dies
    world.clock.advance(5)
    world.operators.state = {}  # phones must register again after a restart
    world.restart()
    assert (world.report.kept, world.report.converted, world.report.dropped) == (1, 1, 2)
    entries = world.engine.entries(SCOPE, "support")
    assert [e.caller_number for e in entries] == ["2", "3"]
    assert all(e.mode is EntryMode.CALLBACK and e.leg_id is None for e in entries)
    assert [e.created_at for e in entries] == sorted(e.created_at for e in entries)
    world.run(40)
    assert not world.sink.of(QueueOffline)  # no operator online yet: within the registration grace
    world.operators.state = {"1001": "free", "1002": "free"}
    world.engine.availability_changed("1001")
    world.run()
    # The head entry rings every free operator (parallel), so the next one waits for the answer.
    assert [(d.mode, d.leg_id, d.caller_number) for d in world.sink.of(QueueDispatch)] == [("callback", None, "2")]
    assert world.dialer.started[0][1].extensions == ("1001", "1002")
    world.finish(world.dialer.last(), answered=True)
    world.operators.state = {"1001": "busy", "1002": "free"}
    world.engine.availability_changed("1001")
    world.run()
    assert [(d.mode, d.caller_number) for d in world.sink.of(QueueDispatch)] == [("callback", "2"), ("callback", "3")]
    assert world.dialer.started[1][1].extensions == ("1002",)


def test_a_recovered_entry_keeps_its_retry_cooldown(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a")
    world.run()
    world.engine.set_callback("leg_a", True)
    world.engine.leg_ended("leg_a")  # callback after 30 s
    world.clock.advance(10)
    world.restart()
    world.operators.state = {"1001": "free"}
    world.engine.availability_changed("1001")
    world.run(19)
    assert world.dialer.started == []
    world.run(2)
    assert [d.mode for d in world.sink.of(QueueDispatch)] == ["callback"]


def test_after_the_grace_a_recovered_entry_with_no_operator_goes_offline(world):
    world.operators.state = {"1001": "busy"}
    world.put("leg_a")
    world.run()
    world.engine.set_callback("leg_a", True)
    world.engine.leg_ended("leg_a")
    world.operators.state = {}
    world.restart(grace_s=60)
    world.run(59)
    assert not world.sink.of(QueueOffline)
    world.run(2)
    (offline,) = world.sink.of(QueueOffline)
    assert (offline.mode, offline.leg_id) == ("callback", None)
    world.restart()
    assert world.engine.entries(SCOPE, "support") == []


def test_completion_stats_survive_a_restart(world):
    world.operators.state = {"1001": "free"}
    world.put("leg_a")
    world.run(8)
    world.finish(world.dialer.last(), answered=True)
    world.restart()
    stats = world.engine.stats(SCOPE, "support")
    assert (stats.completed_count, stats.average_wait_s) == (1, 8.0)


def test_a_closed_engine_ignores_late_events(world):
    world.operators.state = {"1001": "free"}
    world.put("leg_a")
    world.run()
    world.engine.close()
    world.engine.leg_ended("leg_a")
    world.finish(world.dialer.last(), answered=True)
    with pytest.raises(QueueError, match="shut down"):
        world.put("leg_b")


def test_one_evaluation_pass_asks_about_each_operator_once_however_many_callers_wait(world):
    """Dispatch stays linear: waiting callers share one availability answer per operator."""
    extensions = tuple(str(1001 + i) for i in range(50))
    world.triggers.queues[(SCOPE, "support")] = extensions
    world.operators.state = {x: "busy" for x in extensions}
    for n in range(40):
        world.put(f"leg_{n}", number=f"555{n:04d}")
    world.run()
    asked: dict[str, int] = {}
    online, free = world.operators.online, world.operators.free

    def count(kind, fn):
        def wrapper(extension):
            asked[kind] = asked.get(kind, 0) + 1
            return fn(extension)
        return wrapper

    world.operators.online, world.operators.free = count("online", online), count("free", free)
    world.operators.state["1050"] = "free"
    world.engine._evaluate_soon()
    world.run()
    assert asked == {"online": 50, "free": 50}
    dispatches = world.sink.of(QueueDispatch)
    assert len(dispatches) == 1 and dispatches[0].leg_id == "leg_0"  # the head of the queue, once
