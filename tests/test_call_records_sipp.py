"""Call records and queue events of the assembled demo on real SIP, checked against what the
test's actors did: times from the SIPp message traces, legs, queue outcome and wait, talk time,
the call recording, who hung up; callbacks as calls of their own; the assistant's AI leg.

The server runs the shipped assembled demo (callback rows: its copy with a 2 s retry cooldown,
as in tests/test_demo_sipp.py) with `records.call_records` and `records.queue_events` set."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import soundfile as sf

from tests.support.actors import uac_call, uas_answer, uas_no_answer, uas_reject
from tests.support.callcentre import json_lines, no_errors, pcap_of
from tests.support.fake_ai import FakeProvider
from tests.support.siptrace import first, trace
from tests.support.waiting import wait_for
from tests.test_demo_sipp import ASSEMBLED, CALLER, CUSTOMER, _callback_run, agent, press, quick_callbacks

pytestmark = pytest.mark.sipp

KEY_ENV = "SOFTSWITCH_TEST_AI_KEY"


def record_files(tmp_path: Path) -> dict[str, str]:
    return {"call_records": str(tmp_path / "records" / "call-records.jsonl"),
            "queue_events": str(tmp_path / "records" / "queue-events.jsonl")}


def calls(tmp_path: Path) -> list[dict]:
    return json_lines(tmp_path / "records" / "call-records.jsonl")


def queue_events(tmp_path: Path, entry: str) -> list[dict]:
    return [e for e in json_lines(tmp_path / "records" / "queue-events.jsonl") if e["entry"] == entry]


def with_records(server_factory, tmp_path: Path):
    """server_factory, with the records written under tmp_path/records."""
    return lambda **sections: server_factory(records=record_files(tmp_path), **sections)


def local(iso: str) -> datetime:
    """A record's UTC time as the local naive time SIPp writes in its traces."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().replace(tzinfo=None)


def seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def in_order(kinds: list[str], wanted: list[str]) -> bool:
    """Whether `wanted` occurs in `kinds` in this order (other kinds may come between)."""
    it = iter(kinds)
    return all(any(k == w for k in it) for w in wanted)


# ---- menu → support queue → agent answers → talk → the caller hangs up ------------------------------

def test_live_queue_call_record_matches_what_the_caller_and_the_agent_did(server_factory, tmp_path):
    server = server_factory(flows=[str(ASSEMBLED)], records=record_files(tmp_path),
                            logging={"level": "debug", "pjsip_level": 1})
    with agent(server, tmp_path, "1001", answer_delay_ms=3000) as phone:
        caller = uac_call(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", CALLER, 16, [press("1", 1.0)]),
                          caller="5551234", hold_ms=14000, timeout_s=40, trace_dir=tmp_path / "caller")
        with caller:
            caller_result = caller.wait(40)
        phone_result = phone.wait(20)
    assert caller_result.ok and phone_result.ok, f"{caller_result}\n{phone_result}"
    # Written when the call ended, not at shutdown: it is there while the server still runs.
    wait_for(lambda: calls(tmp_path), 10, "the call record")
    server.stop()
    (record,) = calls(tmp_path)
    caller_trace, agent_trace = trace(caller), trace(phone)
    invited, _ = first(caller_trace, "sent", "INVITE ")
    answered, _ = first(caller_trace, "received", "SIP/2.0 200")
    agent_answered, _ = first(agent_trace, "sent", "SIP/2.0 200")
    bye, _ = first(caller_trace, "sent", "BYE ")

    assert record["kind"] == "inbound" and record["callback_of"] is None
    assert (record["from"], record["to"]) == ("5551234", "2000")
    assert record["admitted_via"] == {"kind": "trunk", "ref": "trunk_main"}
    assert record["flow"] == {"name": "part-3-step-4-routing-queue-ai-recording-tools-callback",
                              "trigger": "trunk_main"}
    assert abs(seconds(invited, local(record["started"]))) < 1.0
    assert abs(seconds(answered, local(record["answered"]))) < 1.0
    assert abs(seconds(bye, local(record["ended"]))) < 1.0
    assert abs(record["duration_seconds"] - seconds(invited, bye)) < 1.0
    caller_leg, agent_leg = record["legs"]  # the caller and the one agent rung: nobody else
    assert (caller_leg["role"], caller_leg["direction"], caller_leg["end_reason"]) == ("caller", "inbound",
                                                                                      "remote_hangup")
    assert (agent_leg["role"], agent_leg["direction"], agent_leg["via"]) == (
        "agent", "outbound", {"kind": "extension", "ref": "1001"})
    assert abs(seconds(agent_answered, local(agent_leg["answered"]))) < 1.0
    queue = record["queue"]
    assert (queue["name"], queue["outcome"], queue["agent"], queue["agent_leg"]) == (
        "queue_support", "taken", "1001", agent_leg["id"])
    # Queued when the caller's 1 (1 s into the call) was heard; taken when the agent answered (3 s later).
    assert abs(queue["wait_seconds"] - seconds(answered, agent_answered) + 1.0) < 1.0, queue
    assert abs(record["talk_seconds"] - seconds(agent_answered, bye)) < 1.0, record["talk_seconds"]
    assert record["hangup"] == {"by": "caller", "leg": caller_leg["id"], "reason": "remote_hangup", "sip_code": 200}
    (path,) = record["recordings"]
    assert path == str(tmp_path / "recordings" / f"{caller_leg['id']}.wav")
    audio, rate = sf.read(path, dtype="int16")
    assert rate == 8000 and audio.shape[1] == 2 and abs(len(audio) / rate - record["duration_seconds"]) < 1.0

    events = queue_events(tmp_path, queue["entry"])
    kinds = [e["event"] for e in events]
    assert in_order(kinds, ["queued", "dispatch_started", "taken"]), kinds
    assert kinds.index("taken") == len(kinds) - 1  # nothing after the entry left the queue
    taken = events[-1]
    assert (taken["leg"], taken["caller"], taken["agent"], taken["size"]) == (caller_leg["id"], "5551234", "1001", 0)
    assert abs(taken["wait_seconds"] - queue["wait_seconds"]) < 0.5
    assert events[0]["size"] == 1 and events[0]["position"] == 1
    no_errors(server)


