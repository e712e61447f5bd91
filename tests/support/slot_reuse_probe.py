"""Child process for test_call_slot_reuse_sipp.py: a UserAgent with pjsua call slots for two
calls, so the third call is given the slot of the first, and a reference to the first call's
pjsua2 object held past its end (as a lingering closure or traceback would hold it).

Run: python -m tests.support.slot_reuse_probe <workdir>. Prints one JSON line with what
happened; the test asserts on it. pjsua is a process-wide singleton, hence the own process."""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from softswitch.config import load_config  # noqa: E402
from softswitch.sip.endpoint import UserAgent  # noqa: E402
from softswitch.sip.events import LegEnded  # noqa: E402
from tests.support.pcap import write_rtp_pcap  # noqa: E402
from tests.support.audio import tone  # noqa: E402
from tests.support.server import write_test_config  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402


def main(work: Path) -> dict:
    config = load_config(write_test_config(work, sip={"max_calls": 2}))
    ua = UserAgent(config)
    legs: list = []
    slots: list[int] = []
    held: list = []  # the first call's pjsua2 object, kept past its end
    ended: dict[str, tuple[str, int]] = {}
    third_answered = threading.Event()

    class AnswerAll:
        def on_incoming_leg(self, leg):
            legs.append(leg)
            slots.append(leg.call.getId())
            if len(legs) == 1:
                held.append(leg.call)
            leg.subscribe(lambda e: ended.__setitem__(leg.id, (e.reason, e.sip_code)) if isinstance(e, LegEnded) else None)
            leg.answer()
            if len(legs) == 3:
                third_answered.set()

    pcap = work / "tone.pcap"
    write_rtp_pcap(pcap, tone(440, 5.0))
    ua.start()
    try:
        ua.run_sync(lambda: setattr(ua, "handler", AnswerAll()))
        target = f"127.0.0.1:{config.sip.udp_port}"

        def call(hold_ms: int) -> Sipp:
            return Sipp("uac_call_pcap", target, calls=1, variables={"caller": "5550100", "hold_ms": hold_ms},
                        keys={"pcap": pcap}, timeout_s=20)

        for _ in range(2):  # the first call (slot 0), then one on slot 1
            with call(300) as short:
                first = short.wait(15)
            if not first.ok:
                return {"error": f"a short call failed: {first}"}
        deadline = time.monotonic() + 5
        while len(ended) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with call(3000) as third:
            if not third_answered.wait(10):
                return {"error": "the third call was not offered"}
            deadline = time.monotonic() + 5  # until our 200 is ACKed: the call is up in its slot
            while not ua.run_sync(lambda: legs[2].answered) and time.monotonic() < deadline:
                time.sleep(0.02)

            def drop_the_first_call_object() -> None:
                held.clear()
                gc.collect()

            ua.run_sync(drop_the_first_call_object)
            result = third.wait(15)
        deadline = time.monotonic() + 5
        while len(ended) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"slots": slots, "third_sipp_ok": result.ok, "third_sipp": str(result),
                "ended": {str(i): ended.get(leg.id) for i, leg in enumerate(legs)}}
    finally:
        ua.run_sync(lambda: setattr(ua, "handler", None))
        ua.stop()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
