"""Call-progress tones and in-band DTMF as PCM, and the WAV files the bridge plays them from.

A tone is a cycle of segments `freq[+freq]/ms` (`0/ms` is silence), e.g. ringback
`440+480/2000,0/4000`. `ToneLibrary` renders each distinct cycle once into a small 8 kHz WAV
and a `PromptPlayer` plays it (looped for "repeat forever"): pjmedia then reads the file on its
clock thread, so a tone on hundreds of legs costs no Python per frame, where feeding a
FramePort would cost a top-up on every loop turn for every leg.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

TONE_PEAK = 0.3  # peak of a tone relative to full scale (about -10 dBFS), whatever its parts
RAMP_MS = 4  # raised-cosine fade at both ends of each segment, so cadences do not click
MAX_CYCLE_MS = 60_000

DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYPAD = ("123A", "456B", "789C", "*0#D")
DTMF_FREQS: dict[str, tuple[float, float]] = {
    key: (DTMF_ROWS[r], DTMF_COLS[c]) for r, row in enumerate(DTMF_KEYPAD) for c, key in enumerate(row)
}

_SEGMENT = re.compile(r"^(\d+(?:\.\d+)?(?:\+\d+(?:\.\d+)?)*)/(\d+)$")


# Named call-progress cadences: media.playTone's presets, and `media.hold_music: tone:<name>`.
TONE_PRESETS = {
    "ringback": "440+480/2000,0/4000",
    "busy": "480+620/500,0/500",
    "congestion": "480+620/250,0/250",
}


class ToneSyntaxError(ValueError):
    """A custom tone that is not `freq[+freq]/ms,…`; the message says which segment and why."""


@dataclass(frozen=True)
class ToneSegment:
    freqs: tuple[float, ...]  # empty: silence
    ms: int


def parse_tone(spec: str, rate: int = 8000) -> tuple[ToneSegment, ...]:
    """`"440+480/2000,0/4000"` → segments; raises ToneSyntaxError with the offending part."""
    text = (spec or "").strip()
    if not text:
        raise ToneSyntaxError("empty tone: write segments like 440+480/2000,0/4000 (freq[+freq]/ms, 0 = silence)")
    segments = []
    for n, raw in enumerate(text.split(","), 1):
        part = raw.strip()
        m = _SEGMENT.match(part)
        if not m:
            raise ToneSyntaxError(f"tone segment {n} {part!r} is not freq[+freq]/ms (e.g. 425/500 or 0/1000)")
        freqs = tuple(float(f) for f in m.group(1).split("+"))
        ms = int(m.group(2))
        if ms <= 0:
            raise ToneSyntaxError(f"tone segment {n} {part!r} lasts 0 ms; durations are whole milliseconds > 0")
        if 0.0 in freqs and len(freqs) > 1:
            raise ToneSyntaxError(f"tone segment {n} {part!r} mixes 0 (silence) with frequencies")
        for f in freqs:
            if f != 0.0 and not 20.0 <= f < rate / 2:
                raise ToneSyntaxError(
                    f"tone segment {n} {part!r}: {f:g} Hz is outside 20..{rate // 2 - 1} Hz (the {rate} Hz bridge)")
        segments.append(ToneSegment(() if freqs == (0.0,) else freqs, ms))
    total = sum(s.ms for s in segments)
    if total > MAX_CYCLE_MS:
        raise ToneSyntaxError(f"tone cycle lasts {total} ms; at most {MAX_CYCLE_MS} ms")
    return tuple(segments)


def _ramp(n: int, rate: int) -> np.ndarray:
    k = min(n // 2, rate * RAMP_MS // 1000)
    env = np.ones(n)
    if k > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        env[:k] = edge
        env[n - k:] = edge[::-1]
    return env


def render_tone(segments: tuple[ToneSegment, ...], rate: int = 8000, peak: float = TONE_PEAK) -> np.ndarray:
    """One cycle of the tone as int16 (the parts of a dual tone share `peak`)."""
    parts = []
    for seg in segments:
        n = rate * seg.ms // 1000
        if not seg.freqs:
            parts.append(np.zeros(n))
            continue
        t = np.arange(n) / rate
        wave = sum(np.sin(2 * np.pi * f * t) for f in seg.freqs) / len(seg.freqs)
        parts.append(wave * _ramp(n, rate) * peak)
    cycle = np.concatenate(parts) if parts else np.zeros(0)
    return np.round(cycle * 32767).astype(np.int16)


def dtmf_samples(digits: str, rate: int = 8000, duration_ms: int = 200, gap_ms: int = 100,
                 peak: float = 0.5) -> np.ndarray:
    """In-band DTMF: each digit's row+column pair for `duration_ms`, `gap_ms` of silence between."""
    if not digits:
        raise ValueError("no DTMF digits to send")
    bad = [d for d in digits if d.upper() not in DTMF_FREQS]
    if bad:
        raise ValueError(f"not DTMF digits: {''.join(bad)!r} (use 0-9 * # A-D)")
    if duration_ms <= 0 or gap_ms < 0:
        raise ValueError("DTMF duration must be > 0 ms and the gap >= 0 ms")
    out = []
    n = rate * duration_ms // 1000
    t = np.arange(n) / rate
    gap = np.zeros(rate * gap_ms // 1000)
    for i, d in enumerate(digits.upper()):
        low, high = DTMF_FREQS[d]
        out.append((np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)) / 2 * _ramp(n, rate) * peak)
        if i < len(digits) - 1:
            out.append(gap)
    return np.round(np.concatenate(out) * 32767).astype(np.int16)


def write_pcm_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    """A mono 16-bit WAV pjmedia's player reads; written to a temporary name, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sf.write(tmp, np.asarray(samples, dtype=np.int16), rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    return path


class ToneLibrary:
    """Rendered tone cycles as WAV files in `directory`, one per distinct spec (newest `keep`).

    A file evicted while a player still plays it stays readable: the player holds it open."""

    def __init__(self, directory: Path, rate: int = 8000, keep: int = 64) -> None:
        self.directory = Path(directory)
        self.rate = rate
        self.keep = keep
        self._files: OrderedDict[str, Path] = OrderedDict()

    def cycle_file(self, spec: str) -> Path:
        segments = parse_tone(spec, self.rate)
        key = ",".join(f"{'+'.join(f'{f:g}' for f in s.freqs) or '0'}/{s.ms}" for s in segments)
        path = self._files.get(key)
        if path is not None and path.is_file():
            self._files.move_to_end(key)
            return path
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(f"{key}@{self.rate}".encode()).hexdigest()[:16]
        path = write_pcm_wav(self.directory / f"tone-{name}.wav", render_tone(segments, self.rate), self.rate)
        self._files[key] = path
        while len(self._files) > self.keep:
            _, old = self._files.popitem(last=False)
            old.unlink(missing_ok=True)
        return path
