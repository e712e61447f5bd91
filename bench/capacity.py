#!/usr/bin/env python3
"""Plain-call capacity: the highest concurrency softswitch carries cleanly, as a ratio of a bare
pjsua2 script doing the same media work on the same build, measured in the same run.

The plain workload (this script): SIPp (trunk side) sends INVITE and 10 s of a 440 Hz tone as
RTP; the server answers, plays a prompt into the call and records the caller to WAV; SIPp hangs
up after 10 s. Other workloads (`bench/ivr_capacity.py`) describe their calls with a `Workload`
and reuse the same ramp. At each concurrency step N, 2N calls arrive at N per call length
(so about N are up at once). A step is clean when no call failed, every call's RTP stream was
seen, and the 99th percentile of the gaps between RTP packets the server sent (captured on
loopback) is under 30 ms.

    .venv/bin/python bench/capacity.py                      # default steps
    .venv/bin/python bench/capacity.py --steps 100,200,300  # chosen steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.audio import tone  # noqa: E402
from tests.support.capture import LoopbackCapture  # noqa: E402
from tests.support.pcap import Packet, read_pcap, rtp_streams, write_rtp_pcap  # noqa: E402
from tests.support.ports import free_port, free_port_block  # noqa: E402
from tests.support.server import ServerProcess, write_test_config  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402

HOLD_S = 10.0
CLEAN_GAP_P99_MS = 30.0


@dataclass(frozen=True)
class Workload:
    """What every call does, the same for softswitch and the bare baseline: only the
    concurrency changes from step to step."""

    name: str
    call_s: float  # how long one call lasts; sets the arrival rate and the CPU window
    scenario: str  # the SIPp caller (tests/sipp/)
    variables: Mapping[str, object]  # its -set variables
    caller_pcap: Path  # the caller's RTP
    prompts: Path  # directory of the prompts both servers play
    softswitch_sections: Mapping[str, object] = field(default_factory=dict)  # config beyond ports/prompts
    softswitch_args: tuple[str, ...] = ()  # `softswitch run` arguments
    bare_args: tuple[str, ...] = ()  # the bare script's arguments; "{step}" is the step's directory
    bare_script: str = "bare_pjsua2.py"  # the bare baseline, in bench/
    # (Hz, minimum seconds) of a tone every server stream must carry: proof that each call
    # really took the path the workload expects, not just that it ended well.
    expected_tone: tuple[float, float] | None = None
    # Work a step needs beyond the server and its callers (e.g. agents' phones): made fresh for
    # every step from (system, step directory, concurrency).
    hooks: Callable[[str, Path, int], "StepHooks"] | None = None


class StepHooks:
    """What a workload adds to one step: extra server settings, peers started once the server is
    up (before the callers) and stopped after them, and its own verdict on the step's outcome.
    The default adds nothing."""

    def bare_args(self) -> tuple[str, ...]:
        return ()

    def softswitch_sections(self) -> dict:
        return {}

    def start(self, sip_port: int) -> None:
        """The server is ready at 127.0.0.1:sip_port; the callers have not started."""

    def stop(self) -> None:
        """The callers are done (the server still runs)."""

    def judge(self, server_output: str) -> tuple[bool, dict]:
        """After the server stopped: (clean, figures for the report)."""
        return True, {}


def plain_workload(tmp: Path) -> Workload:
    """Answer, play a prompt into the call, record the caller; the caller hangs up."""
    prompts = tmp / "prompts"
    prompts.mkdir(exist_ok=True)
    prompt = prompts / "welcome.wav"
    sf.write(prompt, tone(300, HOLD_S + 20, amplitude=0.1), 8000, subtype="PCM_16")
    caller_pcap = tmp / "caller.pcap"
    write_rtp_pcap(caller_pcap, tone(440, HOLD_S))
    return Workload("plain", HOLD_S, "uac_call_pcap", {"caller": "5550100", "hold_ms": int(HOLD_S * 1000)},
                    caller_pcap, prompts, softswitch_args=("--record",),
                    bare_args=("--prompt", str(prompt), "--record-dir", "{step}/bare-rec"))


@dataclass
class Step:
    workload: str
    system: str
    concurrency: int
    calls: int
    successful: int
    failed: int
    gap_p99_ms: float
    gap_max_ms: float
    streams: int
    cpu_percent: float
    rss_mb: float
    clean: bool
    tone_streams: int | None = None  # streams carrying the workload's expected tone
    checks: dict | None = None  # the workload's own figures (StepHooks.judge)


class CpuSampler:
    """CPU use of one process (user + system) between start() and stop(), in % of one core."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_peak = 0.0

    def _ticks(self) -> int:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def _rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def start(self) -> None:
        self.t0, self.c0 = time.monotonic(), self._ticks()

    def sample_rss(self) -> None:
        self.rss_peak = max(self.rss_peak, self._rss_mb())

    def stop(self) -> float:
        dt = time.monotonic() - self.t0
        return 100.0 * (self._ticks() - self.c0) / os.sysconf("SC_CLK_TCK") / dt


