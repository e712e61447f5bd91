#!/usr/bin/env python3
"""IVR capacity: the highest concurrency of calls through an IVR flow that softswitch carries
cleanly, as a ratio of a bare pjsua2 script doing the same IVR by hand (`bare_pjsua2.py
--workload ivr`), measured in the same run with the same ramp as `bench/capacity.py`.

Each call (both systems): answer; the menu prompt (3 s, interruptible by a digit); `call.wait`
with rules 1, 2 and 9. The caller (SIPp, trunk side, a 440 Hz tone) presses 1 or 2 two seconds
into every menu: that branch plays a 2 s prompt and returns to the menu. After `--loops` turns
it presses 9: a 1 s goodbye prompt, then the server hangs up (the call succeeds when SIPp gets
that BYE). A call lasts 3 + 4 x loops seconds (15 s by default). A step is clean as in
capacity.py (no failed call, every call's RTP seen, RTP gap p99 under 30 ms) and, here, every
call's audio from the server also carries the branch prompt for every turn (decoded from the
capture), so each digit really took its branch.

    .venv/bin/python bench/ivr_capacity.py                          # default steps
    .venv/bin/python bench/ivr_capacity.py --steps 100,200 --loops 2  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from capacity import Workload, ramp, report  # noqa: E402
from tests.support.audio import tone  # noqa: E402
from tests.support.pcap import write_rtp_pcap  # noqa: E402

GOAL_RATIO = 0.9
MENU_S, BRANCH_S, GOODBYE_S = 3.0, 2.0, 1.0
DIGIT_INTO_MENU_S = 2.0  # the caller presses while the menu still plays (a barge-in)
DIGIT_MS = 100
BRANCH_HZ = 700.0

FLOW = """
name: ivr
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
    next: {Result: [play_menu]}
  - name: play_menu
    op: media.playAudio
    params: {sourceType: file, filePath: menu.wav, interruptOn: [dtmf]}
    next: {Interrupted: [menu], Completed: [menu]}
  - name: menu
    op: call.wait
    params:
      timeoutSeconds: 10
      rules: [{pattern: "1", label: Support}, {pattern: "2", label: Sales}, {pattern: "9", label: Bye}]
    next: {Support: [play_support], Sales: [play_sales], Bye: [play_goodbye], Timeout: [play_menu]}
  - name: play_support
    op: media.playAudio
    params: {sourceType: file, filePath: branch.wav}
    next: {Completed: [play_menu], Interrupted: [play_menu]}
  - name: play_sales
    op: media.playAudio
    params: {sourceType: file, filePath: branch.wav}
    next: {Completed: [play_menu], Interrupted: [play_menu]}
  - name: play_goodbye
    op: media.playAudio
    params: {sourceType: file, filePath: goodbye.wav}
    next: {Completed: [hangup], Interrupted: [hangup]}
  - name: hangup
    op: call.hangup
"""


def ivr_workload(tmp: Path, loops: int) -> Workload:
    prompts = tmp / "ivr-prompts"
    prompts.mkdir(exist_ok=True)
    for name, freq, seconds in (("menu", 500, MENU_S), ("branch", BRANCH_HZ, BRANCH_S), ("goodbye", 900, GOODBYE_S)):
        sf.write(prompts / f"{name}.wav", tone(freq, seconds, amplitude=0.1), 8000, subtype="PCM_16")
    flow = tmp / "ivr.yaml"
    flow.write_text(FLOW)
    turn = DIGIT_INTO_MENU_S + BRANCH_S  # from one menu start to the next
    digits = [("12"[i % 2], DIGIT_INTO_MENU_S + i * turn, DIGIT_MS) for i in range(loops)]
    digits.append(("9", DIGIT_INTO_MENU_S + loops * turn, DIGIT_MS))
    call_s = DIGIT_INTO_MENU_S + loops * turn + GOODBYE_S
    caller_pcap = tmp / "ivr-caller.pcap"
    # Audio runs past the server's BYE, so the caller never falls silent before it.
    write_rtp_pcap(caller_pcap, tone(440, call_s + 3.0), dtmf=digits)
    # Every call must carry the branch prompt for loops x 2 s (less a frame or two per turn):
    # proof that every digit took its branch (the 9 alone would also end the call well).
    branch_seconds = loops * (BRANCH_S - 0.1)
    return Workload("ivr", call_s, "uac_call_until_bye", {"caller": "5550100", "bye_timeout_ms": int(call_s * 1000)},
                    caller_pcap, prompts, softswitch_sections={"flows": [str(flow)]},
                    bare_args=("--workload", "ivr", "--prompt-dir", str(prompts)),
                    expected_tone=(BRANCH_HZ, branch_seconds) if loops else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="300,400,500,600", help="comma-separated concurrency steps, ascending")
    ap.add_argument("--loops", type=int, default=3, help="menu turns before the caller presses 9 (default 3)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "ivr_capacity.json"))
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ivr-capacity-") as tmp_s:
        tmp = Path(tmp_s)
        workload = ivr_workload(tmp, args.loops)
        print(f"ivr calls last {workload.call_s:g} s ({args.loops} menu turns, then 9)", flush=True)
        results = ramp(workload, steps, tmp)
    ratio = report(results, args.json, workload="ivr", loops=args.loops, call_seconds=workload.call_s,
                   goal_ratio=GOAL_RATIO)
    print(f"goal ratio >= {GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'NOT met'}; "
          f"run took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
