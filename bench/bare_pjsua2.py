#!/usr/bin/env python3
"""The bare pjsua2 baseline: the same media work as softswitch (answer, play a prompt into the
call, record the caller) with nothing else, on the same build and endpoint settings. Benchmarks
run it beside softswitch and report softswitch's ceiling as a ratio of this one.

    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --prompt prompts/hold_music.wav --record-dir /tmp/rec
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from pathlib import Path

import pjsua2 as pj


class BareCall(pj.Call):
    def __init__(self, server: "BareServer", acc: pj.Account, call_id: int) -> None:
        super().__init__(acc, call_id)
        self.server = server
        self.player = None
        self.recorder = None

    def onCallMediaState(self, prm) -> None:
        try:
            ci = self.getInfo()
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and self.player is None:
                    am = self.getAudioMedia(mi.index)
                    self.player = pj.AudioMediaPlayer()
                    self.player.createPlayer(self.server.prompt, pj.PJMEDIA_FILE_NO_LOOP)
                    self.player.startTransmit(am)
                    if self.server.record_dir:
                        self.recorder = pj.AudioMediaRecorder()
                        self.recorder.createRecorder(os.path.join(self.server.record_dir, f"{ci.id}-{ci.callIdString[:12]}.wav"))
                        am.startTransmit(self.recorder)
        except Exception as exc:
            print(f"media error: {exc}", file=sys.stderr)

    def onCallState(self, prm) -> None:
        try:
            if self.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.server.finished.append(self)
        except Exception as exc:
            print(f"state error: {exc}", file=sys.stderr)


class BareAccount(pj.Account):
    def __init__(self, server: "BareServer") -> None:
        super().__init__()
        self.server = server

    def onIncomingCall(self, prm) -> None:
        call = BareCall(self.server, self, prm.callId)
        self.server.calls[prm.callId] = call
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)


class BareServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.prompt = args.prompt
        self.record_dir = args.record_dir
        self.calls: dict[int, BareCall] = {}
        self.finished: list[BareCall] = []
        self.stop = False
        ep = self.ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 1000
        cfg.logConfig.level = 1
        cfg.logConfig.consoleLevel = 1
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.quality = 4
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.noVad = True
        ep.libInit(cfg)
        tc = pj.TransportConfig()
        tc.port = args.port
        tc.boundAddress = "127.0.0.1"
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
        ep.libStart()
        ep.audDevManager().setNullDev()
        for info in ep.codecEnum2():
            name = info.codecId.split("/")[0].lower()
            ep.codecSetPriority(info.codecId, {"pcmu": 250, "pcma": 249}.get(name, 0))
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:bare@127.0.0.1:{args.port}"
        acfg.mediaConfig.transportConfig.port = args.rtp_port
        acfg.mediaConfig.transportConfig.portRange = args.rtp_count
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        self.acc = BareAccount(self)
        self.acc.create(acfg, True)

    def run(self) -> None:
        print("bare pjsua2 ready", flush=True)
        while not self.stop:
            self.ep.libHandleEvents(10)
            while self.finished:
                call = self.finished.pop()
                self.calls = {k: v for k, v in self.calls.items() if v is not call}
        self.ep.hangupAllCalls()
        for _ in range(100):
            self.ep.libHandleEvents(10)
        self.calls.clear()
        self.finished.clear()
        self.acc.shutdown()
        self.acc = None
        gc.collect()
        self.ep.libDestroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rtp-port", type=int, required=True)
    ap.add_argument("--rtp-count", type=int, default=4000)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--record-dir", default="")
    args = ap.parse_args()
    if args.record_dir:
        Path(args.record_dir).mkdir(parents=True, exist_ok=True)
    server = BareServer(args)

    def on_signal(*_: object) -> None:
        server.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
