"""Media nodes on real calls: a SIPp caller with RTP from pcaps runs flows that record it, stop
recording on silence, barge in on a prompt by speaking, hear a ringback tone, receive DTMF
(RFC 2833 events and in-band tones) and hear a prompt as early media before any answer."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from softswitch.media.transcode import resample, to_int16
from tests.support.audio import band_energy_ratio, decode_dtmf, dominant_frequency, frame_rms, silence, tone
from tests.support.capture import LoopbackCapture
from tests.support.pcap import write_rtp_pcap
from tests.support.sipp import Sipp

pytestmark = pytest.mark.sipp

TRIGGER = """
name: media
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [%s]}
nodes:
"""
ANSWER = """
  - name: answer
    op: call.answer
    next: {Result: [%s]}
"""


def hangups(*names: str) -> str:
    return "".join(f"\n  - name: {n}\n    op: call.hangup\n" for n in names)


def flow(first: str, body: str) -> str:
    return TRIGGER % first + body


def start_server(server_factory, tmp_path: Path, text: str):
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    return server_factory(flows=[str(path)], logging={"level": "debug", "pjsip_level": 1})


def call(server, tmp_path: Path, audio: np.ndarray, *, dtmf=(), capture: bool = True, timeout: float = 40):
    """One call from the trunk that plays `audio` and waits for the flow's BYE; returns the
    SIPp result, the RTP stream the server sent to the caller (or None) and the elapsed time."""
    pcap = tmp_path / "caller.pcap"
    write_rtp_pcap(pcap, audio, dtmf=list(dtmf))
    uac = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=timeout,
               variables={"caller": "5551234", "bye_timeout_ms": int(timeout * 1000)}, keys={"pcap": pcap})
    started = time.monotonic()
    if not capture:
        with uac:
            return uac.wait(timeout + 10), None, time.monotonic() - started
    with LoopbackCapture(f"udp and dst port {uac.media_port}", tmp_path / "rtp.pcap") as cap:
        with uac:
            result = uac.wait(timeout + 10)
    elapsed = time.monotonic() - started
    streams = [s for s in cap.streams(dst_port=uac.media_port).values() if s.packets]
    stream = max(streams, key=lambda s: len(s.packets)) if streams else None
    return result, stream, elapsed


# --- recordAudio -----------------------------------------------------------------------------

RECORD_FLOW = flow("answer", ANSWER % "hold" + """
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 1.5}
    next: {Timeout: [record]}
  - name: record
    op: media.recordAudio
    params: {maxDurationSeconds: 3, recordOutputType: file, recordFilePath: calls/rec.wav}
    next: {Completed: [bye_done], Interrupted: [bye_interrupted]}
""" + hangups("bye_done", "bye_interrupted"))


def test_a_recording_holds_the_callers_tone_for_max_duration_plus_one_second_of_preroll(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, RECORD_FLOW)
    result, _, _ = call(server, tmp_path, tone(440, 10.0), capture=False)
    assert result.ok, str(result)
    assert server.wait_for_log("node bye_done"), server.text()[-3000:]
    wav = tmp_path / "recordings" / "calls" / "rec.wav"
    data, rate = sf.read(wav, dtype="int16")
    assert rate == 8000
    # 3 s recorded after the start, and the second before it (the caller talked for 1.5 s).
    assert abs(data.size / rate - 4.0) <= 0.1, data.size / rate
    assert dominant_frequency(data[rate:]) == pytest.approx(440, abs=3)
    assert dominant_frequency(data[int(0.2 * rate):rate]) == pytest.approx(440, abs=3)  # the pre-roll
    assert "durationMs" in server.text() and "'filePath'" in server.text()


SILENCE_FLOW = flow("answer", ANSWER % "record" + """
  - name: record
    op: media.recordAudio
    params:
      maxDurationSeconds: 10
      recordOutputType: file
      recordFilePath: quiet.wav
      interruptOn: [silence]
    next: {Interrupted: [bye_silence], Completed: [bye_done]}
