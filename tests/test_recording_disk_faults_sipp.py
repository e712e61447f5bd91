"""A full and a read-only recordings disk on real calls: the recordings directory of a real
`softswitch run` is a small tmpfs this test mounts (and unmounts, also on failure).

Full disk: a trunk caller sends 440 Hz and hears a 1 kHz prompt while its call is recorded; the
disk is filled mid-call. The caller keeps hearing the prompt to the end; the recording is stopped
with one error line naming the file and the leg, and is a valid WAV whose header covers exactly
the frames on disk; the metric, `/status` and the call record say it failed. A second call on the
full disk leaves no file (no 0-byte WAV) and works; once space returns, a third call is recorded
whole and the status clears. Read-only disk: the same, on a tmpfs remounted read-only.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf

from tests.support.audio import dominant_frequency, tone
from tests.support.capture import LoopbackCapture
from tests.support.pcap import write_rtp_pcap
from tests.support.ports import free_port
from tests.support.sipp import Sipp
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sipp

CALL_S = 6.0
PROMPT_HZ, CALLER_HZ = 1000, 440

FLOW = """
name: recorded
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
    params: {recordFilePath: "{{ $json.legId }}.wav"}
    next: {Result: [prompt]}
  - name: prompt
    op: media.playAudio
    params: {sourceType: file, filePath: "TONE"}
"""


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/recordings as a 256 KiB tmpfs (the server's recordings directory). Requested
    before server_factory, so it is unmounted after the servers have stopped."""
    mount_point = tmp_path / "recordings"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the recordings directory needs root (run the sipp suite as root)")
    done = _run("mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount_point))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if _run("umount", str(mount_point)).returncode != 0:
            _run("umount", "-l", str(mount_point))


def fill(directory: Path) -> Path:
    """Write a filler file until the disk is full (ENOSPC); returns it."""
    filler = directory / "filler.bin"
    chunk = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    finally:
        os.close(fd)
    return filler


def start(server_factory, tmp_path: Path):
    prompt = tmp_path / "tone1k.wav"
    sf.write(prompt, tone(PROMPT_HZ, 30.0), 8000, subtype="PCM_16")
    flow_file = tmp_path / "recorded.yaml"
    flow_file.write_text(FLOW.replace("TONE", str(prompt)))
    return server_factory(flows=[str(flow_file)], metrics={"http_listen": f"127.0.0.1:{free_port('tcp')}"},
                          records={"call_records": str(tmp_path / "records" / "calls.jsonl")})


def caller(server, tmp_path: Path, name: str) -> Sipp:
    pcap = tmp_path / f"{name}.pcap"
    write_rtp_pcap(pcap, tone(CALLER_HZ, CALL_S + 1.0))
    return Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=1, timeout_s=30,
                variables={"caller": "5550440", "hold_ms": int(CALL_S * 1000)}, keys={"pcap": pcap})


def heard(cap: LoopbackCapture, port: int) -> np.ndarray:
    streams = [s for s in cap.streams(dst_port=port).values() if s.packets]
    assert streams, "the caller got no RTP"
    return max(streams, key=lambda s: len(s.packets)).audio()


def assert_prompt_heard_throughout(audio: np.ndarray, label: str) -> None:
    """The caller heard the 1 kHz prompt in every second of the call, the last included."""
    rate = 8000
    seconds = len(audio) / rate
    assert seconds > CALL_S - 1.5, f"{label}: the caller heard only {seconds:.1f} s"
    for start_s in np.arange(0.5, seconds - 1.0, 1.0):
        second = audio[int(start_s * rate):int((start_s + 1.0) * rate)]
        assert np.sqrt(np.mean(second.astype(np.float64) ** 2)) > 500, f"{label}: silence at {start_s:.1f} s"
        assert abs(dominant_frequency(second, rate) - PROMPT_HZ) < 10, f"{label}: not the prompt at {start_s:.1f} s"


