"""Audio in and out of the bridge's format, with soundfile (libsndfile), soxr and numpy.

Playback sources (HTTP bodies, n8n binaries, files pjmedia cannot read) are decoded from any
format libsndfile knows (WAV of any rate/width/channels, FLAC, OGG/Vorbis/Opus, MP3), mixed to
mono and resampled to the bridge rate. Recordings are captured as 8 kHz PCM16 and converted at
the end to the requested WAV rate/width or to MP3/Opus/Vorbis. These functions are CPU work:
callers run them on worker threads, never on the UA thread.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

COMPRESSED = {  # recordFileFormat → (libsndfile format, subtype, mime type)
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
}
WAV_SUBTYPES = {8: "PCM_U8", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class AudioDecodeError(ValueError):
    """Bytes that libsndfile cannot read as audio; the message names what was tried."""


def mime_type(fmt: str) -> str:
    return "audio/wav" if fmt == "wav" else COMPRESSED[fmt][2]


def decode(data: bytes, what: str = "audio") -> tuple[np.ndarray, int]:
    """(mono float64 samples in -1..1, sample rate) from encoded audio bytes."""
    if not data:
        raise AudioDecodeError(f"{what} is empty")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(
            f"cannot decode {what} ({len(data)} bytes): {exc}; supported: WAV, FLAC, OGG (Vorbis/Opus), MP3") from None
    if samples.size == 0:
        raise AudioDecodeError(f"{what} holds no audio samples")
    return samples.mean(axis=1), int(rate)


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling with soxr (libsoxr: maintained, far better than an FIR of our
    own; the whole signal at once, so its streaming delay does not matter here)."""
    x = np.asarray(x, dtype=np.float64)
    if src == dst or x.size == 0:
        return x.copy()
    return soxr.resample(x, src, dst, quality="HQ")


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def to_bridge_pcm(data: bytes, rate: int = 8000, what: str = "audio") -> np.ndarray:
    """Encoded audio → mono int16 at the bridge rate."""
    samples, src = decode(data, what)
    return to_int16(resample(samples, src, rate))


def _compression_level(fmt: str, kbps: float, rate: int) -> float:
    """libsndfile's 0..1 compression level for a target bitrate (approximate, documented in
    libsndfile: MP3 CBR maps the level linearly between the MPEG version's min and max
    bitrate, Opus between 256 and 6 kbit/s; Vorbis is VBR by quality, so kbps is a hint)."""
    if fmt == "mp3":
        lo, hi = (32, 320) if rate >= 32000 else (8, 160) if rate >= 16000 else (8, 64)
    elif fmt == "opus":
        lo, hi = 6, 256
    else:
        lo, hi = 32, 256
    return float(np.clip((hi - kbps) / (hi - lo), 0.0, 1.0))


def encode_recording(pcm: np.ndarray, rate: int, out: Path | io.BytesIO, fmt: str = "wav", *,
                     wav_rate: int = 8000, wav_bits: int = 16, compressed_rate: int = 16000,
                     bitrate_kbps: float = 32) -> None:
    """Write int16 `pcm` at `rate` as the node's output format."""
    x = np.asarray(pcm, dtype=np.float64) / 32768.0
    if fmt == "wav":
        if wav_bits not in WAV_SUBTYPES:
            raise ValueError(f"recordWavBitDepth {wav_bits} is not one of 8, 16, 24, 32")
        sf.write(out, resample(x, rate, wav_rate), wav_rate, format="WAV", subtype=WAV_SUBTYPES[wav_bits])
        return
    if fmt not in COMPRESSED:
        raise ValueError(f"recordFileFormat {fmt!r} is not wav, mp3, opus or ogg")
    container, subtype, _ = COMPRESSED[fmt]
    allowed = OPUS_RATES if fmt == "opus" else MP3_RATES if fmt == "mp3" else None
    if allowed and compressed_rate not in allowed:
        raise ValueError(f"{fmt} cannot be written at {compressed_rate} Hz; use one of {', '.join(map(str, allowed))}")
    level = _compression_level(fmt, bitrate_kbps, compressed_rate)
    kwargs: dict = {"compression_level": level}
    if fmt == "mp3":
        kwargs["bitrate_mode"] = "CONSTANT"
    sf.write(out, resample(x, rate, compressed_rate), compressed_rate, format=container, subtype=subtype, **kwargs)
