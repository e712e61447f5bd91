"""The bare pjsua2 AI baseline (bench/bare_ai.py): its resampler keeps tones intact whatever the
chunking, and over real SIP and a real WebSocket it streams each call to the provider and plays
the provider's audio back (the echoing fake provider returns the caller's 440 Hz)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.audio import tone

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bare_ai import FirResampler  # noqa: E402


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum[1:]) + 1) * rate / samples.size


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_upsampling_8k_to_24k_keeps_the_tone_and_its_level():
    x = tone(440, 1.0)  # 8 kHz
    y = FirResampler(8000, 24000).process(x)
    assert y.size == 3 * x.size
    body = y[240:-240]
    assert abs(peak_hz(body, 24000) - 440) < 5
    assert rms(body) == pytest.approx(rms(x[80:-80]), rel=0.05)


def test_downsampling_24k_to_8k_keeps_the_tone_and_drops_what_8k_cannot_carry():
    t = np.arange(24000) / 24000
    x = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    y = FirResampler(24000, 8000).process(x)
    assert y.size == x.size // 3
    assert abs(peak_hz(y[80:-80], 8000) - 440) < 5
    assert rms(y[80:-80]) == pytest.approx(rms(x), rel=0.05)
    above_nyquist = (8000 * np.sin(2 * np.pi * 6000 * t)).astype(np.int16)
    assert rms(FirResampler(24000, 8000).process(above_nyquist)[80:]) < 0.05 * rms(above_nyquist)


@pytest.mark.parametrize("rates", [(8000, 24000), (24000, 8000)])
def test_resampling_in_chunks_gives_the_same_audio_as_in_one_piece(rates):
    rng = np.random.default_rng(7)
    x = rng.integers(-8000, 8000, 4801).astype(np.int16)
    whole = FirResampler(*rates).process(x)
    chunked = FirResampler(*rates)
    cuts = [0, 160, 167, 1167, 1169, x.size]  # a frame, odd sizes, a long chunk, the rest
    parts = [chunked.process(x[a:b]) for a, b in zip(cuts, cuts[1:])]
    assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.sipp
def test_bare_ai_baseline_streams_each_call_to_the_provider_and_plays_its_audio_back(tmp_path):
    # The AI benchmark's own step (bench/ai_capacity.py) at one call at a time, 2 calls of 4 s:
    # every call answered, RTP paced, and every caller stream carrying the provider's echo of its
    # 440 Hz for at least half the call.
    import ai_capacity
    from capacity import run_step

    load = ai_capacity.workload(tmp_path, 4.0)
    step = run_step(load, "bare", 1, tmp_path)
    assert step.successful == 2 and step.failed == 0
    assert step.tone_streams == 2, step
    assert step.checks["ai_legs_lost"] == 0
    assert step.clean, step
