"""Audio helpers for tests: tone generation, G.711 codecs and tone/level analysis.

Tests check what a call carried by its spectrum and level rather than by exact samples, because
media passes through jitter buffers, resampling and mixing. Everything here is pure numpy.

The G.711 tables are built to match pjmedia bit for bit: pjmedia (with its default
``PJMEDIA_HAS_ALAW_ULAW_TABLE=1``) encodes ``tab[(sample >> 2) & 0x3fff]``, i.e. it drops the two
low bits first, and decodes u-law 0x00 to -32124 (ITU G.711), not to 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

FRAME_MS = 20


def tone(
    freqs: float | list[float] | tuple[float, ...],
    seconds: float,
    rate: int = 8000,
    amplitude: float = 0.3,
) -> np.ndarray:
    """Sine tone (or the sum of several, e.g. a DTMF pair) as int16.

    ``amplitude`` is the peak of the sum relative to full scale, so a dual tone does not clip.
    """
    freq_list = [float(freqs)] if isinstance(freqs, (int, float)) else [float(f) for f in freqs]
    if not freq_list:
        raise ValueError("at least one frequency is required")
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    wave = sum(np.sin(2.0 * np.pi * f * t) for f in freq_list) / len(freq_list)
    return np.round(wave * amplitude * 32767.0).astype(np.int16)


def silence(seconds: float, rate: int = 8000) -> np.ndarray:
    """Digital silence as int16."""
    return np.zeros(int(round(seconds * rate)), dtype=np.int16)


# --- G.711 -----------------------------------------------------------------------------------

_SEG_END = np.array([0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF])
_ALAW_SEG_END = np.array([15, 31, 63, 127, 255, 511, 1023, 2047])


def _segment(mag: np.ndarray) -> np.ndarray:
    """Index of the first segment end >= mag (8 when above all), as pjmedia's search()."""
    return np.searchsorted(_SEG_END, mag, side="left")


def _linear2ulaw(pcm: np.ndarray) -> np.ndarray:
    pcm = pcm.astype(np.int64)
    neg = pcm < 0
    mag = np.where(neg, 0x84 - pcm, pcm + 0x84)
    mask = np.where(neg, 0x7F, 0xFF)
    seg = _segment(mag)
    quant = (mag >> np.minimum(seg + 3, 15)) & 0xF
    uval = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | quant)
    return (uval ^ mask).astype(np.uint8)


def _linear2alaw(pcm: np.ndarray) -> np.ndarray:
    # pjmedia's A-law table (unlike its non-table C function) negates negative samples plainly,
    # then encodes the 11-bit magnitude as in ITU G.191: segment from the bit length, 4-bit mantissa.
    pcm = pcm.astype(np.int64)
    neg = pcm < 0
    mag = np.minimum(np.where(neg, -pcm, pcm) >> 4, 2047)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    mant = (mag >> np.maximum(seg - 1, 0)) & 0xF
    code = (seg << 4) | mant | np.where(neg, 0, 0x80)
    return (code ^ 0x55).astype(np.uint8)


@lru_cache(maxsize=None)
def _encode_table(law: str) -> np.ndarray:
    """256-entry-per-14-bit-index table exactly like pjmedia's ``linear2*law_tab[16384]``."""
    idx = np.arange(16384, dtype=np.int64)
    pcm = np.where(idx >= 8192, idx - 16384, idx) << 2  # sign-extended 14-bit value, scaled back
    table = _linear2ulaw(pcm) if law == "ulaw" else _linear2alaw(pcm)
    table.flags.writeable = False
    return table


@lru_cache(maxsize=None)
def _decode_table(law: str) -> np.ndarray:
    code = np.arange(256, dtype=np.int64)
    if law == "ulaw":
        u = ~code & 0xFF
        t = (((u & 0xF) << 3) + 0x84) << ((u & 0x70) >> 4)
        lin = np.where(u & 0x80, 0x84 - t, t - 0x84)
    else:
        a = code ^ 0x55
        seg = (a & 0x70) >> 4
        t = (a & 0xF) << 4
        t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
        lin = np.where(a & 0x80, t, -t)
    table = lin.astype(np.int16)
    table.flags.writeable = False
    return table


def _encode(samples: np.ndarray, law: str) -> np.ndarray:
    pcm = np.asarray(samples)
    if pcm.dtype != np.int16:
        pcm = np.clip(pcm, -32768, 32767).astype(np.int16)
    return _encode_table(law)[(pcm.astype(np.int32) >> 2) & 0x3FFF]


def ulaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> u-law bytes (uint8 array), as pjmedia encodes PCMU."""
    return _encode(samples, "ulaw")


def alaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> A-law bytes (uint8 array), as pjmedia encodes PCMA."""
    return _encode(samples, "alaw")