""" + hangups("bye_silence", "bye_done"))


def test_a_recording_ends_on_silence_after_the_caller_stops(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, SILENCE_FLOW)
    result, _, elapsed = call(server, tmp_path, np.concatenate([tone(440, 1.0), silence(5.0)]), capture=False)
    assert result.ok, str(result)
    assert server.wait_for_log("node bye_silence"), server.text()[-3000:]
    assert "(media_silence)" in server.text()
    data, rate = sf.read(tmp_path / "recordings" / "quiet.wav", dtype="int16")
    # 1 s of tone, then 300 ms of silence (plus jitter-buffer delay): far less than 10 s.
    assert 1.1 <= data.size / rate <= 2.2, data.size / rate
    assert dominant_frequency(data[: int(0.9 * rate)]) == pytest.approx(440, abs=3)
    assert elapsed < 8


# --- voice barge-in ----------------------------------------------------------------------------

VOICE_FLOW = flow("answer", ANSWER % "prompt" + """
  - name: prompt
    op: media.playAudio
    params: {sourceType: file, filePath: menu.wav, interruptOn: [voice]}
    next: {Interrupted: [bye_voice], Completed: [bye_done]}
""" + hangups("bye_voice", "bye_done"))


@pytest.fixture(scope="module")
def speech_8k(tmp_path_factory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Hello, I would like to speak to somebody about my order."],
                   check=True, timeout=30)
    x, rate = sf.read(wav)
    return to_int16(resample(x, rate, 8000) * 0.9)


def test_a_blocking_prompt_is_interrupted_when_the_caller_speaks(server_factory, tmp_path, speech_8k):
    server = start_server(server_factory, tmp_path, VOICE_FLOW)
    audio = np.concatenate([silence(1.0), speech_8k, silence(2.0)])
    result, stream, _ = call(server, tmp_path, audio)
    assert result.ok, str(result)
    assert server.wait_for_log("node bye_voice"), server.text()[-3000:]
    assert "(media_voice)" in server.text()
    assert stream is not None
    # The 6.9 s prompt was heard for the second of silence, then cut ~150 ms into the speech.
    assert 1.1 <= stream.duration_seconds() <= 3.0, stream.duration_seconds()


# --- playTone -----------------------------------------------------------------------------------

TONE_FLOW = flow("answer", ANSWER % "ringback" + """
  - name: ringback
    op: media.playTone
    params: {tone: ringback}
    next: {Completed: [bye], Interrupted: [bye_interrupted]}
""" + hangups("bye", "bye_interrupted"))


def test_the_caller_hears_one_ringback_cycle_of_440_and_480_hz(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, TONE_FLOW)
    result, stream, _ = call(server, tmp_path, silence(9.0))
    assert result.ok, str(result)
    assert server.wait_for_log("node bye ")
    assert stream is not None
    audio = stream.audio()
    assert 5.6 <= stream.duration_seconds() <= 7.0, stream.duration_seconds()
    levels = frame_rms(audio)
    on = np.flatnonzero(levels > 0.05)
    start = on[0] * 160
    burst = audio[start + 800:start + 15200]  # inside the 2 s burst
    assert band_energy_ratio(burst, 8000, 440) > 0.35 and band_energy_ratio(burst, 8000, 480) > 0.35
    pause = audio[start + 17000:start + 47000]  # the 4 s pause
    assert np.all(frame_rms(pause) < 0.01)


# --- sendDtmf -------------------------------------------------------------------------------------

def dtmf_flow(method: str) -> str:
    return flow("answer", ANSWER % "send" + f"""
  - name: send
    op: media.sendDtmf
    params: {{dtmfDigits: "19#", options: {{dtmfMethod: {method}}}}}
    next: {{Result: [linger]}}
  - name: linger
    op: call.wait
    params: {{timeoutSeconds: 1}}
    next: {{Timeout: [bye]}}
""" + hangups("bye"))


@pytest.mark.parametrize("method", ["rfc2833", "auto"])
def test_send_dtmf_rfc2833_reaches_the_caller_as_events_a_digit_apart(server_factory, tmp_path, method):
    # auto picks RFC 2833 first: the caller offered telephone-event and the trunk allows it.
    server = start_server(server_factory, tmp_path, dtmf_flow(method))
    result, stream, _ = call(server, tmp_path, silence(6.0))
    assert result.ok, str(result)
    assert server.wait_for_log("node bye ")
    assert "sent DTMF 19# by rfc2833" in server.text()
    assert stream is not None and stream.dtmf_digits() == "19#"
    starts = [ts for _d, ts, _dur in stream.dtmf_events()]
    gaps = np.diff(np.array(starts, dtype=np.int64) % (1 << 32))
    assert np.all(np.abs(gaps - 2400) <= 480), gaps  # 200 ms digit + 100 ms gap, at 8 kHz


def test_send_dtmf_inband_is_heard_as_tones_the_caller_can_decode(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, dtmf_flow("inband"))
    result, stream, _ = call(server, tmp_path, silence(6.0))
    assert result.ok, str(result)
    assert server.wait_for_log("node bye ")
    assert "sent DTMF 19# by inband" in server.text()
    assert stream is not None and not stream.dtmf_digits()
    assert decode_dtmf(stream.audio()) == "19#"


# --- early media -----------------------------------------------------------------------------------

EARLY_FLOW = flow("greet", """
  - name: greet
    op: media.playAudio
    params: {sourceType: file, filePath: welcome.wav}
    next: {Completed: [refuse], Interrupted: [refuse]}