def call_and_listen(server, tmp_path: Path, name: str, during=None) -> np.ndarray:
    uac = caller(server, tmp_path, name)
    with LoopbackCapture(f"udp and dst port {uac.media_port}", tmp_path / f"{name}-rtp.pcap") as cap:
        with uac:
            if during is not None:
                during()
            result = uac.wait(30)
    assert result.ok, str(result) + server.text()[-3000:]
    return heard(cap, uac.media_port)


def error_lines(server, path: Path) -> list[str]:
    return [line for line in server.text().splitlines() if "ERROR" in line and str(path) in line]


def wavs(directory: Path) -> set[Path]:
    return set(directory.glob("leg_*.wav"))


def assert_consistent_wav(path: Path) -> sf._SoundFileInfo:
    info = sf.info(path)  # raises if not a valid WAV
    assert info.subtype == "PCM_16" and info.channels == 1 and info.samplerate == 8000
    assert info.frames * 2 + 44 == path.stat().st_size, f"{path.name}: the header must match the frames on disk"
    data, _ = sf.read(path, dtype="int16")
    assert len(data) == info.frames
    return info


def records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "records" / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def record_of(tmp_path: Path, wav_name: str) -> dict:
    """The call record whose leg recorded `wav_name` (<legId>.wav)."""
    leg = wav_name.removesuffix(".wav")
    wait_for(lambda: any(r["legs"] and any(x["id"] == leg for x in r["legs"]) for r in records(tmp_path)), 10,
             f"the call record of {leg}")
    return next(r for r in records(tmp_path) if any(x["id"] == leg for x in r["legs"]))


def test_a_full_disk_stops_the_recording_once_keeps_a_valid_wav_and_the_calls_go_on(
        small_disk, server_factory, tmp_path):
    server = start(server_factory, tmp_path)

    # 1. The disk fills up mid-call.
    def fill_mid_call() -> None:
        wait_for(lambda: any(p.stat().st_size > 16000 for p in wavs(small_disk)), 10, "the recording to grow")
        fill(small_disk)

    audio = call_and_listen(server, tmp_path, "first", during=fill_mid_call)
    assert_prompt_heard_throughout(audio, "first call")
    [first] = wavs(small_disk)
    wait_for(lambda: error_lines(server, first), 5, "the recording's error line")
    lines = error_lines(server, first)
    leg_id = first.stem
    assert len(lines) == 1, "\n".join(lines)  # one line for the recording, not one per frame
    assert leg_id in lines[0] and "No space left on device" in lines[0], lines[0]
    assert "Traceback" not in server.text(), server.text()[-3000:]
    info = assert_consistent_wav(first)
    assert 0.5 < info.frames / 8000 < CALL_S - 1.0, f"{info.frames / 8000:.2f} s kept"
    data, rate = sf.read(first, dtype="int16")
    assert abs(dominant_frequency(data, rate) - PROMPT_HZ) < 10 or abs(dominant_frequency(data, rate) - CALLER_HZ) < 10
    metrics = server.metrics()
    assert metrics["softswitch_recording_failures_total"] == 1
    assert metrics["softswitch_recordings_failing"] == 1
    status = server.status()["recordings"]
    assert status["failing"] is True and status["failures"] == 1
    assert status["lastFailure"]["path"] == str(first) and leg_id in status["lastFailure"]["owner"]
    record = record_of(tmp_path, first.name)
    assert record["recordings"] == [str(first)]
    assert [f["path"] for f in record["recording_failures"]] == [str(first)]
    assert "No space left on device" in record["recording_failures"][0]["error"]

    # 2. A call on the full disk: it works and leaves no (0-byte) file.
    audio = call_and_listen(server, tmp_path, "second")
    assert_prompt_heard_throughout(audio, "second call (full disk)")
    assert wavs(small_disk) == {first}, sorted(p.name for p in small_disk.iterdir())
    wait_for(lambda: server.metrics()["softswitch_recording_failures_total"] == 2, 5, "the second failure")
    second_lines = [line for line in server.text().splitlines() if "ERROR" in line and str(small_disk) in line
                    and str(first) not in line]
    assert len(second_lines) == 1 and "No space left on device" in second_lines[0], second_lines
    assert server.status()["recordings"]["failing"] is True

    # 3. Space returns: the next call is recorded whole and the status clears.
    (small_disk / "filler.bin").unlink()
    audio = call_and_listen(server, tmp_path, "third")
    assert_prompt_heard_throughout(audio, "third call")
    [third] = wavs(small_disk) - {first}
    wait_for(lambda: "finalized (call_ended)" in server.text(), 5, "the third recording to be finalized")
    info = assert_consistent_wav(third)
    assert abs(info.frames / 8000 - CALL_S) < 1.0
    assert not error_lines(server, third)
    assert server.metrics()["softswitch_recordings_failing"] == 0
    status = server.status()["recordings"]
    assert status["failing"] is False and status["failures"] == 2 and status["recoveredAt"] is not None
    assert "recording_failures" not in record_of(tmp_path, third.name)

    # A restart does not call the cleanly finalized file "stopped while recording".
    assert server.stop() == 0
    restarted = start(server_factory, tmp_path)
    assert "repaired" not in restarted.text(), restarted.text()
    assert_consistent_wav(first)


