"""The assembled demo with real phones (liblinphone): an agent registers over TCP (another over
UDP), the trunk caller dials the demo, presses 1 on the menu with RFC 2833 from the phone's own
keypad, and is bridged to the agent; each hears the other (decoded from a loopback capture), the
split-stereo recording holds both, and the call record says the queue was taken."""

from __future__ import annotations

import json
import time

import pytest
import soundfile as sf

from tests.support import softphone
from tests.support.interop import (AGENT_HZ, CALLER_HZ, demo_server, dominant, heard_between, mostly, phones,
                                   rtp_capture, tone_wav)

pytestmark = [pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.skipif(not softphone.available(), reason="linphone-daemon not installed")]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_phone_registers_and_takes_a_queue_call_from_the_demo(tmp_path, transport):
    with demo_server(tmp_path) as server, \
            phones(tmp_path, {"name": "caller", "user": "5551234"},
                   {"name": "agent", "auto_answer": True, "transport": transport}) as (caller, agent):
        agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{server.sip_port}"), 10)
        cap = rtp_capture(tmp_path, caller, agent)
        with cap:
            call = caller.call(f"sip:100@127.0.0.1:{server.sip_port}")
            caller.wait_event("LinphoneCallStreamsRunning", call, 15)
            caller.keep_playing(tone_wav(tmp_path / "caller.wav", CALLER_HZ), call)
            time.sleep(1.5)
            caller.dtmf("1")
            agent_call = agent.wait_event("LinphoneCallIncomingReceived", timeout=30).call_id
            agent.wait_event("LinphoneCallStreamsRunning", agent_call, 15)
            agent.keep_playing(tone_wav(tmp_path / "agent.wav", AGENT_HZ), agent_call)
            time.sleep(1.5)
            t0 = time.time()
            time.sleep(3.0)
            t1 = time.time()
            caller.terminate(call)
            agent.wait_event("LinphoneCallEnd", agent_call, 10)
        # The queue's INVITE reached the agent over the transport it registered with.
        invites = [line for line in agent.log_tail(10**7).splitlines() if line.startswith("INVITE sip:1001@")]
        assert invites and all(f";transport={transport} SIP/2.0" in line for line in invites), invites
        assert mostly(heard_between(cap, caller, t0, t1), AGENT_HZ), "the caller did not hear the agent"
        assert mostly(heard_between(cap, agent, t0, t1), CALLER_HZ), "the agent did not hear the caller"

        audio, rate = sf.read(sorted((tmp_path / "recordings").glob("*.wav"))[0], dtype="int16")
        tail = audio[-4 * rate:-rate]
        assert abs(dominant(tail[:, 0]) - CALLER_HZ) < 15 and abs(dominant(tail[:, 1]) - AGENT_HZ) < 15

        deadline = time.monotonic() + 10
        records = []
        while time.monotonic() < deadline and not records:
            path = tmp_path / "calls.jsonl"
            records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
            time.sleep(0.2)
        assert records, "no call record"
        record = records[0]
        assert json.dumps(record).count("taken") >= 1, record
