"""Voice and silence on synthetic 20 ms frames, and the ducking gain rule (reference §5.2–§5.3)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from softswitch.flow.media import duck_gains
from softswitch.media.transcode import resample, to_int16
from softswitch.media.vad import SilenceDetector, VoiceDetector, frame_level
from tests.support.audio import tone


def frames(samples: np.ndarray) -> list[np.ndarray]:
    return list(samples[: samples.size // 160 * 160].reshape(-1, 160))


class ScriptedVad:
    """Stands in for webrtcvad: says speech for the frames the test chooses."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = list(answers)

    def is_speech(self, data: bytes, rate: int) -> bool:
        return self.answers.pop(0)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "I would like to speak to an agent about my order please"],
                   check=True, timeout=30)
    x, rate = sf.read(wav)
    return to_int16(resample(x, rate, 8000))


def test_frame_level_is_rms_relative_to_full_scale():
    assert frame_level(np.zeros(160, np.int16)) == 0.0
    assert frame_level(np.full(160, 16384, np.int16)) == pytest.approx(0.5)
    assert frame_level(tone(440, 0.02, amplitude=0.1)) == pytest.approx(0.1 / np.sqrt(2), rel=0.05)


def test_voice_fires_when_loud_speech_lasts_voice_duration():
    loud = tone(300, 0.02, amplitude=0.2)
    detector = VoiceDetector(0.02, 150, vad=ScriptedVad([True] * 8))
    fired = [detector.feed(loud) for _ in range(8)]
    assert fired == [False] * 7 + [True]  # 8 × 20 ms ≥ 150 ms


def test_a_quiet_or_non_speech_frame_resets_the_voice_run():
    loud, quiet = tone(300, 0.02, amplitude=0.2), tone(300, 0.02, amplitude=0.01)
    # A quiet frame never reaches the VAD (level gate); a loud frame the VAD calls non-speech
    # resets the run too. Runs of 4 frames (80 ms) are cut twice; the run of 5 reaches 100 ms.
    detector = VoiceDetector(0.02, 100, vad=ScriptedVad([True] * 4 + [True] * 4 + [False] + [True] * 5))
    seq = [loud] * 4 + [quiet] + [loud] * 4 + [loud] + [loud] * 5 + [loud] * 3
    fired = [detector.feed(f) for f in seq]
    assert fired.index(True) == 14
    assert not any(fired[15:])  # fires once


def test_real_speech_interrupts_and_silence_or_faint_speech_does_not(speech):
    detector = VoiceDetector(0.02, 150)
    assert not any(detector.feed(f) for f in frames(np.zeros(8000, np.int16)))
    faint = (speech.astype(np.float64) * 0.02).astype(np.int16)  # far below the threshold
    assert not any(VoiceDetector(0.02, 150).feed(f) for f in frames(faint))
    hits = [i for i, f in enumerate(frames(speech)) if detector.feed(f)]
    assert len(hits) == 1 and hits[0] * 20 < 1500


def test_silence_counts_from_the_start_or_the_last_loud_frame_even_without_frames():
    detector = SilenceDetector(0.01, 300, start=10.0)
    assert not detector.expired(10.29)
    assert detector.expired(10.30)  # no frame at all: the ticker alone ends it
    detector = SilenceDetector(0.01, 300, start=0.0)
    detector.feed(tone(440, 0.02, amplitude=0.2), now=0.5)
    detector.feed(np.zeros(160, np.int16), now=0.52)
    detector.feed(tone(440, 0.02, amplitude=0.005), now=0.6)  # below the threshold: still silence
    assert not detector.expired(0.79)
    assert detector.expired(0.80)


def test_ducking_a_newer_prompt_lowers_older_music_and_the_peer():
    mix = duck_gains([0.3, 1.0])  # newest first: a prompt at 0.3 over music at 1
    assert mix.playbacks == pytest.approx((1.0, 0.3))
    assert mix.peer == pytest.approx(0.3)


def test_ducking_factor_one_is_a_plain_mix_and_no_playback_leaves_the_peer_alone():
    assert duck_gains([1.0, 1.0]).playbacks == (1.0, 1.0)
    assert duck_gains([1.0, 1.0]).peer == 1.0
    assert duck_gains([]).peer == 1.0


def test_ducking_a_boosted_playback_scales_everything_down_by_the_largest_gain():
    mix = duck_gains([2.0, 0.5, 1.0])
    # raw gains: 2, 1 (nothing newer ducks), 0.5; peer 0.5; all divided by 2
    assert mix.playbacks == pytest.approx((1.0, 0.5, 0.25))
    assert mix.peer == pytest.approx(0.25)
