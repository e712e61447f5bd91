#!/usr/bin/env python3
"""Queue capacity (issue 5): bridged, recorded queue calls through the assembled demo flow,
the highest number of concurrent caller-agent pairs softswitch carries cleanly, as a ratio of a
bare pjsua2 B2BUA (`bare_pjsua2.py --workload b2bua`) measured in the same run with the same
ramp as `bench/capacity.py`.

softswitch runs `flows/part-3-step-4-routing-queue-ai-recording-tools-callback.yaml` as shipped
except one value: the `queue_support` trigger's `queueExtensions` lists the step's N agents
(1001..1000+N, all in `extension_users.internal`) instead of "1001,1002". Every agent registers
(digest) with its Contact on ONE SIPp UAS that answers every call at once with a 1 kHz tone.
Callers (SIPp, trunk side) send 440 Hz, press 1 one second in, and hang up after `--hold`
seconds; the flow answers, records the call in split stereo (its Recording branch), plays the
menu, queues the caller, dispatches an agent (the demo's parallel ring of every free agent),
and bridges them. The bare script answers, records the mix, plays the menu, dials the same UAS
on the digit and joins both legs.

A step of N pairs (2N callers at N per hold time, so about N pairs up at once) is clean when
capacity.py's rule holds (no failed call, every server stream seen, RTP gap p99 < 30 ms) and:
every caller hears the agent's 1 kHz for at least hold - 10 s (bridged, and soon); the server
reports one bridge per caller (softswitch: "bridged" lines at info level; bare: its count);
every call left a recording, and a spot-check of some WAVs finds the right channels and length.

    .venv/bin/python bench/queue_capacity.py --steps 20,40            # prove it works (~6 min)
    .venv/bin/python bench/queue_capacity.py --steps 100,140,180      # the real ramp
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from capacity import StepHooks, Workload, ceiling, ramp, report  # noqa: E402
from tests.support.audio import tone  # noqa: E402
from tests.support.pcap import write_rtp_pcap  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.sipclient import SipClient  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402

DEMO = REPO / "flows" / "part-3-step-4-routing-queue-ai-recording-tools-callback.yaml"
GOAL_PAIRS = 140
CALLER_HZ, AGENT_HZ = 440.0, 1000.0
DIGIT_AT_S = 1.0
BRIDGED_SHORTFALL_S = 10.0  # a caller must hear the agent for at least hold minus this
WAV_TOLERANCE_S = 1.5
SPOT_CHECKS = 6


def demo_flow_for(agents: list[str], path: Path) -> Path:
    """The shipped demo flow with queue_support's queueExtensions replaced: nothing else."""
    doc = yaml.safe_load(DEMO.read_text())
    (trigger,) = [t for t in doc["triggers"] if t["name"] == "queue_support"]
    trigger["params"]["queueExtensions"] = ",".join(agents)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class BoundSipClient(SipClient):
    """A SipClient on a chosen local port: the agent's REGISTER comes from the port the
    answering SIPp will bind, so the binding is not NATed and calls go there."""

    bind_port: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.local_ip, self.bind_port))
        self.sock.settimeout(self.timeout)
        self.local_port = self.sock.getsockname()[1]
        self._buffer = b""


def register_agents(sip_port: int, agents: list[str], contact_port: int) -> None:
    for ext in agents:
        with BoundSipClient(("127.0.0.1", sip_port), timeout=5.0, bind_port=contact_port) as client:
            resp = client.register(ext, f"pass{ext}", expires=3600)
        if resp is None or resp.status != 200:
            raise RuntimeError(f"agent {ext} did not register: {resp.status if resp else 'no answer'}")


