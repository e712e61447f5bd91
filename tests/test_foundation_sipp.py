"""The foundation on real SIP: SIPp calls to a real softswitch process (and to the in-process
endpoint for frame injection), with the RTP softswitch sends captured on loopback and checked."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.support.audio import active_seconds, dominant_frequency, tone
from tests.support.capture import LoopbackCapture
from tests.support.pcap import write_rtp_pcap
from tests.support.sipp import Sipp

pytestmark = pytest.mark.sipp

REPO = Path(__file__).resolve().parents[1]
WELCOME_SECONDS = sf.info(REPO / "prompts" / "welcome.wav").duration


def caller_pcap(tmp_path: Path, seconds: float, freq: float = 440.0) -> Path:
    path = tmp_path / f"caller_{int(freq)}.pcap"
    write_rtp_pcap(path, tone(freq, seconds))
    return path


def test_default_server_answers_plays_welcome_and_hangs_up(server_factory, tmp_path: Path):
    server = server_factory()
    pcap = caller_pcap(tmp_path, 1.0)
    uac = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=1,
               variables={"caller": "5551234", "bye_timeout_ms": 15000}, keys={"pcap": pcap}, timeout_s=30)
    with LoopbackCapture(f"udp and dst port {uac.media_port}", tmp_path / "rtp.pcap") as cap:
        with uac:
            result = uac.wait(30)
    assert result.ok, str(result)
    streams = cap.streams(dst_port=uac.media_port)
    assert len(streams) == 1, f"expected one RTP stream from softswitch, got {list(streams)}"
    stream = next(iter(streams.values()))
    # RTP for the prompt's duration, carrying the prompt (speech, not silence).
    assert abs(stream.duration_seconds() - WELCOME_SECONDS) < 0.5, stream.duration_seconds()
    audio = stream.audio()
    assert active_seconds(audio, 8000, threshold=0.01) > 0.5 * WELCOME_SECONDS
    prompt, _ = sf.read(REPO / "prompts" / "welcome.wav", dtype="int16")
    # Same loudness envelope as the file: correlate 20 ms frame energies.
    frames = lambda x: np.sqrt(np.mean(x[: len(x) // 160 * 160].astype(float).reshape(-1, 160) ** 2, axis=1))
    a, b = frames(audio), frames(prompt)
    n = min(len(a), len(b))
    best = max(np.corrcoef(a[k:k + n - 10], b[: n - 10])[0, 1] for k in range(0, 10))
    assert best > 0.9, f"received audio does not follow the welcome prompt (r={best:.2f})"
    server.stop()
    assert server.proc.returncode == 0
    assert "Traceback" not in server.text()


def test_64_concurrent_calls_are_all_answered(server_factory, tmp_path: Path):
    # A long welcome prompt keeps every call up until the caller hangs up.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    sf.write(prompts / "welcome.wav", tone(300, 20.0, amplitude=0.1), 8000, subtype="PCM_16")
    server = server_factory(directories={"prompts": str(prompts)})
    pcap = caller_pcap(tmp_path, 4.0)
    uac = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=64, limit=64, rate=200,
               variables={"caller": "5550000", "hold_ms": 5000}, keys={"pcap": pcap}, timeout_s=60)
    with uac:
        result = uac.wait(60)
    assert result.ok, str(result)
    assert result.successful == 64 and result.failed == 0
    # All 64 were up at the same time (the PyPI wheel would have answered the 5th 486).
    assert "(64 live legs)" in server.text()
    assert "Busy Here" not in server.text()


def test_sigterm_during_20_live_calls_exits_cleanly(server_factory, tmp_path: Path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    sf.write(prompts / "welcome.wav", tone(300, 30.0, amplitude=0.1), 8000, subtype="PCM_16")
    server = server_factory(directories={"prompts": str(prompts)}, extra_args=["--record"])
    pcap = caller_pcap(tmp_path, 20.0)
    uac = Sipp("uac_call_until_bye", f"127.0.0.1:{server.sip_port}", calls=20, limit=20, rate=100,
               variables={"caller": "5550001", "bye_timeout_ms": 30000}, keys={"pcap": pcap}, timeout_s=60)
    with uac:
        recordings = Path(server.config.parent / "recordings")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(list(recordings.glob("*.wav"))) < 20:
            time.sleep(0.1)
        assert len(list(recordings.glob("*.wav"))) == 20, "20 calls did not come up"
        time.sleep(1.0)  # let every recording hold some audio
        started = time.monotonic()
        code = server.stop(timeout=20)
        stop_seconds = time.monotonic() - started
        result = uac.wait(30)
    assert code == 0, server.text()[-3000:]
    assert "Traceback" not in server.text()
    assert stop_seconds < 10
    # Every caller got a BYE from softswitch (the scenario fails without one).
    assert result.successful == 20, str(result)
    # Recordings were finalized: valid WAV files holding the caller's tone.
    for wav in recordings.glob("*.wav"):
        audio, rate = sf.read(wav, dtype="int16")
        assert rate == 8000 and len(audio) >= 8000 * 0.5, wav
        assert abs(dominant_frequency(audio[len(audio) // 2:], rate) - 440) < 5


def test_frames_injected_into_a_frame_port_reach_the_sipp_peer_as_rtp(ua, tmp_path: Path):
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort
    from softswitch.sip.events import LegEnded, LegMediaActive

    injected = tone(440, 3.0)
    calls: list = []

    class InjectTone:
        """Answers and feeds a 440 Hz tone into the call through a FramePort, then hangs up."""

        def on_incoming_leg(self, leg):
            state: dict = {}

            def on_event(event):
                if isinstance(event, LegMediaActive) and "port" not in state:
                    port = state["port"] = FramePort(ua, "inject", capacity_frames=256)
                    bridge.connect(port.slot, event.slot)
                    port.write(injected)
                    state["hangup"] = ua.timers.schedule(3.5, lambda: leg.hangup(200, "test_done"))
                elif isinstance(event, LegEnded) and "port" in state:
                    state["port"].stop()

            leg.subscribe(on_event)
            leg.answer()
            calls.append(leg)

    ua.run_sync(lambda: setattr(ua, "handler", InjectTone()))
    try:
        sip_port = ua.config.sip.udp_port
        silent = tmp_path / "silence.pcap"
        write_rtp_pcap(silent, np.zeros(8000, dtype=np.int16))
        uac = Sipp("uac_call_until_bye", f"127.0.0.1:{sip_port}", calls=1,
                   variables={"caller": "5552000", "bye_timeout_ms": 10000}, keys={"pcap": silent}, timeout_s=20)
        with LoopbackCapture(f"udp and dst port {uac.media_port}", tmp_path / "inject.pcap") as cap:
            with uac:
                result = uac.wait(20)
        assert result.ok, str(result)
        streams = cap.streams(dst_port=uac.media_port)
        assert len(streams) == 1
        audio = next(iter(streams.values())).audio()
        loud = audio[np.abs(audio) > 1000]
        assert len(loud) > 8000 * 2.5 * 0.5, "the injected tone did not reach the peer"
        start = int(np.argmax(np.abs(audio) > 1000))
        assert abs(dominant_frequency(audio[start:start + 8000 * 2], 8000) - 440) < 3
        assert active_seconds(audio, 8000, threshold=0.05) == pytest.approx(3.0, abs=0.3)
    finally:
        ua.run_sync(lambda: setattr(ua, "handler", None))