# ---- callbacks: the caller pressed 9 and hung up; an agent frees up; the customer is called ----------

def callback_records(tmp_path: Path) -> tuple[dict, dict]:
    """The record of the caller who asked for the callback (5550002) and of the callback."""
    records = calls(tmp_path)
    (asked,) = [r for r in records if r["kind"] == "inbound" and r["from"] == "5550002"]
    (callback,) = [r for r in records if r["kind"] == "callback"]
    return asked, callback


def test_callback_is_a_call_of_its_own_pointing_at_the_call_that_asked_for_it(server_factory, tmp_path):
    customer_pcap = pcap_of(tmp_path, "customer", CUSTOMER, 20)
    run = _callback_run(with_records(server_factory, tmp_path), tmp_path,
                        lambda port: uas_answer(customer_pcap, local_port=port, hangup_after_ms=8000, timeout_s=90,
                                                trace_dir=tmp_path / "customer"))
    assert run["second"].ok and run["agent"].ok and run["customer"].ok, f"{run['second']}\n{run['agent']}"
    server = run["server"]
    server.stop()
    asked, callback = callback_records(tmp_path)
    assert asked["queue"]["outcome"] == "callback_requested" and asked["hangup"]["by"] == "caller"
    assert 9.0 <= asked["queue"]["wait_seconds"] <= asked["duration_seconds"], asked["queue"]
    assert callback["callback_of"] == asked["call"]
    assert callback["queue"]["entry"] == asked["queue"]["entry"] and callback["queue"]["outcome"] == "taken"
    assert callback["queue"]["agent"] == "1002"
    assert (callback["from"], callback["to"]) == ("1002", "5550002")
    agent_leg, customer_leg = callback["legs"]
    assert (agent_leg["role"], agent_leg["via"]) == ("agent", {"kind": "extension", "ref": "1002"})
    assert (customer_leg["role"], customer_leg["remote"], customer_leg["via"]) == (
        "customer", "5550002", {"kind": "trunk", "ref": "trunk_main"})
    assert customer_leg["answered"] is not None and customer_leg["end_reason"] == "remote_hangup"
    customer_trace = trace_of(tmp_path / "customer")
    answered, _ = first(customer_trace, "sent", "SIP/2.0 200")
    bye, _ = first(customer_trace, "sent", "BYE ")
    assert abs(callback["talk_seconds"] - seconds(answered, bye)) < 1.0, callback["talk_seconds"]
    assert callback["hangup"] == {"by": "customer", "leg": customer_leg["id"], "reason": "remote_hangup",
                                  "sip_code": 200}
    kinds = [e["event"] for e in queue_events(tmp_path, asked["queue"]["entry"])]
    assert in_order(kinds, ["queued", "callback_requested", "callback_waiting", "dispatch_started", "taken",
                            "callback_dialing", "callback_answered"]), kinds
    no_errors(server)


