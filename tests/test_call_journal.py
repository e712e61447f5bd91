"""The crash journal (softswitch/ops/journal.py) and what the next start makes of it: a torn last
line is skipped, the file is emptied when no call is live and compacted when it grows, calls that
live within one loop turn never touch it, cut-off calls are written with `process_crashed` ending
when the process was last seen alive, a clean stop leaves no journal; and the queue engine's
restart events for the live entries it drops. Virtual time, real files."""

from __future__ import annotations

import json
from pathlib import Path

from softswitch.clock import Timers
from softswitch.ops.journal import CallJournal
from softswitch.ops.records import JOURNAL_HEARTBEAT_S, CallRecords
from softswitch.queue.engine import QueueEngine
from softswitch.queue.store import QueueStore
from tests.test_call_records import EPOCH, FakeExecution, FakeTrigger, World2, agent_target, entry_event
from tests.test_queue_engine import SCOPE, World


def journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- the file ---------------------------------------------------------------------------------
def test_a_torn_last_line_is_skipped_and_the_calls_before_it_are_read(tmp_path):
    journal = CallJournal(tmp_path / "call-journal.jsonl")
    journal.note("call_a", {"id": "call_a", "n": 1}, 10.0)
    journal.note("call_b", {"id": "call_b", "n": 1}, 11.0)
    journal.note("call_a", {"id": "call_a", "n": 2}, 12.0)
    journal.alive(15.0)
    # The crash cut the last write short.
    with open(journal.path, "a", encoding="utf-8") as out:
        out.write('{"op":"call","id":"call_c","at":16.0,"state":{"id":"ca')
    contents = CallJournal(journal.path).read()
    assert contents.calls == {"call_a": {"id": "call_a", "n": 2}, "call_b": {"id": "call_b", "n": 1}}
    assert contents.last_seen == 15.0 and contents.unreadable == 1


def test_ended_calls_leave_the_journal_and_it_is_emptied_when_none_is_live(tmp_path):
    journal = CallJournal(tmp_path / "call-journal.jsonl")
    journal.note("call_a", {"id": "call_a"}, 1.0)
    journal.note("call_b", {"id": "call_b"}, 2.0)
    journal.ended("call_a")
    assert list(CallJournal(journal.path).read().calls) == ["call_b"]
    journal.ended("call_b")
    assert journal.path.read_text() == ""  # nothing live: truncated, not grown by an "end" line
    journal.ended("call_never_noted")  # a call that lived within one loop turn: nothing written
    assert journal.path.read_text() == ""
    journal.alive(3.0)  # no heartbeat without a live call
    assert journal.path.read_text() == ""


def test_a_growing_journal_is_compacted_to_the_live_calls_latest_states(tmp_path):
    journal = CallJournal(tmp_path / "call-journal.jsonl", compact_bytes=4096)
    journal.note("call_long", {"id": "call_long", "n": 0}, 0.0)
    for n in range(1, 500):  # a long call changing, and short calls coming and going beside it
        journal.note("call_long", {"id": "call_long", "n": n, "pad": "x" * 40}, float(n))
        journal.note(f"call_{n}", {"id": f"call_{n}"}, float(n))
        journal.ended(f"call_{n}")
        assert journal.path.stat().st_size <= 4096 + 200
    assert journal.compactions > 5
    assert journal.size == journal.path.stat().st_size
    contents = CallJournal(journal.path).read()
    assert contents.calls == {"call_long": {"id": "call_long", "n": 499, "pad": "x" * 40}}
    assert contents.last_seen == 499.0
    assert not journal.path.with_name(journal.path.name + ".tmp").exists()


def test_a_clean_close_removes_the_journal(tmp_path):
    journal = CallJournal(tmp_path / "call-journal.jsonl")
    journal.note("call_a", {"id": "call_a"}, 1.0)
    journal.close()
    assert not journal.path.exists()