def gap_stats(packets: list[Packet], dst_port: int) -> tuple[float, float, int]:
    """(p99, max, streams) of inter-packet gaps per server stream, the first second of each skipped."""
    by_stream: dict[tuple, list[float]] = {}
    for pkt in packets:
        if pkt.dst[1] != dst_port or len(pkt.payload) < 12:
            continue
        # A stream is a source address and an SSRC: pjsua reuses RTP ports for later calls.
        ssrc = int.from_bytes(pkt.payload[8:12], "big")
        by_stream.setdefault((pkt.src, ssrc), []).append(pkt.ts)
    gaps = []
    for times in by_stream.values():
        t = np.sort(np.array(times))
        t = t[t > t[0] + 1.0]
        if len(t) > 2:
            gaps.append(np.diff(t) * 1000)
    if not gaps:
        return float("inf"), float("inf"), 0
    all_gaps = np.concatenate(gaps)
    return float(np.percentile(all_gaps, 99)), float(all_gaps.max()), len(by_stream)


class BareServer:
    def __init__(self, step_dir: Path, workload: Workload, extra_args: tuple[str, ...] = ()) -> None:
        self.sip_port = free_port("udp")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / workload.bare_script), "--port", str(self.sip_port),
             "--rtp-port", str(free_port_block(2000)), "--rtp-count", "2000",
             *(arg.replace("{step}", str(step_dir)) for arg in (*workload.bare_args, *extra_args))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()
        lines: list[str] = []

        def pump() -> None:
            for line in self.proc.stdout:
                lines.append(line)
                if "bare pjsua2 ready" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        self.lines = lines
        if not ready.wait(20):
            self.stop()
            raise RuntimeError("bare pjsua2 did not start:\n" + "".join(lines))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def run_step(workload: Workload, system: str, n: int, tmp: Path) -> Step:
    step_dir = Path(tempfile.mkdtemp(prefix=f"{workload.name}-{system}-{n}-", dir=tmp))
    hooks = workload.hooks(system, step_dir, n) if workload.hooks else StepHooks()
    if system == "bare":
        server = BareServer(step_dir, workload, hooks.bare_args())
        pid, port = server.proc.pid, server.sip_port
    else:
        sections = {**workload.softswitch_sections, **hooks.softswitch_sections()}
        cfg = write_test_config(step_dir, **{**sections,
                                             "directories": {"prompts": str(workload.prompts)},
                                             "sip": {"rtp_port_start": free_port_block(2000), "rtp_port_count": 2000},
                                             "logging": {"level": "warning", **sections.get("logging", {})}})
        server = ServerProcess(cfg, list(workload.softswitch_args)).start()
        pid, port = server.proc.pid, server.sip_port
    calls = 2 * n
    call_s = workload.call_s
    rate = n / call_s
    bound = call_s + calls / rate + 60
    uac = Sipp(workload.scenario, f"127.0.0.1:{port}", calls=calls, limit=n, rate=rate,
               variables=workload.variables, keys={"pcap": workload.caller_pcap}, timeout_s=bound, trace_msg=False)
    cpu = CpuSampler(pid)
    try:
        hooks.start(port)
        try:
            with LoopbackCapture(f"udp and dst port {uac.media_port}", step_dir / "rtp.pcap",
                                 buffer_kib=65536) as cap:
                with uac:
                    # Measure CPU over the steady middle: after the ramp, before the drain.
                    time.sleep(call_s)
                    cpu.start()
                    for _ in range(int(call_s)):
                        time.sleep(1)
                        cpu.sample_rss()
                    cpu_percent = cpu.stop()
                    result = uac.wait(bound)
        finally:
            hooks.stop()
        packets = read_pcap(cap.path)  # read once: a step captures up to a million packets
        p99, gmax, streams = gap_stats(packets, uac.media_port)
        toned = tone_streams(packets, uac.media_port, workload.expected_tone) if workload.expected_tone else None
        del packets
    finally:
        server.stop()
    output = "".join(server.lines) if system == "bare" else server.text()
    checked, checks = hooks.judge(output)
    # Clean: every call succeeded, every call's RTP was seen, and its pacing held.
    ok = result.failed == 0 and result.successful == calls and streams >= calls and p99 < CLEAN_GAP_P99_MS
    ok = ok and (toned is None or toned >= calls) and checked
    return Step(workload.name, system, n, calls, result.successful or 0, result.failed or 0, round(p99, 2),
                round(gmax, 2), streams, round(cpu_percent, 1), round(cpu.rss_peak, 1), ok, toned,
                checks if workload.hooks else None)


