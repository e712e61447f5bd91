"""Tests of tests/support/audio.py: tone generation, G.711 and tone/level analysis."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.support import audio
from tests.support.audio import (
    active_seconds,
    alaw_decode,
    alaw_encode,
    band_energy_ratio,
    dominant_frequency,
    has_tone,
    rms,
    silence,
    tone,
    ulaw_decode,
    ulaw_encode,
)

# SHA-256 of pjmedia's G.711 tables (pjmedia/src/pjmedia/alaw_ulaw_table.c, used by default:
# PJMEDIA_HAS_ALAW_ULAW_TABLE=1): encoders as 16384 bytes indexed by (sample >> 2) & 0x3fff,
# decoders as 256 little-endian int16.
PJMEDIA_TABLE_SHA256 = {
    "linear2ulaw": "f94ebba9c528b5cc9029acc33d1dfe73554f9e047685254fdb76da330e06bed4",
    "linear2alaw": "f25cc555d9d72c992ebab59210d7e29d2154f43fb638d978a4b8d8bb613ddb59",
    "ulaw2linear": "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827",
    "alaw2linear": "e04788d110e58ff8c70c93b8480190d973e3b67876b6119abbaec766cc75c174",
}


def _sha(data: np.ndarray) -> str:
    return hashlib.sha256(data.tobytes()).hexdigest()


def test_tone_shape_and_level() -> None:
    x = tone(440, 0.5, rate=8000, amplitude=0.5)
    assert x.dtype == np.int16 and x.size == 4000
    assert abs(int(np.abs(x).max()) - 0.5 * 32767) < 60
    assert rms(x) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    dual = tone([697, 1209], 0.5, amplitude=0.8)
    assert np.abs(dual.astype(np.int32)).max() <= 0.8 * 32767 + 1  # the sum does not clip
    assert silence(0.25, 16000).size == 4000 and not silence(0.25).any()


@pytest.mark.parametrize("freq", [300.0, 440.0, 660.0, 697.3, 1000.0, 1633.0, 3000.0])
def test_dominant_frequency_within_2_hz(freq: float) -> None:
    assert dominant_frequency(tone(freq, 0.5), 8000) == pytest.approx(freq, abs=2.0)


def test_dominant_frequency_at_16k_and_after_g711() -> None:
    assert dominant_frequency(tone(1000, 0.5, rate=16000), 16000) == pytest.approx(1000, abs=2.0)
    coded = ulaw_decode(ulaw_encode(tone(440, 0.5, amplitude=0.1)))
    assert dominant_frequency(coded, 8000) == pytest.approx(440, abs=2.0)


def test_band_energy_in_a_mix() -> None:
    mix = tone([440, 1000], 1.0)
    assert band_energy_ratio(mix, 8000, 440) == pytest.approx(0.5, abs=0.05)
    assert band_energy_ratio(mix, 8000, 1000) == pytest.approx(0.5, abs=0.05)
    assert has_tone(mix, 8000, 440) and has_tone(mix, 8000, 1000)
    assert not has_tone(mix, 8000, 660)
    assert not has_tone(tone(440, 1.0), 8000, 1000)
    assert band_energy_ratio(silence(1.0), 8000, 440) == 0.0


def test_active_seconds_counts_loud_frames_only() -> None:
    x = np.concatenate([tone(440, 1.0), silence(1.0), tone(440, 0.5, amplitude=0.05), tone(440, 0.5, amplitude=0.001)])
    assert active_seconds(x, 8000) == pytest.approx(1.5, abs=0.021)
    assert active_seconds(x, 8000, threshold=0.1) == pytest.approx(1.0, abs=0.021)
    assert active_seconds(silence(1.0)) == 0.0


def test_g711_known_values() -> None:
    assert ulaw_encode(np.array([0], np.int16))[0] == 0xFF
    assert ulaw_decode(bytes([0xFF]))[0] == 0 and ulaw_decode(bytes([0x7F]))[0] == 0
    assert ulaw_decode(bytes([0x00, 0x80])).tolist() == [-32124, 32124]
    assert ulaw_encode(np.array([32767, -32768], np.int16)).tolist() == [0x80, 0x00]
    assert alaw_encode(np.array([0, -1], np.int16)).tolist() == [0xD5, 0x55]
    assert alaw_decode(bytes([0xD5, 0x55])).tolist() == [8, -8]
    assert alaw_encode(np.array([32767, -32768], np.int16)).tolist() == [0xAA, 0x2A]
    assert alaw_decode(bytes([0xAA, 0x2A])).tolist() == [32256, -32256]


def test_g711_tables_match_pjmedia_bit_for_bit() -> None:
    pcm = (np.arange(16384, dtype=np.int32) << 2).astype(np.uint16).view(np.int16)  # index i -> i << 2
    assert _sha(ulaw_encode(pcm)) == PJMEDIA_TABLE_SHA256["linear2ulaw"]
    assert _sha(alaw_encode(pcm)) == PJMEDIA_TABLE_SHA256["linear2alaw"]
    codes = np.arange(256, dtype=np.uint8)
    assert _sha(ulaw_decode(codes).astype("<i2")) == PJMEDIA_TABLE_SHA256["ulaw2linear"]
    assert _sha(alaw_decode(codes).astype("<i2")) == PJMEDIA_TABLE_SHA256["alaw2linear"]
    # The encoder ignores the two low bits, as pjmedia's table lookup does.
    assert np.array_equal(ulaw_encode(pcm | 3), ulaw_encode(pcm))
    assert audio._encode_table("ulaw").size == 16384


def test_g711_round_trip() -> None:
    codes = np.arange(256, dtype=np.uint8)
    # Decoding then encoding gives the code back (u-law has two zeros, 0x7F and 0xFF).
    assert np.array_equal(ulaw_encode(ulaw_decode(codes))[codes != 0x7F], codes[codes != 0x7F])
    assert np.array_equal(alaw_encode(alaw_decode(codes)), codes)
    x = tone(440, 1.0, amplitude=0.3)
    for enc, dec in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        y = dec(enc(x))
        assert y.dtype == np.int16 and y.shape == x.shape
        err = y.astype(np.int32) - x
        # Quantisation step is at most 1024 (u-law) / 1024 (A-law) at the top segment.
        assert np.abs(err).max() <= 1024
        snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(err.astype(np.float64) ** 2))
        assert snr > 30


def test_g711_accepts_non_int16_input_by_clipping() -> None:
    wide = np.array([40000, -40000, 0], dtype=np.int32)
    assert ulaw_encode(wide).tolist() == [0x80, 0x00, 0xFF]