# ---- call records with a journal --------------------------------------------------------------
class Crashable(World2):
    """World2 whose records journal live calls under `state`, with a heartbeat on virtual time."""

    def __init__(self, state: Path) -> None:
        self.state = state
        super().__init__(state / "call-records.jsonl")
        self.timers = Timers(self.clock)
        self.records = self.new_records()

    def new_records(self) -> CallRecords:
        """The records of a (new) process on the same state directory; the start's recovery run."""
        records = CallRecords(self.path, clock=self.clock, schedule=self.soon.append, new_id=self._new_id,
                              target_of=self.targets.get, wall=lambda: EPOCH,
                              journal=CallJournal.in_directory(self.state), timers=self.timers)
        records.recover_crashed()
        return records

    @property
    def journal(self) -> Path:
        return self.state / "call-journal.jsonl"

    def run(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.timers.run_due()


def a_queued_call_at_an_agent(w: Crashable):
    caller = w.inbound("leg_in", "5551234")
    execution = FakeExecution("trunk_main", {"legId": caller.id}, {"legId": caller.id})
    w.records.call_started(caller, execution.flow, FakeTrigger("trunk_main"))
    w.answer(caller)
    w.records.queue_event(entry_event("queued", caller.id, position=1))
    w.turn()
    w.at(4)
    agent = w.outbound("leg_agent", agent_target("1001"))
    w.records.queue_dial_started(_dial("dial_1", agent), _request(caller.id))
    w.answer(agent)
    w.records.queue_event(entry_event("taken", caller.id, at=EPOCH + 4, agent_leg=agent.id))
    w.records.bridged(caller, agent)
    w.turn()
    return caller, agent


def _dial(dial_id, leg):
    from tests.test_call_records import FakeDial
    return FakeDial(dial_id, {leg.id: leg})


def _request(leg_id):
    from softswitch.queue.engine import OperatorDialRequest
    from softswitch.queue.model import DialConfig
    return OperatorDialRequest("queue_entry_1", ("1001",), DialConfig(caller_number="5551234"), "demo",
                               "queue_support", leg_id)


def test_a_call_cut_off_by_a_crash_is_written_at_the_next_start_ending_when_last_seen_alive(tmp_path):
    w = Crashable(tmp_path / "state")
    a_queued_call_at_an_agent(w)
    for _ in range(25):  # talking until 16.5 s; heartbeats every 5 s while the call is live
        w.run(0.5)
    assert w.lines() == [] and w.journal.stat().st_size > 0
    # kill -9: no close(). The next process starts on the same state directory.
    w.records = w.new_records()
    (record,) = w.lines()
    assert record["hangup"] == {"by": "softswitch", "leg": None, "reason": "process_crashed", "sip_code": None}
    assert (record["started"], record["answered"]) == ("2023-11-14T22:13:20.000Z", "2023-11-14T22:13:20.000Z")
    last_beat = 3 * JOURNAL_HEARTBEAT_S  # 15 s: the process died before the next one
    assert record["ended"] == f"2023-11-14T22:13:{20 + int(last_beat)}.000Z"
    assert record["duration_seconds"] == last_beat
    assert [(leg["id"], leg["role"], leg["end_reason"]) for leg in record["legs"]] == [
        ("leg_in", "caller", "process_crashed"), ("leg_agent", "agent", "process_crashed")]
    assert record["talk_seconds"] == last_beat - 4  # bridged at 4 s, until last seen
    assert (record["from"], record["to"], record["flow"]) == ("5551234", "2000",
                                                             {"name": "demo", "trigger": "trunk_main"})
    assert record["queue"]["outcome"] == "taken" and record["queue"]["agent"] == "1001"
    assert set(record) == {"call", "kind", "callback_of", "started", "answered", "ended", "duration_seconds",
                           "from", "to", "admitted_via", "flow", "legs", "queue", "talk_seconds", "recordings",
                           "hangup"}  # the shape of every record
    assert w.journal.read_text() == ""  # cleared once written
    w.records = w.new_records()  # and a second start writes nothing twice
    assert len(w.lines()) == 1


def test_a_waiting_caller_cut_off_is_written_abandoned_with_reason_restart(tmp_path):
    w = Crashable(tmp_path / "state")
    caller = w.inbound("leg_in", "5551234")
    w.answer(caller)
    w.records.queue_event(entry_event("queued", caller.id, position=1))
    w.turn()
    w.run(3)
    w.records = w.new_records()
    (record,) = w.lines()
    assert record["queue"]["outcome"] == "abandoned" and record["queue"]["reason"] == "restart"
    assert record["hangup"]["reason"] == "process_crashed"


def test_calls_within_one_loop_turn_never_touch_the_journal_and_a_clean_stop_leaves_none(tmp_path):
    w = Crashable(tmp_path / "state")
    caller = w.inbound("leg_short")
    w.end(caller)
    w.turn()
    w.turn()
    assert len(w.lines()) == 1 and not w.journal.exists()
    a_queued_call_at_an_agent(w)
    assert w.journal.stat().st_size > 0
    w.records.close()  # a clean stop: the live call is written as daemon_shutdown
    assert [r["hangup"]["reason"] for r in w.lines()][-1] == "daemon_shutdown"
    assert not w.journal.exists()
    w.records = w.new_records()
    assert len(w.lines()) == 2


def test_one_journal_line_per_call_per_loop_turn(tmp_path):
    w = Crashable(tmp_path / "state")
    caller = w.inbound("leg_in")
    execution = FakeExecution("trunk_main", {"legId": caller.id}, {"legId": caller.id})
    w.records.call_started(caller, execution.flow, FakeTrigger("trunk_main"))
    w.answer(caller)
    w.records.queue_event(entry_event("queued", caller.id, position=1))
    w.turn()
    (line,) = journal_lines(w.journal)
    assert line["op"] == "call" and line["state"]["queue"]["outcome"] == "waiting"


# ---- the queue's restart events ---------------------------------------------------------------
def test_restart_tells_watchers_of_the_live_entries_it_drops_and_converts(tmp_path):
    world = World(tmp_path / "queues.sqlite3")
    world.operators.state = {"1001": "busy"}
    world.put("leg_a", "1")
    world.put("leg_b", "2")
    world.put("leg_c", "3")
    world.run()
    world.engine.set_callback("leg_b", True)
    world.engine.leg_ended("leg_b")  # a callback entry: kept as it is, no restart event
    world.engine.set_callback("leg_c", True)  # live, flagged: a callback after the restart
    world.engine.close()
    heard = []
    engine = QueueEngine(QueueStore(world.path), world.timers, world.operators, world.dialer, world.sink,
                         world.triggers, wall=lambda: 1_700_000_100.0)
    engine.watch(heard.append)
    report = engine.recover()
    assert (report.kept, report.converted, report.dropped) == (1, 1, 1)
    assert [(e.kind, e.leg_id, e.caller_number, e.mode, e.detail.get("reason")) for e in heard] == [
        ("abandoned", "leg_a", "1", "live", "restart"), ("callback_waiting", "leg_c", "3", "callback", "restart")]
    assert heard[1].detail["position"] == 2 and all(e.size == 2 for e in heard)
    assert [e.caller_number for e in engine.entries(SCOPE, "support")] == ["2", "3"]
    engine.close()


# ---- records on by default --------------------------------------------------------------------
def test_records_default_to_the_state_directory_and_null_turns_them_off(tmp_path, capsys):
    from softswitch.cli import main
    from softswitch.config import load_config

    state = tmp_path / "var" / "state"
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"directories: {{state: {state}}}\n")
    records = load_config(plain).records.in_state(state)
    assert (records.call_records, records.queue_events) == (state / "call-records.jsonl",
                                                            state / "queue-events.jsonl")
    off = tmp_path / "off.yaml"
    off.write_text(f"directories: {{state: {state}}}\nrecords: {{call_records: null, queue_events: logs/q.jsonl}}\n")
    records = load_config(off).records.in_state(state)
    assert (records.call_records, records.queue_events) == (None, tmp_path / "logs" / "q.jsonl")
    assert main(["check", "--config", str(off)]) == 0
    assert f"call records: off; queue events: {tmp_path / 'logs' / 'q.jsonl'}" in capsys.readouterr().out
