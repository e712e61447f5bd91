#!/usr/bin/env python3
"""AI leg latency: how much an AI leg adds to audio each way, measured in process.

A frame port plays a 100 ms tone burst into an AI leg's bridge slot; the (local, in-process)
provider echoes every chunk of audio it receives straight back; a second frame port listens to
the AI leg's slot. The round trip from the burst entering the bridge to its echo leaving it,
minus the two bridge ticks any bridged call also has (one each way), divided by two, is what the
AI leg adds each way: frame pump, hand-off between threads, resampling, JSON and base64, the
WebSocket on loopback and the playout queue. The provider itself adds nothing (it echoes at once).

    .venv/bin/python bench/ai_latency.py                    # openai_realtime, 30 bursts
    .venv/bin/python bench/ai_latency.py --profile generic --bursts 50
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.audio import tone  # noqa: E402
from tests.support.fake_ai import FakeProvider  # noqa: E402
from tests.support.server import write_test_config  # noqa: E402

BRIDGE_TICK_MS = 20.0
SILENCE_S, BURST_S = 0.6, 0.1


def measure(profile: str, bursts: int) -> list[float]:
    from softswitch.ai.generic import GenericSettings, GenericWebSocket
    from softswitch.ai.gemini_live import GeminiLive, GeminiSettings
    from softswitch.ai.leg import AiLegs
    from softswitch.ai.openai_realtime import OpenAiRealtime, OpenAiSettings
    from softswitch.config import load_config
    from softswitch.media import bridge as conf
    from softswitch.media.frameport import FramePort
    from softswitch.sip.endpoint import UserAgent

    kind = {"openai_realtime": "openai", "gemini_live": "gemini", "generic": "echo"}[profile]
    fake = FakeProvider(kind, echo=True)
    fake.record = False
    fake.start()
    tmp = Path(tempfile.mkdtemp(prefix="ai-latency-"))
    ua = UserAgent(load_config(write_test_config(tmp)))
    ua.start()
    if profile == "openai_realtime":
        prof = OpenAiRealtime(OpenAiSettings(api_key="bench", url=fake.url))
    elif profile == "gemini_live":
        prof = GeminiLive(GeminiSettings(api_key="bench", url=fake.url))
    else:
        prof = GenericWebSocket(GenericSettings(url=fake.url))
    legs = ua.run_sync(lambda: AiLegs(ua))
    detected: list[float] = []
    lock = threading.Lock()
    state = {"armed": False}

    def setup():
        src = FramePort(ua, "bench-src", tx_capacity_frames=256)
        sink = FramePort(ua, "bench-sink", capacity_frames=256)
        leg = legs.create(prof)
        leg.start()
        conf.connect(src.slot, leg.slot)
        conf.connect(leg.slot, sink.slot)

        def poll():
            frames = sink.read()
            if frames.size and state["armed"]:
                level = np.abs(frames.astype(np.int32)).max()
                if level > 2000:
                    with lock:
                        detected.append(time.monotonic())
                    state["armed"] = False

        ua.add_poller(poll)
        return src, leg

    src, leg = ua.run_sync(setup)
    deadline = time.monotonic() + 10
    while not leg.answered and time.monotonic() < deadline:
        time.sleep(0.05)
    if not leg.answered:
        raise SystemExit(f"the fake {profile} provider did not answer")
    burst = np.concatenate([np.zeros(int(8000 * SILENCE_S), np.int16), tone(1000, BURST_S, amplitude=0.5),
                            np.zeros(int(8000 * SILENCE_S), np.int16)])
    rtts: list[float] = []
    for _ in range(bursts):
        def go():
            state["armed"] = False
            src.write(burst)  # (not after clear_tx: the flush would drop it too)
            return time.monotonic()
        written = ua.run_sync(go)
        time.sleep(SILENCE_S * 0.8)
        state["armed"] = True
        start = written + SILENCE_S  # the burst's first frame leaves the source port then (± 1 tick)
        time.sleep(SILENCE_S * 0.2 + BURST_S + 0.6)
        with lock:
            if detected:
                rtts.append((detected.pop() - start) * 1000.0)
                detected.clear()
    ua.run_sync(lambda: leg.hangup())
    ua.stop()
    fake.stop()
    return rtts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="openai_realtime", choices=("openai_realtime", "gemini_live", "generic"))
    ap.add_argument("--bursts", type=int, default=30)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "ai_latency.json"))
    args = ap.parse_args()
    rtts = measure(args.profile, args.bursts)
    if not rtts:
        print("no echo detected")
        return 1
    each_way = [(r - 2 * BRIDGE_TICK_MS) / 2 for r in rtts]
    p50, p99 = float(np.percentile(each_way, 50)), float(np.percentile(each_way, 99))
    print(f"{args.profile}: {len(rtts)} bursts, round trip p50 {np.percentile(rtts, 50):.1f} ms; "
          f"added each way p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(each_way):.1f} ms")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"profile": args.profile, "round_trip_ms": rtts,
                                           "added_each_way_p50_ms": p50, "added_each_way_p99_ms": p99,
                                           "command": " ".join(sys.argv)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
