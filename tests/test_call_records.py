"""Call records and queue events on virtual time, with fake legs, dials and executions: which legs
make one call, the record written only once every leg has ended (and its dials are over), the
shutdown flush, write errors that never raise, ISO times, and the queue engine's entry events."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from softswitch.clock import VirtualClock
from softswitch.flow.items import output_item
from softswitch.ops.queue_events import QueueEventLog
from softswitch.ops.records import CallRecords, JsonLines, iso_utc
from softswitch.queue.engine import OperatorDialRequest, QueueEntryEvent
from softswitch.queue.model import DialConfig
from softswitch.sip.events import LegAnswered, LegEnded
from softswitch.sip.registrar import Admission
from tests.test_queue_engine import SCOPE, World

EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z


# ---- fakes ----------------------------------------------------------------------------------
@dataclass
class FakeLeg:
    id: str
    direction: str = "inbound"
    transport: str = "sip"
    remote_uri: str = ""
    local_uri: str = ""
    admission: Any = None
    ended: bool = False
    end_reason: str | None = None
    listeners: list = field(default_factory=list)

    def subscribe(self, listener: Callable) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener) if listener in self.listeners else None


@dataclass
class FakeDial:
    id: str
    attempts: dict = field(default_factory=dict)
    finalized: bool = False
    listeners: list = field(default_factory=list)

    def on_finalized(self, listener: Callable) -> Callable[[], None]:
        if self.finalized:
            listener(None)
        else:
            self.listeners.append(listener)
        return lambda: None

    def finalize(self) -> None:
        self.finalized = True
        for listener in self.listeners:
            listener(None)


@dataclass
class Target:
    kind: str
    ref: str
    uri: str


@dataclass
class FakeTrigger:
    name: str


@dataclass
class FakeFlow:
    name: str
    triggers: list


class FakeExecution:
    """What records read of an Execution: its flow and the item its trigger emitted."""

    def __init__(self, trigger: str, payload: dict, sip_pbx: dict, flow: str = "demo") -> None:
        self.flow = FakeFlow(flow, [FakeTrigger(trigger)])
        self.latest = {trigger: output_item(None, payload, sip_pbx)}


class World2:
    """CallRecords on a virtual clock with a hand-run loop (`turn`) and the legs it sees."""

    def __init__(self, path: Path) -> None:
        self.clock = VirtualClock(0.0)
        self.path = path
        self.soon: list[Callable[[], None]] = []
        self.targets: dict[str, Target] = {}
        self.n = 0
        self.records = CallRecords(path, clock=self.clock, schedule=self.soon.append, new_id=self._new_id,
                                   target_of=self.targets.get, wall=lambda: EPOCH)

    def _new_id(self) -> str:
        self.n += 1
        return f"call_{self.n}"

    def turn(self) -> None:
        jobs, self.soon[:] = list(self.soon), []
        for job in jobs:
            job()

    def at(self, t: float) -> None:
        self.clock.advance(t - self.clock.now())

    def inbound(self, leg_id: str = "leg_in", number: str = "5551234") -> FakeLeg:
        leg = FakeLeg(leg_id, remote_uri=f"<sip:{number}@127.0.0.1>", local_uri="<sip:2000@127.0.0.1>",
                      admission=Admission("trunk", "trunk_main"))
        self.records.leg_created(leg)
        return leg

    def outbound(self, leg_id: str, target: Target | None = None, transport: str = "sip") -> FakeLeg:
        leg = FakeLeg(leg_id, direction="outbound", transport=transport,
                      remote_uri="websocket:openai_realtime" if transport == "websocket" else "")
        if target is not None:
            self.targets[leg_id] = target
        self.records.leg_created(leg)
        return leg

    def answer(self, leg: FakeLeg) -> None:
        self.records.leg_event(leg, LegAnswered(leg.id))

    def end(self, leg: FakeLeg, reason: str = "remote_hangup", code: int = 200) -> None:
        leg.ended, leg.end_reason = True, reason
        self.records.leg_event(leg, LegEnded(leg.id, reason, code))

    def lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def agent_target(ext: str = "1001") -> Target:
    return Target("extension", ext, f"sip:{ext}@127.0.0.1:5099")


def entry_event(kind: str, leg_id: str | None, *, at: float = EPOCH, created: float = EPOCH, mode: str = "live",
                entry: str = "queue_entry_1", size: int = 1, **detail: Any) -> QueueEntryEvent:
    return QueueEntryEvent(kind, "demo", "queue_support", entry, leg_id, "5551234", mode, created, at, size, detail)


@pytest.fixture
def w(tmp_path) -> World2:
    return World2(tmp_path / "state" / "call-records.jsonl")


# ---- grouping and the write rule -------------------------------------------------------------
def test_legs_a_flow_dials_belong_to_the_call_of_the_leg_that_triggered_it(w):
    caller = w.inbound()
    execution = FakeExecution("trunk_main", {"legId": caller.id}, {"legId": caller.id})
    w.records.call_started(caller, execution.flow, FakeTrigger("trunk_main"))
    agent = w.outbound("leg_agent", agent_target())
    ai = w.outbound("leg_ai", transport="websocket")
    dial = FakeDial("dial_1", {agent.id: agent})
    ai_dial = FakeDial("dial_2", {ai.id: ai})
    w.records.attempt_placed(dial, agent)  # before the dial is known: claimed by dial_started
    w.records.dial_started(dial, execution)
    w.records.dial_started(ai_dial, execution)
    for leg in (caller, agent, ai):
        w.answer(leg)
    w.end(caller)
    w.end(agent, "hangup")
    w.end(ai, "hangup")
    dial.finalize()
    ai_dial.finalize()
    w.turn()
    (record,) = w.lines()
    assert record["kind"] == "inbound" and record["flow"] == {"name": "demo", "trigger": "trunk_main"}
    assert [(leg["id"], leg["role"], leg["transport"]) for leg in record["legs"]] == [
        ("leg_in", "caller", "sip"), ("leg_agent", "agent", "sip"), ("leg_ai", "ai", "websocket")]
    assert record["legs"][1]["via"] == {"kind": "extension", "ref": "1001"}
    assert (record["from"], record["to"]) == ("5551234", "2000")
    assert record["admitted_via"] == {"kind": "trunk", "ref": "trunk_main"}
    assert record["hangup"] == {"by": "caller", "leg": "leg_in", "reason": "remote_hangup", "sip_code": 200}


def test_a_call_is_written_once_every_leg_has_ended_and_its_dials_are_over_then_forgotten(w):
    caller = w.inbound()
    execution = FakeExecution("trunk_main", {"legId": caller.id}, {"legId": caller.id})
    agent = w.outbound("leg_agent", agent_target())
    dial = FakeDial("dial_1", {agent.id: agent})
    w.records.dial_started(dial, execution)
    w.end(caller)
    w.turn()
    assert w.lines() == []  # the agent leg is still up
    w.end(agent, "hangup")
    w.turn()
    assert w.lines() == []  # the dial may still place another attempt
    dial.finalize()
    assert w.lines() == []  # written on the next loop turn, not inside the event
    w.turn()
    assert len(w.lines()) == 1
    records = w.records
    assert not records.calls and not records._leg_call and not records._dial_call and not records._loose
    w.turn()
    assert len(w.lines()) == 1  # once


def test_an_outbound_leg_no_dial_claims_is_a_call_of_its_own(w):
    leg = w.outbound("leg_out", Target("trunk", "trunk_main", "sip:5550002@127.0.0.1:5070"))
    w.end(leg, "sip_486", 486)
    w.turn()
    (record,) = w.lines()
    assert record["kind"] == "outbound" and record["to"] == "5550002" and record["flow"] is None
    assert record["legs"][0]["role"] == "callee" and record["legs"][0]["end_reason"] == "sip_486"
    assert record["hangup"]["by"] == "callee"


def test_a_dial_from_an_execution_with_no_live_leg_makes_an_outbound_call(w):
    execution = FakeExecution("queue_support", {"ref": "queue_support", "mode": "live"}, {}, flow="demo")
    leg = w.outbound("leg_out", Target("trunk", "trunk_main", "sip:5550002@127.0.0.1:5070"))
    dial = FakeDial("dial_9", {leg.id: leg}, finalized=True)
    w.records.dial_started(dial, execution)
    w.end(leg, "sip_480", 480)
    w.turn()
    (record,) = w.lines()
    assert record["kind"] == "outbound" and record["flow"] == {"name": "demo", "trigger": "queue_support"}


# ---- times: ISO, waits, talk --------------------------------------------------------------------
def test_times_are_iso_8601_utc_with_milliseconds():
    assert iso_utc(0.125) == "1970-01-01T00:00:00.125Z"
    assert iso_utc(EPOCH + 1.5) == "2023-11-14T22:13:21.500Z"
    assert iso_utc(None) is None


def test_queue_wait_and_talk_time_follow_the_clock(w):
    caller = w.inbound()
    w.answer(caller)
    w.at(2.0)
    w.records.queue_event(entry_event("queued", caller.id, position=1))
    agent = w.outbound("leg_agent", agent_target("1002"))
    dial = FakeDial("dial_1", {agent.id: agent})
    w.records.queue_dial_started(dial, OperatorDialRequest("queue_entry_1", ("1002",), DialConfig(), "demo",
                                                           "queue_support", caller.id))
    w.at(7.0)
    w.answer(agent)
    dial.finalize()
    w.records.queue_event(entry_event("taken", caller.id, dial="dial_1", agent_leg=agent.id))
    w.at(7.25)
    w.records.bridged(caller, agent)
    w.at(19.25)
    w.end(caller)
    w.records.unbridged(caller, agent)
    w.end(agent, "hangup")
    w.turn()
    (record,) = w.lines()
    assert record["started"] == "2023-11-14T22:13:20.000Z" and record["ended"] == "2023-11-14T22:13:39.250Z"
    assert record["duration_seconds"] == 19.25
    assert record["queue"] == {"name": "queue_support", "flow": "demo", "entry": "queue_entry_1",
                               "enqueued": "2023-11-14T22:13:22.000Z", "position": 1, "wait_seconds": 5.0,
                               "outcome": "taken", "reason": None, "agent": "1002", "agent_leg": "leg_agent"}
    assert record["talk_seconds"] == 12.0
    assert record["legs"][1]["answered"] == "2023-11-14T22:13:27.000Z"
    started = datetime.fromisoformat(record["started"].replace("Z", "+00:00"))
    assert started.tzinfo == timezone.utc


def test_talk_counts_from_the_later_answer_when_a_leg_was_bridged_while_ringing(w):
    caller = w.inbound()
    w.answer(caller)
    execution = FakeExecution("trunk_main", {"legId": caller.id}, {"legId": caller.id})
    callee = w.outbound("leg_out", Target("trunk", "trunk_main", "sip:5550002@x"))
    dial = FakeDial("dial_1", {callee.id: callee})
    w.records.dial_started(dial, execution)
    w.records.bridged(caller, callee)
    w.at(4.0)
    w.answer(callee)
    dial.finalize()
    w.at(10.0)
    w.end(callee)
    w.records.unbridged(caller, callee)
    w.end(caller, "hangup")
    w.turn()
    (record,) = w.lines()
    assert record["talk_seconds"] == 6.0
    # The caller was hung up by softswitch after its bridged peer hung up: the peer ended the call.
    assert record["hangup"] == {"by": "callee", "leg": "leg_out", "reason": "remote_hangup", "sip_code": 200}


def test_a_caller_who_leaves_the_queue_without_callback_abandoned_it(w):
    caller = w.inbound()
    w.records.queue_event(entry_event("queued", caller.id))
    w.at(9.0)
    w.end(caller)  # the engine's "abandoned" comes after the leg event, in the same turn
    w.records.queue_event(entry_event("abandoned", caller.id, at=EPOCH + 9))
    w.turn()
    (record,) = w.lines()
    assert record["queue"]["outcome"] == "abandoned" and record["queue"]["wait_seconds"] == 9.0
    assert record["answered"] is None and record["talk_seconds"] == 0.0


# ---- callbacks ----------------------------------------------------------------------------------
def test_a_callback_is_its_own_call_pointing_at_the_call_that_asked_for_it(w):
    caller = w.inbound()
    w.answer(caller)
    w.records.queue_event(entry_event("queued", caller.id))
    w.records.queue_event(entry_event("callback_requested", caller.id))
    w.at(12.0)
    w.end(caller)
    w.records.queue_event(entry_event("callback_waiting", caller.id, mode="callback", position=1))
    w.turn()
    (first,) = w.lines()
    assert first["queue"]["outcome"] == "callback_requested" and first["queue"]["wait_seconds"] == 12.0
    # The queue dials an agent for the callback entry, then the Dispatch flow dials the customer.
    w.at(20.0)
    agent = w.outbound("leg_agent", agent_target("1002"))
    agent_dial = FakeDial("dial_a", {agent.id: agent})
    w.records.queue_dial_started(agent_dial, OperatorDialRequest(
        "queue_entry_1", ("1002",), DialConfig(caller_number="5551234"), "demo", "queue_support", None))
    w.records.queue_event(entry_event("dispatch_started", None, mode="callback", dial="dial_a"))
    w.answer(agent)
    agent_dial.finalize()
    w.records.queue_event(entry_event("taken", None, mode="callback", at=EPOCH + 21, dial="dial_a",
                                      agent_leg=agent.id))
    dispatch = FakeExecution("queue_support", {"ref": "queue_support", "mode": "callback", "dialId": "dial_a"},
                             {"dialId": "dial_a"})
    customer = w.outbound("leg_cust", Target("trunk", "trunk_main", "sip:5551234@127.0.0.1:5070"))
    customer_dial = FakeDial("dial_c", {customer.id: customer})
    w.records.dial_started(customer_dial, dispatch)
    w.answer(customer)
    customer_dial.finalize()
    w.records.bridged(agent, customer)
    w.at(30.0)
    w.end(customer)
    w.records.unbridged(agent, customer)
    w.end(agent, "hangup")
    w.turn()
    _, callback = w.lines()
    assert callback["kind"] == "callback" and callback["callback_of"] == first["call"]
    assert [(leg["id"], leg["role"]) for leg in callback["legs"]] == [("leg_agent", "agent"), ("leg_cust", "customer")]
    assert (callback["from"], callback["to"]) == ("1002", "5551234")
    assert callback["queue"]["outcome"] == "taken" and callback["queue"]["agent"] == "1002"
    assert callback["queue"]["wait_seconds"] == 21.0  # since the original call queued the entry
    assert callback["flow"] == {"name": "demo", "trigger": "queue_support"}
    assert callback["talk_seconds"] == 10.0
    assert callback["hangup"]["by"] == "customer"


def test_a_callback_whose_agent_does_not_answer_records_the_failed_attempt(w):
    agent = w.outbound("leg_agent", agent_target("1002"))
    dial = FakeDial("dial_a", {agent.id: agent})
    w.records.queue_dial_started(dial, OperatorDialRequest("queue_entry_7", ("1002",), DialConfig(caller_number="555"),
                                                           "demo", "queue_support", None))
    w.end(agent, "no_answer", 487)
    dial.finalize()
    w.records.queue_event(entry_event("dispatch_failed", None, mode="callback", entry="queue_entry_7",
                                      reason="no_answer"))
    w.turn()
    (record,) = w.lines()
    assert record["kind"] == "callback" and record["callback_of"] is None  # not queued in this process
    assert record["queue"]["outcome"] == "agent_not_answered" and record["queue"]["reason"] == "no_answer"
    assert record["hangup"]["by"] == "softswitch" and record["hangup"]["reason"] == "no_answer"


# ---- shutdown and write errors ---------------------------------------------------------------------
def test_shutdown_writes_calls_still_up_with_daemon_shutdown(w):
    caller = w.inbound()
    w.answer(caller)
    ended_caller = w.inbound("leg_done")
    w.end(ended_caller)  # over, but its line is due on the next turn
    w.at(3.0)
    w.records.close()
    records = {r["legs"][0]["id"]: r for r in w.lines()}
    assert records["leg_in"]["hangup"] == {"by": "softswitch", "leg": None, "reason": "daemon_shutdown",
                                           "sip_code": None}
    assert records["leg_in"]["legs"][0]["end_reason"] == "daemon_shutdown"
    assert records["leg_in"]["duration_seconds"] == 3.0
    assert records["leg_done"]["hangup"]["by"] == "caller"
    w.end(caller)  # the UA hangs it up after the engine shut down: nothing more is written
    w.turn()
    assert len(w.lines()) == 2 and not w.records.calls


def test_an_unwritable_records_file_is_logged_and_never_raises(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    w = World2(blocker / "call-records.jsonl")
    with caplog.at_level(logging.ERROR, logger="softswitch.records"):
        for n in range(3):
            leg = w.inbound(f"leg_{n}")
            w.end(leg)
            w.turn()
    assert w.records.out.dropped == 3 and w.records.out.written == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write call records" in errors[0].getMessage()
    assert not w.records.calls  # dropped, not kept


def test_writing_resumes_on_a_new_line_after_a_line_was_cut_short(tmp_path):
    path = tmp_path / "deep" / "dir" / "records.jsonl"
    out = JsonLines(path, "test lines")
    assert out.write({"n": 1})
    out.close()
    with open(path, "a") as f:
        f.write('{"n": 2, "cut')  # a crash in the middle of a line
    out = JsonLines(path, "test lines")
    assert out.write({"n": 3})
    out.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"n": 1} and json.loads(lines[-1]) == {"n": 3}


# ---- queue events ------------------------------------------------------------------------------------
def test_queue_engine_reports_entry_events_in_order_with_the_size_after_each(tmp_path):
    world = World(tmp_path / "queues.sqlite3")
    seen: list[QueueEntryEvent] = []
    world.engine.watch(seen.append)
    world.operators.state = {"1001": "busy"}
    world.put("leg_a")
    world.put("leg_b", number="5550002")
    world.run()
    world.engine.set_callback("leg_b", True)
    world.engine.stats_for_leg("leg_b")
    world.run(5)
    world.engine.leg_ended("leg_b")  # hangs up with callback: keeps its place
    world.operators.state = {"1001": "free"}
    world.engine.availability_changed("1001")
    world.run()
    dial_id = world.dialer.last()
    world.run(3)
    world.finish(dial_id, True)
    world.run()
    got = [(e.kind, e.leg_id, e.size) for e in seen]
    assert got == [("queued", "leg_a", 1), ("queued", "leg_b", 2), ("placed", "leg_a", 2), ("placed", "leg_b", 2),
                   ("callback_requested", "leg_b", 2), ("position", "leg_b", 2), ("callback_waiting", "leg_b", 2),
                   ("dispatch_started", "leg_a", 2), ("taken", "leg_a", 1)], got
    taken = seen[-1]
    assert taken.detail == {"dial": dial_id, "agent_leg": "leg_agent"} and taken.wait_s == 8.0
    stats = world.engine.stats_json([(SCOPE, "support"), (SCOPE, "sales")])
    support, sales = stats["queues"]
    assert (support["ref"], support["size"], support["callbacks"], support["live"], support["completedCount"]) == (
        "support", 1, 1, 0, 1)
    assert support["averageWaitSeconds"] == 8.0 and support["longestWaitSeconds"] == 8.0
    assert (sales["ref"], sales["size"], sales["completedCount"]) == ("sales", 0, 0)
    json.dumps(stats)
    world.engine.close()


def test_queue_event_lines_carry_time_queue_entry_leg_caller_wait_and_size(tmp_path):
    path = tmp_path / "queue-events.jsonl"
    log = QueueEventLog(path, agent_of={"leg_agent": "1001"}.get, queue_size=lambda scope, ref: 0,
                        wall=lambda: EPOCH + 30)
    log.entry_event(entry_event("queued", "leg_in", position=1))
    log.entry_event(entry_event("dispatch_started", "leg_in", at=EPOCH + 4, dial="dial_1", extensions=["1001"]))
    log.entry_event(entry_event("taken", "leg_in", at=EPOCH + 6.5, size=0, dial="dial_1", agent_leg="leg_agent"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["queued", "dispatch_started", "taken"]
    assert lines[0] == {"time": "2023-11-14T22:13:20.000Z", "event": "queued", "queue": "queue_support",
                        "flow": "demo", "entry": "queue_entry_1", "leg": "leg_in", "caller": "5551234",
                        "mode": "live", "wait_seconds": 0.0, "size": 1, "position": 1}
    assert lines[1]["extensions"] == ["1001"] and lines[1]["wait_seconds"] == 4.0
    assert lines[2]["agent"] == "1001" and lines[2]["size"] == 0 and lines[2]["wait_seconds"] == 6.5
    log.close()


def test_queue_events_follow_a_callback_customer_who_does_not_answer(tmp_path):
    path = tmp_path / "queue-events.jsonl"
    log = QueueEventLog(path, queue_size=lambda scope, ref: 2, wall=lambda: EPOCH + 40)
    log.entry_event(entry_event("taken", None, mode="callback", at=EPOCH + 30, size=2, dial="dial_a",
                                agent_leg="leg_agent"))
    customer = FakeLeg("leg_cust", direction="outbound")
    dispatch = FakeExecution("queue_support", {"mode": "callback", "dialId": "dial_a"}, {"dialId": "dial_a"})
    log.dial_started(FakeDial("dial_c", {customer.id: customer}), dispatch)
    for listener in list(customer.listeners):
        listener(LegEnded(customer.id, "sip_486", 486))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["taken", "callback_dialing", "callback_not_answered"]
    assert lines[2]["leg"] == "leg_cust" and lines[2]["sip_code"] == 486 and lines[2]["wait_seconds"] == 40.0
    assert lines[2]["agent_leg"] == "leg_agent" and lines[2]["size"] == 2
    assert customer.listeners == []  # let go of the leg once it ended
    log.close()
