"""Global call recording on real calls: a SIPp trunk caller sends 440 Hz, the flow plays a 1 kHz
prompt to it, and the recording (started by the trigger's Recording branch and
respond.toRecord, or by recording.start) holds the caller on channel 1 and the prompt on
channel 2 for the call's duration; pause removes the paused time; the mono mix holds both; a
waiting respond returns the final result; and recordings survive kill -9 as valid WAVs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from softswitch.flow.loader import load_flow_text
from tests.support.audio import dominant_frequency, tone
from tests.support.pcap import write_rtp_pcap
from tests.support.sipp import Sipp
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

CALL_S = 5.0  # the caller hangs up this long after its ACK

RECORDED_CALL_FLOW = """
name: recorded
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main, enableCallRecording: true}
    next: {Call: [answer], Recording: [record_call]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [prompt]}
  - name: prompt
    op: media.playAudio
    params: {sourceType: file, filePath: "TONE"}
  - name: record_call
    op: respond.toRecord
    params:
      recordFilePath: "SUBDIR/{{ $json.legId }}.wav"
      recordSplitChannels: true
      waitForRecordingCompletion: WAIT
    next: {Result: [recorded]}
  - name: recorded
    op: core.noop
"""

PAUSED_CALL_FLOW = """
name: paused
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [record]}
  - name: record
    op: recording.start
    params: {recordFilePath: "SUBDIR/{{ $json.legId }}.wav"}
    next: {Result: [prompt]}
  - name: prompt
    op: media.playAudio
    params: {sourceType: file, filePath: "TONE", options: {mediaExecutionMode: background}}
    next: {Result: [first_second]}
  - name: first_second
    op: call.wait
    params: {timeoutSeconds: 1}
    next: {Timeout: [pause]}
  - name: pause
    op: recording.control
    params: {recordingControlAction: pause}
    next: {Result: [paused_for_2s]}
  - name: paused_for_2s
    op: call.wait
    params: {timeoutSeconds: 2}
    next: {Timeout: [resume]}
  - name: resume
    op: recording.control
    params: {recordingControlAction: resume}
    next: {Result: [until_hangup]}
  - name: until_hangup
    op: call.wait
    params: {timeoutSeconds: 30}
"""


def band_share(audio: np.ndarray, rate: int, freq: float) -> float:
    """The share of the spectrum's energy within ±15 Hz of `freq`."""
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(spectrum[np.abs(freqs - freq) < 15].sum() / max(spectrum.sum(), 1e-9))


def make_tone_wav(path: Path, freq: float, seconds: float) -> Path:
    sf.write(path, tone(freq, seconds), 8000, subtype="PCM_16")
    return path


class FlowOnUa:
    """Installs a flow as the in-process UA's call handler and records its executions."""

    def __init__(self, ua, flow_text: str) -> None:
        from softswitch.flow.runtime import FlowEngine

        self.ua = ua
        self.engine = ua.run_sync(lambda: FlowEngine(ua, [load_flow_text(flow_text, "test.yaml")]))
        self.executions: list = []
        fire = self.engine.runner.fire

        def recording_fire(*args, **kwargs):
            execution = fire(*args, **kwargs)
            self.executions.append(execution)
            return execution

        self.engine.runner.fire = recording_fire

    def __enter__(self) -> "FlowOnUa":
        self.ua.run_sync(lambda: setattr(self.ua, "handler", self.engine))
        return self

    def __exit__(self, *exc) -> None:
        self.ua.run_sync(lambda: setattr(self.ua, "handler", None))
        self.ua.run_sync(self.engine.shutdown)

    def latest(self, node: str) -> dict | None:
        for execution in self.executions:
            item = execution.latest.get(node)
            if item is not None:
                return dict(item.json)
        return None


def call_once(ua, tmp_path: Path, hold_s: float = CALL_S):
    pcap = tmp_path / "caller440.pcap"
    write_rtp_pcap(pcap, tone(440, hold_s + 1.0))
    return Sipp("uac_call_pcap", f"127.0.0.1:{ua.config.sip.udp_port}", calls=1, timeout_s=30,
                variables={"caller": "5550440", "hold_ms": int(hold_s * 1000)}, keys={"pcap": pcap})