""" + hangups("refuse"))


def test_a_prompt_on_an_unanswered_call_is_early_media_before_any_answer(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, EARLY_FLOW)
    uac = Sipp("uac_early_media", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
               variables={"caller": "5551234"})
    sip_port = server.sip_port
    with LoopbackCapture(f"udp and (dst port {uac.media_port} or src port {sip_port})", tmp_path / "all.pcap") as cap:
        with uac:
            result = uac.wait(40)
    assert result.ok, str(result)
    assert result.log_values("early_media") == ["183"], str(result)
    assert result.log_values("final_status") == ["603"], str(result)
    packets = cap.packets()
    final = [p.ts for p in packets if p.src_port == sip_port and p.payload.startswith(b"SIP/2.0 603")]
    assert final and not any(p.payload.startswith(b"SIP/2.0 200") and b"INVITE" in p.payload for p in packets)
    stream = max(cap.streams(dst_port=uac.media_port).values(), key=lambda s: len(s.packets))
    assert 1.5 <= stream.duration_seconds() <= 2.6, stream.duration_seconds()  # the 1.9 s welcome
    assert max(p.arrival for p in stream.packets) <= final[0]
    assert frame_rms(stream.audio()).max() > 0.02


# --- sources and outputs: binary, HTTP ----------------------------------------------------------

ECHO_FLOW = flow("answer", ANSWER % "rec" + """
  - name: rec
    op: media.recordAudio
    params: {maxDurationSeconds: 1}
    next: {Completed: [play_back], Interrupted: [bye_interrupted]}
  - name: play_back
    op: media.playAudio
    params: {sourceType: binary, binaryProperty: data}
    next: {Completed: [bye], Interrupted: [bye_interrupted]}
""" + hangups("bye", "bye_interrupted"))


def test_a_binary_recording_plays_back_to_the_caller(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, ECHO_FLOW)
    result, stream, _ = call(server, tmp_path, np.concatenate([tone(440, 1.5), silence(8.0)]))
    assert result.ok, str(result)
    assert server.wait_for_log("node bye ")
    assert stream is not None
    audio = stream.audio()
    loud = np.flatnonzero(frame_rms(audio) > 0.05)
    assert loud.size * 0.02 >= 0.8, loud.size  # the recorded second came back
    assert dominant_frequency(audio[loud[0] * 160:(loud[0] + 40) * 160]) == pytest.approx(440, abs=3)


class _Web:
    """A local HTTP server: GET serves one WAV, PUT/POST bodies are kept (with their headers)."""

    def __init__(self, body: bytes) -> None:
        import http.server
        import threading

        web = self
        self.gets: list[dict] = []
        self.uploads: list[tuple[str, dict, bytes]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                web.gets.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _upload(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                web.uploads.append((self.command, dict(self.headers), data))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _upload

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_Web":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_a_prompt_fetched_over_http_is_heard_and_a_recording_is_uploaded(server_factory, tmp_path):
    import io

    prompt = io.BytesIO()
    t = np.arange(int(16000 * 1.5)) / 16000
    sf.write(prompt, np.stack([np.sin(2 * np.pi * 660 * t)] * 2, axis=1) * 0.3, 16000, format="WAV", subtype="PCM_16")
    with _Web(prompt.getvalue()) as web:
        base = f"http://127.0.0.1:{web.port}"
        text = flow("answer", ANSWER % "fetch" + f"""
  - name: fetch
    op: media.playAudio
    params:
      sourceType: http
      playbackHttpUrl: "{base}/prompt.wav"
      options: {{playbackHttpHeaders: [{{name: X-Test, value: "yes"}}]}}
    next: {{Completed: [upload], Interrupted: [bye_interrupted]}}
  - name: upload
    op: media.recordAudio
    params:
      maxDurationSeconds: 1
      recordFileFormat: mp3
      recordOutputType: http
      recordHttpUrl: "{base}/upload"
      options: {{recordHttpHeaders: [{{name: Authorization, value: Bearer t0k}}]}}
    next: {{Completed: [bye], Interrupted: [bye_interrupted]}}
