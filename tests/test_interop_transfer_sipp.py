"""Transfer by an agent phone (REFER) on real phones (liblinphone), through the assembled demo.

The trunk caller (440 Hz) presses 1 and is bridged to agent 1001 (1000 Hz). The agent transfers:
blind to extension 1003 (1500 Hz): the caller then hears 1003 and 1003 hears the caller, the
agent's call ends after its NOTIFY 200, the caller's split-stereo recording goes on with 1003,
and the call record lists the transfer. Refused and failed transfers (a REFER from a leg that is
not bridged, a REFER to a number nobody handles) change nothing: the call stays bridged, audio
both ways. Attended: the agent consults 1003 with a second call and joins the caller to it
(REFER with Replaces, linphone's `call-transfer <id1> <id2>`). What each phone hears is decoded
from a loopback capture of its RTP.
"""

from __future__ import annotations

import json
import time

import pytest
import soundfile as sf

from tests.support import softphone
from tests.support.capture import LoopbackCapture
from tests.support.server import REPO, ServerProcess, write_test_config
from tests.support.interop import (AGENT_HZ, CALLER_HZ, demo_server, dominant, heard_between, mostly, phones,
                                   rtp_capture, tone_wav)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.skipif(not softphone.available(), reason="linphone-daemon not installed")]

TARGET_HZ = 1500  # what the transfer target's phone (extension 1003) sends
PROVIDER_HZ = 1800  # what the phone behind the trunk's provider connection sends
FLOW = REPO / "tests" / "fixtures" / "transfer" / "flow.yaml"  # outside fixtures/flows, the fuzzer's seeded set


def _bridge_caller_to_agent(server, caller, agent, tmp_path, *, before_1=None):
    """The caller dials the demo, presses 1 and is bridged to agent 1001; both send their tone."""
    agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{server.sip_port}"), 10)
    call = caller.call(f"sip:100@127.0.0.1:{server.sip_port}")
    caller.wait_event("LinphoneCallStreamsRunning", call, 15)
    caller.keep_playing(tone_wav(tmp_path / "caller.wav", CALLER_HZ), call)
    if before_1 is not None:
        before_1(call)
    time.sleep(1.0)
    caller.dtmf("1")
    agent_call = agent.wait_event("LinphoneCallIncomingReceived", timeout=30).call_id
    agent.wait_event("LinphoneCallStreamsRunning", agent_call, 15)
    agent.keep_playing(tone_wav(tmp_path / "agent.wav", AGENT_HZ), agent_call)
    return call, agent_call


