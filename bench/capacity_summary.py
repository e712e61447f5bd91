#!/usr/bin/env python3
"""Capacity summary: every workload's ramp against softswitch and its bare pjsua2 baseline in one
invocation, each softswitch ceiling as a ratio of the bare ceiling measured in the same run.

It runs the existing benchmark scripts as subprocesses, each with its own steps and a JSON path,
and reads their results (nothing about the calls is redefined here):

- plain: `bench/capacity.py` (answer, play a prompt, record the caller; bare: bare_pjsua2.py);
- bridged: `bench/queue_capacity.py` (bridged, recorded queue calls through the demo flow;
  bare: bare_pjsua2.py --workload b2bua);
- ai: `bench/ai_capacity.py --target both` (calls streamed to the fake OpenAI Realtime provider;
  bare: bench/bare_ai.py).

Each script ramps bare first, then softswitch, each stopping at its first step that is not
clean. A ceiling equal to the top step is a lower bound (marked "≥"): add a higher step.
Writes `bench/results/capacity_summary.json` (one row per workload; a partial run with `--only`
keeps the other workloads' rows from the previous file) and each script's own results as
`bench/results/capacity_summary_<workload>.json`, and prints a Markdown table.

    .venv/bin/python bench/capacity_summary.py                          # all three, default steps
    .venv/bin/python bench/capacity_summary.py --only ai --steps-ai 100,150,200,250
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Bench:
    """One workload: the script that ramps it and the arguments that select both systems."""

    name: str
    what: str
    script: str
    args: tuple[str, ...]
    default_steps: str


BENCHES = (
    Bench("plain", "answer, prompt, record the caller (10 s calls)", "capacity.py", (), "300,400,500,550,600"),
    Bench("bridged", "queue call through the demo flow: recorded, bridged to an agent (30 s)", "queue_capacity.py",
          (), "70,100,140,180"),
    Bench("ai", "call streamed to an AI provider (fake OpenAI Realtime, echo; 10 s)", "ai_capacity.py",
          ("--target", "both"), "50,100,150,200,250,300"),
)


@dataclass
class Row:
    workload: str
    what: str
    command: str
    steps: list[int]
    softswitch_ceiling: int | None = None
    bare_ceiling: int | None = None
    ratio: float | None = None
    # A ceiling equal to the highest step tried: the system may carry more (a lower bound).
    softswitch_at_top_step: bool = False
    bare_at_top_step: bool = False
    wall_s: float = 0.0
    finished_at: str = ""
    exit_code: int = 0
    error: str = ""
    revision: str = ""
    results_json: str = ""
    step_results: list[dict] = field(default_factory=list)


def run_bench(bench: Bench, steps: str, json_path: Path, extra: list[str]) -> Row:
    """Run one script to completion, echoing its output, and summarise its JSON."""
    cmd = [sys.executable, str(REPO / "bench" / bench.script), "--steps", steps, "--json", str(json_path),
           *bench.args, *extra]
    shown = " ".join(["bench/" + bench.script, "--steps", steps, *bench.args, *extra])
    row = Row(bench.name, bench.what, shown, [int(s) for s in steps.split(",")])
    if json_path.exists():
        json_path.unlink()  # a stale file must not pass for this run's result
    print(f"== {bench.name}: {shown}", flush=True)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(f"[{bench.name}] {line}", end="", flush=True)
        row.exit_code = proc.wait()
    row.wall_s = round(time.monotonic() - started, 1)
    row.finished_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if row.exit_code != 0 or not json_path.exists():
        row.error = f"exit code {row.exit_code}; last output:\n" + "\n".join(tail)
        return row
    data = json.loads(json_path.read_text())
    row.results_json = str(json_path.relative_to(REPO)) if json_path.is_relative_to(REPO) else str(json_path)
    row.revision = data.get("revision", "")
    row.softswitch_ceiling = data.get("softswitch_ceiling")
    row.bare_ceiling = data.get("bare_ceiling")
    if row.softswitch_ceiling is not None and row.bare_ceiling:
        row.ratio = round(row.softswitch_ceiling / row.bare_ceiling, 2)
    top = max(row.steps)
    row.softswitch_at_top_step = row.softswitch_ceiling == top
    row.bare_at_top_step = row.bare_ceiling == top
    row.step_results = [{"system": s["system"], "concurrency": s["concurrency"], "clean": s["clean"],
                         "ok": f"{s['successful']}/{s['calls']}", "gap_p99_ms": s["gap_p99_ms"],
                         "cpu_percent": s["cpu_percent"], "checks": s.get("checks")} for s in data["steps"]]
    return row


def ceiling_text(value: int | None, at_top: bool) -> str:
    if value is None:
        return "—"
    return f"≥ {value}" if at_top else str(value)


def table(rows: list[dict]) -> str:
    lines = ["| workload | softswitch ceiling | bare pjsua2 ceiling | ratio | steps | wall time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        if r["ratio"] is not None and r["bare_at_top_step"]:
            ratio += " (bare ≥)"
        if r["error"]:
            ratio = "failed: " + r["error"].splitlines()[0]
        lines.append(f"| {r['workload']} | {ceiling_text(r['softswitch_ceiling'], r['softswitch_at_top_step'])} | "
                     f"{ceiling_text(r['bare_ceiling'], r['bare_at_top_step'])} | {ratio} | "
                     f"{','.join(map(str, r['steps']))} | {r['wall_s'] / 60:.0f} min |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for bench in BENCHES:
        ap.add_argument(f"--steps-{bench.name}", default=bench.default_steps,
                        help=f"{bench.script} steps, ascending (default {bench.default_steps})")
    ap.add_argument("--only", default="", help="comma-separated workloads to run: " +
                    ",".join(b.name for b in BENCHES) + " (default: all)")
    ap.add_argument("--hold", type=float, help="bridged: queue_capacity.py --hold (seconds; its default 30)")
    ap.add_argument("--json", default=str(RESULTS / "capacity_summary.json"))
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or [b.name for b in BENCHES]
    unknown = set(names) - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()).get("workloads", []) if out.exists() else []
    rows = {r["workload"]: r for r in previous}
    load_before = os.getloadavg()
    started = time.monotonic()
    for bench in BENCHES:
        if bench.name not in names:
            continue
        extra = ["--hold", str(args.hold)] if bench.name == "bridged" and args.hold else []
        raw = out.with_name(f"{out.stem}_{bench.name}.json")
        row = run_bench(bench, getattr(args, f"steps_{bench.name}"), raw, extra)
        rows[bench.name] = asdict(row)
        ordered = [rows[b.name] for b in BENCHES if b.name in rows]
        out.write_text(json.dumps({"workloads": ordered, "command": " ".join(sys.argv),
                                   "load_average_before": [round(x, 2) for x in load_before],
                                   "load_average_after": [round(x, 2) for x in os.getloadavg()],
                                   "wall_s": round(time.monotonic() - started, 1)}, indent=2))
    ordered = [rows[b.name] for b in BENCHES if b.name in rows]
    print("\n" + table(ordered))
    print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"took {(time.monotonic() - started) / 60:.1f} min; written to {out}")
    return 0 if all(not rows[n]["error"] for n in names) else 1


if __name__ == "__main__":
    sys.exit(main())
