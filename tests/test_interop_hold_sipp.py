"""Hold and resume on real phones (liblinphone), through the assembled demo.

The trunk caller (440 Hz) presses 1 and is bridged to agent 1001 (1000 Hz). Each side in turn
puts the call on hold (a re-INVITE with a=sendonly) and resumes it (a=sendrecv). Before the fix,
pjsua rebuilt the stream at each media update with the same bridge slot and nothing re-made the
connections: from then on both parties heard digital silence. liblinphone's answer with several
codecs also makes pjsua send its codec-lock UPDATE right after the answer, which silenced the
agent from the first second. What each phone hears is decoded from a loopback capture of its
RTP; the split-stereo call recording is checked too.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from tests.support import softphone
from tests.support.interop import (AGENT_HZ, CALLER_HZ, HOLD_HZ, demo_server, heard_between, mostly, phones,
                                   rtp_capture, tone_wav)

pytestmark = [pytest.mark.sipp, pytest.mark.interop,
              pytest.mark.skipif(not softphone.available(), reason="linphone-daemon not installed")]


def _connect(server, caller, agent, tmp_path):
    """The caller dials the demo, presses 1 and is bridged to the agent; both send their tone."""
    agent.wait_registered(agent.register("1001", "pass1001", f"127.0.0.1:{server.sip_port}"), 10)
    call = caller.call(f"sip:100@127.0.0.1:{server.sip_port}")
    caller.wait_event("LinphoneCallStreamsRunning", call, 15)
    caller.keep_playing(tone_wav(tmp_path / "caller.wav", CALLER_HZ), call)
    time.sleep(1.0)
    caller.dtmf("1")
    agent_call = agent.wait_event("LinphoneCallIncomingReceived", timeout=30).call_id
    agent.wait_event("LinphoneCallStreamsRunning", agent_call, 15)
    agent.keep_playing(tone_wav(tmp_path / "agent.wav", AGENT_HZ), agent_call)
    return call, agent_call


def _window(cap, phone, t0, t1):
    return heard_between(cap, phone, t0, t1)


def test_hold_and_resume_by_the_agent_and_by_the_caller_keep_the_bridge(tmp_path):
    with demo_server(tmp_path) as server, \
            phones(tmp_path, {"name": "caller", "user": "5551234"}, {"name": "agent", "auto_answer": True}) as (caller, agent):
        cap = rtp_capture(tmp_path, caller, agent)
        with cap:
            call, agent_call = _connect(server, caller, agent, tmp_path)
            time.sleep(3.0)
            t_bridged = time.time()
            time.sleep(2.0)

            mark = agent.mark()
            agent.pause(agent_call)  # the agent holds: the caller is the held party
            agent.wait_event("LinphoneCallPaused", agent_call, 10, since=mark)
            time.sleep(0.5)
            t_agent_hold = time.time()
            time.sleep(2.5)
            t_agent_hold_end = time.time()
            mark = agent.mark()
            agent.resume(agent_call)
            agent.wait_event("LinphoneCallStreamsRunning", agent_call, 10, since=mark)
            time.sleep(1.0)
            t_agent_resumed = time.time()
            time.sleep(2.5)
            t_agent_resumed_end = time.time()

            mark = caller.mark()
            caller.pause(call)  # now the caller holds: the agent is the held party
            caller.wait_event("LinphoneCallPaused", call, 10, since=mark)
            time.sleep(0.5)
            t_caller_hold = time.time()
            time.sleep(2.5)
            t_caller_hold_end = time.time()
            mark = caller.mark()
            caller.resume(call)
            caller.wait_event("LinphoneCallStreamsRunning", call, 10, since=mark)
            time.sleep(1.0)
            t_caller_resumed = time.time()
            time.sleep(2.5)
            t_end = time.time()
            caller.terminate(call)
            time.sleep(1.0)

        # Bridged, before any hold: each hears the other.
        assert mostly(_window(cap, caller, t_bridged, t_agent_hold - 1), AGENT_HZ), "caller did not hear the agent"
        assert mostly(_window(cap, agent, t_bridged, t_agent_hold - 1), CALLER_HZ), "agent did not hear the caller"
        # The agent holds: the caller hears hold music, not the agent.
        assert mostly(_window(cap, caller, t_agent_hold, t_agent_hold_end), HOLD_HZ), "no hold music for the caller"
        # Resumed: audio both ways again.
        assert mostly(_window(cap, caller, t_agent_resumed, t_agent_resumed_end), AGENT_HZ), \
            "after the agent resumed, the caller hears no agent"
        assert mostly(_window(cap, agent, t_agent_resumed, t_agent_resumed_end), CALLER_HZ), \
            "after the agent resumed, the agent hears no caller"
        # The caller holds: the agent hears hold music.
        assert mostly(_window(cap, agent, t_caller_hold, t_caller_hold_end), HOLD_HZ), "no hold music for the agent"
        # And both ways once more after the caller resumed.
        assert mostly(_window(cap, caller, t_caller_resumed, t_end), AGENT_HZ), "after the caller resumed: no agent"
        assert mostly(_window(cap, agent, t_caller_resumed, t_end), CALLER_HZ), "after the caller resumed: no caller"

        # The caller's split-stereo recording: channel 1 the caller, channel 2 what the caller heard,
        # agent, then hold music, then agent again; aligned (the same length on both channels).
        recordings = sorted((tmp_path / "recordings").glob("*.wav"))
        assert recordings, "no call recording"
        audio, rate = sf.read(recordings[0], dtype="int16")
        assert audio.ndim == 2 and rate == 8000
        heard = audio[:, 1]
        seconds = len(heard) / rate
        assert seconds > 15, seconds
        from tests.support.interop import dominant
        per_second = [dominant(heard[i * rate:(i + 1) * rate]) for i in range(int(seconds))]
        # Find the run structure: agent ... hold ... agent.
        hold_seconds = [i for i, f in enumerate(per_second) if abs(f - HOLD_HZ) < 15]
        agent_seconds = [i for i, f in enumerate(per_second) if abs(f - AGENT_HZ) < 15]
        assert len(hold_seconds) >= 2, per_second
        assert any(i < hold_seconds[0] for i in agent_seconds) and any(i > hold_seconds[-1] for i in agent_seconds), \
            per_second
        caller_channel = audio[:, 0]
        loud = [dominant(caller_channel[i * rate:(i + 1) * rate]) for i in range(int(seconds))]
        assert np.mean([abs(f - CALLER_HZ) < 15 for f in loud[2:-2]]) > 0.6, loud


PAYLOAD_TYPES = {"PCMA": 8, "G722": 9}


def _payload_types_to(cap, phone, t0, t1):
    types = set()
    for packet in cap.packets():
        if phone.rtp_port <= packet.dst[1] < phone.rtp_port + 20 and t0 <= packet.ts <= t1 and len(packet.payload) > 12:
            types.add(packet.payload[1] & 0x7F)
    return types


def test_a_codec_change_mid_bridge_keeps_audio_and_recording(tmp_path):
    """The agent's phone renegotiates PCMU -> PCMA, then -> G.722, with re-INVITEs (resume after
    changing its codec list): the bridge and the call recording carry on with each codec."""
    with demo_server(tmp_path) as server, \
            phones(tmp_path, {"name": "caller", "user": "5551234"},
                   {"name": "agent", "auto_answer": True,
                    "settings": {"audio_codec_6": {"mime": "G722", "rate": "8000", "channels": "1",
                                                   "enabled": "1"}}}) as (caller, agent):
        cap = rtp_capture(tmp_path, caller, agent)
        with cap:
            call, agent_call = _connect(server, caller, agent, tmp_path)
            time.sleep(3.0)
            marks = {}
            for codec in ("PCMA", "G722"):
                agent.ok("audio-codec-disable ALL")
                agent.ok(f"audio-codec-enable {PAYLOAD_TYPES[codec]}")
                mark = agent.mark()
                agent.pause(agent_call)
                agent.wait_event("LinphoneCallPaused", agent_call, 10, since=mark)
                mark = agent.mark()
                agent.resume(agent_call)  # the resume re-INVITE offers only `codec`
                agent.wait_event("LinphoneCallStreamsRunning", agent_call, 10, since=mark)
                time.sleep(1.0)
                t0 = time.time()
                time.sleep(3.0)
                marks[codec] = (t0, time.time())
            caller.terminate(call)
            time.sleep(1.0)

        t0, t1 = marks["PCMA"]
        assert _payload_types_to(cap, agent, t0, t1) == {8}, _payload_types_to(cap, agent, t0, t1)
        assert mostly(heard_between(cap, agent, t0, t1), CALLER_HZ), "agent hears no caller over PCMA"
        assert mostly(heard_between(cap, caller, t0, t1), AGENT_HZ), "caller hears no agent after PCMA"
        t0, t1 = marks["G722"]
        assert _payload_types_to(cap, agent, t0, t1) == {9}, _payload_types_to(cap, agent, t0, t1)
        assert mostly(heard_between(cap, caller, t0, t1), AGENT_HZ), "caller hears no agent after G.722"
        # The recording heard the agent under each codec (G.722 is decoded by softswitch).
        audio, rate = sf.read(sorted((tmp_path / "recordings").glob("*.wav"))[0], dtype="int16")
        from tests.support.interop import dominant
        heard = [dominant(audio[i * rate:(i + 1) * rate, 1]) for i in range(len(audio) // rate)]
        assert sum(abs(f - AGENT_HZ) < 15 for f in heard[-5:]) >= 3, heard
