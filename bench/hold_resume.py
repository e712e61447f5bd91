"""How soon audio is back after a resume: real phones (liblinphone) through the assembled demo.

The trunk caller (440 Hz) is bridged to agent 1001 (1000 Hz); the agent holds (the caller hears
hold music) and resumes, `--rounds` times. One loopback capture holds the SIP between softswitch
and the agent and the RTP to and from both phones. For each resume it reports:

- to the agent: from softswitch's 200 OK to the resume re-INVITE to softswitch's first RTP
  packet to the agent (while held, softswitch answered recvonly and sent the agent nothing);
- to the caller: from the agent phone's first RTP packet after the resume to the first packet
  softswitch sends the caller that carries the agent's tone (the hold music is gone by then).

Both are what softswitch adds; the phone's own delay (linphone restarts its stream and player
after the 200) is left out. The goal is one 20 ms frame.

    .venv/bin/python bench/hold_resume.py --rounds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.audio import goertzel_power, ulaw_decode, alaw_decode  # noqa: E402
from tests.support.capture import LoopbackCapture  # noqa: E402
from tests.support.interop import AGENT_HZ, HOLD_HZ, demo_server, phones, queue_call  # noqa: E402


def _rtp(packet):
    data = packet.payload
    if len(data) < 12 or data[0] >> 6 != 2:
        return None, b""
    return data[1] & 0x7F, data[12 + 4 * (data[0] & 0x0F):]


def _carries(body: bytes, pt: int, freq: float, other: float) -> bool:
    samples = ulaw_decode(body) if pt == 0 else alaw_decode(body) if pt == 8 else None
    if samples is None or len(samples) < 80 or np.sqrt(np.mean(samples.astype(float) ** 2)) < 300:
        return False
    return goertzel_power(samples, freq) > 4 * goertzel_power(samples, other)


def measure(rounds: int, workdir: Path) -> dict:
    results = {"to_agent_ms": [], "to_caller_ms": []}
    with demo_server(workdir) as server, \
            phones(workdir, {"name": "caller", "user": "5551234"}, {"name": "agent", "auto_answer": True}) as (caller, agent):
        in_range = lambda p, port: p.rtp_port <= port < p.rtp_port + 20  # noqa: E731
        flt = (f"(udp portrange {caller.rtp_port}-{caller.rtp_port + 19}) or "
               f"(udp portrange {agent.rtp_port}-{agent.rtp_port + 19}) or (udp port {agent.sip_port})")
        resumes = []
        with LoopbackCapture(flt, workdir / "hold.pcap", buffer_kib=65536) as cap:
            call, agent_call = queue_call(server, caller, agent, workdir)
            time.sleep(2.0)
            for _ in range(rounds):
                mark = agent.mark()
                agent.pause(agent_call)
                agent.wait_event("LinphoneCallPaused", agent_call, 10, since=mark)
                time.sleep(1.5)
                mark = agent.mark()
                resumes.append(time.time())
                agent.resume(agent_call)
                agent.wait_event("LinphoneCallStreamsRunning", agent_call, 10, since=mark)
                time.sleep(1.5)
            caller.terminate(call)
            time.sleep(0.5)
        packets = sorted(cap.packets(), key=lambda p: p.ts)
        for i, start in enumerate(resumes):
            end = resumes[i + 1] if i + 1 < len(resumes) else float("inf")
            window = [p for p in packets if start <= p.ts < end]
            ok = next((p.ts for p in window if p.src[1] == server.sip_port and p.dst[1] == agent.sip_port
                       and p.payload.startswith(b"SIP/2.0 200") and b" INVITE\r\n" in p.payload), None)
            if ok is None:
                continue
            to_agent = next((p.ts for p in window if p.ts >= ok and in_range(agent, p.dst[1]) and _rtp(p)[0] in (0, 8)), None)
            from_agent = next((p.ts for p in window if p.ts >= ok and in_range(agent, p.src[1]) and
                               _carries(_rtp(p)[1], _rtp(p)[0], AGENT_HZ, HOLD_HZ)), None)
            to_caller = next((p.ts for p in window if from_agent is not None and p.ts >= from_agent
                              and in_range(caller, p.dst[1]) and _carries(_rtp(p)[1], _rtp(p)[0], AGENT_HZ, HOLD_HZ)),
                             None)
            if to_agent is not None:
                results["to_agent_ms"].append((to_agent - ok) * 1000)
            if to_caller is not None:
                results["to_caller_ms"].append((to_caller - from_agent) * 1000)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hold_resume.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hold-resume-") as tmp:
        results = measure(args.rounds, Path(tmp))
    summary = {key: {"n": len(v), "median": round(statistics.median(v), 1) if v else None,
                     "max": round(max(v), 1) if v else None, "all": [round(x, 1) for x in v]}
               for key, v in results.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    for key, s in summary.items():
        print(f"{key}: n={s['n']} median={s['median']} ms max={s['max']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