def test_a_read_only_recordings_disk_is_one_clear_error_per_call_and_the_call_goes_on(
        small_disk, server_factory, tmp_path):
    remount = _run("mount", "-o", "remount,ro", str(small_disk))
    assert remount.returncode == 0, remount.stderr
    server = start(server_factory, tmp_path)

    audio = call_and_listen(server, tmp_path, "readonly")
    assert_prompt_heard_throughout(audio, "call on a read-only disk")
    assert not list(small_disk.iterdir())
    wait_for(lambda: [l for l in server.text().splitlines() if "ERROR" in l and str(small_disk) in l], 5,
             "the error line")
    lines = [line for line in server.text().splitlines() if "ERROR" in line and str(small_disk) in line]
    assert len(lines) == 1 and "Read-only file system" in lines[0] and "leg_" in lines[0], lines
    assert "Traceback" not in server.text(), server.text()[-3000:]
    assert server.metrics()["softswitch_recordings_failing"] == 1
    assert server.status()["recordings"]["failing"] is True

    # Writable again: the next call records and the status clears.
    assert _run("mount", "-o", "remount,rw", str(small_disk)).returncode == 0
    audio = call_and_listen(server, tmp_path, "writable")
    assert_prompt_heard_throughout(audio, "call after remount rw")
    [path] = wavs(small_disk)
    wait_for(lambda: "finalized (call_ended)" in server.text(), 5, "the recording to be finalized")
    assert abs(assert_consistent_wav(path).frames / 8000 - CALL_S) < 1.0
    assert server.status()["recordings"]["failing"] is False


RECORD_AUDIO_FLOW = """
name: record_audio
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
    op: media.recordAudio
    params: {maxDurationSeconds: 2, recordOutputType: file, recordFilePath: "{{ $json.legId }}.wav"}
    next: {Completed: [prompt]}
  - name: prompt
    op: media.playAudio
    params: {sourceType: file, filePath: "TONE"}
"""


def test_media_record_audio_on_a_read_only_disk_completes_failed_and_the_flow_goes_on(
        small_disk, server_factory, tmp_path):
    assert _run("mount", "-o", "remount,ro", str(small_disk)).returncode == 0
    prompt = tmp_path / "tone1k.wav"
    sf.write(prompt, tone(PROMPT_HZ, 30.0), 8000, subtype="PCM_16")
    flow_file = tmp_path / "record_audio.yaml"
    flow_file.write_text(RECORD_AUDIO_FLOW.replace("TONE", str(prompt)))
    server = server_factory(flows=[str(flow_file)], metrics={"http_listen": f"127.0.0.1:{free_port('tcp')}"})
    # The Completed branch plays the prompt: the caller hears it only if the flow went on.
    audio = call_and_listen(server, tmp_path, "record-audio")
    assert_prompt_heard_throughout(audio, "call whose recordAudio failed")
    assert not list(small_disk.iterdir())
    lines = [line for line in server.text().splitlines() if "ERROR" in line and str(small_disk) in line]
    assert len(lines) == 1 and "Read-only file system" in lines[0], lines
    assert server.metrics()["softswitch_recording_failures_total"] == 1
