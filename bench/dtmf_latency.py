#!/usr/bin/env python3
"""DTMF-to-prompt latency: how long after a caller presses a digit the prompt that the digit
selects starts to reach the caller, measured on the wire with concurrent calls.

The flow answers and waits in `call.wait` with one rule per digit; each rule plays a short tone
prompt (`media.playAudio`, blocking) and goes back to the wait. SIPp callers (trunk side) send
silence with RFC 2833 digits at known times (1, 2, 3 in turn, 100 ms each, one every
`--spacing` seconds). tcpdump captures both directions on loopback. For each digit the latency
runs from the digit's **first** RFC 2833 packet arriving at the server (pjmedia, like the
reference, reports a digit on its first event packet) to the first RTP packet from the server
on that call whose audio is not silence (the prompt's first frame). The same figure is also
reported from the digit's last end packet (E bit; the third copy), which is negative when the
prompt starts before the caller has released the key.

    .venv/bin/python bench/dtmf_latency.py                              # 40 calls, 20 at once, 10 digits each
    .venv/bin/python bench/dtmf_latency.py --calls 60 --concurrency 30 --digits 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.audio import alaw_decode, silence, tone, ulaw_decode  # noqa: E402
from tests.support.capture import LoopbackCapture  # noqa: E402
from tests.support.pcap import PT_PCMA, PT_PCMU, PT_TELEPHONE_EVENT, Packet, parse_rtp, write_rtp_pcap  # noqa: E402
from tests.support.ports import free_port_block  # noqa: E402
from tests.support.server import ServerProcess, write_test_config  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from capacity import source_revision  # noqa: E402

GOAL_P99_MS = 40.0
DIGITS = "123"
DIGIT_MS = 100
LEAD_S = 1.5  # first digit after the call is up and the flow waits
TAIL_S = 1.0  # after the last digit, so its prompt is captured before the BYE
PROMPT_S = 0.3
PROMPT_PEAK = 0.3  # of full scale; silence decodes to 0, so a threshold far below it is safe
NON_SILENT = 1000  # peak sample magnitude that marks a frame of the prompt
RTP_PORTS = 1000

FLOW = """
name: dtmf_latency
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [wait]}
  - name: wait
    op: call.wait
    params:
      timeoutSeconds: 60
      rules: [{pattern: "1", label: One}, {pattern: "2", label: Two}, {pattern: "3", label: Three}]
    next: {One: [prompt], Two: [prompt], Three: [prompt], Timeout: [wait]}
  - name: prompt
    op: media.playAudio
    params: {sourceType: file, filePath: beep.wav}
    next: {Completed: [wait], Interrupted: [wait]}
