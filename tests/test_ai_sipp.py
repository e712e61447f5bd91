"""AI voice legs end to end: a SIPp caller sending 440 Hz, a softswitch server, and a local fake
provider (tests/support/fake_ai.py) that speaks OpenAI Realtime, Gemini Live or a generic echo
protocol. The provider's audio is a 700 Hz tone, so whatever reaches the caller's RTP with 700 Hz
came from the AI leg."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.support.actors import uac_call, uac_until_bye
from tests.support.audio import dominant_frequency, tone, ulaw_decode
from tests.support.callcentre import agent, heard, no_errors, ran, received
from tests.support.capture import LoopbackCapture
from tests.support.fake_ai import FakeProvider
from tests.support.pcap import write_rtp_pcap
from tests.support.server import REPO
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

FLOWS = REPO / "flows"
STEP_2 = FLOWS / "part-1-step-2-trunk-to-queue-with-ai-offline.yaml"
ASSEMBLED = FLOWS / "part-3-step-4-routing-queue-ai-recording-tools-callback.yaml"
CALLER, AGENT, AI = 440, 1000, 700
KEY_ENV = "SOFTSWITCH_TEST_AI_KEY"


# ---- helpers ------------------------------------------------------------------------------------
def caller_pcap(tmp_path: Path, seconds: float, digits=()) -> Path:
    path = tmp_path / "caller-input.pcap"
    write_rtp_pcap(path, tone(CALLER, seconds), dtmf=[(d, at, 200) for d, at in digits])
    return path


def start(server_factory, monkeypatch, flow: Path, **providers: str):
    """A server running `flow`, with `providers` (profile → ws URL) and a test API key."""
    monkeypatch.setenv(KEY_ENV, "sk-test-key")
    ai = {"providers": {name: {"url": url, "api_key_env": KEY_ENV} for name, url in providers.items()}}
    return server_factory(flows=[str(flow)], ai=ai, logging={"level": "debug", "pjsip_level": 1})


def write_flow(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def packets_to(cap: LoopbackCapture, port: int) -> list:
    streams = [s for s in cap.streams().values() if s.dst[1] == port]
    return sorted((p for s in streams for p in s.audio_packets()), key=lambda p: p.arrival)


def ai_packets(packets: list) -> list:
    """Packets whose 20 ms carry mostly the AI's 700 Hz."""
    freqs = np.fft.rfftfreq(160, 1 / 8000)
    band = (freqs >= 600) & (freqs <= 800)
    out = []
    for p in packets:
        x = ulaw_decode(p.payload).astype(np.float64)
        if x.size != 160 or np.sqrt(np.mean(x * x)) < 300:
            continue
        spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
        if spec[band].sum() > 0.6 * spec.sum():
            out.append(p)
    return out


def wait_input_audio(fake: FakeProvider, samples: int, timeout: float = 20) -> np.ndarray:
    wait_for(lambda: len(fake.input_audio()) >= samples, timeout, f"{samples} samples of caller audio at the provider")
    return fake.input_audio()