def _codes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def ulaw_decode(data: bytes | np.ndarray) -> np.ndarray:
    """u-law bytes -> int16 PCM."""
    return _decode_table("ulaw")[_codes(data)]


def alaw_decode(data: bytes | np.ndarray) -> np.ndarray:
    """A-law bytes -> int16 PCM."""
    return _decode_table("alaw")[_codes(data)]


# --- analysis --------------------------------------------------------------------------------


def _as_float(samples: np.ndarray) -> np.ndarray:
    return np.asarray(samples, dtype=np.float64) / 32768.0


def rms(samples: np.ndarray) -> float:
    """Root mean square level relative to full scale (0..1); 0 for an empty array."""
    x = _as_float(samples)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def _power_spectrum(samples: np.ndarray) -> np.ndarray:
    x = _as_float(samples)
    x = x - x.mean()
    return np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2


def dominant_frequency(samples: np.ndarray, rate: int = 8000) -> float:
    """Frequency of the strongest spectral peak, refined by parabolic interpolation.

    A Hann window keeps leakage low; interpolating the log magnitude of the peak bin and its
    neighbours gives about ±1 Hz on 0.5 s of a clean tone (bin spacing 2 Hz).
    """
    x = np.asarray(samples)
    if x.size < 16:
        raise ValueError("too few samples to estimate a frequency")
    mag = np.sqrt(_power_spectrum(x))
    mag[0] = 0.0
    k = int(np.argmax(mag))
    if 0 < k < mag.size - 1:
        a, b, c = np.log(mag[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        offset = 0.0
    return float((k + offset) * rate / x.size)


def band_energy_ratio(samples: np.ndarray, rate: int, freq: float, width: float = 20.0) -> float:
    """Fraction of the signal's energy within ``freq ± width`` Hz (0..1).

    Used to check that each of several tones is present in a mix (each gets a share).
    """
    power = _power_spectrum(samples)
    total = float(power[1:].sum())
    if total <= 0.0:
        return 0.0
    freqs = np.fft.rfftfreq(np.asarray(samples).size, 1.0 / rate)
    band = (freqs >= freq - width) & (freqs <= freq + width)
    return float(power[band].sum() / total)


def has_tone(samples: np.ndarray, rate: int, freq: float, min_ratio: float = 0.3) -> bool:
    """True when at least ``min_ratio`` of the energy lies within ±20 Hz of ``freq``."""
    return band_energy_ratio(samples, rate, freq) >= min_ratio


def frame_rms(samples: np.ndarray, rate: int = 8000, frame_ms: int = FRAME_MS) -> np.ndarray:
    """RMS (relative to full scale) of consecutive whole frames."""
    n = rate * frame_ms // 1000
    x = _as_float(samples)
    frames = x[: (x.size // n) * n].reshape(-1, n)
    return np.sqrt(np.mean(frames * frames, axis=1)) if frames.size else np.zeros(0)


def active_seconds(samples: np.ndarray, rate: int = 8000, threshold: float = 0.01) -> float:
    """Total duration of 20 ms frames whose RMS is at least ``threshold`` of full scale."""
    return float(np.count_nonzero(frame_rms(samples, rate) >= threshold) * FRAME_MS / 1000.0)


# --- DTMF by Goertzel (in-band digits) ------------------------------------------------------

DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")


def goertzel_power(samples: np.ndarray, freq: float, rate: int = 8000) -> float:
    """Power of one frequency in a block (the Goertzel recurrence), normalised by block length."""
    x = _as_float(samples)
    if x.size == 0:
        return 0.0
    coeff = 2.0 * np.cos(2.0 * np.pi * freq / rate)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + coeff * s1 - s2, s1
    return float((s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.size * x.size))


def decode_dtmf(samples: np.ndarray, rate: int = 8000, block_ms: int = 40, min_level: float = 0.02) -> str:
    """In-band DTMF digits in order: per 40 ms block, the strongest row and column tones when
    both stand well above the other tones of their group (twist within 8 dB); a digit is
    reported once per run of blocks that carry it."""
    n = rate * block_ms // 1000
    out: list[str] = []
    previous = ""
    for start in range(0, np.asarray(samples).size - n + 1, n):
        block = samples[start:start + n]
        digit = ""
        if rms(block) >= min_level:
            low = [goertzel_power(block, f, rate) for f in DTMF_LOW]
            high = [goertzel_power(block, f, rate) for f in DTMF_HIGH]
            li, hi = int(np.argmax(low)), int(np.argmax(high))
            low_rest = sorted(low)[-2]
            high_rest = sorted(high)[-2]
            if (low[li] > 10 * low_rest and high[hi] > 10 * high_rest
                    and 1 / 6.3 < low[li] / high[hi] < 6.3):
                digit = DTMF_KEYS[li][hi]
        if digit and digit != previous:
            out.append(digit)
        previous = digit
    return "".join(out)