@pytest.mark.parametrize("wait", [False, True], ids=["respond-returns-at-once", "respond-waits-for-the-end"])
def test_split_recording_of_a_trunk_call_holds_the_caller_on_channel_1_and_our_prompt_on_channel_2(
        ua, tmp_path, wait):
    prompt = make_tone_wav(tmp_path / "tone1k.wav", 1000, 15.0)
    flow = (RECORDED_CALL_FLOW.replace("TONE", str(prompt)).replace("WAIT", "true" if wait else "false")
            .replace("SUBDIR", tmp_path.name))
    with FlowOnUa(ua, flow) as run:
        with call_once(ua, tmp_path) as caller:
            result = caller.wait(30)
        assert result.ok, str(result)
        wait_for(lambda: not ua.run_sync(lambda: dict(run.engine.recordings.by_leg)), 5, "the recording to end")
        record_item = run.latest("trunk_main")
        wait_for(lambda: run.latest("recorded") is not None, 5, "respond.toRecord's Result")
        responded = run.latest("recorded")

    files = list((ua.config.directories.recordings / tmp_path.name).glob("*.wav"))
    assert len(files) == 1
    leg_id = files[0].stem
    audio, rate = sf.read(files[0], dtype="int16")
    assert rate == 8000 and audio.ndim == 2 and audio.shape[1] == 2
    seconds = len(audio) / rate
    assert abs(seconds - CALL_S) < 1.0, f"recorded {seconds:.2f} s of a {CALL_S} s call"
    middle = slice(int(0.5 * rate), int((seconds - 0.5) * rate))
    inbound, outbound = audio[middle, 0], audio[middle, 1]
    assert abs(dominant_frequency(inbound, rate) - 440) < 5, "channel 1 is the caller"
    assert abs(dominant_frequency(outbound, rate) - 1000) < 5, "channel 2 is what we sent the caller"
    assert band_share(inbound, rate, 1000) < 0.05 and band_share(outbound, rate, 440) < 0.05

    # The Recording branch carried the request; respond.toRecord answered it.
    assert record_item is not None and record_item["eventType"] == "invite"  # the Call item came first
    assert responded["legId"] == leg_id and responded["active"] is True
    assert responded["filePath"] == str(files[0])
    assert responded["sipPbx"]["recordRequestId"] == responded["recordRequestId"]
    assert responded["recordRequestId"].startswith("record_")
    if wait:  # the final result: the call ended the recording
        assert responded["reason"] == "call_ended"
        assert responded["durationMs"] == round(seconds * 1000)
        assert responded["bytesProduced"] == files[0].stat().st_size
    else:
        assert "durationMs" not in responded