# ---- part 1 step 2: offline → AI (immediate) -------------------------------------------------------
def test_step2_offline_caller_is_handed_to_openai_which_hears_440hz_at_24khz_and_is_heard(
        server_factory, monkeypatch, tmp_path):
    with FakeProvider("openai") as fake:
        server = start(server_factory, monkeypatch, STEP_2, openai_realtime=fake.url)
        caller = uac_call(f"127.0.0.1:{server.sip_port}", caller_pcap(tmp_path, 14, [("1", 1.0)]),
                          caller="5551234", hold_ms=12000, timeout_s=40)
        with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "to-caller.pcap") as cap:
            with caller:
                assert fake.wait_for(lambda m: m.get("type") == "session.update", 20), server.text()[-4000:]
                up = wait_input_audio(fake, 24000)
                fake.send_audio(tone(AI, 2.0, rate=24000))
                result = caller.wait(40)
    assert result.ok, str(result)
    session = fake.of_type("session.update")[0]["session"]
    assert session["audio"]["input"]["format"]["rate"] == 24000
    assert "no agent is available" in session["instructions"]
    assert fake.request_headers["authorization"] == "Bearer sk-test-key"
    appended = fake.of_type("input_audio_buffer.append")
    assert appended and appended[0]["_t"] >= fake.of_type("session.update")[0]["_t"]
    assert abs(dominant_frequency(up[-24000:], 24000) - CALLER) < 5, "the provider did not get the caller's 440 Hz"
    got = ai_packets(packets_to(cap, caller.media_port))
    assert len(got) >= 50, f"only {len(got)} packets of AI audio reached the caller"  # ≥ 1 s of the 2 s
    assert ran(server, "dial_ai") == 1 and ran(server, "bridge_ai") == 1
    # (The AI leg outlives the caller here: answered outbound legs stay up until they end (§1.5),
    # and this flow does not hang it up when the caller leaves.)
    no_errors(server)


def test_step2_speech_started_drops_ai_audio_not_yet_played_at_once(server_factory, monkeypatch, tmp_path):
    with FakeProvider("openai") as fake:
        server = start(server_factory, monkeypatch, STEP_2, openai_realtime=fake.url)
        caller = uac_call(f"127.0.0.1:{server.sip_port}", caller_pcap(tmp_path, 16, [("1", 1.0)]),
                          caller="5551234", hold_ms=14000, timeout_s=40)
        with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "to-caller.pcap") as cap:
            with caller:
                wait_input_audio(fake, 24000)
                fake.send_audio(tone(AI, 8.0, rate=24000))  # 8 s of speech, sent in well under a second
                time.sleep(2.0)
                barge_in = fake.speech_started()
                result = caller.wait(40)
    assert result.ok, str(result)
    got = ai_packets(packets_to(cap, caller.media_port))
    before = [p for p in got if p.arrival < barge_in]
    after = [p for p in got if p.arrival >= barge_in]
    assert len(before) >= 50, f"only {len(before)} packets of AI audio before the barge-in"
    # At most the port's queue (80 ms) and a loop turn may still play after the barge-in.
    assert len(after) <= 10, f"{len(after)} packets (20 ms each) of AI audio after speech_started"
    no_errors(server)


