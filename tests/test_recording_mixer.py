"""The call recording's data path on synthetic frames: mono mix, stereo split, alignment of the
two taps (carry and silence padding), pause, and resampling to the file's rate."""

from __future__ import annotations

import numpy as np
import pytest

from softswitch.media.recorders import MAX_SKEW_FRAMES, RecordingMixer, mix_frames

SPF = 160
_EMPTY = np.zeros(0, dtype=np.int16)


def frames(value: int, count: int) -> np.ndarray:
    return np.full(count * SPF, value, dtype=np.int16)


class Sink:
    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    def __call__(self, samples: np.ndarray) -> None:
        self.chunks.append(samples.copy())

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)


def mixer(channels: int, **kw) -> tuple[RecordingMixer, Sink]:
    sink = Sink()
    return RecordingMixer(sink, channels=channels, samples_per_frame=SPF, **kw), sink


def test_mono_mix_is_the_clipped_sum_of_both_directions():
    mixed = mix_frames(np.array([1000, 30000, -30000], np.int16), np.array([200, 10000, -10000], np.int16), 1)
    assert mixed.dtype == np.int16
    assert mixed.tolist() == [1200, 32767, -32768]


def test_split_puts_inbound_on_channel_1_and_outbound_on_channel_2():
    m, sink = mixer(2)
    m.push(frames(100, 5), frames(-7, 5))
    audio = sink.audio
    assert audio.shape == (5 * SPF, 2)
    assert (audio[:, 0] == 100).all() and (audio[:, 1] == -7).all()


def test_a_tap_one_frame_ahead_is_carried_so_channels_stay_aligned():
    m, sink = mixer(2)
    # Drain 1 caught the inbound tap one frame ahead; drain 2 the outbound one.
    m.push(np.concatenate([frames(1, 3), frames(2, 1)]), frames(1, 3))
    assert len(sink.audio) == 3 * SPF  # the fourth inbound frame waits for its partner
    m.push(frames(3, 1), np.concatenate([frames(2, 1), frames(3, 1)]))
    audio = sink.audio
    assert len(audio) == 5 * SPF
    assert (audio[:, 0] == audio[:, 1]).all(), "frame n of each tap lands in the same row"


def test_a_lasting_gap_is_padded_with_silence_to_keep_real_time():
    m, sink = mixer(2)
    gap = MAX_SKEW_FRAMES + 2
    m.push(frames(5, 10), frames(9, 10 - gap))  # the outbound tap lost `gap` frames
    audio = sink.audio
    assert len(audio) == 10 * SPF
    assert (audio[:, 0] == 5).all()
    assert (audio[-gap * SPF:, 1] == 0).all() and (audio[:(10 - gap) * SPF, 1] == 9).all()


def test_the_final_push_flushes_what_is_carried():
    m, sink = mixer(1)
    m.push(frames(10, 2), frames(1, 1))
    assert len(sink.audio) == SPF
    m.push(frames(0, 0), frames(0, 0), final=True)
    audio = sink.audio
    assert len(audio) == 2 * SPF
    assert (audio[:SPF] == 11).all() and (audio[SPF:] == 10).all()


def test_paused_audio_is_not_written():
    m, sink = mixer(1)
    m.push(frames(1, 10), frames(1, 10))
    m.pause()
    m.push(frames(7, 50), frames(7, 50))
    m.resume()
    m.push(frames(3, 10), frames(0, 10))
    audio = sink.audio
    assert len(audio) == 20 * SPF
    assert set(np.unique(audio).tolist()) == {2, 3}
    assert m.frames_written == 20 * SPF


def test_resume_drops_a_frame_carried_from_before_the_pause():
    m, sink = mixer(2)
    m.push(frames(1, 2), frames(1, 1))  # one inbound frame carried
    m.pause()
    m.resume()
    m.push(frames(4, 1), frames(4, 1))
    audio = sink.audio
    assert len(audio) == 2 * SPF
    assert (audio[SPF:] == 4).all(), "the carried pre-pause frame must not pair with post-resume audio"


def _tone(freq: float, n: int, rate: int = 8000, level: float = 8000) -> np.ndarray:
    return np.round(np.sin(2 * np.pi * freq * np.arange(n) / rate) * level).astype(np.int16)


@pytest.mark.parametrize("rate", [16000, 11025])
def test_resampling_keeps_duration_and_tone(rate):
    m, sink = mixer(1, bridge_rate=8000, rate=rate)
    tone = _tone(440, 8000)
    for i in range(0, 8000, SPF):  # in 20 ms batches, as drains deliver them
        m.push(tone[i:i + SPF], np.zeros(SPF, np.int16))
    m.push(_EMPTY, _EMPTY, final=True)  # the recording closes: the resampler's tail is flushed
    audio = sink.audio
    assert abs(len(audio) - rate) <= 1, "the held-back tail must reach the file"
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64)))
    peak = np.argmax(spectrum) * rate / len(audio)
    assert abs(peak - 440) < 3
    level = np.sqrt(np.mean(audio[rate // 10:-rate // 10].astype(np.float64) ** 2))
    assert level == pytest.approx(8000 / np.sqrt(2), rel=0.02)


def test_resampling_in_odd_batches_loses_nothing_and_keeps_stereo_aligned():
    """Batches of any size join: the file is what one batch would give, both channels equally long."""
    inbound, outbound = _tone(440, 4003), _tone(1000, 4003)
    whole, whole_sink = mixer(2, bridge_rate=8000, rate=16000)
    whole.push(inbound, outbound, final=True)
    m, sink = mixer(2, bridge_rate=8000, rate=16000)
    for i in range(0, 4003, 7):
        m.push(inbound[i:i + 7], outbound[i:i + 7])
    m.push(_EMPTY, _EMPTY, final=True)
    audio = sink.audio
    assert audio.shape == (8006, 2) == whole_sink.audio.shape
    assert np.abs(audio.astype(np.int32) - whole_sink.audio).max() <= 4  # rounding only (tones at 8000)
    body = audio[800:-800].astype(np.float64)
    for channel, freq in ((0, 440), (1, 1000)):
        spectrum = np.abs(np.fft.rfft(body[:, channel]))
        assert abs(np.argmax(spectrum) * 16000 / len(body) - freq) < 3


def test_a_recording_closed_while_paused_keeps_its_resampled_tail():
    m, sink = mixer(1, bridge_rate=8000, rate=16000)
    m.push(_tone(440, 800), np.zeros(800, np.int16))
    m.pause()
    m.push(_tone(440, 160), np.zeros(160, np.int16), final=True)
    assert len(sink.audio) == 1600
