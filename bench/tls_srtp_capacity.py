#!/usr/bin/env python3
"""Plain-call capacity over TLS with SRTP against the same calls over UDP with plain RTP, in the
same run: the highest clean concurrency of each and the server CPU per call that encryption adds.

SIPp cannot do SRTP, so the callers are bench/srtp_load.py (pjsua2, its own process). The
server is softswitch with the built-in welcome handler recording every call (`run --record`,
the plain workload of bench/capacity.py): it answers, plays a 300 Hz prompt into the call and
records the caller's 440 Hz tone. At each concurrency step N, N calls arrive over 3 s and are
held 12 s; softswitch's CPU is measured over the middle seconds with all N up. Secure steps use
a server with `sip.tls_port` and `trunks.trunk_main.srtp: mandatory`; plain steps one with
neither. The two kinds alternate at each step, so both see the same machine.

A step is clean when every call was answered and ended by our BYE, every call's RTP stream
was captured (headers are clear in SRTP too), the 99th percentile of the gaps between the
server's RTP packets is under 30 ms (bench/capacity.py's rule), and the callers lost under
0.5 % of packets. The capture also shows the encryption: plain streams decode to the prompt's
tone, secure ones must not.

    .venv/bin/python bench/tls_srtp_capacity.py                      # default steps
    .venv/bin/python bench/tls_srtp_capacity.py --steps 50,100,150   # chosen steps
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from capacity import CLEAN_GAP_P99_MS, CpuSampler, ceiling, source_revision, tone_seconds  # noqa: E402
from tests.support.audio import tone  # noqa: E402
from tests.support.capture import LoopbackCapture  # noqa: E402
from tests.support.pcap import Packet, read_pcap, rtp_streams  # noqa: E402
from tests.support.ports import free_port, free_port_block  # noqa: E402
from tests.support.server import ServerProcess, write_test_config  # noqa: E402

HOLD_S = 12.0
RAMP_S = 3.0
PROMPT_HZ, CALLER_HZ = 300, 440
MAX_LOSS = 0.005
KINDS = ("plain", "tls_srtp")


@dataclass
class Step:
    kind: str  # plain (UDP, RTP) or tls_srtp (TLS, SRTP mandatory)
    concurrency: int
    answered: int
    ended_by_us: int
    streams: int
    gap_p99_ms: float
    gap_max_ms: float
    rx_loss: float  # lost / expected at the callers, after SRTP decryption
    decodable_streams: int  # streams whose payload decodes to the prompt's tone (plain: all; SRTP: none)
    cpu_percent: float  # softswitch, 100 = one core, with all calls up
    cpu_per_call: float
    load_cpu_percent: float  # the load generator, for context (it shares the machine)
    clean: bool
    failures: dict | None = None  # final SIP status of calls not answered: count


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "bench.crt", directory / "bench.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def gap_stats(packets: list[Packet]) -> tuple[float, float, int]:
    """bench/capacity.py's gap_stats for callers on many ports: (p99, max, streams) of the gaps
    between the server's packets per stream (source, destination, SSRC), first second skipped."""
    by_stream: dict[tuple, list[float]] = {}
    for pkt in packets:
        if len(pkt.payload) < 12 or pkt.dst[1] % 2:  # RTCP goes to the odd ports
            continue
        ssrc = int.from_bytes(pkt.payload[8:12], "big")
        by_stream.setdefault((pkt.src, pkt.dst, ssrc), []).append(pkt.ts)
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


def decodable(packets: list[Packet]) -> int:
    """Streams whose payload, read as PCMU, carries the prompt's tone (the capture holds only
    packets towards the callers)."""
    return sum(tone_seconds(stream.audio(), PROMPT_HZ) >= 2.0 for stream in rtp_streams(packets).values())


