"""kill -9 in the middle of calls: the next start writes a call record (hang-up reason
`process_crashed`) for every call the crash cut off and an `abandoned` queue event (reason
`restart`) for the waiting caller it dropped, keeps the pending callback and dispatches it; a
second start writes nothing twice, and a clean stop leaves no journal. Records are on by
default: these configs have no `records:` section, so everything is under directories.state."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.actors import uac_call
from tests.support.callcentre import agent, json_lines, no_errors, pcap_of, queue_events
from tests.support.waiting import wait_for
from tests.test_queue_sipp import start

pytestmark = pytest.mark.sipp

JOURNAL_HEARTBEAT_S = 5.0  # softswitch.ops.records: how stale a cut-off call's end time may be


def epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def records(state: Path) -> list[dict]:
    return json_lines(state / "call-records.jsonl")


def events(state: Path) -> list[dict]:
    return json_lines(state / "queue-events.jsonl")


def test_kill_9_cut_off_calls_get_records_the_dropped_waiting_caller_an_event_and_the_callback_survives(
        server_factory, tmp_path):
    state = tmp_path / "state"
    server = start(server_factory, tmp_path, pause=1, dial_timeout=60)
    remote = f"127.0.0.1:{server.sip_port}"
    with agent(server, tmp_path, "1001", seconds=90, timeout_s=90) as phone:
        talking = uac_call(remote, pcap_of(tmp_path, "talking", 440, 90), caller="5550001", hold_ms=80000,
                           timeout_s=90)
        waiting = uac_call(remote, pcap_of(tmp_path, "waiting", 440, 90), caller="5550002", hold_ms=80000,
                           timeout_s=90)
        asks_callback = uac_call(remote, pcap_of(tmp_path, "asks", 440, 4, dtmf=[("9", 1.5, 200)]),
                                 caller="5550003", hold_ms=3500, timeout_s=20)
        with talking:
            wait_for(lambda: "node bridge_agent " in server.text(), 15, "the first caller to be with the agent")
            with waiting:
                wait_for(lambda: len(queue_events(server, "Placed")) == 1, 10, "the second caller to be placed")
                with asks_callback:
                    assert asks_callback.wait(20).ok
                wait_for(lambda: "waits for a callback" in server.text(), 10, "the third caller's callback entry")
                time.sleep(0.3)  # a loop turn or two: the journal line of the latest change
                first_records = records(state)  # the callback caller's own call, ended normally
                assert [r["from"] for r in first_records] == ["5550003"]
                assert (state / "call-journal.jsonl").stat().st_size > 0
                os.kill(server.proc.pid, signal.SIGKILL)
                killed_at = time.time()
                server.proc.wait(10)
                waiting.stop()
            talking.stop()
        phone.stop()
    first_run = server.text()

    restarted = start(server_factory, tmp_path, pause=1, dial_timeout=60)
    assert restarted.wait_for_log("live entries dropped", 10), restarted.text()[-3000:]
    crashed = [r for r in records(state) if r["hangup"]["reason"] == "process_crashed"]
    by_caller = {r["from"]: r for r in crashed}
    assert sorted(by_caller) == ["5550001", "5550002"], crashed

    talked = by_caller["5550001"]
    assert talked["kind"] == "inbound" and talked["to"] == "2000"
    assert talked["flow"] == {"name": "queueing", "trigger": "trunk_main"}
    assert talked["hangup"] == {"by": "softswitch", "leg": None, "reason": "process_crashed", "sip_code": None}
    caller_leg, agent_leg = talked["legs"]
    assert (caller_leg["role"], agent_leg["role"], agent_leg["via"]) == ("caller", "agent",
                                                                       {"kind": "extension", "ref": "1001"})
    assert {leg["end_reason"] for leg in talked["legs"]} == {"process_crashed"}
    started, answered, ended = (epoch(talked[k]) for k in ("started", "answered", "ended"))
    # Ended when last seen alive: before the kill, and at most a heartbeat (plus a loop turn) before it.
    assert started <= answered <= epoch(agent_leg["answered"]) <= ended <= killed_at + 0.2, talked
    assert ended >= killed_at - JOURNAL_HEARTBEAT_S - 1.0, (ended, killed_at)
    assert talked["queue"]["outcome"] == "taken" and talked["queue"]["agent"] == "1001"
    assert 0 < talked["talk_seconds"] <= ended - answered + 0.01

    dropped = by_caller["5550002"]
    assert [leg["role"] for leg in dropped["legs"]] == ["caller"]
    assert dropped["queue"]["outcome"] == "abandoned" and dropped["queue"]["reason"] == "restart"
    assert epoch(dropped["started"]) <= epoch(dropped["ended"]) <= killed_at + 0.2
    abandoned = [e for e in events(state) if e["event"] == "abandoned"]
    assert [(e["entry"], e["leg"], e["caller"], e["reason"]) for e in abandoned] == [
        (dropped["queue"]["entry"], dropped["legs"][0]["id"], "5550002", "restart")]
    assert not (state / "call-journal.jsonl").exists() or (state / "call-journal.jsonl").stat().st_size == 0

    # The callback asked for before the crash is still queued: an agent registers, it is dispatched.
    with agent(restarted, tmp_path, "1001") as phone:
        wait_for(lambda: queue_events(restarted, "Dispatch"), 15, "the callback dispatch after the restart")
        assert phone.wait(15).ok
    (dispatch,) = [p for _, p in queue_events(restarted, "Dispatch")]
    assert dispatch["mode"] == "callback" and dispatch["callerNumber"] == "5550003"
    wait_for(lambda: any(r["kind"] == "callback" for r in records(state)), 10, "the callback's call record")
    assert restarted.stop() == 0
    assert not (state / "call-journal.jsonl").exists()  # a clean stop leaves no journal
    no_errors(restarted)

    # A second start writes nothing twice.
    before = (records(state), events(state))
    again = start(server_factory, tmp_path, pause=1, dial_timeout=60)
    assert again.stop() == 0
    assert (records(state), events(state)) == before
    assert "process_crashed" not in again.text()
    assert "Traceback" not in first_run


def test_a_config_without_records_writes_call_records_in_the_state_directory(server_factory, tmp_path):
    server = start(server_factory, tmp_path)
    with agent(server, tmp_path, "1001") as phone:
        caller = uac_call(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", 440, 3), caller="5551234",
                          hold_ms=2500, timeout_s=20)
        with caller:
            assert caller.wait(20).ok
        assert phone.wait(15).ok
    wait_for(lambda: records(tmp_path / "state"), 10, "the call record")
    assert server.stop() == 0
    (record,) = records(tmp_path / "state")
    assert record["from"] == "5551234" and record["hangup"]["by"] == "caller"
    kinds = [e["event"] for e in events(tmp_path / "state")]
    assert kinds[0] == "queued" and "taken" in kinds
    no_errors(server)
