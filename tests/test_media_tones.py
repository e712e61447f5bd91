"""Tones and in-band DTMF as PCM: the custom-tone syntax, rendered cadences, the presets of the
reference, and DTMF digits that a Goertzel detector decodes back."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from softswitch.flow.engine import NodeFailed
from softswitch.flow.media import tone_spec
from softswitch.media.tones import (DTMF_FREQS, ToneLibrary, ToneSegment, ToneSyntaxError, dtmf_samples,
                                    parse_tone, render_tone)
from tests.support.audio import band_energy_ratio, decode_dtmf, dominant_frequency, frame_rms


def test_a_custom_tone_parses_into_segments_with_silence_as_zero():
    assert parse_tone("440+480/2000,0/4000") == (ToneSegment((440.0, 480.0), 2000), ToneSegment((), 4000))
    assert parse_tone(" 425/500 , 0/500 ") == (ToneSegment((425.0,), 500), ToneSegment((), 500))
    assert parse_tone("350+440.5/100") == (ToneSegment((350.0, 440.5), 100),)


@pytest.mark.parametrize("spec, words", [
    ("", "empty tone"),
    ("440", "segment 1 '440' is not freq[+freq]/ms"),
    ("440/200,", "segment 2 '' is not"),
    ("440/200,480-620/300", "segment 2 '480-620/300'"),
    ("440/0", "lasts 0 ms"),
    ("0+440/200", "mixes 0 (silence)"),
    ("5000/200", "5000 Hz is outside 20..3999 Hz"),
    ("10/200", "10 Hz is outside"),
    ("440/70000", "at most 60000 ms"),
])
def test_a_bad_custom_tone_is_refused_naming_the_segment(spec, words):
    with pytest.raises(ToneSyntaxError) as err:
        parse_tone(spec)
    assert words in str(err.value)


def test_presets_are_the_reference_cadences_and_custom_needs_its_text():
    assert tone_spec("ringback", None) == "440+480/2000,0/4000"
    assert tone_spec("busy", None) == "480+620/500,0/500"
    assert tone_spec("congestion", None) == "480+620/250,0/250"
    assert tone_spec("custom", "425/1000,0/4000") == "425/1000,0/4000"
    with pytest.raises(NodeFailed, match="needs customTone"):
        tone_spec("custom", "  ")
    with pytest.raises(NodeFailed, match="not one of ringback, busy, congestion"):
        tone_spec("siren", None)


def test_ringback_renders_one_six_second_cycle_of_440_and_480_then_silence():
    pcm = render_tone(parse_tone(tone_spec("ringback", None)))
    assert pcm.dtype == np.int16 and pcm.size == 6 * 8000
    on, off = pcm[:16000], pcm[16000:]
    assert band_energy_ratio(on, 8000, 440) > 0.4 and band_energy_ratio(on, 8000, 480) > 0.4
    assert np.abs(off).max() == 0
    assert 0.25 < np.abs(on).max() / 32767 <= 0.31


def test_segments_fade_in_and_out_so_a_cadence_does_not_click():
    pcm = render_tone(parse_tone("1000/100,0/100"))
    levels = frame_rms(pcm[:800], 8000, 1)  # 1 ms frames over the 100 ms tone
    assert levels[0] < levels[10] / 4 and levels[-1] < levels[10] / 4


def test_busy_repeats_half_second_bursts():
    pcm = render_tone(parse_tone(tone_spec("busy", None)))
    assert pcm.size == 8000
    assert dominant_frequency(pcm[:4000]) in (pytest.approx(480, abs=3), pytest.approx(620, abs=3))
    assert np.abs(pcm[4000:]).max() == 0


def test_in_band_dtmf_digits_decode_back_with_a_goertzel_detector():
    digits = "0123456789*#ABCD"
    pcm = dtmf_samples(digits, 8000, duration_ms=200, gap_ms=100)
    assert decode_dtmf(pcm) == digits
    assert pcm.size == 16 * 1600 + 15 * 800  # no trailing gap


def test_in_band_dtmf_holds_duration_and_gap():
    pcm = dtmf_samples("55", 8000, duration_ms=120, gap_ms=80)
    levels = frame_rms(pcm, 8000, 20)
    loud = levels > 0.05
    assert loud.tolist() == [True] * 6 + [False] * 4 + [True] * 6
    low, high = DTMF_FREQS["5"]
    assert band_energy_ratio(pcm[:960], 8000, low) > 0.4 and band_energy_ratio(pcm[:960], 8000, high) > 0.4


@pytest.mark.parametrize("digits, words", [("", "no DTMF digits"), ("12x", "not DTMF digits: 'x'")])
def test_bad_dtmf_digits_are_refused(digits, words):
    with pytest.raises(ValueError, match=words):
        dtmf_samples(digits)


def test_the_tone_library_renders_each_cadence_once_as_an_8k_wav(tmp_path):
    library = ToneLibrary(tmp_path / "tones", keep=2)
    a = library.cycle_file("440+480/2000,0/4000")
    assert library.cycle_file(" 440+480/2000 ,0/4000") == a  # the same cadence, written once
    data, rate = sf.read(a, dtype="int16")
    info = sf.info(a)
    assert rate == 8000 and info.channels == 1 and info.subtype == "PCM_16" and data.size == 48000
    b = library.cycle_file("425/500,0/500")
    library.cycle_file("350+440/1000")
    assert not a.exists() and b.exists()  # only the newest `keep` files stay