def test_a_16khz_split_recording_keeps_the_call_length_and_both_channels_to_the_end(ua, tmp_path):
    """recordWavSampleRate 16000: the bridge's 8 kHz frames are resampled as they stream (soxr);
    the tail the resampler holds back is flushed at the end, and channel 2 stays channel 2."""
    prompt = make_tone_wav(tmp_path / "tone1k.wav", 1000, 15.0)
    flow = (RECORDED_CALL_FLOW.replace("TONE", str(prompt)).replace("WAIT", "true").replace("SUBDIR", tmp_path.name)
            .replace("recordSplitChannels: true",
                     "recordSplitChannels: true\n      options: {recordWavSampleRate: 16000}"))
    with FlowOnUa(ua, flow) as run:
        with call_once(ua, tmp_path) as caller:
            result = caller.wait(30)
        assert result.ok, str(result)
        wait_for(lambda: not ua.run_sync(lambda: dict(run.engine.recordings.by_leg)), 5, "the recording to end")
        wait_for(lambda: run.latest("recorded") is not None, 5, "respond.toRecord's Result")
        responded = run.latest("recorded")

    [path] = list((ua.config.directories.recordings / tmp_path.name).glob("*.wav"))
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 2, "PCM_16")
    audio, rate = sf.read(path, dtype="int16")
    seconds = len(audio) / rate
    assert abs(seconds - CALL_S) < 1.0, f"recorded {seconds:.2f} s of a {CALL_S} s call"
    assert responded["durationMs"] == round(seconds * 1000)
    # The file holds whole 20 ms bridge frames, resampled: nothing held back by the resampler is lost.
    assert len(audio) % (rate // 50) == 0, f"{len(audio)} samples is not a whole number of 20 ms frames"
    tail = audio[-int(0.7 * rate):-int(0.2 * rate)]
    assert abs(dominant_frequency(tail[:, 0], rate) - 440) < 5, "channel 1 is the caller, to the end"
    assert abs(dominant_frequency(tail[:, 1], rate) - 1000) < 5, "channel 2 is the prompt, to the end"
    assert band_share(tail[:, 0], rate, 1000) < 0.05 and band_share(tail[:, 1], rate, 440) < 0.05


def test_pause_removes_the_paused_time_and_the_mono_mix_holds_both_directions(ua, tmp_path):
    prompt = make_tone_wav(tmp_path / "tone1k.wav", 1000, 15.0)
    with FlowOnUa(ua, PAUSED_CALL_FLOW.replace("TONE", str(prompt)).replace("SUBDIR", tmp_path.name)) as run:
        with call_once(ua, tmp_path) as caller:
            result = caller.wait(30)
        assert result.ok, str(result)
        wait_for(lambda: not ua.run_sync(lambda: dict(run.engine.recordings.by_leg)), 5, "the recording to end")
        control = run.latest("resume")
    assert control is not None and control["action"] == "resume"

    [path] = list((ua.config.directories.recordings / tmp_path.name).glob("*.wav"))
    audio, rate = sf.read(path, dtype="int16")
    assert audio.ndim == 1
    seconds = len(audio) / rate
    assert abs(seconds - (CALL_S - 2.0)) < 1.0, f"{seconds:.2f} s: the 2 s pause must not be in the file"
    body = audio[int(0.3 * rate):int((seconds - 0.3) * rate)]
    assert band_share(body, rate, 440) > 0.2, "the caller is in the mix"
    assert band_share(body, rate, 1000) > 0.2, "the prompt is in the mix"


# Every call recorded to <legId>.wav in the recordings directory; the respond returns at once.
KILL_FLOW = RECORDED_CALL_FLOW.replace("SUBDIR/", "").replace("WAIT", "false")


def test_recordings_of_20_calls_are_valid_wavs_after_kill_9_holding_the_audio_up_to_the_kill(
        server_factory, tmp_path):
    calls = 20
    prompt = make_tone_wav(tmp_path / "tone1k.wav", 1000, 60.0)
    flow_file = tmp_path / "recorded.yaml"
    flow_file.write_text(KILL_FLOW.replace("TONE", str(prompt)))
    server = server_factory(flows=[str(flow_file)])
    recordings = tmp_path / "recordings"
    pcap = tmp_path / "caller440.pcap"
    write_rtp_pcap(pcap, tone(440, 30.0))
    first_seen: dict[Path, float] = {}

    def look() -> int:
        now = time.monotonic()
        for path in recordings.glob("*.wav"):
            first_seen.setdefault(path, now)
        return len(first_seen)

    callers = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=calls, rate=10, limit=calls,
                   timeout_s=90, variables={"caller": "5550440", "hold_ms": 60000}, keys={"pcap": pcap})
    with callers:
        deadline = time.monotonic() + 30
        while look() < calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(first_seen) == calls, f"{len(first_seen)} of {calls} calls were recorded:\n{server.text()[-3000:]}"
        time.sleep(4.0)
        killed_at = time.monotonic()
        server.kill()  # SIGKILL: no shutdown, no header written on close
        callers.stop()

    def check(label: str, tolerance_short: float) -> None:
        for path, seen in sorted(first_seen.items()):
            info = sf.info(path)  # raises if the file is not a valid WAV
            assert info.samplerate == 8000 and info.channels == 2 and info.subtype == "PCM_16", (label, path)
            audio, rate = sf.read(path, dtype="int16")
            expected = killed_at - seen
            got = len(audio) / rate
            assert expected - tolerance_short <= got <= expected + 0.3, (
                f"{label}: {path.name} holds {got:.2f} s; {expected:.2f} s were recorded before the kill")
            tail = audio[-4000:, 0] if len(audio) >= 8000 else audio[:, 0]
            assert abs(dominant_frequency(tail, rate) - 440) < 5, f"{label}: {path.name} lost the caller's audio"

    # Before any repair: each file is already a valid WAV whose header lags by at most 0.5 s of
    # audio (and one drain interval).
    check("before the start-up repair", 1.0)

    restarted = server_factory(flows=[str(flow_file)])
    assert restarted.wait_for_log("repaired", 10), restarted.text()[-2000:]
    # After the repair the header covers every byte on disk: only the last drain is missing.
    check("after the start-up repair", 0.5)
    sizes = {path: path.stat().st_size for path in first_seen}
    assert all((size - 44) % 4 == 0 for size in sizes.values()), "whole stereo frames only"


