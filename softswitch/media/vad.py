"""Levels, voice and silence on a leg's inbound 20 ms frames (reference §5.2, §5.3).

Level is the frame's RMS relative to full scale (0..1), the scale of `voiceThreshold` (0.02)
and `silenceThreshold` (0.01).

Voice (barge-in): a frame counts as voice when it is loud enough (level ≥ voiceThreshold) *and*
WebRTC's VAD (mode 2) classifies it as speech. The level gate is the reference's rule and keeps
its meaning of the threshold; the VAD is a second opinion that can only veto. Measured here at
8 kHz, webrtcvad accepts nearly every steady signal above its own floor (tones, hum, white noise
all pass), so in practice the level decides and the VAD vetoes faint or odd frames near the
threshold; a caller's loud tone still interrupts, as with the reference's level-only rule.
Consecutive voice frames add 20 ms each; any other frame resets the count; reaching
voiceDurationMs fires `media_voice`.

Silence (recordings): the time since the start or the last frame louder than
silenceThreshold, on the caller's clock (`now`, seconds), checked on every tick even when no
frame arrived; reaching silenceDurationMs fires `media_silence`. No VAD here: any sound above
the threshold keeps a recording going, as in the reference.
"""

from __future__ import annotations

import numpy as np
import webrtcvad

FRAME_MS = 20
VAD_MODE = 2  # webrtcvad aggressiveness 0..3: 2 rejects most non-speech without clipping speech


def frame_level(frame: np.ndarray) -> float:
    """RMS of int16 samples relative to full scale (0..1)."""
    if frame.size == 0:
        return 0.0
    x = frame.astype(np.float64) / 32768.0
    return float(np.sqrt(np.mean(x * x)))


class VoiceDetector:
    """Feed 20 ms int16 frames; `feed` returns True on the frame that completes the voice run."""

    def __init__(self, threshold: float = 0.02, duration_ms: float = 150, rate: int = 8000,
                 mode: int = VAD_MODE, vad: "webrtcvad.Vad | None" = None) -> None:
        if rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad needs 8/16/32/48 kHz audio, not {rate} Hz")
        self.threshold = float(threshold)
        self.duration_ms = float(duration_ms)
        self.rate = rate
        self.samples_per_frame = rate * FRAME_MS // 1000
        self._vad = vad if vad is not None else webrtcvad.Vad(mode)
        self.active_ms = 0.0
        self.fired = False

    def is_voice(self, frame: np.ndarray) -> bool:
        if frame.size != self.samples_per_frame or frame_level(frame) < self.threshold:
            return False
        return bool(self._vad.is_speech(np.ascontiguousarray(frame, dtype="<i2").tobytes(), self.rate))

    def feed(self, frame: np.ndarray) -> bool:
        if self.fired:
            return False
        if self.is_voice(frame):
            self.active_ms += FRAME_MS
        else:
            self.active_ms = 0.0
        if self.active_ms >= self.duration_ms:
            self.fired = True
            return True
        return False


class SilenceDetector:
    """Silence since `start` or the last loud frame, measured on the caller's clock."""

    def __init__(self, threshold: float = 0.01, duration_ms: float = 300, start: float = 0.0) -> None:
        self.threshold = float(threshold)
        self.duration_s = float(duration_ms) / 1000.0
        self.last_loud = start

    def feed(self, frame: np.ndarray, now: float) -> None:
        if frame_level(frame) > self.threshold:
            self.last_loud = now

    def expired(self, now: float) -> bool:
        return now - self.last_loud >= self.duration_s
