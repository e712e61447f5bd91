#!/usr/bin/env python3
"""REGISTER throughput with digest (401 + 200 per registration) and memory over 100k
registrations, against a softswitch process on loopback.

Several SIPp instances (one user each: SIPp 3.6 cannot take digest credentials from an
injection file) register over and over, each registration a new Call-ID: a challenge, an
answer with digest, and a 200 with the bindings. The server holds 1,000 users. The server's memory (RSS) is sampled as the
registrations go by; flat means the last samples are within a few MB of the first steady one.

    .venv/bin/python bench/register.py                       # 100k registrations at 2,500/s
    .venv/bin/python bench/register.py --total 20000 --rate 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.server import ServerProcess, write_test_config  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402

USERS = 1000
INSTANCES = 8


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", type=int, default=100_000, help="registrations to send")
    ap.add_argument("--rate", type=float, default=2500, help="registrations offered per second")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "register.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="register-") as tmp_s:
        tmp = Path(tmp_s)
        users = [{"username": f"u{i:05d}", "password": f"secret{i}", "extension": f"{2000 + i}"} for i in range(USERS)]
        cfg = write_test_config(tmp, extension_users={"bench": users},
                                security={"flood_requests_per_second": 0, "auth_failure_limit": 0,
                                          "trunk_requests_per_second": 0},  # phones on 127.0.0.1, trunk_main's
                                logging={"level": "warning"})
        server = ServerProcess(cfg).start()
        samples: list[tuple[int, float]] = []
        try:
            pid = server.proc.pid
            start_rss = rss_mb(pid)
            per = args.total // INSTANCES
            instances = [
                Sipp("register_uac", f"127.0.0.1:{server.sip_port}", calls=per, rate=args.rate / INSTANCES,
                     limit=500, auth=(users[i]["username"], users[i]["password"]),
                     variables={"user": users[i]["username"], "domain": "127.0.0.1", "expires": 3600},
                     trace_msg=False, timeout_s=per / (args.rate / INSTANCES) * 3 + 60)
                for i in range(INSTANCES)]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append((int(time.monotonic()), rss_mb(pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            started = time.monotonic()
            for sipp in instances:
                sipp.start()
            sampler.start()
            results = [sipp.wait(per / (args.rate / INSTANCES) * 3 + 60) for sipp in instances]
            for sipp in instances:
                sipp.close()
            elapsed = time.monotonic() - started
            stop.set()
            end_rss = rss_mb(pid)
        finally:
            server.stop()
    successful = sum(r.successful or 0 for r in results)
    failed = sum(r.failed or 0 for r in results)
    rate = successful / elapsed
    steady = [m for _, m in samples[len(samples) // 4:]] or [end_rss]
    report = {
        "registrations": per * INSTANCES, "successful": successful, "failed": failed, "sipp_instances": INSTANCES,
        "offered_rate": args.rate, "elapsed_s": round(elapsed, 2), "registrations_per_s": round(rate, 1),
        "transactions_per_s": round(2 * rate, 1), "rss_start_mb": round(start_rss, 1),
        "rss_after_quarter_mb": round(steady[0], 1), "rss_end_mb": round(end_rss, 1),
        "rss_max_mb": round(max(m for _, m in samples) if samples else end_rss, 1),
        "command": " ".join(sys.argv),
    }
    print(json.dumps(report, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