def trace_of(trace_dir: Path):
    """A SIPp message trace by directory (for actors built inside a shared helper)."""
    from types import SimpleNamespace
    return trace(SimpleNamespace(trace_dir=trace_dir))


@pytest.mark.parametrize("outcome", ["no_answer", "reject"])
def test_callback_customer_not_answering_records_the_agent_and_the_failed_customer_leg(
        server_factory, tmp_path, outcome):
    flow = quick_callbacks(tmp_path, wait_customer={"dialTimeoutSeconds": 4})
    factory = ((lambda port: uas_no_answer(local_port=port, timeout_s=90)) if outcome == "no_answer"
               else (lambda port: uas_reject(486, ring_ms=500, local_port=port, timeout_s=90)))
    run = _callback_run(with_records(server_factory, tmp_path), tmp_path, factory, flow=flow)
    assert run["agent"].ok and run["customer"].ok, f"{run['agent']}\n{run['customer']}"
    server = run["server"]
    server.stop()
    asked, callback = callback_records(tmp_path)
    assert callback["callback_of"] == asked["call"] and callback["queue"]["outcome"] == "taken"
    agent_leg, customer_leg = callback["legs"]
    assert agent_leg["role"] == "agent" and agent_leg["answered"] is not None
    assert agent_leg["end_reason"] == "hangup"  # the flow hung up after "the customer is unavailable"
    assert customer_leg["role"] == "customer" and customer_leg["answered"] is None
    expected = ("customer_unavailable", 487) if outcome == "no_answer" else ("sip_486", 486)
    assert (customer_leg["end_reason"], customer_leg["sip_code"]) == expected
    assert callback["talk_seconds"] == 0.0
    assert callback["hangup"] == {"by": "softswitch", "leg": agent_leg["id"], "reason": "hangup", "sip_code": 200}
    events = queue_events(tmp_path, asked["queue"]["entry"])
    kinds = [e["event"] for e in events]
    assert in_order(kinds, ["callback_waiting", "dispatch_started", "taken", "callback_dialing",
                            "callback_not_answered"]), kinds
    assert events[-1]["leg"] == customer_leg["id"] and events[-1]["reason"] == expected[0]


# ---- the assistant: the caller talks to the AI leg, then hangs up --------------------------------------

def test_assistant_call_record_lists_the_ai_leg_on_its_websocket(server_factory, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "sk-test-key")
    with FakeProvider("openai") as fake:
        server = server_factory(flows=[str(ASSEMBLED)], records=record_files(tmp_path),
                                ai={"providers": {"openai_realtime": {"url": fake.url, "api_key_env": KEY_ENV}}},
                                logging={"level": "debug", "pjsip_level": 1})
        caller = uac_call(f"127.0.0.1:{server.sip_port}", pcap_of(tmp_path, "caller", CALLER, 12, [press("3", 1.0)]),
                          caller="5551234", hold_ms=10000, timeout_s=40, trace_dir=tmp_path / "caller")
        with caller:
            assert fake.wait_for(lambda m: m.get("type") == "session.update", 20) is not None, server.text()[-4000:]
            caller_result = caller.wait(40)
        wait_for(lambda: calls(tmp_path), 10, "the call record")
    server.stop()
    assert caller_result.ok, str(caller_result)
    (record,) = calls(tmp_path)
    caller_leg, ai_leg = record["legs"]
    assert caller_leg["role"] == "caller"
    assert (ai_leg["role"], ai_leg["transport"], ai_leg["direction"], ai_leg["remote"]) == (
        "ai", "websocket", "outbound", "websocket:openai_realtime")
    assert ai_leg["answered"] is not None and ai_leg["end_reason"] == "hangup"  # hung up when the caller left
    caller_trace = trace(caller)
    answered, _ = first(caller_trace, "received", "SIP/2.0 200")
    bye, _ = first(caller_trace, "sent", "BYE ")
    # Bridged to the AI once the caller's 3 (1 s in) was heard, until the caller hung up.
    assert abs(record["talk_seconds"] - (seconds(answered, bye) - 1.0)) < 1.0, record["talk_seconds"]
    assert record["queue"] is None and len(record["recordings"]) == 1
    assert record["hangup"] == {"by": "caller", "leg": caller_leg["id"], "reason": "remote_hangup", "sip_code": 200}
    no_errors(server)
