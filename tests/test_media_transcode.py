"""Decoding playback sources to the bridge format and encoding recordings (soundfile + numpy)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from softswitch.media.transcode import AudioDecodeError, encode_recording, resample, to_bridge_pcm
from tests.support.audio import band_energy_ratio, dominant_frequency, tone


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def test_a_44k_stereo_wav_becomes_8k_mono_with_its_pitch_and_length():
    t = np.arange(44100 * 2) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.3
    pcm = to_bridge_pcm(wav_bytes(stereo, 44100), 8000)
    assert pcm.dtype == np.int16 and abs(pcm.size - 16000) <= 1
    assert dominant_frequency(pcm) == pytest.approx(440, abs=2)


def test_downsampling_removes_what_the_bridge_cannot_carry():
    t = np.arange(48000) / 48000
    x = 0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)  # 6 kHz would alias to 2 kHz
    y = resample(x, 48000, 8000)
    assert band_energy_ratio(y, 8000, 1000) > 0.99
    assert band_energy_ratio(y, 8000, 2000) < 1e-5


def test_a_16k_float_wav_and_an_mp3_decode_too():
    x = tone(700, 1.0, 16000).astype(np.float64) / 32768
    assert dominant_frequency(to_bridge_pcm(wav_bytes(x, 16000, "FLOAT"), 8000)) == pytest.approx(700, abs=2)
    mp3 = wav_bytes(x, 16000, "MPEG_LAYER_III", "MP3")
    assert dominant_frequency(to_bridge_pcm(mp3, 8000)) == pytest.approx(700, abs=3)


@pytest.mark.parametrize("data, words", [(b"", "is empty"), (b"not audio at all" * 10, "cannot decode")])
def test_bytes_that_are_not_audio_fail_clearly(data, words):
    with pytest.raises(AudioDecodeError, match=words):
        to_bridge_pcm(data, 8000, "the test body")


def test_recordings_encode_as_wav_of_any_rate_and_width(tmp_path):
    pcm = tone(440, 1.0)
    out = tmp_path / "r.wav"
    encode_recording(pcm, 8000, out, "wav", wav_rate=16000, wav_bits=24)
    info = sf.info(out)
    assert (info.samplerate, info.subtype, info.channels) == (16000, "PCM_24", 1)
    assert info.duration == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("fmt, container", [("mp3", "MP3"), ("opus", "OGG"), ("ogg", "OGG")])
def test_recordings_encode_compressed_at_the_asked_rate(fmt, container):
    buf = io.BytesIO()
    encode_recording(tone(440, 2.0), 8000, buf, fmt, compressed_rate=16000, bitrate_kbps=32)
    buf.seek(0)
    data, rate = sf.read(buf)
    assert rate == 16000 and sf.info(io.BytesIO(buf.getvalue())).format == container
    assert dominant_frequency(data[2000:30000], 16000) == pytest.approx(440, abs=3)
    assert len(buf.getvalue()) < 2 * 16000 * 2  # compressed, not PCM


def test_opus_at_an_impossible_rate_is_refused():
    with pytest.raises(ValueError, match="opus cannot be written at 44100 Hz"):
        encode_recording(tone(440, 0.1), 8000, io.BytesIO(), "opus", compressed_rate=44100)