"""


@dataclass
class Digit:
    port: int  # the server's RTP port of the call
    digit: str
    first_event: float  # capture time of the digit's first RFC 2833 packet
    last_end: float | None  # capture time of its last end (E bit) packet
    prompt_start: float | None  # first non-silent server packet after first_event


@dataclass
class Summary:
    digits_sent: int
    digits_seen: int
    prompts_matched: int
    missed: int
    from_first_event_ms: dict
    from_last_end_ms: dict
    calls: int
    concurrency: int
    successful_calls: int
    failed_calls: int
    goal_p99_ms: float
    goal_met: bool


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"n": 0}
    a = np.array(values_ms)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2),
            "min": round(float(a.min()), 2), "mean": round(float(a.mean()), 2)}


def caller_audio(digits: int, spacing: float) -> tuple[np.ndarray, list[tuple[str, float, int]]]:
    seconds = LEAD_S + (digits - 1) * spacing + TAIL_S
    events = [(DIGITS[i % len(DIGITS)], LEAD_S + i * spacing, DIGIT_MS) for i in range(digits)]
    return silence(seconds), events


def match_digits(packets: list[Packet], media_port: int, spacing: float) -> list[Digit]:
    """Pair each digit the callers sent with the first prompt frame the server sent back.

    Every caller is one SIPp, whose RTP comes from and goes to `media_port`; the other end of
    each packet is the server's RTP port of that call. Keying by it keeps other traffic on
    loopback (other servers' calls) out of the figures."""
    digits: list[Digit] = []
    # The event each server port is receiving: (its RTP timestamp, the Digit). Every caller
    # replays the same pcap (same SSRC and timestamps) and pjsua reuses ports for later calls,
    # so a new event is told by its marker bit or a new timestamp, never by a key.
    current: dict[int, tuple[int, Digit]] = {}
    loud: dict[int, list[float]] = {}  # server port -> times of non-silent audio packets
    for pkt in sorted(packets, key=lambda p: p.ts):
        rtp = parse_rtp(pkt.payload, pkt.ts)
        if rtp is None:
            continue
        if pkt.src_port == media_port and rtp.pt == PT_TELEPHONE_EVENT and len(rtp.payload) >= 4:
            known = current.get(pkt.dst_port)
            if rtp.marker or known is None or known[0] != rtp.timestamp:
                digit = Digit(pkt.dst_port, "0123456789*#ABCD"[rtp.payload[0] & 0x0F], pkt.ts, None, None)
                digits.append(digit)
                current[pkt.dst_port] = (rtp.timestamp, digit)
            else:
                digit = known[1]
            if rtp.payload[1] & 0x80:
                digit.last_end = pkt.ts
        elif pkt.dst_port == media_port and rtp.pt in (PT_PCMU, PT_PCMA) and rtp.payload:
            pcm = ulaw_decode(rtp.payload) if rtp.pt == PT_PCMU else alaw_decode(rtp.payload)
            if int(np.abs(pcm.astype(np.int32)).max()) >= NON_SILENT:
                loud.setdefault(pkt.src_port, []).append(pkt.ts)
    loud_sorted = {port: np.sort(np.array(times)) for port, times in loud.items()}
    for digit in digits:
        times = loud_sorted.get(digit.port)
        if times is None:
            continue
        i = int(np.searchsorted(times, digit.first_event))
        # Only a prompt that starts before the next digit belongs to this one.
        if i < times.size and times[i] < digit.first_event + spacing * 0.9:
            digit.prompt_start = float(times[i])
    return digits


def run(args: argparse.Namespace, tmp: Path) -> tuple[Summary, list[Digit]]:
    prompts = tmp / "prompts"
    prompts.mkdir()
    sf.write(prompts / "beep.wav", tone(1000, PROMPT_S, amplitude=PROMPT_PEAK), 8000, subtype="PCM_16")
    flow = tmp / "dtmf_latency.yaml"
    flow.write_text(FLOW)
    audio, events = caller_audio(args.digits, args.spacing)
    caller_pcap = tmp / "caller.pcap"
    write_rtp_pcap(caller_pcap, audio, dtmf=events)
    call_s = audio.size / 8000
    rtp_start = free_port_block(RTP_PORTS)
    cfg = write_test_config(tmp, directories={"prompts": str(prompts)}, flows=[str(flow)],
                            sip={"rtp_port_start": rtp_start, "rtp_port_count": RTP_PORTS},
                            logging={"level": "warning"})
    rate = args.concurrency / call_s
    bound = call_s + args.calls / rate + 60
    server = ServerProcess(cfg).start()
    try:
        uac = Sipp("uac_call_pcap", f"127.0.0.1:{server.sip_port}", calls=args.calls, limit=args.concurrency,
                   rate=rate, variables={"caller": "5550100", "hold_ms": int(call_s * 1000) + 300},
                   keys={"pcap": caller_pcap}, timeout_s=bound, trace_msg=False)
        with LoopbackCapture(f"udp and port {uac.media_port}", tmp / "rtp.pcap",
                             buffer_kib=65536) as cap:
            with uac:
                result = uac.wait(bound + 10)
        packets = cap.packets()
    finally:
        server.stop()
    digits = match_digits(packets, uac.media_port, args.spacing)
    matched = [d for d in digits if d.prompt_start is not None]
    first = [(d.prompt_start - d.first_event) * 1000 for d in matched]
    last = [(d.prompt_start - d.last_end) * 1000 for d in matched if d.last_end is not None]
    stats = percentiles(first)
    summary = Summary(
        digits_sent=args.calls * args.digits, digits_seen=len(digits), prompts_matched=len(matched),
        missed=len(digits) - len(matched), from_first_event_ms=stats, from_last_end_ms=percentiles(last),
        calls=args.calls, concurrency=args.concurrency, successful_calls=result.successful or 0,
        failed_calls=result.failed or 0, goal_p99_ms=GOAL_P99_MS,
        goal_met=bool(matched) and len(matched) == args.calls * args.digits and stats["p99"] <= GOAL_P99_MS)
    if not result.ok:
        print(f"warning: SIPp reported a problem:\n{result}", file=sys.stderr)
    return summary, digits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=40, help="calls in total (default 40)")
    ap.add_argument("--concurrency", type=int, default=20, help="calls up at once (default 20)")
    ap.add_argument("--digits", type=int, default=10, help="digits per call (default 10)")
    ap.add_argument("--spacing", type=float, default=1.0, help="seconds between digits (default 1.0)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "dtmf_latency.json"))
    args = ap.parse_args()
    if args.spacing < PROMPT_S + 0.4:
        ap.error(f"--spacing must leave the {PROMPT_S} s prompt time to finish (at least {PROMPT_S + 0.4} s)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dtmf-latency-") as tmp_s:
        summary, digits = run(args, Path(tmp_s))
    f, e = summary.from_first_event_ms, summary.from_last_end_ms
    print(f"{summary.calls} calls ({summary.concurrency} at once): {summary.successful_calls} ok, "
          f"{summary.failed_calls} failed; digits sent {summary.digits_sent}, seen {summary.digits_seen}, "
          f"prompt matched {summary.prompts_matched}, missed {summary.missed}")
    if f.get("n"):
        print(f"first event packet -> prompt: p50 {f['p50']} ms, p95 {f['p95']} ms, p99 {f['p99']} ms, "
              f"max {f['max']} ms (goal p99 <= {GOAL_P99_MS:g} ms: {'met' if summary.goal_met else 'NOT met'})")
    if e.get("n"):
        print(f"last end packet    -> prompt: p50 {e['p50']} ms, p95 {e['p95']} ms, p99 {e['p99']} ms, max {e['max']} ms")
    print(f"run took {time.monotonic() - started:.0f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": asdict(summary), "command": " ".join(sys.argv), "revision": source_revision(),
                               "digits": [asdict(d) for d in digits]}, indent=1))
    return 0 if summary.goal_met else 1


if __name__ == "__main__":
    sys.exit(main())