def tone_streams(packets: list[Packet], dst_port: int, expected: tuple[float, float]) -> int:
    """How many server streams carry `expected` = (Hz, minimum seconds) of a tone."""
    freq, seconds = expected
    return sum(tone_seconds(stream.audio(), freq) >= seconds
               for stream in rtp_streams(packets, dst_port).values())


def tone_seconds(audio: np.ndarray, freq: float) -> float:
    """Seconds of 20 ms frames whose strongest component is `freq` (±25 Hz: 50 Hz bins)."""
    frames = audio[: audio.size // 160 * 160].astype(np.float64).reshape(-1, 160)
    if not frames.size:
        return 0.0
    spectrum = np.abs(np.fft.rfft(frames, axis=1))
    peak_hz = (np.argmax(spectrum[:, 1:], axis=1) + 1) * 50.0
    audible = np.sqrt((frames ** 2).mean(axis=1)) > 100.0  # not silence
    return float(np.count_nonzero(audible & (np.abs(peak_hz - freq) <= 25.0)) * 0.02)


def ceiling(steps: list[Step]) -> int:
    best = 0
    for s in sorted(steps, key=lambda s: s.concurrency):
        if not s.clean:
            break
        best = s.concurrency
    return best


def ramp(workload: Workload, steps: list[int], tmp: Path) -> list[Step]:
    """Each system in turn, step by step upwards, stopping at its first step that is not clean."""
    results: list[Step] = []
    for system in ("bare", "softswitch"):
        for n in steps:
            step = run_step(workload, system, n, tmp)
            results.append(step)
            print(f"{system:10s} {n:4d} concurrent: {step.successful}/{step.calls} ok, "
                  f"{step.failed} failed, RTP gap p99 {step.gap_p99_ms} ms (max {step.gap_max_ms}), "
                  f"{step.streams} streams"
                  + (f" ({step.tone_streams} with the expected tone)" if step.tone_streams is not None else "")
                  + (f", {step.checks}" if step.checks else "")
                  + f", CPU {step.cpu_percent}% RSS {step.rss_mb} MB "
                  f"-> {'clean' if step.clean else 'NOT clean'}", flush=True)
            if not step.clean:
                break
    return results


def source_revision() -> str:
    """The commit measured, marked "+dirty" when the working tree had changes (a shared tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain", "-uno") else "")


def report(results: list[Step], json_path: str | Path, **extra: object) -> float:
    """Print the ceilings and their ratio, write the JSON results; returns the ratio."""
    bare = ceiling([s for s in results if s.system == "bare"])
    soft = ceiling([s for s in results if s.system == "softswitch"])
    ratio = soft / bare if bare else 0.0
    print(f"\nhighest clean concurrency: bare pjsua2 {bare}, softswitch {soft}, ratio {ratio:.2f}")
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps({"steps": [asdict(s) for s in results], "bare_ceiling": bare,
                                           "softswitch_ceiling": soft, "ratio": ratio,
                                           "command": " ".join(sys.argv), "revision": source_revision(),
                                           **extra}, indent=2))
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="100,200,250,300,350,400",
                    help="comma-separated concurrency steps, ascending")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "capacity.json"))
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp_s:
        tmp = Path(tmp_s)
        results = ramp(plain_workload(tmp), steps, tmp)
    report(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
