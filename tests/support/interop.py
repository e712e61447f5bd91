"""The interop suite's shared scene: softswitch on its built-in default config (the assembled demo),
real softphones as the trunk caller and as agents, tone WAVs they send, and what each phone heard,
decoded from a loopback capture of its RTP ports and cut by wall-clock time."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from tests.support.audio import alaw_decode, dominant_frequency, ulaw_decode
from tests.support.capture import LoopbackCapture
from tests.support.ports import free_port, free_port_block
from tests.support.server import ServerProcess
from tests.support.softphone import Linphone

CALLER_HZ = 440  # what the trunk caller's phone sends
AGENT_HZ = 1000  # what an agent's phone sends
HOLD_HZ = 620  # the tests' hold music: media.hold_music = tone:620/1000


def tone_wav(path: Path, freq: float, seconds: float = 60.0) -> Path:
    """A mono 8 kHz 16-bit sine WAV (what a phone plays into its call)."""
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(path), "synth", str(seconds),
                    "sine", str(freq), "vol", "0.5"], check=True, capture_output=True, timeout=30)
    return path


@contextlib.contextmanager
def demo_server(tmp_path: Path, **overrides: object) -> Iterator[ServerProcess]:
    """`softswitch run` on the built-in default config (the assembled demo), on free ports, with
    its records and recordings under `tmp_path`; `overrides` are `--set` pairs (dots as `__`)."""
    port, rtp = free_port("both"), free_port_block(400, "udp")
    settings: dict[str, object] = {
        "sip.udp_port": port, "sip.tcp_port": port, "sip.rtp_port_start": rtp, "sip.rtp_port_count": 400,
        "directories.recordings": tmp_path / "recordings", "directories.state": tmp_path / "state",
        "records.call_records": tmp_path / "calls.jsonl", "records.queue_events": tmp_path / "queue.jsonl",
        "media.hold_music": f"tone:{HOLD_HZ}/1000", "logging.level": "debug",
    }
    settings.update({key.replace("__", "."): value for key, value in overrides.items()})
    args = [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]
    server = ServerProcess(None, args, port=port).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def phones(tmp_path: Path, *specs: dict) -> Iterator[list[Linphone]]:
    """Start one linphone-daemon per spec (Linphone keyword arguments); all are stopped after."""
    started: list[Linphone] = []
    try:
        for spec in specs:
            started.append(Linphone(tmp_path / spec.get("name", f"phone{len(started)}"), **spec).start())
        yield started
    finally:
        for phone in started:
            phone.stop()


def rtp_capture(tmp_path: Path, *phones_: Linphone, name: str = "rtp") -> LoopbackCapture:
    """A loopback capture of the RTP to the given phones (their configured port ranges)."""
    ranges = " or ".join(f"udp dst portrange {p.rtp_port}-{p.rtp_port + 19}" for p in phones_)
    return LoopbackCapture(ranges, tmp_path / f"{name}.pcap")


def heard_between(cap: LoopbackCapture, phone: Linphone, t0: float, t1: float) -> np.ndarray:
    """What `phone` was sent between wall-clock times t0 and t1 (PCMU/PCMA decoded, 8 kHz)."""
    chunks = []
    for packet in cap.packets():
        port = packet.dst[1]
        if not (phone.rtp_port <= port < phone.rtp_port + 20) or not (t0 <= packet.ts <= t1):
            continue
        data = packet.payload
        if len(data) < 12 or data[0] >> 6 != 2:
            continue
        pt = data[1] & 0x7F
        cc = data[0] & 0x0F
        body = data[12 + 4 * cc:]
        if pt == 0:
            chunks.append(ulaw_decode(body))
        elif pt == 8:
            chunks.append(alaw_decode(body))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def dominant(audio: np.ndarray) -> float:
    """The dominant frequency of a stretch of audio (0 for near silence or nothing)."""
    if len(audio) < 800 or np.sqrt(np.mean(audio.astype(np.float64) ** 2)) < 200:
        return 0.0
    return dominant_frequency(audio, 8000)


def mostly(audio: np.ndarray, freq: float, window: int = 1600, share: float = 0.8) -> bool:
    """Whether at least `share` of the 200 ms windows of `audio` are dominated by `freq`."""
    windows = [audio[i:i + window] for i in range(0, len(audio) - window + 1, window)]
    if not windows:
        return False
    hits = sum(abs(dominant(w) - freq) < 15 for w in windows)
    return hits >= share * len(windows)


def settle(seconds: float) -> float:
    """Sleep, and return the wall-clock time after (a mark to cut captures by)."""
    time.sleep(seconds)
    return time.time()
