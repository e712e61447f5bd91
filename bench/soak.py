#!/usr/bin/env python3
"""Soak (issue 7): softswitch under bench/full_demo.py's mixed load at a steady rate for a long
time (default 30 minutes at 80 % of the capacity full_demo.py --find-capacity measured), checking
that nothing accumulates.

Every `--sample-every` s (default 10) the server process is sampled: RSS, open fds, UDP and TCP
sockets (`/proc/<pid>/fd` matched against `/proc/<pid>/net/{udp,tcp}{,6}`), CPU, and live legs
(`softswitch_legs_active` from the metrics endpoint, n/a if it does not answer). When the
arrivals end, calls drain (callbacks included), and the run passes when:
- no call failed (callers, agents, customers);
- no leg is live after the drain (metrics, and the "stopping: N live legs" the server logs);
- fds and UDP/TCP sockets after the drain are within `--fd-margin` of the idle baseline taken
  before the load (what a first minute's warm-up opens for good, e.g. the AI provider's thread,
  must fit in the margin);
- the memory trend, the least-squares slope of RSS over the second half of the load, is under
  `--max-slope` MB/hour;
- there is one valid recording per answered call (full_demo.py's check), and nothing was
  logged at ERROR.

    .venv/bin/python bench/soak.py --capacity-rate 4 --fraction 0.8            # 30 min, ~35 min wall
    .venv/bin/python bench/soak.py --cps 0.3 --minutes 2 --hold 30 --talk 10-20  # smoke, ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from capacity import source_revision  # noqa: E402
from full_demo import KEY_ENV, TargetRun, add_load_args, load_from_args, load_note  # noqa: E402

CAPACITY_JSON = REPO / "bench" / "results" / "full_demo_capacity.json"


def rss_slope_mb_per_hour(samples: list[dict], t_from: float, t_to: float) -> float | None:
    """Least-squares slope of RSS against time over [t_from, t_to], in MB per hour."""
    pts = [(s["t"], s["rss_mb"]) for s in samples if t_from <= s["t"] <= t_to]
    if len(pts) < 3:
        return None
    t, rss = np.array(pts).T
    return round(float(np.polyfit(t, rss, 1)[0]) * 3600, 2)


def rate_from(args: argparse.Namespace) -> float:
    if args.cps:
        return args.cps
    capacity = args.capacity_rate
    if capacity is None and CAPACITY_JSON.exists():
        capacity = json.loads(CAPACITY_JSON.read_text()).get("capacity_cps", {}).get("softswitch")
        if capacity:
            print(f"capacity {capacity:g} calls/s from {CAPACITY_JSON.relative_to(REPO)}", flush=True)
    if not capacity:
        raise SystemExit("give --cps, or --capacity-rate (or run bench/full_demo.py --find-capacity first)")
    return round(capacity * args.fraction, 3)


def judge(r: dict, samples: list[dict], times: dict, args: argparse.Namespace) -> dict:
    load_start, load_end = times["load_start"], times["load_end"]
    base = samples[0]
    warm = next((s for s in samples if s["t"] >= load_start + 60), None)
    after = r.get("proc_after_drain") or samples[-1]
    slope = rss_slope_mb_per_hour(samples, load_start + (load_end - load_start) / 2, load_end)
    legs_metrics = r.get("legs_active_after_drain")
    legs_logged = r.get("legs_live_at_stop")
    failed = r["calls"]["failed"] + (r["agents"]["failed"] or 0) + (r["customers"]["failed"] or 0)
    drift = {k: after[k] - base[k] for k in ("fds", "udp", "tcp")}
    rec = r["recordings"]
    checks = {
        "no failed calls": failed == 0,
        "no live legs after the drain": (legs_metrics in (None, 0)) and (legs_logged in (None, 0))
                                        and not (legs_metrics is None and legs_logged is None),
        f"fds and sockets within {args.fd_margin} of the baseline": all(abs(v) <= args.fd_margin
                                                                         for v in drift.values()),
        f"memory slope under {args.max_slope:g} MB/hour": slope is not None and slope < args.max_slope,
        "one valid recording per answered call": rec["count"] == rec["expected"] and not rec["bad_count"],
        "no errors logged": r["errors_logged"] == 0,
    }
    return {"checks": checks, "passed": all(checks.values()), "failed_calls": failed,
            "legs_after_drain": {"metrics": legs_metrics, "logged_at_stop": legs_logged},
            "baseline": {k: base[k] for k in ("rss_mb", "fds", "udp", "tcp")},
            "after_first_minute": {k: warm[k] for k in ("rss_mb", "fds", "udp", "tcp")} if warm else None,
            "after_drain": {k: after[k] for k in ("rss_mb", "fds", "udp", "tcp")},
            "drift_after_drain": drift, "rss_slope_mb_per_hour_second_half": slope}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cps", type=float, default=None, help="calls per second (overrides the capacity rate)")
    ap.add_argument("--capacity-rate", type=float, default=None,
                    help="the measured clean rate (default: capacity_cps.softswitch in bench/results/full_demo_capacity.json)")
    ap.add_argument("--fraction", type=float, default=0.8, help="share of the capacity rate to run at (0.8)")
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of arrivals (default 30)")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--max-slope", type=float, default=5.0, help="RSS trend limit, MB/hour (default 5)")
    ap.add_argument("--fd-margin", type=int, default=16, help="fds/sockets allowed above the baseline (16)")
    ap.add_argument("--capture", action="store_true", help="capture RTP too (large files on a long run)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "soak.json"))
    add_load_args(ap)
    args = ap.parse_args()
    if args.minutes > 50:
        # register_agents (bench/queue_capacity.py) registers for 3600 s and nothing refreshes it.
        ap.error("--minutes above 50: the agents' registrations (3600 s) would expire during the run")
    os.environ[KEY_ENV] = "bench-key"
    cps = rate_from(args)
    load = load_from_args(args, cps, args.minutes * 60, args.capture)
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    before = load_note()
    print(f"{before}; soak at {cps:g} calls/s for {args.minutes:g} min, {load.agents} agents"
          + (f"; run directory {base} (kept)" if args.keep else ""), flush=True)
    last = {"t": -1e9}

    def progress(sample: dict) -> None:
        if sample["t"] - last["t"] >= 60:
            cpu = (100 * (sample["cpu_s"] - last["cpu_s"]) / (sample["t"] - last["t"])) if "cpu_s" in last else None
            last.update(sample)
            print(f"  t={sample['t']:5.0f}s RSS {sample['rss_mb']} MB, fds {sample['fds']}, udp {sample['udp']}, "
                  f"tcp {sample['tcp']}, legs {sample.get('legs_active', 'n/a')}, "
                  f"CPU {'n/a' if cpu is None else f'{cpu:.0f} %'}", flush=True)

    started = time.monotonic()
    try:
        run = TargetRun("softswitch", load, base / "softswitch", sample_every=args.sample_every,
                        extra_sample=True, progress=progress, keep=args.keep)
        r = run.run()
        verdict = judge(r, run.sampler.samples, run.times, args)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    doc = {"command": " ".join(sys.argv), "revision": source_revision(), "load_before": before,
           "load_after": load_note(), "cps": cps, "minutes": args.minutes, "agents": load.agents,
           "wall_s": round(time.monotonic() - started), **verdict,
           "calls": r["calls"], "kinds": r["kinds"], "callbacks": r["callbacks"], "queue_waits_s": r["queue_waits_s"],
           "recordings": r["recordings"], "errors_logged": r["errors_logged"],
           "error_lines": r.get("error_lines", []), "cpu_percent": r["cpu_percent"],
           "call_records": r.get("call_records"), "times": r["times"], "samples": run.sampler.samples}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    b, a = verdict["baseline"], verdict["after_drain"]
    print(f"\ncalls: {r['calls']['offered']} offered, {verdict['failed_calls']} failed; "
          f"recordings {r['recordings']['count']} for {r['recordings']['expected']} answered calls "
          f"({r['recordings']['bad_count']} bad); callbacks {r['callbacks']}")
    print(f"memory: RSS {b['rss_mb']} MB at start, peak {r['rss_peak_mb']} MB, {a['rss_mb']} MB after the drain; "
          f"trend over the second half {verdict['rss_slope_mb_per_hour_second_half']} MB/hour")
    print(f"fds {b['fds']} -> {a['fds']}, udp {b['udp']} -> {a['udp']}, tcp {b['tcp']} -> {a['tcp']}; "
          f"legs after the drain {verdict['legs_after_drain']}; CPU {r['cpu_percent']} % during the load")
    for name, ok in verdict["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"soak {'PASSED' if verdict['passed'] else 'FAILED'}; {doc['load_after']}; run took {doc['wall_s']} s; "
          f"results in {args.json}")
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