def _records(tmp_path):
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_blind_transfer_to_an_extension_moves_the_caller_with_its_recording_and_record(tmp_path):
    with demo_server(tmp_path) as server, \
            phones(tmp_path, {"name": "caller", "user": "5551234"}, {"name": "agent", "auto_answer": True},
                   {"name": "target", "auto_answer": True}) as (caller, agent, target):
        target.wait_registered(target.register("1003", "pass1003", f"127.0.0.1:{server.sip_port}"), 10)
        cap = rtp_capture(tmp_path, caller, agent, target)
        with cap:
            call, agent_call = _bridge_caller_to_agent(server, caller, agent, tmp_path)
            time.sleep(2.0)
            t_bridged = time.time()
            time.sleep(1.5)
            t_refer = time.time()
            agent.transfer(agent_call, f"sip:1003@127.0.0.1:{server.sip_port}")
            target_call = target.wait_event("LinphoneCallStreamsRunning", timeout=15).call_id
            target.keep_playing(tone_wav(tmp_path / "target.wav", TARGET_HZ), target_call)
            agent.wait_event("LinphoneCallEnd", agent_call, 10)  # liblinphone ends it on NOTIFY 200
            time.sleep(1.5)
            t_moved = time.time()
            time.sleep(2.5)
            t_end = time.time()
            caller.terminate(call)
            target.wait_event("LinphoneCallEnd", target_call, 10)  # the target goes with the caller

        assert mostly(heard_between(cap, caller, t_bridged, t_refer), AGENT_HZ), "caller did not hear the agent"
        assert mostly(heard_between(cap, caller, t_moved, t_end), TARGET_HZ), "caller does not hear the target"
        assert mostly(heard_between(cap, target, t_moved, t_end), CALLER_HZ), "the target does not hear the caller"

        # One recording for the caller: channel 2 (what it heard) has the agent, then the target.
        recordings = sorted((tmp_path / "recordings").glob("*.wav"))
        assert len(recordings) == 1, recordings
        audio, rate = sf.read(recordings[0], dtype="int16")
        heard = [dominant(audio[i * rate:(i + 1) * rate, 1]) for i in range(len(audio) // rate)]
        agent_s = [i for i, f in enumerate(heard) if abs(f - AGENT_HZ) < 15]
        target_s = [i for i, f in enumerate(heard) if abs(f - TARGET_HZ) < 15]
        assert len(agent_s) >= 2 and len(target_s) >= 2 and max(agent_s) < min(target_s), heard
        said = [dominant(audio[i * rate:(i + 1) * rate, 0]) for i in target_s]  # channel 1: the caller, still
        assert sum(abs(f - CALLER_HZ) < 15 for f in said) >= len(said) - 1, said

        wait_for(lambda: any(r.get("transfers") for r in _records(tmp_path)), 10, "no call record with a transfer")
        record = next(r for r in _records(tmp_path) if r.get("transfers"))
        (transfer,) = record["transfers"]
        assert transfer["kind"] == "blind" and transfer["result"] == "transferred" and transfer["to"] == "1003"
        assert transfer["by_extension"] == "1001" and transfer["route"] == "extension" and transfer["sip_code"] == 200
        roles = {leg["id"]: leg for leg in record["legs"]}
        assert transfer["target_leg"] in roles and transfer["by_leg"] in roles  # all three legs in one call
        assert roles[transfer["by_leg"]]["end_reason"] == "transferred"
        assert [p.rsplit("/", 1)[-1] for p in record["recordings"]] == [recordings[0].name]


def _sip_and_rtp_capture(tmp_path, server, *phones_):
    """RTP to the phones and every SIP message to or from softswitch, on one capture."""
    ranges = " or ".join(f"udp dst portrange {p.rtp_port}-{p.rtp_port + 19}" for p in phones_)
    return LoopbackCapture(f"({ranges}) or udp port {server.sip_port}", tmp_path / "sip-rtp.pcap")


def _sip_from_server(cap, server):
    return [p.payload.decode("utf-8", "replace") for p in cap.packets() if p.src[1] == server.sip_port]


def _cseq_method(message):
    for line in message.split("\r\n"):
        if line.lower().startswith("cseq:"):
            return line.split()[-1]
    return ""


def test_a_refused_and_a_failed_transfer_leave_the_call_as_it_was(tmp_path):
    with demo_server(tmp_path) as server, \
            phones(tmp_path, {"name": "caller", "user": "5551234"}, {"name": "agent", "auto_answer": True},
                   {"name": "target", "auto_answer": True}) as (caller, agent, target):
        target.wait_registered(target.register("1003", "pass1003", f"127.0.0.1:{server.sip_port}"), 10)
        cap = _sip_and_rtp_capture(tmp_path, server, caller, agent, target)
        with cap:
            # In the menu the caller is bridged to nobody: its REFER is refused (403), the call goes on.
            call, agent_call = _bridge_caller_to_agent(
                server, caller, agent, tmp_path,
                before_1=lambda c: caller.transfer(c, f"sip:1003@127.0.0.1:{server.sip_port}"))
            time.sleep(2.0)
            # Bridged, the agent transfers to a number no extension, flow or trunk takes: NOTIFY 404.
            agent.transfer(agent_call, f"sip:999@127.0.0.1:{server.sip_port}")
            wait_for(lambda: any(m.startswith("NOTIFY ") and "SIP/2.0 404" in m for m in _sip_from_server(cap, server)),
                     10, "a NOTIFY with a 404 sipfrag")
            if agent.call_status(agent_call) == "LinphoneCallPaused":
                agent.resume(agent_call)  # a phone that held the caller for the transfer takes it back
            time.sleep(2.0)
            t0 = time.time()
            time.sleep(2.5)
            t1 = time.time()
            assert caller.call_status(call) == "LinphoneCallStreamsRunning"
            # The agent tries again, to 1003: this one works.
            agent.transfer(agent_call, f"sip:1003@127.0.0.1:{server.sip_port}")
            target_call = target.wait_event("LinphoneCallStreamsRunning", timeout=15).call_id
            target.keep_playing(tone_wav(tmp_path / "target.wav", TARGET_HZ), target_call)
            agent.wait_event("LinphoneCallEnd", agent_call, 10)
            time.sleep(1.5)
            t2 = time.time()
            time.sleep(2.0)
            t3 = time.time()
            caller.terminate(call)
            target.wait_event("LinphoneCallEnd", target_call, 10)

        sent = _sip_from_server(cap, server)
        refer_answers = [m.split("\r\n", 1)[0] for m in sent if m.startswith("SIP/2.0") and _cseq_method(m) == "REFER"]
        assert refer_answers == ["SIP/2.0 403 Forbidden", "SIP/2.0 202 Accepted", "SIP/2.0 202 Accepted"], refer_answers
        notifies = [m for m in sent if m.startswith("NOTIFY ")]
        bodies = [m.split("\r\n\r\n", 1)[1].strip().split("\r\n")[0] for m in notifies]
        final = [b for b, m in zip(bodies, notifies) if "Subscription-State: terminated" in m]
        assert bodies[0] == "SIP/2.0 100 Trying" and final == ["SIP/2.0 404 Not Found", "SIP/2.0 200 OK"], bodies
        # The call as it was: bridged, audio both ways.
        assert mostly(heard_between(cap, caller, t0, t1), AGENT_HZ), "after the failed transfer: caller hears no agent"
        assert mostly(heard_between(cap, agent, t0, t1), CALLER_HZ), "after the failed transfer: agent hears no caller"
        assert mostly(heard_between(cap, caller, t2, t3), TARGET_HZ), "after the second transfer: no target"
        wait_for(lambda: len(_records(tmp_path)) == 1, 10, "the call record")
        (record,) = _records(tmp_path)
        assert [(t["result"], t["sip_code"], t["to"]) for t in record["transfers"]] == [
            ("failed", 404, "999"), ("transferred", 200, "1003")]


def _flow_server(tmp_path, caller, provider=None):
    """softswitch with the transfer test flow: trunk callers ring agent 1001 straight away; an
    agent's own calls (and transfers to numbers) run the extensions trigger (777 rings 1003).
    The trunk is the caller phone's address and port (every phone is on 127.0.0.1), and dials
    out to the provider phone when there is one."""
    trunk = {"address": "127.0.0.1", "port": caller.sip_port}
    sections = {"flows": [str(FLOW)], "records": {"call_records": str(tmp_path / "calls.jsonl"), "queue_events": None},
                "trunks": {"trunk_main": trunk}}
    if provider is not None:
        sections["connections"] = {"provider": {"sip_server": "127.0.0.1", "port": provider.sip_port}}
        trunk["connection"] = "provider"
    return ServerProcess(write_test_config(tmp_path, **sections)).start()


def _caller_to_agent(server, caller, agent, tmp_path):
    mark = agent.mark()
    call = caller.call(f"sip:100@127.0.0.1:{server.sip_port}")
    caller.wait_event("LinphoneCallStreamsRunning", call, 15)
    caller.keep_playing(tone_wav(tmp_path / "caller.wav", CALLER_HZ), call)
    agent_call = agent.wait_event("LinphoneCallStreamsRunning", timeout=15, since=mark).call_id
    agent.keep_playing(tone_wav(tmp_path / "agent.wav", AGENT_HZ), agent_call)
    return call, agent_call


def test_attended_transfer_joins_the_caller_to_the_consulted_extension(tmp_path):
    with phones(tmp_path, {"name": "caller", "user": "5551234"}, {"name": "agent", "auto_answer": True},
                {"name": "target", "auto_answer": True}) as (caller, agent, target):
        server = _flow_server(tmp_path, caller)
        try:
            agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{server.sip_port}"), 10)
            target.wait_registered(target.register("1003", "pass1003", f"127.0.0.1:{server.sip_port}"), 10)
            cap = rtp_capture(tmp_path, caller, agent, target)
            with cap:
                call, agent_call = _caller_to_agent(server, caller, agent, tmp_path)
                time.sleep(1.0)
                # The agent consults 1003 with a second call (liblinphone holds the first one).
                mark = agent.mark()
                consult = agent.call(f"sip:1003@127.0.0.1:{server.sip_port}")
                target_call = target.wait_event("LinphoneCallStreamsRunning", timeout=15).call_id
                target.keep_playing(tone_wav(tmp_path / "target.wav", TARGET_HZ), target_call)
                agent.wait_event("LinphoneCallStreamsRunning", consult, 15, since=mark)
                time.sleep(1.0)
                agent.transfer(agent_call, consult)  # REFER on call 1, Replaces naming call 2
                agent.wait_event("LinphoneCallEnd", agent_call, 10)
                agent.wait_event("LinphoneCallEnd", consult, 10)
                time.sleep(1.5)
                t0 = time.time()
                time.sleep(2.5)
                t1 = time.time()
                assert target.call_status(target_call) == "LinphoneCallStreamsRunning"  # no new INVITE
                target.terminate(target_call)
                caller.wait_event("LinphoneCallEnd", call, 10)  # the caller goes with the target

            assert mostly(heard_between(cap, caller, t0, t1), TARGET_HZ), "the caller does not hear the target"
            assert mostly(heard_between(cap, target, t0, t1), CALLER_HZ), "the target does not hear the caller"
            wait_for(lambda: any(r.get("transfers") for r in _records(tmp_path)), 10, "a record with the transfer")
            record = next(r for r in _records(tmp_path) if r.get("transfers"))
            (transfer,) = record["transfers"]
            assert (transfer["kind"], transfer["result"], transfer["route"]) == ("attended", "transferred", "replaces")
            assert transfer["target_leg"] in {leg["id"] for leg in record["legs"]}  # moved into the caller's call
        finally:
            server.stop()
            (tmp_path / "server.log").write_text("".join(server.output))


def test_blind_transfer_to_a_number_the_agents_flow_handles(tmp_path):
    with phones(tmp_path, {"name": "caller", "user": "5551234"}, {"name": "agent", "auto_answer": True},
                {"name": "target", "auto_answer": True}) as (caller, agent, target):
        server = _flow_server(tmp_path, caller)
        try:
            agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{server.sip_port}"), 10)
            target.wait_registered(target.register("1003", "pass1003", f"127.0.0.1:{server.sip_port}"), 10)
            cap = rtp_capture(tmp_path, caller, target)
            with cap:
                # 777 is no extension: the agents' extensions trigger takes it (and rings 1003).
                call, agent_call = _caller_to_agent(server, caller, agent, tmp_path)
                time.sleep(1.0)
                agent.transfer(agent_call, f"sip:777@127.0.0.1:{server.sip_port}")
                target_call = target.wait_event("LinphoneCallStreamsRunning", timeout=15).call_id
                target.keep_playing(tone_wav(tmp_path / "target.wav", TARGET_HZ), target_call)
                agent.wait_event("LinphoneCallEnd", agent_call, 10)
                time.sleep(1.5)
                t0 = time.time()
                time.sleep(2.0)
                t1 = time.time()
                caller.terminate(call)
                target.wait_event("LinphoneCallEnd", target_call, 10)

            assert mostly(heard_between(cap, caller, t0, t1), TARGET_HZ), "caller does not hear 1003"
            assert mostly(heard_between(cap, target, t0, t1), CALLER_HZ), "1003 does not hear the caller"
            wait_for(lambda: any(r.get("transfers") for r in _records(tmp_path)), 10, "a record with the transfer")
            transfers = [t for r in _records(tmp_path) for t in r.get("transfers", ())]
            assert [(t["route"], t["to"], t["result"]) for t in transfers] == [("flow", "777", "transferred")]
        finally:
            server.stop()
            (tmp_path / "server.log").write_text("".join(server.output))


def test_blind_transfer_to_an_outside_number_goes_through_the_callers_trunk(tmp_path):
    """The demo (no flow takes the agents' own calls): a number that is no extension is dialled
    through the trunk the caller came in on, here to a phone standing in for the provider. The
    agent hangs up right after its REFER."""
    with phones(tmp_path, {"name": "caller", "user": "5551234"}, {"name": "agent", "auto_answer": True},
                {"name": "provider", "auto_answer": True}) as (caller, agent, provider):
        config = write_test_config(
            tmp_path, flows=[str(REPO / "flows" / "full-demo.yaml")],
            records={"call_records": str(tmp_path / "calls.jsonl"), "queue_events": None},
            connections={"provider": {"sip_server": "127.0.0.1", "port": provider.sip_port}},
            trunks={"trunk_main": {"address": "127.0.0.1", "port": caller.sip_port, "connection": "provider"}})
        server = ServerProcess(config).start()
        try:
            cap = rtp_capture(tmp_path, caller, provider)
            with cap:
                call, agent_call = _bridge_caller_to_agent(server, caller, agent, tmp_path)
                time.sleep(1.0)
                # Like many desk phones, the agent hangs up as soon as it has sent the REFER: the
                # caller must not go with it, and the transfer goes on.
                agent.transfer(agent_call, f"sip:0301234567@127.0.0.1:{server.sip_port}")
                agent.terminate(agent_call)
                provider_call = provider.wait_event("LinphoneCallStreamsRunning", timeout=15).call_id
                provider.keep_playing(tone_wav(tmp_path / "provider.wav", PROVIDER_HZ), provider_call)
                time.sleep(1.5)
                t0 = time.time()
                time.sleep(2.0)
                t1 = time.time()
                provider.terminate(provider_call)
                caller.wait_event("LinphoneCallEnd", call, 10)  # the caller goes with the far end

            assert mostly(heard_between(cap, caller, t0, t1), PROVIDER_HZ), "caller does not hear the far end"
            assert mostly(heard_between(cap, provider, t0, t1), CALLER_HZ), "the far end does not hear the caller"
            wait_for(lambda: any(r.get("transfers") for r in _records(tmp_path)), 10, "a record with the transfer")
            record = next(r for r in _records(tmp_path) if r.get("transfers"))
            (transfer,) = record["transfers"]
            assert (transfer["route"], transfer["to"], transfer["result"]) == ("trunk", "0301234567", "transferred")
            far = next(leg for leg in record["legs"] if leg["id"] == transfer["target_leg"])
            assert far["via"] == {"kind": "trunk", "ref": "trunk_main"}
        finally:
            server.stop()
            (tmp_path / "server.log").write_text("".join(server.output))