""" + hangups("bye", "bye_interrupted"))
        server = start_server(server_factory, tmp_path, text)
        result, stream, _ = call(server, tmp_path, tone(440, 9.0))
        assert result.ok, str(result)
        assert server.wait_for_log("node bye ")
    assert web.gets and web.gets[0].get("X-Test") == "yes"
    assert stream is not None
    audio = stream.audio()
    loud = np.flatnonzero(frame_rms(audio) > 0.05)
    assert 1.2 <= loud.size * 0.02 <= 1.6  # the 1.5 s prompt
    assert dominant_frequency(audio[loud[0] * 160:(loud[0] + 50) * 160]) == pytest.approx(660, abs=3)
    assert len(web.uploads) == 1
    method, headers, body = web.uploads[0]
    assert method == "PUT" and headers.get("Authorization") == "Bearer t0k"
    assert headers.get("Content-Type") == "audio/mpeg"
    data, rate = sf.read(io.BytesIO(body))
    assert rate == 16000 and 1.7 <= data.size / rate <= 2.3  # 1 s + the 1 s pre-roll
    assert dominant_frequency(data[rate // 4:], rate) == pytest.approx(440, abs=3)


# --- ducking ----------------------------------------------------------------------------------

DUCK_FLOW = flow("answer", ANSWER % "music" + """
  - name: music
    op: media.playTone
    params: {tone: custom, customTone: "440/1000", repeatInfinite: true, options: {mediaExecutionMode: background}}
    next: {Result: [before]}
  - name: before
    op: call.wait
    params: {timeoutSeconds: 1.5}
    next: {Timeout: [announce]}
  - name: announce
    op: media.playTone
    params: {tone: custom, customTone: "1000/1500", options: {duckingFactor: 0.25}}
    next: {Completed: [after], Interrupted: [after]}
  - name: after
    op: call.wait
    params: {timeoutSeconds: 1.5}
    next: {Timeout: [bye]}
""" + hangups("bye"))


def _amplitudes(x: np.ndarray, freq: float, rate: int = 8000, window: int = 1600) -> np.ndarray:
    """Amplitude (relative to full scale) of one frequency in consecutive 200 ms windows."""
    out = []
    for i in range(0, x.size - window + 1, window):
        block = x[i:i + window].astype(np.float64) / 32768
        spectrum = np.abs(np.fft.rfft(block * np.hanning(window))) * 4 / window
        freqs = np.fft.rfftfreq(window, 1 / rate)
        out.append(spectrum[np.abs(freqs - freq) <= 10].max())
    return np.array(out)


def test_a_ducking_prompt_lowers_the_music_under_it_then_lets_it_back(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, DUCK_FLOW)
    result, stream, _ = call(server, tmp_path, silence(9.0))
    assert result.ok, str(result)
    assert server.wait_for_log("node bye ")
    assert stream is not None
    music = _amplitudes(stream.audio(), 440)
    announce = _amplitudes(stream.audio(), 1000)
    on = np.flatnonzero(announce > 0.1)
    assert 6 <= on.size <= 9, announce  # the 1.5 s announcement, in 200 ms windows
    before, during, after = music[:on[0] - 1], music[on[0] + 1:on[-1]], music[on[-1] + 2:]
    assert before.size >= 4 and during.size >= 4 and after.size >= 2
    # Medians: the music loops every second with a short fade that dips one window.
    assert np.median(before) == pytest.approx(0.3, abs=0.03)
    assert np.median(during) / np.median(before) == pytest.approx(0.25, abs=0.05)
    assert np.median(after) / np.median(before) == pytest.approx(1.0, abs=0.1)


# --- one recording per leg; DTMF ends a background recording a media.wait watches -------------

BACKGROUND_RECORD_FLOW = flow("answer", ANSWER % "rec_bg" + """
  - name: rec_bg
    op: media.recordAudio
    params:
      maxDurationSeconds: 10
      recordOutputType: file
      recordFilePath: bg.wav
      interruptOn: [dtmf]
      options: {mediaExecutionMode: background}
    next: {Result: [rec_again, watch]}
  - name: rec_again
    op: media.recordAudio
    params: {maxDurationSeconds: 2}
    next: {Completed: [bye_wrong], Interrupted: [bye_wrong]}
  - name: watch
    op: media.wait
    params: {waitMediaTimeoutSeconds: 8}
    next: {Interrupted: [bye_dtmf], Completed: [bye_wrong], Timeout: [bye_wrong]}
