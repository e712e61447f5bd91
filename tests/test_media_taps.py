"""Taps and connection levels on an in-process bridge: a keep-newest frame port holds the last
second of a source with no reader, an AudioTap hands it over as pre-roll, and a connection's
level scales only that connection."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from softswitch.media import bridge
from softswitch.media.frameport import AudioTap, FramePort
from softswitch.media.players import PromptPlayer
from tests.support.audio import dominant_frequency, rms, tone

pytestmark = pytest.mark.native


def settle(seconds: float) -> None:
    time.sleep(seconds)


def two_tone_wav(tmp_path: Path) -> Path:
    """440 Hz for 1 s, then 880 Hz for 3 s."""
    wav = tmp_path / "two.wav"
    sf.write(wav, np.concatenate([tone(440, 1.0), tone(880, 3.0)]), 8000, subtype="PCM_16")
    return wav


def test_an_unread_keep_newest_port_holds_only_the_newest_frames(ua, tmp_path):
    wav = two_tone_wav(tmp_path)

    def start():
        port = FramePort(ua, "newest", capacity_frames=64, keep_newest=True, tx_capacity_frames=2)
        player = PromptPlayer(ua, wav)
        bridge.connect(player.slot, port.slot)
        return port, player

    port, player = ua.run_sync(start)
    try:
        settle(2.6)  # 130 frames arrived; the ring keeps 64
        audio = ua.run_sync(lambda: port.read().copy())
        stats = ua.run_sync(port.stats)
        assert audio.size == 64 * 160
        assert stats["rx_overwritten"] >= 50 and stats["rx_overruns"] == 0
        assert dominant_frequency(audio) == pytest.approx(880, abs=3)  # the newest, not the first second
    finally:
        ua.run_sync(lambda: (player.stop(), port.stop()))


def test_an_audio_tap_gives_one_second_of_preroll_then_every_new_frame(ua, tmp_path):
    wav = two_tone_wav(tmp_path)
    got: list[np.ndarray] = []

    def start():
        player = PromptPlayer(ua, wav)
        tap = AudioTap(ua, player.slot, history_frames=50)
        return player, tap

    player, tap = ua.run_sync(start)
    try:
        settle(1.8)
        pre = ua.run_sync(lambda: tap.preroll().copy())
        assert pre.size == 50 * 160
        # The first second was 440 Hz; 0.8 s of 880 Hz followed: the pre-roll ends with 880.
        assert dominant_frequency(pre[-4000:]) == pytest.approx(880, abs=3)
        started = time.monotonic()
        ua.run_sync(lambda: tap.add_consumer(got.append))
        while time.monotonic() - started < 1.0:
            ua.run_sync(tap.poll)
            settle(0.02)
        ua.run_sync(tap.poll)
        expected = (time.monotonic() - started) / 0.02
        # One 20 ms frame per bridge tick since the consumer joined, none lost or repeated.
        assert abs(len(got) - expected) <= max(5, 0.15 * expected), (len(got), expected)
        assert all(f.size == 160 for f in got)
    finally:
        ua.run_sync(lambda: (tap.close(), player.stop()))


def test_a_connection_level_scales_that_connection_only(ua, tmp_path):
    wav = tmp_path / "tone.wav"
    sf.write(wav, tone(440, 4.0, amplitude=0.4), 8000, subtype="PCM_16")

    def start():
        player = PromptPlayer(ua, wav)
        full = FramePort(ua, "full")
        half = FramePort(ua, "half")
        bridge.connect(player.slot, full.slot)
        bridge.connect(player.slot, half.slot, 0.5)
        return player, full, half

    player, full, half = ua.run_sync(start)
    try:
        settle(0.6)
        ua.run_sync(lambda: (full.read(), half.read()))
        settle(0.6)
        a, b = ua.run_sync(lambda: (full.read().copy(), half.read().copy()))
        assert rms(b) / rms(a) == pytest.approx(0.5, abs=0.05)
        ua.run_sync(lambda: bridge.adjust_level(player.slot, half.slot, 0.25))
        settle(0.1)
        ua.run_sync(lambda: (full.read(), half.read()))
        settle(0.6)
        a, b = ua.run_sync(lambda: (full.read().copy(), half.read().copy()))
        assert rms(b) / rms(a) == pytest.approx(0.25, abs=0.04)
    finally:
        ua.run_sync(lambda: (player.stop(), full.stop(), half.stop()))


def test_a_looping_player_wraps_around_without_an_empty_frame(ua, tmp_path):
    # A 100 ms tone looped: 2 s crosses about 20 wrap-arounds. pjmedia inserts an empty frame at
    # each wrap when an end-of-file callback is set (pjsua2 always sets one); looping players clear it.
    wav = tmp_path / "short.wav"
    sf.write(wav, tone(1000, 0.1), 8000, subtype="PCM_16")

    def start():
        port = FramePort(ua, "loop", capacity_frames=200)
        player = PromptPlayer(ua, wav, loop=True)
        bridge.connect(player.slot, port.slot)
        return port, player

    port, player = ua.run_sync(start)
    try:
        settle(2.0)
        audio = ua.run_sync(lambda: port.read().copy())
    finally:
        ua.run_sync(lambda: (player.stop(), port.stop()))
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)[2:]  # skip the first connection frames
    assert len(frames) >= 80
    levels = [rms(frame) for frame in frames]
    assert min(levels) > 0.3 * max(levels), f"a quiet frame among {len(frames)}: min {min(levels):.1f}, max {max(levels):.1f}"


def test_a_closed_player_gets_no_end_of_file_and_is_destroyed_a_moment_later_on_the_ua_thread(ua, tmp_path):
    """pjmedia posts end-of-file to its event thread; a player destroyed while that callback ran
    was called back from freed memory. Closing clears the callback, then keeps the pjsua2
    player a moment before dropping it on the UA thread."""
    import weakref

    wav = tmp_path / "short.wav"
    sf.write(wav, tone(440, 0.2), 8000, subtype="PCM_16")
    done: list[str] = []

    def start():
        port = FramePort(ua, "sink", capacity_frames=64)
        player = PromptPlayer(ua, wav, on_done=lambda p: done.append("eof"))
        player.play_to(port.slot)
        return port, player, weakref.ref(player._player)

    port, player, pj_player = ua.run_sync(start)
    try:
        time.sleep(0.1)
        ua.run_sync(player.stop)  # before its end: the end-of-file must never arrive
        time.sleep(0.5)
        assert pj_player() is not None  # still kept: a callback already running may finish
        deadline = time.monotonic() + 5
        while ua.run_sync(lambda: pj_player() is not None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pj_player() is None
        assert done == []
    finally:
        ua.run_sync(port.stop)
