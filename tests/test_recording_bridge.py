"""Call recorders on the real conference bridge (in-process endpoint, no SIP): frame ports stand
in for a leg (what it sends us) and for what softswitch plays to it. The outbound channel hears
every source connected into the leg's slot, before or after the recording starts, through the
bridge's mirrors; disconnected sources stop being recorded; channels stay aligned."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from tests.support.audio import dominant_frequency, tone
from tests.support.waiting import wait_for

pytestmark = pytest.mark.native


def level(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if len(audio) else 0.0


def test_split_recording_holds_the_leg_on_channel_1_and_every_source_into_it_on_channel_2(ua, tmp_path):
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort
    from softswitch.media.recorders import CallRecorder

    state: dict = {}

    def setup():
        leg = FramePort(ua, "fake-leg", capacity_frames=256)
        early = FramePort(ua, "early-source", capacity_frames=256)
        leg.write(tone(440, 4.0))  # what the "leg" sends us
        early.write(tone(1000, 1.0))  # a prompt already playing when the recording starts
        bridge.connect(early.slot, leg.slot)
        rec = CallRecorder(ua, tmp_path / "split.wav", split=True)
        rec.attach(leg.slot)
        state.update(leg=leg, early=early, rec=rec)
        return rec.slot

    assert ua.run_sync(setup) is not None
    try:
        time.sleep(1.5)  # the early prompt ends after 1 s; then half a second of nothing

        def later_source():
            late = FramePort(ua, "late-source", capacity_frames=256)
            late.write(tone(600, 1.0))
            bridge.connect(late.slot, state["leg"].slot)  # connected after the recording began
            state["late"] = late

        ua.run_sync(later_source)
        time.sleep(1.2)
        ua.run_sync(lambda: bridge.disconnect(state["late"].slot, state["leg"].slot))
        result = ua.run_sync(lambda: state["rec"].close())
        leg_slot = ua.run_sync(lambda: state["leg"].slot)
        assert ua.run_sync(lambda: ua.bridge.mirrors_of(leg_slot)) == frozenset()
    finally:
        ua.run_sync(lambda: [state[k].stop() for k in ("leg", "early", "late") if k in state])

    audio, rate = sf.read(result.path, dtype="int16")
    assert rate == 8000 and audio.ndim == 2 and audio.shape[1] == 2
    assert abs(len(audio) / rate - 2.7) < 0.4, f"{len(audio) / rate:.2f} s recorded"
    assert result.duration_ms == round(len(audio) / rate * 1000)
    inbound, outbound = audio[:, 0], audio[:, 1]
    assert abs(dominant_frequency(inbound[:8000], rate) - 440) < 5
    assert abs(dominant_frequency(outbound[800:6400], rate) - 1000) < 5, "the prompt playing before the start"
    late_part = outbound[int(1.7 * rate):int(2.4 * rate)]
    assert abs(dominant_frequency(late_part, rate) - 600) < 5, "the source connected after the start"
    assert level(outbound[int(1.15 * rate):int(1.45 * rate)]) < 50, "nothing connected between the two"
    # The leg's own audio is never on the outbound channel, nor the sources on the inbound one.
    assert abs(dominant_frequency(inbound[int(1.7 * rate):int(2.4 * rate)], rate) - 440) < 5


def test_mono_recording_mixes_both_directions_and_pause_removes_the_paused_time(ua, tmp_path):
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort
    from softswitch.media.recorders import CallRecorder

    state: dict = {}

    def setup():
        leg = FramePort(ua, "fake-leg", capacity_frames=256)
        source = FramePort(ua, "source", capacity_frames=256)
        leg.write(tone(440, 4.5))
        source.write(tone(1000, 4.5))
        rec = CallRecorder(ua, tmp_path / "mono.wav")
        bridge.connect(source.slot, leg.slot)
        rec.attach(leg.slot)
        state.update(leg=leg, source=source, rec=rec)

    ua.run_sync(setup)
    try:
        time.sleep(1.0)
        ua.run_sync(lambda: state["rec"].pause())
        time.sleep(1.5)
        ua.run_sync(lambda: state["rec"].resume())
        time.sleep(1.0)
        result = ua.run_sync(lambda: state["rec"].close())
    finally:
        ua.run_sync(lambda: [state[k].stop() for k in ("leg", "source") if k in state])

    audio, rate = sf.read(result.path, dtype="int16")
    assert audio.ndim == 1
    seconds = len(audio) / rate
    assert abs(seconds - 2.0) < 0.35, f"{seconds:.2f} s: the 1.5 s pause must not be written"
    spectrum = np.abs(np.fft.rfft(audio[:8000].astype(np.float64)))
    freqs = np.fft.rfftfreq(8000, 1 / rate)
    for f in (440, 1000):  # both directions are in the mix
        band = spectrum[(freqs > f - 10) & (freqs < f + 10)].max()
        assert band > 0.2 * spectrum.max(), f"{f} Hz missing from the mono mix"


def test_a_recorder_frees_its_taps_and_mirror_when_closed(ua, tmp_path):
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort
    from softswitch.media.recorders import CallRecorder

    def run():
        before = bridge.active_ports()
        leg = FramePort(ua, "fake-leg")
        rec = CallRecorder(ua, tmp_path / "x.wav", split=True)
        rec.attach(leg.slot)
        during = bridge.active_ports()
        mirrors = ua.bridge.mirrors_of(leg.slot)
        rec.close()
        after_close = ua.bridge.mirrors_of(leg.slot)
        leg.close()
        return before, during, mirrors, after_close

    before, during, mirrors, after_close = ua.run_sync(run)
    assert during == before + 3 and len(mirrors) == 1 and after_close == frozenset()
    wait_for(lambda: ua.run_sync(bridge.active_ports) == before, 2, "the taps leaving the bridge")


def test_both_channels_stay_time_aligned_through_the_call(ua, tmp_path):
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort
    from softswitch.media.recorders import CallRecorder

    rate = 8000
    signal = np.zeros(4 * rate, dtype=np.int16)
    for start in (0.5, 1.7, 3.2):  # the same clicks, sent both ways at once
        i = int(start * rate)
        signal[i:i + 80] = 12000
    state: dict = {}

    def setup():
        leg = FramePort(ua, "fake-leg", capacity_frames=256)
        source = FramePort(ua, "source", capacity_frames=256)
        rec = CallRecorder(ua, tmp_path / "aligned.wav", split=True)
        bridge.connect(source.slot, leg.slot)
        rec.attach(leg.slot)
        # Written in one UA-thread call: the clock can tick between the two writes at most once.
        leg.write(signal)
        source.write(signal)
        state.update(leg=leg, source=source, rec=rec)

    ua.run_sync(setup)
    try:
        time.sleep(4.3)
        result = ua.run_sync(lambda: state["rec"].close())
    finally:
        ua.run_sync(lambda: [state[k].stop() for k in ("leg", "source") if k in state])
    audio, _ = sf.read(result.path, dtype="int16")
    onsets = [np.flatnonzero(np.abs(audio[:, ch].astype(np.int32)) > 6000) for ch in (0, 1)]
    for ch in (0, 1):
        clicks = onsets[ch][np.insert(np.diff(onsets[ch]) > 800, 0, True)]
        assert len(clicks) == 3, f"channel {ch + 1}: {len(clicks)} clicks"
        onsets[ch] = clicks
    offsets = onsets[1] - onsets[0]
    assert np.all(np.abs(offsets) <= 160), f"channels drift apart: offsets {offsets.tolist()} samples"
    assert len(set(offsets.tolist())) == 1, "the offset must not change during the call"
