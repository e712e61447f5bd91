#!/usr/bin/env python3
"""What a global call recording costs the UA loop: CPU of the UA thread per recorded leg.

An in-process endpoint (no SIP) carries N stand-in legs: frame ports that send a tone, each with
a prompt-like source connected into it. The script measures the UA thread's CPU time (and the
whole process's, which adds the bridge's clock thread) over a window, first with the legs alone,
then with a split-channel `CallRecorder` on every leg (two taps, one mirror, a drain every
100 ms, a crash-safe WAV written as it goes). The difference per leg is the recording's cost.

    .venv/bin/python bench/recording_cost.py                 # 200 legs, 10 s windows
    .venv/bin/python bench/recording_cost.py --legs 400 --seconds 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.audio import tone  # noqa: E402
from tests.support.server import write_test_config  # noqa: E402


def measure(ua, seconds: float) -> tuple[float, float]:
    """(UA-thread CPU s, process CPU s) spent during `seconds` of wall time."""
    ua_start = ua.run_sync(time.thread_time)
    proc_start = time.process_time()
    time.sleep(seconds)
    return ua.run_sync(time.thread_time) - ua_start, time.process_time() - proc_start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    from softswitch.config import load_config
    from softswitch.media import bridge
    from softswitch.media.frameport import FramePort
    from softswitch.media.recorders import CallRecorder
    from softswitch.sip.endpoint import UserAgent

    with tempfile.TemporaryDirectory(prefix="recording-cost-") as tmp:
        tmp_path = Path(tmp)
        ua = UserAgent(load_config(write_test_config(tmp_path)))
        ua.start()
        try:
            audio = tone(440, 2.0)

            def make_legs():
                legs = []
                for _ in range(args.legs):
                    leg = FramePort(ua, "leg", capacity_frames=128)
                    source = FramePort(ua, "source", capacity_frames=128)
                    bridge.connect(source.slot, leg.slot)
                    legs.append((leg, source))
                return legs

            legs = ua.run_sync(make_legs, timeout=60)

            def top_up():  # keep every stand-in sending audio (a poller, as tones would)
                for leg, source in legs:
                    if leg.tx_queued < 50:
                        leg.write(audio)
                        source.write(audio)

            remove_top_up = ua.run_sync(lambda: ua.add_poller(top_up))
            time.sleep(1.0)
            base_ua, base_proc = measure(ua, args.seconds)

            recorders = ua.run_sync(lambda: [CallRecorder(ua, tmp_path / "rec" / f"{i}.wav", split=True)
                                             for i in range(args.legs)], timeout=60)
            ua.run_sync(lambda: [rec.attach(leg.slot) for rec, (leg, _) in zip(recorders, legs)])
            time.sleep(1.0)
            rec_ua, rec_proc = measure(ua, args.seconds)
            lag = ua.loop_stats.lag_max

            results = ua.run_sync(lambda: [rec.close() for rec in recorders], timeout=60)
            ua.run_sync(remove_top_up)
            ua.run_sync(lambda: [p.stop() for pair in legs for p in pair])
        finally:
            ua.stop()

    n, s = args.legs, args.seconds
    per_leg_ua = (rec_ua - base_ua) / n / s
    per_leg_proc = (rec_proc - base_proc) / n / s
    recorded = sum(r.duration_ms for r in results) / n / 1000
    print(f"legs {n}, window {s:.0f} s, recorded {recorded:.1f} s per leg on average")
    print(f"UA thread CPU: {base_ua / s * 100:.1f} % without recordings, {rec_ua / s * 100:.1f} % with")
    print(f"process CPU:   {base_proc / s * 100:.1f} % without recordings, {rec_proc / s * 100:.1f} % with")
    print(f"per recorded leg: UA thread {per_leg_ua * 1e6:.0f} us/s ({per_leg_ua * 100:.3f} % of a core), "
          f"process {per_leg_proc * 1e6:.0f} us/s")
    print(f"max UA loop lag (whole run): {lag * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
