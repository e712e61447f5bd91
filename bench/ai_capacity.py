#!/usr/bin/env python3
"""AI call capacity: how many calls streamed to an AI voice provider softswitch carries at once
on this machine, with the SIP answer time that new calls see meanwhile.

Each call: SIPp (trunk side) calls in with a 440 Hz tone; the flow answers, dials an
`openai_realtime` AI leg (Start Mode Immediate) and bridges the caller to it; the caller hangs
up after `--call-s` and the flow hangs the AI leg up. The provider is the local fake
(tests/support/fake_ai.py) in its own process, echoing the caller's audio back in 200 ms deltas,
so audio streams both ways on every call (24 kHz PCM16 in JSON, both directions resampled).
A step is clean as in capacity.py (every call succeeded, every call's RTP seen, RTP gap p99
under 30 ms), every caller stream carries the echoed 440 Hz for at least half the call (so the
AI path really carried audio), and the SIP answer time p99 (INVITE to 200 OK, from a loopback
capture) is under 50 ms. The fake provider shares the machine's cores with softswitch.

`--target bare` runs the same ramp and clean rule against `bench/bare_ai.py` (answer, stream the
call to the same fake provider and play its audio back, on bare pjsua2), `--target both` runs
bare then softswitch in the same run and reports softswitch's ceiling as a ratio of bare's.

    .venv/bin/python bench/ai_capacity.py --steps 50,100,150
    .venv/bin/python bench/ai_capacity.py --steps 50,100,150,200 --target both
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from capacity import StepHooks, Workload, ceiling, run_step, source_revision  # noqa: E402
from tests.support.audio import tone  # noqa: E402
from tests.support.capture import LoopbackCapture  # noqa: E402
from tests.support.pcap import read_pcap, write_rtp_pcap  # noqa: E402

KEY_ENV = "SOFTSWITCH_BENCH_AI_KEY"
ANSWER_P99_GOAL_MS = 50.0
TARGETS = {"softswitch": ("softswitch",), "bare": ("bare",), "both": ("bare", "softswitch")}

FLOW = """
name: ai-bench
triggers:
  - {name: trunk_main, trigger: trunk, params: {ref: trunk_main}, next: {Call: answer}}
nodes:
  - {name: answer, op: call.answer, next: {Result: dial_ai}}
  - name: dial_ai
    op: dial.make
    params: {callMode: websocket, transportProfile: openai_realtime, websocketStartMode: immediate}
    next: {Result: bridge_ai}
  - name: bridge_ai
    op: call.bridge
    params: {legAId: "{{ $('answer').item.json.legId }}", legBId: "{{ $json.legId }}"}
    next: {Success: hold}
  - name: hold
    op: call.wait
    params:
      timeoutSeconds: 3600
      legIds: ["{{ $('answer').item.json.legId }}", "{{ $('dial_ai').item.json.legId }}"]
      options: {interruptReasons: [call_bridge_removed_peer_ended]}
    next: {Interrupted: hangup_survivor, Ended: hangup_ai}
  - {name: hangup_survivor, op: call.hangup}
  - name: hangup_ai
    op: call.hangup
    params: {options: {legId: "{{ $('dial_ai').item.json.legId }}"}}
"""

FAKE = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.support.fake_ai import FakeProvider
fake = FakeProvider("openai", echo=True)
fake.record = False
fake.echo_batch = 10
fake.start()
print(fake.port, flush=True)
sys.stdin.read()
fake.stop()
"""