def run_step(kind: str, n: int, tmp: Path, prompts: Path, caller_wav: Path, cert: tuple[Path, Path]) -> Step:
    step_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-{n}-", dir=tmp))
    secure = kind == "tls_srtp"
    tls_port = free_port("tcp")
    # One block for both RTP ranges: two blocks chosen apart can overlap, since the server binds
    # its ports only as calls arrive.
    server_rtp = free_port_block(4000)
    rtp = server_rtp + 2000
    sip: dict = {"rtp_port_start": server_rtp, "rtp_port_count": 2000}
    sections: dict = {"directories": {"prompts": str(prompts)}, "logging": {"level": "warning"}}
    if secure:
        sip.update({"tls_port": tls_port, "tls": {"certificate": str(cert[0]), "private_key": str(cert[1])}})
        sections["trunks"] = {"trunk_main": {"address": "127.0.0.1", "port": 0, "srtp": "mandatory"}}
    server = ServerProcess(write_test_config(step_dir, sip=sip, **sections), ["--record"]).start()
    client_port = free_port("udp")
    target = f"127.0.0.1:{tls_port if secure else server.sip_port}"
    cmd = [sys.executable, str(REPO / "bench" / "srtp_load.py"), "--target", target,
           "--transport", "tls" if secure else "udp", "--srtp", "mandatory" if secure else "disabled",
           "--calls", str(n), "--rate", f"{n / RAMP_S:g}", "--hold", str(HOLD_S), "--port", str(client_port),
           "--rtp-port", str(rtp), "--rtp-count", "2000", "--tone", str(caller_wav)]
    try:
        with LoopbackCapture(f"udp and dst portrange {rtp}-{rtp + 1999}", step_dir / "rtp.pcap",
                             buffer_kib=65536) as cap:
            client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out: list[str] = []
            pump = threading.Thread(target=lambda: out.extend(client.stdout), daemon=True)
            pump.start()
            cpu, load_cpu = CpuSampler(server.proc.pid), CpuSampler(client.pid)
            time.sleep(RAMP_S + 1.5)  # every call up
            cpu.start()
            load_cpu.start()
            time.sleep(HOLD_S - 3.0)
            cpu_percent, load_percent = cpu.stop(), load_cpu.stop()
            client.wait(RAMP_S + HOLD_S + 60)
            pump.join(10)
        packets = read_pcap(cap.path)
        p99, gmax, streams = gap_stats(packets)
        toned = decodable(packets)
        del packets
    finally:
        server.stop()
        (step_dir / "server.log").write_text(server.text())
        (step_dir / "load.log").write_text("".join(out))
    lines = [line for line in out if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the load generator printed no result:\n{''.join(out)[-3000:]}")
    calls = json.loads(lines[-1])["calls"]
    answered = sum(c["answered"] for c in calls)
    ended = sum(c["ended_by_us"] for c in calls)
    rx = [c["rx"] for c in calls if c["rx"]]
    received, lost = sum(r["packets"] for r in rx), sum(r["lost"] for r in rx)
    loss = lost / (received + lost) if received + lost else 1.0
    encryption_seen = toned == 0 if secure else toned >= n
    clean = (answered == n and ended == n and streams >= n and p99 < CLEAN_GAP_P99_MS and loss < MAX_LOSS
             and encryption_seen)
    failures: dict[str, int] = {}
    for c in calls:
        if not c["answered"]:
            why = f'{c["code"]} {c.get("reason", "")}'.strip()
            failures[why] = failures.get(why, 0) + 1
    return Step(kind, n, answered, ended, streams, round(p99, 2), round(gmax, 2), round(loss, 5), toned,
                round(cpu_percent, 1), round(cpu_percent / n, 3), round(load_percent, 1), clean, failures or None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="300,350,400,450,500", help="comma-separated concurrency steps, ascending")
    ap.add_argument("--kinds", default=",".join(KINDS), help="which of plain,tls_srtp to run")
    ap.add_argument("--keep", action="store_true", help="keep the step directories (logs, captures)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "tls_srtp_capacity.json"))
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    results: list[Step] = []
    tmp = Path(tempfile.mkdtemp(prefix="tls-srtp-capacity-"))
    try:
        prompts = tmp / "prompts"
        prompts.mkdir()
        sf.write(prompts / "welcome.wav", tone(PROMPT_HZ, HOLD_S + 20, amplitude=0.1), 8000, subtype="PCM_16")
        caller_wav = tmp / "caller.wav"
        sf.write(caller_wav, tone(CALLER_HZ, 5.0), 8000, subtype="PCM_16")
        cert = make_certificate(tmp)
        stopped: set[str] = set()
        for n in steps:
            for kind in args.kinds.split(","):
                if kind in stopped:
                    continue
                step = run_step(kind, n, tmp, prompts, caller_wav, cert)
                results.append(step)
                print(f"{kind:8s} {n:4d} concurrent: {step.answered}/{n} answered, {step.ended_by_us} ended by us, "
                      f"{step.streams} streams ({step.decodable_streams} decodable), RTP gap p99 {step.gap_p99_ms} ms "
                      f"(max {step.gap_max_ms}), rx loss {step.rx_loss:.3%}, softswitch CPU {step.cpu_percent}% "
                      f"({step.cpu_per_call}%/call), load generator CPU {step.load_cpu_percent}%"
                      + (f", not answered: {step.failures}" if step.failures else "")
                      + f" -> {'clean' if step.clean else 'NOT clean'}", flush=True)
                if not step.clean:
                    stopped.add(kind)
            if len(stopped) == len(args.kinds.split(",")):
                break
    finally:
        if args.keep:
            print(f"step directories (server and load generator logs, captures) kept in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    plain = ceiling([s for s in results if s.kind == "plain"])  # capacity.ceiling reads .concurrency/.clean
    secure = ceiling([s for s in results if s.kind == "tls_srtp"])
    ratio = secure / plain if plain else 0.0
    both = [(p, s) for p in results for s in results
            if p.kind == "plain" and s.kind == "tls_srtp" and p.concurrency == s.concurrency and p.clean and s.clean]
    added = [round(s.cpu_per_call - p.cpu_per_call, 3) for p, s in both]
    print(f"\nhighest clean concurrency: plain {plain}, TLS+SRTP {secure}, ratio {ratio:.2f}; "
          f"CPU per call added by TLS+SRTP at equal steps: {added} (% of one core)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"steps": [asdict(s) for s in results], "plain_ceiling": plain,
                                           "tls_srtp_ceiling": secure, "ratio": ratio,
                                           "cpu_per_call_added": added, "command": " ".join(sys.argv),
                                           "revision": source_revision()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
