#!/usr/bin/env python3
"""Overload: calls offered at twice the plain-call capacity, with the limits set at that capacity.

The plain workload of `bench/capacity.py` (answer, prompt, record the caller, 10 s calls), with
`limits.max_concurrent_calls` = the capacity and `limits.max_calls_per_second` = capacity per
call length. SIPp (`uac_call_or_503`) offers calls at `--factor` times that rate for
`--seconds`; each is answered or refused 503. Reported: admitted and refused calls (by the
gate's reason, from its aggregated log), every call's outcome, the server's CPU in the steady
middle, and the RTP gap p99 / max of the admitted calls (capacity.py's clean rule: < 30 ms).

    .venv/bin/python bench/overload.py                          # capacity 550, 2x, 20 s
    .venv/bin/python bench/overload.py --capacity 300 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.capacity import (CLEAN_GAP_P99_MS, CpuSampler, gap_stats, plain_workload,  # noqa: E402
                            source_revision)
from tests.support.capture import LoopbackCapture  # noqa: E402
from tests.support.pcap import read_pcap  # noqa: E402
from tests.support.ports import free_port_block  # noqa: E402
from tests.support.server import ServerProcess, write_test_config  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402


def refusals(log: str) -> dict[str, int]:
    totals = {"concurrent": 0, "rate": 0, "cpu": 0, "loop_lag": 0}
    for line in re.findall(r"refused \d+ new calls in the last second: (.*)$", log, flags=re.M):
        for reason, n in re.findall(r"(\w+)=(\d+)", line):
            totals[reason] += int(n)
    return totals


def run(capacity: int, factor: float, seconds: float, tmp: Path) -> dict:
    workload = plain_workload(tmp)
    call_s = workload.call_s
    cps_limit = max(1, round(capacity / call_s))
    rate = factor * capacity / call_s
    calls = int(rate * seconds)
    cfg = write_test_config(tmp, directories={"prompts": str(workload.prompts)},
                            sip={"rtp_port_start": free_port_block(2000), "rtp_port_count": 2000},
                            logging={"level": "warning"},
                            limits={"max_concurrent_calls": capacity, "max_calls_per_second": cps_limit,
                                    "retry_after_seconds": 5})
    server = ServerProcess(cfg, list(workload.softswitch_args)).start()
    uac = Sipp("uac_call_or_503", f"127.0.0.1:{server.sip_port}", calls=calls, rate=rate, limit=calls,
               variables={"caller": "5550100", "hold_ms": int(call_s * 1000)},
               keys={"pcap": workload.caller_pcap}, timeout_s=seconds + call_s + 60, trace_msg=False,
               trace_dir=tmp / "sipp")
    cpu = CpuSampler(server.proc.pid)
    try:
        with LoopbackCapture(f"udp and dst port {uac.media_port}", tmp / "rtp.pcap", buffer_kib=65536) as cap:
            with uac:
                time.sleep(min(call_s, seconds / 2))  # past the ramp: admitted calls at their ceiling
                cpu.start()
                for _ in range(int(max(1, seconds - min(call_s, seconds / 2)))):
                    time.sleep(1)
                    cpu.sample_rss()
                cpu_percent = cpu.stop()
                result = uac.wait(seconds + call_s + 60)
        p99, gmax, streams = gap_stats(read_pcap(cap.path), uac.media_port)
    finally:
        server.stop()
    outcomes = result.log_values("outcome")
    retry_after = set(result.log_values("retry_after"))
    admitted, refused = outcomes.count("200"), outcomes.count("503")
    out = {
        "capacity": capacity, "max_calls_per_second": cps_limit, "offered_rate": rate, "seconds": seconds,
        "offered": calls, "admitted": admitted, "refused": refused, "other_or_failed": calls - admitted - refused,
        "sipp_failed": result.failed, "refused_by_reason": refusals(server.text()),
        "retry_after_values": sorted(retry_after), "admitted_streams": streams,
        "gap_p99_ms": round(p99, 2), "gap_max_ms": round(gmax, 2),
        "admitted_clean": bool(p99 < CLEAN_GAP_P99_MS and streams >= admitted),
        "cpu_percent": round(cpu_percent, 1), "rss_mb": round(cpu.rss_peak, 1),
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity", type=int, default=550, help="plain-call capacity (BENCHMARKS.md)")
    ap.add_argument("--factor", type=float, default=2.0, help="offered rate as a multiple of capacity's")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long calls are offered")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "overload.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp_s:
        out = run(args.capacity, args.factor, args.seconds, Path(tmp_s))
    out.update(command=" ".join(sys.argv), revision=source_revision())
    print(json.dumps(out, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