# ---- the assembled demo: assistant with tools, transfer to the queue, recording -----------------------
def test_assembled_assistant_answers_lookup_order_then_transfer_puts_the_caller_in_queue_support(
        server_factory, monkeypatch, tmp_path):
    with FakeProvider("openai") as fake:
        server = start(server_factory, monkeypatch, ASSEMBLED, openai_realtime=fake.url)
        phone = agent(server, tmp_path, timeout_s=90)
        caller = uac_call(f"127.0.0.1:{server.sip_port}", caller_pcap(tmp_path, 24, [("3", 1.0)]),
                          caller="5551234", hold_ms=22000, timeout_s=60)
        with phone, LoopbackCapture(f"udp and dst port {phone.media_port}", tmp_path / "to-agent.pcap") as cap:
            with caller:
                update = fake.wait_for(lambda m: m.get("type") == "session.update", 20)
                assert update is not None, server.text()[-4000:]
                wait_input_audio(fake, 24000)
                fake.send_audio(tone(AI, 2.0, rate=24000))
                time.sleep(2.5)
                asked = time.time()
                fake.call_tool("lookup_order", {"orderId": "42"}, "call_lookup")
                output = fake.wait_for(lambda m: m.get("type") == "conversation.item.create"
                                       and m["item"]["call_id"] == "call_lookup", 10)
                assert output is not None, server.text()[-4000:]
                fake.call_tool("transfer_to_agent", {}, "call_transfer")
                wait_for(fake.closed.is_set, 10, "the AI leg to end after transfer_to_agent")
                caller_result = caller.wait(60)
            phone_result = phone.wait(30)
    assert caller_result.ok, str(caller_result)
    assert phone_result.ok, str(phone_result)
    tools = {t["name"]: t for t in update["session"]["tools"]}
    assert set(tools) == {"lookup_order", "transfer_to_agent"}
    assert tools["lookup_order"]["parameters"]["required"] == ["orderId"]
    assert "delivery status" in tools["lookup_order"]["description"]
    # The tool's result reached the provider as function_call_output, well within the 5 s timeout.
    assert output["item"] == {"type": "function_call_output", "call_id": "call_lookup",
                              "output": "Order 42 has shipped and arrives tomorrow."}
    assert output["_t"] - asked < 5.0
    assert fake.messages(lambda m: m.get("type") == "response.create" and m["_t"] >= output["_t"])
    # transfer_to_agent: acknowledged, the AI leg hung up, the caller queued and bridged to the agent.
    acks = [m for m in fake.of_type("conversation.item.create") if m["item"]["call_id"] == "call_transfer"]
    assert acks and acks[0]["item"]["output"] == "Transferring you to an agent now."
    assert ran(server, "hangup_ai") == 1 and ran(server, "put_transferred") == 1
    assert ran(server, "bridge_agent") == 1
    assert re.search(r"node attach_agent \(ai\.attachVoiceAgent\)", server.text())
    assert heard(received(cap, phone.media_port), CALLER), "the agent never heard the caller"
    # The call's recording: split stereo, the caller on channel 1, the AI (then the agent) on channel 2.
    server.stop()
    wavs = sorted((tmp_path / "recordings").glob("leg_*.wav"))
    assert len(wavs) == 1, wavs
    audio, rate = sf.read(wavs[0], dtype="int16")
    assert rate == 8000 and audio.ndim == 2 and audio.shape[1] == 2
    assert heard(audio[:, 0], CALLER), "channel 1 does not carry the caller"
    assert heard(audio[:, 1], AI), "channel 2 does not carry the AI's audio"
    assert heard(audio[:, 1], AGENT), "channel 2 does not carry the agent after the transfer"
    no_errors(server)


# ---- Gemini Live with a tool; generic echo ---------------------------------------------------------
def gemini_flow(tmp_path: Path) -> Path:
    return write_flow(tmp_path, {
        "name": "ai-gemini-tool",
        "triggers": [
            {"name": "trunk_main", "trigger": "trunk", "params": {"ref": "trunk_main"}, "next": {"Call": "answer"}},
            {"name": "tool_weather", "trigger": "aiTool", "params": {"ref": "weather"},
             "next": {"Request": "answer_weather"}},
        ],
        "nodes": [
            {"name": "answer", "op": "call.answer", "next": {"Result": "dial_ai"}},
            {"name": "dial_ai", "op": "dial.make",
             "params": {"callMode": "websocket", "transportProfile": "gemini_live", "websocketStartMode": "deferred",
                        "options": {"geminiLiveInstructions": "You tell the weather."}},
             "next": {"Result": "bridge_ai"}},
            {"name": "bridge_ai", "op": "call.bridge",
             "params": {"legAId": "{{ $('answer').item.json.legId }}", "legBId": "{{ $json.legId }}"},
             "next": {"Success": "attach"}},
            {"name": "attach", "op": "ai.attachVoiceAgent",
             "params": {"options": {"legId": "{{ $('dial_ai').item.json.legId }}"}},
             "tools": ["get weather"], "next": {"Result": "hangup_caller"}},
            {"name": "get weather", "op": "ai.invokeAiTool",
             "params": {"ref": "weather", "aiToolDescription": "The weather in a city.",
                        "aiToolParams": [{"name": "city", "type": "string", "description": "City", "required": True}],
                        "aiFlowParams": [{"name": "caller", "value": "{{ $('answer').item.json.legId }}"}]}},
            {"name": "answer_weather", "op": "respond.toAiTool",
             "params": {"outputText": '{"city": "{{ $json.toolParams.city }}", "caller": "{{ $json.flowParams.caller }}",'
                                      ' "peer": "{{ $json.peerLegId }}", "forecast": "sunny"}'}},
            {"name": "hangup_caller", "op": "call.hangup",
             "params": {"options": {"legId": "{{ $('answer').item.json.legId }}"}}},
        ],
    })