BRIDGED_FLOW = """
name: bridged
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main, enableCallRecording: true}
    next: {Call: [answer], Recording: [record_call]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [dial]}
  - name: dial
    op: dial.make
    params: {callMode: trunk, ref: trunk_main, destination: "2000"}
    next: {Result: [wait_agent]}
  - name: wait_agent
    op: dial.wait
    params: {dialTimeoutSeconds: 10}
    next: {Answered: [bridge]}
  - name: bridge
    op: call.bridge
    params: {legAId: "{{ $('answer').item.json.legId }}", legBId: "{{ $json.legId }}"}
    next: {Success: [until_caller_leaves]}
  - name: until_caller_leaves
    op: call.wait
    params:
      timeoutSeconds: 30
      legIds: ["{{ $('wait_agent').item.json.legId }}"]
      options: {interruptReasons: [call_bridge_removed_peer_ended]}
    next: {Interrupted: [hang_up_agent]}
  - name: hang_up_agent
    op: call.hangup
  - name: record_call
    op: respond.toRecord
    params: {recordFilePath: "{{ $json.direction }}-{{ $json.legId }}.wav", recordSplitChannels: true}
"""


def test_a_bridged_call_records_the_caller_and_the_answered_outbound_leg_each_from_its_own_side(
        server_factory, tmp_path):
    from tests.support.actors import uas_answer

    flow_file = tmp_path / "bridged.yaml"
    flow_file.write_text(BRIDGED_FLOW)
    agent_pcap, caller_pcap = tmp_path / "agent1k.pcap", tmp_path / "caller440.pcap"
    write_rtp_pcap(agent_pcap, tone(1000, 15.0))
    write_rtp_pcap(caller_pcap, tone(440, CALL_S + 1.0))
    with uas_answer(agent_pcap, timeout_s=40) as agent:
        server = server_factory(
            flows=[str(flow_file)],
            connections={"uas": {"sip_server": "127.0.0.1", "port": agent.local_port}},
            trunks={"trunk_main": {"address": "127.0.0.1", "port": 0, "connection": "uas"}})
        caller = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                      variables={"caller": "5550440", "hold_ms": int(CALL_S * 1000)}, keys={"pcap": caller_pcap})
        with caller:
            result = caller.wait(30)
        assert result.ok, str(result) + server.text()[-3000:]
        agent_result = agent.wait(15)  # the flow hangs the agent up when the caller leaves
        assert agent_result.ok, str(agent_result)
    server.stop()

    recordings = tmp_path / "recordings"
    inbound = list(recordings.glob("inbound-*.wav"))
    outbound = list(recordings.glob("outbound-*.wav"))
    assert len(inbound) == 1 and len(outbound) == 1, f"{sorted(p.name for p in recordings.iterdir())}\n{server.text()[-3000:]}"
    for path, own, peer in ((inbound[0], 440, 1000), (outbound[0], 1000, 440)):
        audio, rate = sf.read(path, dtype="int16")
        assert audio.ndim == 2, path.name
        seconds = len(audio) / rate
        assert 2.0 < seconds < CALL_S + 1.0, f"{path.name}: {seconds:.2f} s"
        # The last second before the caller left: both bridged, each side's own voice on channel
        # 1 and the peer's on channel 2.
        tail = audio[-int(1.5 * rate):-int(0.5 * rate)]
        assert abs(dominant_frequency(tail[:, 0], rate) - own) < 5, f"{path.name}: channel 1"
        assert abs(dominant_frequency(tail[:, 1], rate) - peer) < 5, f"{path.name}: channel 2"
    caller_seconds = len(sf.read(inbound[0], dtype="int16")[0]) / 8000
    assert abs(caller_seconds - CALL_S) < 1.0


def test_sigterm_finalizes_every_recording_with_a_complete_header(server_factory, tmp_path):
    calls = 3
    prompt = make_tone_wav(tmp_path / "tone1k.wav", 1000, 60.0)
    flow_file = tmp_path / "recorded.yaml"
    flow_file.write_text(KILL_FLOW.replace("TONE", str(prompt)))
    server = server_factory(flows=[str(flow_file)])
    recordings = tmp_path / "recordings"
    pcap = tmp_path / "caller440.pcap"
    write_rtp_pcap(pcap, tone(440, 10.0))
    callers = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=calls, rate=10, limit=calls,
                   timeout_s=60, variables={"caller": "5550440", "hold_ms": 30000}, keys={"pcap": pcap})
    with callers:
        wait_for(lambda: len(list(recordings.glob("*.wav"))) == calls, 15, "every call to be recorded")
        time.sleep(2.0)
        assert server.stop() == 0, server.text()[-2000:]
        callers.stop()
    assert server.text().count("finalized (daemon_shutdown)") == calls, server.text()[-3000:]
    for path in recordings.glob("*.wav"):
        info = sf.info(path)
        assert info.frames * 4 + 44 == path.stat().st_size, f"{path.name}: the header must cover every byte"
        assert info.frames / info.samplerate > 1.5
