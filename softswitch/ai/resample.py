"""Streaming resamplers for AI audio that return every chunk's output at once.

soxr's streaming resampler holds output back in blocks (up to ~160 ms at its HQ setting for
8 → 48 kHz), which would add that much latency each way. The profiles' rates are integer
multiples of the bridge's 8 kHz (16, 24, 48 kHz), so a windowed-sinc polyphase FIR (about 1 ms
of delay) does the job chunk by chunk with numpy. Other ratios (a generic profile at 44.1 kHz)
use soxr's low-quality stream, whose blocks are small (about 40 ms).
"""

from __future__ import annotations

import numpy as np

TAPS_PER_PHASE = 24


def _lowpass(taps: int, cutoff: float) -> np.ndarray:
    """Windowed sinc (Blackman), `cutoff` as a fraction of the sample rate (0..0.5), unity gain."""
    n = np.arange(taps) - (taps - 1) / 2.0
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    return h / h.sum()


class StreamResampler:
    """int16 mono in, int16 mono out; keeps the filter's history between chunks."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._soxr = None
        self.up = out_rate // in_rate if out_rate % in_rate == 0 else 0
        self.down = in_rate // out_rate if in_rate % out_rate == 0 else 0
        if in_rate == out_rate:
            return
        if self.up > 1:
            taps = TAPS_PER_PHASE * self.up
            h = _lowpass(taps, 0.45 / self.up) * self.up
            # phase p of the output uses taps p, p+L, p+2L … against the input history
            self._phases = [h[p::self.up][::-1].copy() for p in range(self.up)]
            self._bank = np.stack(self._phases, axis=1)  # (taps per phase, phases)
            self._hist = np.zeros(TAPS_PER_PHASE - 1, dtype=np.float64)
        elif self.down > 1:
            taps = TAPS_PER_PHASE * self.down
            self._h = _lowpass(taps, 0.45 / self.down)[::-1].copy()
            self._hist = np.zeros(taps - 1, dtype=np.float64)
            self._skip = 0  # input samples to skip before the next kept one
        else:
            import soxr
            self._soxr = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="LQ")

    def process(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples, dtype=np.int16)
        if self.in_rate == self.out_rate or x.size == 0:
            return x.copy()
        if self._soxr is not None:
            return self._soxr.resample_chunk(x)
        xx = np.concatenate([self._hist, x.astype(np.float64)])
        if self.up > 1:
            # one matrix product: every input position's window against every phase's taps
            windows = np.lib.stride_tricks.sliding_window_view(xx, TAPS_PER_PHASE)[:x.size]
            out = (windows @ self._bank).ravel()
            self._hist = xx[-(TAPS_PER_PHASE - 1):]
        else:
            # only the kept outputs: the windows that end on every down-th input sample
            windows = np.lib.stride_tricks.sliding_window_view(xx, self._h.size)
            out = windows[self._skip::self.down] @ self._h
            consumed = windows.shape[0] - self._skip
            self._skip = (-consumed) % self.down
            self._hist = xx[-(self._h.size - 1):]
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def flush(self) -> np.ndarray:
        """The tail still in the filter (end of a turn)."""
        if self._soxr is not None:
            return self._soxr.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return np.zeros(0, dtype=np.int16)