def test_gemini_live_session_with_a_tool_answered_by_the_flow_then_provider_close_ends_the_call(
        server_factory, monkeypatch, tmp_path):
    with FakeProvider("gemini") as fake:
        server = start(server_factory, monkeypatch, gemini_flow(tmp_path), gemini_live=fake.url)
        caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", caller_pcap(tmp_path, 20), caller="5551234",
                               bye_timeout_ms=30000, timeout_s=60)
        with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "to-caller.pcap") as cap:
            with caller:
                setup = fake.wait_for(lambda m: "setup" in m, 20)
                assert setup is not None, server.text()[-4000:]
                up = wait_input_audio(fake, 16000)
                fake.send_audio(tone(AI, 1.5, rate=24000))
                fake.turn_complete()
                time.sleep(2.0)
                fake.call_tool("get_weather", {"city": "Paris"}, "fc_weather")
                reply = fake.wait_for(lambda m: "toolResponse" in m, 10)
                assert reply is not None, server.text()[-4000:]
                fake.close()  # the provider ends the session: the AI leg ends, the flow hangs up the caller
                result = caller.wait(60)
    assert result.ok, str(result)  # the caller got our BYE
    decl = setup["setup"]["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather"  # the node name, space replaced
    assert decl["parameters"] == {"type": "object", "properties": {"city": {"type": "string", "description": "City"}},
                                  "required": ["city"]}
    assert setup["setup"]["systemInstruction"]["parts"][0]["text"] == "You tell the weather."
    assert fake.request_headers["x-goog-api-key"] == "sk-test-key"
    chunk = fake.messages(lambda m: "realtimeInput" in m)[0]["realtimeInput"]["audio"]
    assert chunk["mimeType"] == "audio/pcm;rate=16000"
    assert abs(dominant_frequency(up[-16000:], 16000) - CALLER) < 5
    response = reply["toolResponse"]["functionResponses"][0]
    assert response["id"] == "fc_weather" and response["response"]["city"] == "Paris"
    caller_leg = response["response"]["caller"]
    assert caller_leg.startswith("leg_") and response["response"]["peer"] == caller_leg
    assert len(ai_packets(packets_to(cap, caller.media_port))) >= 50
    assert re.search(r"AI leg ended: ai_provider_closed", server.text())
    assert ran(server, "hangup_caller") == 1
    no_errors(server)


def test_generic_websocket_echo_returns_the_callers_own_audio(server_factory, monkeypatch, tmp_path):
    with FakeProvider("echo") as fake:
        flow = write_flow(tmp_path, {
            "name": "ai-generic-echo",
            "triggers": [{"name": "trunk_main", "trigger": "trunk", "params": {"ref": "trunk_main"},
                          "next": {"Call": "answer"}}],
            "nodes": [
                {"name": "answer", "op": "call.answer", "next": {"Result": "dial_echo"}},
                {"name": "dial_echo", "op": "dial.make",
                 "params": {"callMode": "websocket", "transportProfile": "generic", "websocketUrl": fake.url,
                            "options": {"websocketInitialMessagesJson": '[{"type": "hello", "who": "softswitch"}]',
                                        "websocketHeadersJson": '{"X-Tenant": "shop"}'}},
                 "next": {"Result": "bridge_echo"}},
                {"name": "bridge_echo", "op": "call.bridge",
                 "params": {"legAId": "{{ $('answer').item.json.legId }}", "legBId": "{{ $json.legId }}"},
                 "next": {"Success": "hold"}},
                # An answered AI leg stays up until it ends (§1.5): hang it up with the caller.
                {"name": "hold", "op": "call.wait",
                 "params": {"timeoutSeconds": 3600,
                            "legIds": ["{{ $('answer').item.json.legId }}", "{{ $('dial_echo').item.json.legId }}"],
                            "options": {"interruptReasons": ["call_bridge_removed_peer_ended"]}},
                 "next": {"Interrupted": "hangup_survivor", "Ended": "hangup_survivor_of_end"}},
                {"name": "hangup_survivor", "op": "call.hangup"},
                {"name": "hangup_survivor_of_end", "op": "call.hangup",
                 "params": {"options": {"legId": "{{ $('dial_echo').item.json.legId }}"}}},
            ],
        })
        server = start(server_factory, monkeypatch, flow)
        caller = uac_call(f"127.0.0.1:{server.sip_port}", caller_pcap(tmp_path, 8), caller="5551234",
                          hold_ms=6000, timeout_s=30)
        with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "to-caller.pcap") as cap:
            with caller:
                result = caller.wait(30)
        assert result.ok, str(result)
        wait_for(fake.closed.is_set, 10, "the echo session to close after the caller hung up")
    hello = fake.messages(lambda m: m.get("type") == "hello")
    assert hello and hello[0]["who"] == "softswitch" and fake.request_headers["x-tenant"] == "shop"
    assert abs(dominant_frequency(fake.input_audio()[-48000:], 48000) - CALLER) < 5  # 48 kHz up
    assert heard(received(cap, caller.media_port), CALLER), "the caller did not hear its own audio echoed"
    # Caller audio leaves as it arrives, 20 ms (960 samples at 48 kHz) per message, not in bursts.
    sizes = sorted(len(base64.b64decode(m["audio"])) // 2 for m in fake.of_type("input_audio"))
    assert sizes[len(sizes) // 2] <= 2 * 960, f"median chunk {sizes[len(sizes) // 2]} samples"
    no_errors(server)


# ---- a provider that stops answering ----------------------------------------------------------------
def test_a_provider_that_stops_answering_ends_the_ai_leg_while_the_callers_audio_clock_keeps_running(
        server_factory, monkeypatch, tmp_path):
    with FakeProvider("openai") as fake:
        flow = write_flow(tmp_path, {
            "name": "ai-hung-provider",
            "triggers": [{"name": "trunk_main", "trigger": "trunk", "params": {"ref": "trunk_main"},
                          "next": {"Call": "answer"}}],
            "nodes": [
                {"name": "answer", "op": "call.answer", "next": {"Result": "dial_ai"}},
                {"name": "dial_ai", "op": "dial.make",
                 "params": {"callMode": "websocket", "transportProfile": "openai_realtime"},
                 "next": {"Result": "bridge_ai"}},
                {"name": "bridge_ai", "op": "call.bridge",
                 "params": {"legAId": "{{ $('answer').item.json.legId }}", "legBId": "{{ $json.legId }}"},
                 "next": {"Success": "attach"}},
                {"name": "attach", "op": "ai.attachVoiceAgent",
                 "params": {"options": {"legId": "{{ $('dial_ai').item.json.legId }}"}},
                 "next": {"Result": "play_goodbye"}},
                {"name": "play_goodbye", "op": "media.playAudio",
                 "params": {"sourceType": "file", "filePath": "goodbye.wav",
                            "options": {"legId": "{{ $('answer').item.json.legId }}"}},
                 "next": {"Completed": "hangup", "Interrupted": "hangup"}},
                {"name": "hangup", "op": "call.hangup",
                 "params": {"options": {"legId": "{{ $('answer').item.json.legId }}"}}},
            ],
        })
        server = start(server_factory, monkeypatch, flow, openai_realtime=fake.url)
        caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", caller_pcap(tmp_path, 40), caller="5551234",
                               bye_timeout_ms=40000, timeout_s=60)
        with LoopbackCapture(f"udp and dst port {caller.media_port}", tmp_path / "to-caller.pcap") as cap:
            with caller:
                wait_input_audio(fake, 24000)
                fake.send_audio(tone(AI, 1.0, rate=24000))
                time.sleep(1.5)
                fake.hang()
                hung = time.time()
                wait_for(lambda: "AI leg ended" in server.text(), 25, "the AI leg to end")
                ended = time.time()
                result = caller.wait(60)
    assert result.ok, str(result)  # the flow went on: goodbye, then our BYE
    assert re.search(r"AI leg ended: ai_provider_timeout", server.text()), server.text()[-3000:]
    assert ended - hung < 15, f"the AI leg ended {ended - hung:.1f} s after the provider stopped answering"
    assert ran(server, "play_goodbye") == 1 and ran(server, "hangup") == 1
    # While the provider was silent, the caller's RTP kept its 20 ms clock (50 packets a second).
    arrivals = np.array([p.arrival for p in packets_to(cap, caller.media_port)])
    for start_s in np.arange(hung, ended - 1.0, 1.0):
        count = int(np.sum((arrivals >= start_s) & (arrivals < start_s + 1.0)))
        assert count >= 45, f"{count} packets in the second from {start_s - hung:.0f} s after the hang"
    no_errors(server)


# ---- speech started counts as voice for the caller's playbacks (§5.2) ----------------------------------
def test_provider_speech_started_interrupts_a_voice_interruptible_playback_on_the_bridged_caller(
        server_factory, monkeypatch, tmp_path):
    with FakeProvider("openai") as fake:
        flow = write_flow(tmp_path, {
            "name": "ai-speech-started",
            "triggers": [{"name": "trunk_main", "trigger": "trunk", "params": {"ref": "trunk_main"},
                          "next": {"Call": "answer"}}],
            "nodes": [
                {"name": "answer", "op": "call.answer", "next": {"Result": "dial_ai"}},
                {"name": "dial_ai", "op": "dial.make",
                 "params": {"callMode": "websocket", "transportProfile": "openai_realtime"},
                 "next": {"Result": "bridge_ai"}},
                {"name": "bridge_ai", "op": "call.bridge",
                 "params": {"legAId": "{{ $('answer').item.json.legId }}", "legBId": "{{ $json.legId }}"},
                 "next": {"Success": "music"}},
                # A silent caller cannot stop this by its own voice: only the provider's speech_started can.
                {"name": "music", "op": "media.playAudio",
                 "params": {"sourceType": "file", "filePath": "hold_music.wav", "interruptOn": ["voice"],
                            "options": {"legId": "{{ $('answer').item.json.legId }}"}},
                 "next": {"Interrupted": "hangup", "Completed": "hangup"}},
                {"name": "hangup", "op": "call.hangup",
                 "params": {"options": {"legId": "{{ $('answer').item.json.legId }}"}}},
            ],
        })
        server = start(server_factory, monkeypatch, flow, openai_realtime=fake.url)
        silent = tmp_path / "caller-silent.pcap"
        write_rtp_pcap(silent, np.zeros(8000 * 30, dtype=np.int16))
        caller = uac_until_bye(f"127.0.0.1:{server.sip_port}", silent, caller="5551234", bye_timeout_ms=30000,
                               timeout_s=45)
        with caller:
            wait_input_audio(fake, 24000)
            time.sleep(1.0)
            assert "media_voice" not in server.text()
            fake.speech_started()
            wait_for(lambda: "interrupted (media_voice)" in server.text(), 10, "the playback to end by voice")
            result = caller.wait(45)
    assert result.ok, str(result)
    assert ran(server, "hangup") == 1
    no_errors(server)
