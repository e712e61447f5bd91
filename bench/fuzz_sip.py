#!/usr/bin/env python3
"""A long SIP fuzzing run: N mutated messages (default 50,000) over UDP and TCP, the same
messages as tests/test_fuzz_sipp.py (tests/support/fuzz.py), reporting what was sent, what came
back by status code, and whether the server survived.

By default it starts its own softswitch (the fuzz flow and config of the test, its log in a
file) and reports the process's fate: exit code, assertion or traceback lines, ERROR lines that
no refused message explains, memory before and after. With --server it fuzzes a running server
instead (its trunk must admit --trunk-ip, and extension 1001/1002 must have the test passwords);
then only an OPTIONS probe tells whether it is still up.

    .venv/bin/python bench/fuzz_sip.py                          # 50,000 messages, seed 1
    .venv/bin/python bench/fuzz_sip.py --messages 5000 --seed 7 --json out.json
    .venv/bin/python bench/fuzz_sip.py --server 127.0.0.1:5060

Known failures (tests/support/fuzz.py KNOWN_FAILURES) are not sent unless --send-known-failures.
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

from tests.support.fuzz import FuzzDriver, fuzz_sections, unexpected_errors  # noqa: E402
from tests.support.server import ServerProcess, sip_options_ok, write_test_config  # noqa: E402


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000, help="messages in all (default 50,000)")
    ap.add_argument("--tcp-share", type=float, default=0.3, help="share sent over TCP (default 0.3)")
    ap.add_argument("--rate", type=float, default=200.0, help="UDP messages per second (TCP: half; default 200)")
    ap.add_argument("--connections", type=int, default=100, help="TCP connections (default 100)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    ap.add_argument("--trunk-ip", default="127.0.0.3", help="a source the server admits as a trunk")
    ap.add_argument("--phone-ip", default="127.0.0.2", help="a source that is no trunk")
    ap.add_argument("--send-known-failures", action="store_true", help="send the KNOWN_FAILURES messages too")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    args = ap.parse_args()

    tcp = int(args.messages * args.tcp_share)
    udp = args.messages - tcp
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-sip-"))
    server = None
    if args.server:
        host, port = args.server.rsplit(":", 1)
        address = (host, int(port))
        alive = None  # the driver's OPTIONS probe
    else:
        sections = fuzz_sections(tmp)
        sections["logging"] = {"level": "info", "file": str(tmp / "server.log")}
        server = ServerProcess(write_test_config(tmp, **sections)).start()
        address = ("127.0.0.1", server.sip_port)
        alive = lambda: server.proc.poll() is None  # noqa: E731
        print(f"server pid {server.proc.pid} on {address[0]}:{address[1]}; files in {tmp}", flush=True)
    rss_start = rss_kib(server.proc.pid) if server else None

    began = time.time()
    try:
        with FuzzDriver(address, args.seed, trunk_ips=(args.trunk_ip,), phone_ips=(args.phone_ip,), log=print,
                        send_known_failures=args.send_known_failures, alive=alive) as driver:
            report = driver.run(udp, tcp, rate=args.rate, connections=args.connections)
        up = sip_options_ok(address[1], address[0], timeout=2.0)
        rss_end = rss_kib(server.proc.pid) if server else None
    finally:
        exit_code = server.stop() if server else None
    elapsed = time.time() - began

    results = {"seed": args.seed, "messages": args.messages, "udp": udp, "tcp": tcp, "rate": args.rate,
               "seconds": round(elapsed, 1), "sent": dict(report.sent), "answered": report.answered,
               "responses": {str(k): v for k, v in sorted(report.responses.items())},
               "invites_2xx": report.invites_2xx, "malformed_invites": report.malformed_invites,
               "malformed_invites_2xx": report.malformed_invites_2xx,
               "lenient_invites_2xx": len(report.lenient_invites_2xx),
               "known_failures_not_sent": dict(report.known_failures_skipped),
               "controls": [report.controls_answered, report.controls_sent],
               "tcp_behaviour": {"connections": report.tcp_connections, "split": report.tcp_split_messages,
                       "closed_mid_message": report.tcp_closed_mid_message},
               "server_died_after": report.server_died_after, "answers_options_after": up}
    if server is not None:
        log = (tmp / "server.log").read_text(errors="backslashreplace")
        unexpected = unexpected_errors(log)
        results.update({
            "exit_code": exit_code, "crashed": exit_code not in (0, None) or bool(report.server_died_after),
            "assertions": re.findall(r"^.*Assertion .*$", log + server.text(), flags=re.M)[:5],
            "tracebacks": log.count("Traceback (most recent call last)"),
            "unexpected_error_lines": len(unexpected), "unexpected_error_examples": unexpected[:5],
            "rss_kib": [rss_start, rss_end], "log": str(tmp / "server.log")})
    print(report.summary())
    print(json.dumps({k: v for k, v in results.items() if k not in ("malformed_invites_2xx",)}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    failed = (report.server_died_after or not up or report.malformed_invites_2xx
              or (server is not None and (results["crashed"] or results["tracebacks"] or results["unexpected_error_lines"])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
