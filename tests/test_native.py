"""The native build: pjproject's limits, and the FramePort moving audio between the bridge and
Python on an in-process endpoint."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.support.audio import dominant_frequency, tone

pytestmark = pytest.mark.native


def pump_until(ua, predicate, timeout: float = 5.0) -> bool:
    """Wait (bounded) until `predicate()` run on the UA thread is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ua.run_sync(predicate):
            return True
        time.sleep(0.02)
    return False


def test_pjsua2_imports_from_our_build_with_server_limits():
    import pjsua2
    import _softswitch_native as native

    limits = native.limits()
    assert limits["max_calls"] >= 1024
    assert limits["max_players"] >= 1024 and limits["max_recorders"] >= 1024
    assert limits["max_conf_ports"] >= 4096
    assert limits["ioqueue_max_handles"] >= 4096
    assert limits["max_tsx"] >= 64 * 1024 - 1
    # The module pytest imported is ours, not a wheel from PyPI.
    assert ".venv" in pjsua2.__file__ or "site-packages" in pjsua2.__file__


def test_one_copy_of_pjproject_is_shared_by_pjsua2_and_the_native_module(ua):
    import _softswitch_native as native

    # Both see the same running pjsua instance: the bridge size pjsua2 reports is the one our
    # module reads through its own linkage.
    assert ua.run_sync(lambda: ua.ep.mediaMaxPorts()) == native.conf_max_ports()
    assert native.conf_max_ports() >= 4096


def test_512_players_and_512_recorders_exist_at_once(ua, tmp_path: Path):
    from softswitch.media.players import PromptPlayer
    from softswitch.media.recorders import WavRecorder

    wav = tmp_path / "tone.wav"
    sf.write(wav, tone(440, 0.5), 8000, subtype="PCM_16")

    def create():
        players = [PromptPlayer(ua, wav, loop=True) for _ in range(512)]
        recorders = [WavRecorder(ua, tmp_path / "rec" / f"{i}.wav") for i in range(512)]
        slots = {p.slot for p in players} | {r.slot for r in recorders}
        for obj in players + recorders:
            obj.stop()
        return len(slots)

    assert ua.run_sync(create, timeout=30) == 1024


def test_tone_through_the_bridge_reaches_the_frame_port_intact(ua, tmp_path: Path):
    from softswitch.media.frameport import FramePort
    from softswitch.media.players import PromptPlayer

    wav = tmp_path / "a440.wav"
    sf.write(wav, tone(440, 3.0), 8000, subtype="PCM_16")
    collected: list[np.ndarray] = []

    def setup():
        port = FramePort(ua, "tap", capacity_frames=256)
        player = PromptPlayer(ua, wav, loop=True)
        player.play_to(port.slot)
        return port, player

    port, player = ua.run_sync(setup)
    try:
        def drain() -> bool:
            collected.append(port.read().copy())
            return sum(len(c) for c in collected) >= 8000 * 1.5

        assert pump_until(ua, drain, timeout=5.0), "no audio reached the frame port"
        audio = np.concatenate(collected)
        # Skip the first frames (bridge start-up) and check the tone itself.
        steady = audio[1600:]
        assert abs(dominant_frequency(steady, 8000) - 440) < 3
        assert np.abs(steady.astype(np.int32)).max() > 3000
        stats = ua.run_sync(port.stats)
        assert stats["rx_overruns"] == 0
    finally:
        ua.run_sync(lambda: (player.stop(), port.stop()))


def test_frames_written_to_one_port_arrive_at_another_in_order(ua):
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort

    source_audio = tone(1000, 1.0)

    def setup():
        src = FramePort(ua, "src", capacity_frames=128)
        dst = FramePort(ua, "dst", capacity_frames=128)
        bridge.connect(src.slot, dst.slot)
        dst.read()  # start clean
        accepted = src.write(source_audio)
        return src, dst, accepted

    src, dst, accepted = ua.run_sync(setup)
    try:
        assert accepted == len(source_audio)
        got: list[np.ndarray] = []

        def drain() -> bool:
            got.append(dst.read().copy())
            return ua.run_sync(lambda: src.tx_queued) == 0 and sum(len(g) for g in got) >= len(source_audio)

        assert pump_until(ua, drain, timeout=5.0)
        audio = np.concatenate(got)
        start = int(np.argmax(np.abs(audio) > 1000))
        received = audio[start:start + 8000 - 160]
        assert abs(dominant_frequency(received, 8000) - 1000) < 3
        # The bridge passes a single source through unchanged (level 1.0, no mixing).
        expected = source_audio[np.argmax(np.abs(source_audio) > 1000):][: len(received)]
        assert np.max(np.abs(received.astype(np.int32) - expected.astype(np.int32))) <= 1
    finally:
        ua.run_sync(lambda: (src.stop(), dst.stop()))


def test_clear_tx_drops_queued_audio_at_once(ua):
    from softswitch.media.frameport import FramePort

    from softswitch.media import bridge

    def run():
        port = FramePort(ua, "bargein", capacity_frames=128)
        sink = FramePort(ua, "sink", capacity_frames=128)
        port.write(tone(500, 2.0))  # 100 frames queued
        queued_before = port.tx_queued
        port.clear_tx()
        bridge.connect(port.slot, sink.slot)  # the bridge pulls only ports that have listeners
        return port, sink, queued_before

    port, sink, queued_before = ua.run_sync(run)
    try:
        assert queued_before >= 99
        # The clock thread applies the flush on its next pull, within a frame or two, and
        # nothing queued before the flush is ever played.
        assert pump_until(ua, lambda: port.tx_queued == 0, timeout=1.0)
        heard = ua.run_sync(lambda: sink.read().copy())
        assert np.abs(heard.astype(np.int32)).max(initial=0) < 100
        assert ua.run_sync(port.stats)["tx_frames"] == 0
    finally:
        ua.run_sync(lambda: (port.stop(), sink.stop()))
