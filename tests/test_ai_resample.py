"""The AI legs' streaming resampler: every 20 ms chunk comes out at once (no held-back blocks),
chunking does not change the output, and downsampling removes what 8 kHz cannot carry."""

from __future__ import annotations

import numpy as np
import pytest

from softswitch.ai.resample import StreamResampler
from tests.support.audio import dominant_frequency, tone


@pytest.mark.parametrize("rates", [(8000, 16000), (8000, 24000), (8000, 48000), (16000, 8000), (24000, 8000),
                                   (48000, 8000)])
def test_each_20ms_chunk_is_resampled_at_once_and_keeps_the_tone(rates):
    a, b = rates
    r = StreamResampler(a, b)
    x = tone(440, 1.0, rate=a)
    outs = [r.process(x[i:i + a // 50]) for i in range(0, len(x), a // 50)]
    assert {len(o) for o in outs} == {b // 50}
    y = np.concatenate(outs)
    assert abs(dominant_frequency(y[b // 10:], b) - 440) < 1
    assert abs(int(np.abs(y[b // 10:]).max()) - int(np.abs(x).max())) < 100


def test_chunk_sizes_do_not_change_the_output():
    x = tone(440, 1.0, rate=24000)
    whole = StreamResampler(24000, 8000).process(x)
    r = StreamResampler(24000, 8000)
    parts, i = [], 0
    for n in [37, 480, 1, 999, 160] * 200:
        if i >= len(x):
            break
        parts.append(r.process(x[i:i + n]))
        i += n
    assert np.array_equal(whole, np.concatenate(parts))


def test_downsampling_filters_out_tones_above_the_new_nyquist():
    y = StreamResampler(24000, 8000).process(tone(6000, 0.5, rate=24000))
    assert np.sqrt(np.mean(y[200:].astype(float) ** 2)) < 50