class QueueStep(StepHooks):
    """One step's agents (one answering SIPp UAS for all of them) and its verdict."""

    def __init__(self, system: str, step_dir: Path, n: int, hold_s: float, agent_pcap: Path) -> None:
        self.system, self.step_dir, self.n, self.hold_s = system, step_dir, n, hold_s
        self.agents = [str(1001 + i) for i in range(n)]
        self.uas_port = free_port("both")
        self.uas = Sipp(REPO / "bench" / "sipp" / "uas_agent.xml", local_port=self.uas_port, calls=1_000_000,
                        keys={"pcap": agent_pcap}, timeout_s=3600, trace_msg=False, trace_dir=step_dir / "agents")
        self.agent_counters: dict[str, str] = {}

    def bare_args(self) -> tuple[str, ...]:
        return ("--agent-uri", f"sip:agent@127.0.0.1:{self.uas_port}", "--record-dir", str(self.step_dir / "bare-rec"))

    def softswitch_sections(self) -> dict:
        flow = demo_flow_for(self.agents, self.step_dir / DEMO.name)
        return {"flows": [str(flow)],
                "extension_users": {"internal": [{"username": x, "password": f"pass{x}", "extension": x}
                                                 for x in self.agents]},
                "logging": {"level": "info"}}  # info: the bridge and recording lines are counted

    def start(self, sip_port: int) -> None:
        if self.system == "softswitch":
            t0 = time.monotonic()
            register_agents(sip_port, self.agents, self.uas_port)
            print(f"  {len(self.agents)} agents registered in {time.monotonic() - t0:.1f} s", flush=True)
        self.uas.start()

    def stop(self) -> None:
        self.agent_counters = self.uas.stop().counters

    def judge(self, server_output: str) -> tuple[bool, dict]:
        callers = 2 * self.n
        (self.step_dir / "server.log").write_text(server_output)  # kept with --keep
        errors = len(re.findall(r" ERROR |Traceback", server_output))
        if self.system == "softswitch":
            bridged = len(re.findall(r"^.* bridged leg_\w+ <-> leg_\w+$", server_output, flags=re.M))
            taken = len(re.findall(r": taken by ", server_output))
            finalized = re.findall(r"(leg_\w+): call recording (\S+) finalized \((\w+)\): ([\d.]+) s", server_output)
            paths = [Path(p) for _, p, _, _ in finalized]
            channels = 2
        else:
            found = re.findall(r"bare pjsua2 bridged (\d+)", server_output)
            bridged = int(found[-1]) if found else 0
            taken = None
            paths = sorted((self.step_dir / "bare-rec").glob("*.wav"))
            channels = 1  # AudioMediaRecorder records the mix
        bad = spot_check(paths, channels, self.hold_s)
        checks = {"bridged": bridged, "recordings": len(paths), "wav_spot_checked": min(SPOT_CHECKS, len(paths)),
                  "wav_bad": bad, "errors_logged": errors}
        if taken is not None:
            checks["taken"] = taken
        # How many INVITEs the agents' phones got (the demo rings every free agent at once).
        checks["agent_invites"] = int(self.agent_counters.get("IncomingCall(C)", 0) or 0)
        checks["agent_calls_failed"] = int(self.agent_counters.get("FailedCall(C)", 0) or 0)
        ok = bridged == callers and len(paths) == callers and not bad and errors == 0
        ok = ok and (taken is None or taken == callers)
        return ok, checks


def spot_check(paths: list[Path], channels: int, hold_s: float) -> list[str]:
    """Problems found in a few WAVs spread over the step (first, last and between)."""
    if not paths:
        return []
    picks = sorted({paths[round(i * (len(paths) - 1) / max(1, SPOT_CHECKS - 1))] for i in range(SPOT_CHECKS)})
    bad = []
    for path in picks:
        try:
            info = sf.info(str(path))
        except Exception as exc:  # a broken file is a finding, not a crash of the bench
            bad.append(f"{path.name}: {exc}")
            continue
        if info.channels != channels or info.samplerate != 8000 or abs(info.duration - hold_s) > WAV_TOLERANCE_S:
            bad.append(f"{path.name}: {info.channels} ch, {info.samplerate} Hz, {info.duration:.1f} s")
    return bad


def queue_workload(tmp: Path, hold_s: float) -> Workload:
    caller_pcap = tmp / "caller.pcap"
    write_rtp_pcap(caller_pcap, tone(CALLER_HZ, hold_s + 2), dtmf=[("1", DIGIT_AT_S, 200)])
    agent_pcap = tmp / "agent.pcap"
    write_rtp_pcap(agent_pcap, tone(AGENT_HZ, hold_s + 30))
    return Workload(
        "queue", hold_s, "uac_call_pcap", {"caller": "5550100", "hold_ms": int(hold_s * 1000)}, caller_pcap,
        REPO / "prompts", bare_args=("--workload", "b2bua", "--prompt-dir", str(REPO / "prompts")),
        expected_tone=(AGENT_HZ, hold_s - BRIDGED_SHORTFALL_S),
        hooks=lambda system, step_dir, n: QueueStep(system, step_dir, n, hold_s, agent_pcap))


def load_note() -> str:
    """The load average: a shared machine shows here (say what else ran in the write-up)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="100,140,180", help="comma-separated pair counts, ascending")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds from the caller's ACK to its BYE (default 30)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "queue_capacity.json"))
    ap.add_argument("--keep", action="store_true", help="keep each step's directory (server log, recordings, capture)")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    started = time.monotonic()
    before = load_note()
    print(before, flush=True)
    if args.keep:
        tmp = Path(tempfile.mkdtemp(prefix="queue-capacity-"))
        print(f"step directories kept under {tmp}", flush=True)
        results = ramp(queue_workload(tmp, args.hold), steps, tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="queue-capacity-") as tmp_s:
            results = ramp(queue_workload(Path(tmp_s), args.hold), steps, Path(tmp_s))
    after = load_note()
    ratio = report(results, args.json, workload="queue", hold_seconds=args.hold, goal_pairs=GOAL_PAIRS,
                   load_before=before, load_after=after)
    soft = ceiling([s for s in results if s.system == "softswitch"])
    print(f"{after}\ngoal >= {GOAL_PAIRS} pairs: {'met' if soft >= GOAL_PAIRS else 'NOT met'} (ratio {ratio:.2f}); "
          f"run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
