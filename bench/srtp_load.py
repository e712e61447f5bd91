#!/usr/bin/env python3
"""A pjsua2 load generator that speaks TLS and SRTP, which SIPp cannot: N calls into a SIP
server, each sending a looped WAV and receiving the server's audio, over UDP with plain RTP or
over TLS with SDES SRTP. It runs in its own process (pjsua is one per process) on the endpoint
settings of bench/bare_pjsua2.py (`start_endpoint`), and prints one JSON document when every
call has ended: per call whether it was answered and ended by us, and its receive statistics
(pjsua decrypts SRTP, so packets and loss are counted after decryption).

    python bench/srtp_load.py --target 127.0.0.1:5061 --transport tls --srtp mandatory \\
        --calls 100 --rate 30 --hold 12 --port 5090 --rtp-port 40000 --tone /tmp/440.wav
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pjsua2 as pj

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare_pjsua2 import start_endpoint  # noqa: E402

SRTP_USE = {"disabled": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
            "mandatory": pj.PJMEDIA_SRTP_MANDATORY}


PJ_EADDRINUSE = 120098  # PJ_STATUS_FROM_OS(EADDRINUSE)
ADDRESS_IN_USE_RETRIES = 3


class LoadCall(pj.Call):
    def __init__(self, load: "Load", account: pj.Account) -> None:
        super().__init__(account)
        self.load = load
        self.answered_at: float | None = None
        self.ended = False
        self.hung_up_by_us = False
        self.stats: dict | None = None
        self.last_code = 0
        self.error = ""  # why makeCall failed, or the last status text

    def onCallState(self, prm) -> None:
        info = self.getInfo()
        self.last_code = int(info.lastStatusCode)
        self.error = str(info.lastReason)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.answered_at is None:
            self.answered_at = time.monotonic()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.ended = True

    def onCallMediaState(self, prm) -> None:
        info = self.getInfo()
        for i, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.load.player.startTransmit(self.getAudioMedia(i))

    def finish(self) -> None:
        """Read the receive statistics, then hang up (ours is the BYE)."""
        try:
            rx = self.getStreamStat(0).rtcp.rxStat
            self.stats = {"packets": int(rx.pkt), "lost": int(rx.loss), "jitter_max_ms": rx.jitterUsec.max / 1000.0}
        except pj.Error:
            self.stats = None
        self.hung_up_by_us = True
        self.hangup(pj.CallOpParam())


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.account = pj.Account()
        self.ep = start_endpoint(args, self.account)
        if args.transport == "tls":
            tc = pj.TransportConfig()
            tc.port = 0
            tc.boundAddress = "127.0.0.1"
            tc.tlsConfig.verifyServer = False
            tls_id = self.ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc)
        # The calling account: start_endpoint's identity, with the SRTP use asked for.
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{args.caller}@127.0.0.1:{args.port}"
        mc = acfg.mediaConfig
        mc.transportConfig.port = args.rtp_port
        mc.transportConfig.portRange = args.rtp_count
        mc.transportConfig.boundAddress = "127.0.0.1"
        mc.srtpUse = SRTP_USE[args.srtp]
        mc.srtpSecureSignaling = 0
        if args.transport == "tls":
            acfg.sipConfig.transportId = tls_id  # made after libStart: pjsua does not pick it by itself
        self.caller = pj.Account()
        self.caller.create(acfg, False)
        self.player = pj.AudioMediaPlayer()
        self.player.createPlayer(args.tone, 0)  # looped
        self.calls: list[LoadCall] = []

    def run(self) -> dict:
        a = self.args
        suffix = ";transport=tls" if a.transport == "tls" else ""
        uri = f"sip:{a.number}@{a.target}{suffix}"
        start = time.monotonic()
        deadline = start + a.calls / a.rate + a.hold + 30
        while time.monotonic() < deadline:
            now = time.monotonic()
            while len(self.calls) < a.calls and len(self.calls) <= (now - start) * a.rate:
                self.calls.append(self.place(uri))
            for call in self.calls:
                if (call.answered_at is not None and not call.hung_up_by_us and not call.ended
                        and now - call.answered_at >= a.hold):
                    call.finish()
            if len(self.calls) == a.calls and all(c.ended for c in self.calls):
                break
            self.ep.libHandleEvents(5)
        return {"calls": [{"answered": c.answered_at is not None, "ended_by_us": c.hung_up_by_us,
                           "code": c.last_code, "reason": c.error, "rx": c.stats} for c in self.calls],
                "seconds": round(time.monotonic() - start, 1)}

    def place(self, uri: str) -> LoadCall:
        """One call; an RTP port another process took since the block was chosen (the machine is
        shared) is the load generator's problem, not the server's: try the next ports."""
        for _ in range(ADDRESS_IN_USE_RETRIES):
            call = LoadCall(self, self.caller)
            try:
                call.makeCall(uri, pj.CallOpParam(True))
                return call
            except pj.Error as exc:
                call.ended, call.error = True, exc.info()
                if exc.status != PJ_EADDRINUSE:
                    break
        return call

    def close(self) -> None:
        self.ep.hangupAllCalls()
        for _ in range(100):
            self.ep.libHandleEvents(10)
        self.calls.clear()
        self.player = None
        self.caller.shutdown()
        self.account.shutdown()
        self.ep.libDestroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="host:port of the server (its TLS port with --transport tls)")
    ap.add_argument("--transport", choices=("udp", "tls"), default="udp")
    ap.add_argument("--srtp", choices=tuple(SRTP_USE), default="disabled")
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--rate", type=float, default=20.0, help="new calls per second")
    ap.add_argument("--hold", type=float, default=12.0, help="seconds from answer to our BYE")
    ap.add_argument("--number", default="2000")
    ap.add_argument("--caller", default="5550100")
    ap.add_argument("--port", type=int, required=True, help="our SIP UDP port")
    ap.add_argument("--rtp-port", type=int, required=True)
    ap.add_argument("--rtp-count", type=int, default=2000)
    ap.add_argument("--tone", required=True, help="WAV sent into every call (looped)")
    args = ap.parse_args()
    load = Load(args)
    try:
        result = load.run()
    finally:
        load.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