""" + hangups("bye_dtmf", "bye_wrong"))


def test_a_second_recording_on_a_leg_is_refused_and_dtmf_ends_the_first(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path, BACKGROUND_RECORD_FLOW)
    result, _, _ = call(server, tmp_path, tone(440, 6.0), dtmf=[("5", 2.0, 160)], capture=False)
    assert result.ok, str(result)
    assert server.wait_for_log("node bye_dtmf"), server.text()[-3000:]
    text = server.text()
    assert "recording_already_active" in text and "node bye_wrong" not in text
    assert "(call_dtmf)" in text
    data, rate = sf.read(tmp_path / "recordings" / "bg.wav", dtype="int16")
    assert 1.8 <= data.size / rate <= 2.6, data.size / rate  # from the answer to the digit at 2 s


# --- ducking the bridged peer (in-process endpoint, bridged by the test) ------------------------

PEER_DUCK_FLOW = """
name: peer_duck
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [hold]}
  - name: hold
    op: call.wait
    params: {timeoutSeconds: 20, options: {interruptReasons: [call_bridge_joined]}}
    next: {Interrupted: [announce], Timeout: [bye]}
  - name: announce
    op: media.playTone
    params: {tone: custom, customTone: "1500/1500", options: {duckingFactor: 0.25}}
    next: {Completed: [linger], Interrupted: [linger]}
  - name: linger
    op: call.wait
    params: {timeoutSeconds: 2}
    next: {Timeout: [bye]}
  - name: bye
    op: call.hangup
"""


def test_a_ducking_prompt_on_a_bridged_leg_lowers_the_peers_voice(ua, tmp_path):
    from softswitch.flow.loader import load_flow_text
    from softswitch.flow.runtime import FlowEngine
    from tests.support.waiting import wait_for

    engine = ua.run_sync(lambda: FlowEngine(ua, [load_flow_text(PEER_DUCK_FLOW, "peer_duck.yaml")]))
    ua.run_sync(lambda: setattr(ua, "handler", engine))
    port = ua.config.sip.udp_port
    try:
        pcaps = {}
        for freq in (440, 1000):
            pcaps[freq] = tmp_path / f"tone{freq}.pcap"
            write_rtp_pcap(pcaps[freq], tone(freq, 10.0))
        a = Sipp("uac_call_until_bye", f"127.0.0.1:{port}", calls=1, timeout_s=30,
                 variables={"caller": "5550440", "bye_timeout_ms": 20000}, keys={"pcap": pcaps[440]})
        b = Sipp("uac_call_until_bye", f"127.0.0.1:{port}", calls=1, timeout_s=30,
                 variables={"caller": "5551000", "bye_timeout_ms": 20000}, keys={"pcap": pcaps[1000]})
        with LoopbackCapture(f"udp and dst port {a.media_port}", tmp_path / "rtp.pcap") as cap:
            with a:
                wait_for(lambda: len(ua.run_sync(lambda: list(engine.legs))) == 1, 5, "caller A")
                with b:
                    wait_for(lambda: len(ua.run_sync(lambda: list(engine.legs))) == 2, 5, "caller B")
                    time.sleep(0.5)
                    leg_a, leg_b = ua.run_sync(lambda: sorted(engine.legs.values(), key=lambda l: l.leg.id))
                    ua.run_sync(lambda: engine.bridges.bridge(leg_a, leg_b))
                    result_b = b.wait(30)
                result_a = a.wait(30)
        assert result_a.ok, str(result_a)
        assert result_b.ok, str(result_b)
        to_a = max(cap.streams(dst_port=a.media_port).values(), key=lambda s: len(s.packets)).audio()
        peer = _amplitudes(to_a, 1000)
        announce = _amplitudes(to_a, 1500)
        on = np.flatnonzero(announce > 0.1)
        assert 6 <= on.size <= 9, announce
        during, after = peer[on[0] + 1:on[-1]], peer[on[-1] + 2:on[-1] + 9]
        assert np.median(after) > 0.2, peer  # B's 1 kHz at full level once the prompt ended
        assert np.median(during) / np.median(after) == pytest.approx(0.25, abs=0.06), peer
    finally:
        ua.run_sync(lambda: setattr(ua, "handler", None))
        ua.run_sync(engine.shutdown)