class AiHooks(StepHooks):
    """A fake provider process and a capture of SIP for the step."""

    def __init__(self, step_dir: Path) -> None:
        self.step_dir = step_dir
        self.fake = subprocess.Popen([sys.executable, "-c", FAKE.format(repo=str(REPO))], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.fake.stdout.readline())
        self.cap: LoopbackCapture | None = None
        self.sip_port = 0

    def bare_args(self) -> tuple[str, ...]:
        return ("--provider-url", f"ws://127.0.0.1:{self.port}")

    def softswitch_sections(self) -> dict:
        return {"ai": {"providers": {"openai_realtime": {"url": f"ws://127.0.0.1:{self.port}",
                                                          "api_key_env": KEY_ENV}}}}

    def start(self, sip_port: int) -> None:
        self.sip_port = sip_port
        self.cap = LoopbackCapture(f"udp and port {sip_port}", self.step_dir / "sip.pcap", buffer_kib=32768).start()

    def stop(self) -> None:
        if self.cap is not None:
            self.cap.stop()
        if self.fake.poll() is None:
            self.fake.stdin.close()
            try:
                self.fake.wait(10)
            except subprocess.TimeoutExpired:
                self.fake.kill()

    def judge(self, server_output: str) -> tuple[bool, dict]:
        invites: dict[str, float] = {}
        answers: dict[str, float] = {}
        for pkt in read_pcap(self.cap.path) if self.cap is not None else ():
            text = pkt.payload[:1500].decode("latin-1", "replace")
            call_id = re.search(r"^Call-ID:\s*(\S+)", text, re.M | re.I)
            if call_id is None:
                continue
            if text.startswith("INVITE ") and pkt.dst[1] == self.sip_port:
                invites.setdefault(call_id.group(1), pkt.ts)
            elif text.startswith("SIP/2.0 200") and re.search(r"^CSeq:\s*\d+\s+INVITE", text, re.M | re.I):
                answers.setdefault(call_id.group(1), pkt.ts)
        times = [(answers[c] - t) * 1000 for c, t in invites.items() if c in answers]
        p99 = float(np.percentile(times, 99)) if times else float("inf")
        # Logged as warnings (the bench logs at warning level): legs a provider problem ended.
        timeouts = len(re.findall(r"AI provider \S+: ai_(?:provider_timeout|provider_error|connect_failed)",
                                  server_output))
        figures = {"answer_p99_ms": round(p99, 1), "answer_max_ms": round(max(times), 1) if times else None,
                   "answered": len(times), "ai_legs_lost": timeouts}
        return p99 < ANSWER_P99_GOAL_MS and timeouts == 0, figures


def workload(tmp: Path, call_s: float) -> Workload:
    prompts = tmp / "prompts"
    prompts.mkdir(exist_ok=True)
    flow = tmp / "ai-bench.yaml"
    flow.write_text(FLOW)
    caller_pcap = tmp / "caller.pcap"
    write_rtp_pcap(caller_pcap, tone(440, call_s))
    return Workload("ai", call_s, "uac_call_pcap", {"caller": "5550100", "hold_ms": int(call_s * 1000)},
                    caller_pcap, prompts, softswitch_sections={"flows": [str(flow)]},
                    expected_tone=(440.0, call_s / 2), hooks=lambda system, step_dir, n: AiHooks(step_dir), bare_script="bare_ai.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="50,100,150,200", help="comma-separated concurrency steps, ascending")
    ap.add_argument("--call-s", type=float, default=10.0)
    ap.add_argument("--target", choices=tuple(TARGETS), default="softswitch",
                    help="softswitch (default), bare (bench/bare_ai.py) or both, bare first, in the same run")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "ai_capacity.json"))
    args = ap.parse_args()
    os.environ[KEY_ENV] = "bench-key"  # the server inherits it
    steps = [int(s) for s in args.steps.split(",")]
    systems = TARGETS[args.target]
    results = []
    with tempfile.TemporaryDirectory(prefix="ai-capacity-") as tmp_s:
        tmp = Path(tmp_s)
        load = workload(tmp, args.call_s)
        for system in systems:
            for n in steps:
                step = run_step(load, system, n, tmp)
                results.append(step)
                print(f"{system:10s} {n:4d} concurrent AI calls: {step.successful}/{step.calls} ok, "
                      f"RTP gap p99 {step.gap_p99_ms} ms, {step.tone_streams}/{step.calls} streams with the "
                      f"echoed tone, {step.checks}, CPU {step.cpu_percent}% RSS {step.rss_mb} MB -> "
                      f"{'clean' if step.clean else 'NOT clean'}", flush=True)
                if not step.clean:
                    break
    ceilings = {system: ceiling([s for s in results if s.system == system]) for system in systems}
    soft, bare = ceilings.get("softswitch"), ceilings.get("bare")
    ratio = soft / bare if soft is not None and bare else None
    print("\nhighest clean concurrency of AI-streamed calls: "
          + ", ".join(f"{system} {best}" for system, best in ceilings.items())
          + (f", ratio {ratio:.2f}" if ratio is not None else ""))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"steps": [s.__dict__ for s in results], "ceiling": soft,
                                           "softswitch_ceiling": soft, "bare_ceiling": bare, "ratio": ratio,
                                           "target": args.target, "command": " ".join(sys.argv),
                                           "revision": source_revision()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
