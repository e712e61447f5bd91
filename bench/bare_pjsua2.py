#!/usr/bin/env python3
"""The bare pjsua2 baseline: the same media work as softswitch with nothing else, on the same
build and endpoint settings. Benchmarks run it beside softswitch and report softswitch's ceiling
as a ratio of this one. Two workloads:

- plain: answer, play a prompt into the call, record the caller;
- ivr: what bench/ivr_capacity.py's flow does, by hand: answer, play menu.wav; a digit stops it;
  1 or 2 plays branch.wav then the menu again; 9 plays goodbye.wav then hangs up; 10 s without a
  digit after the menu replays it;
- b2bua: what bench/queue_capacity.py's demo flow does for a caller who presses 1 while an agent
  is free, by hand: answer, record the call, play menu.wav; the digit 1 stops it and dials the
  agent; once the agent answers, both legs are joined in the conference bridge; whoever hangs
  up, the other side is hung up. pjsua2's AudioMediaRecorder has no stereo, so the recording is
  the mix of both legs (mono), not softswitch's split channels.

    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --prompt prompts/hold_music.wav --record-dir /tmp/rec
    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --workload ivr --prompt-dir /tmp/ivr-prompts
    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --workload b2bua --prompt-dir prompts \
        --agent-uri sip:agent@127.0.0.1:5080 --record-dir /tmp/rec
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from pathlib import Path

import pjsua2 as pj


IVR_MENU_WAIT_S = 10.0  # the flow's call.wait timeoutSeconds


class EofPlayer(pj.AudioMediaPlayer):
    """A player whose end of file (on the bridge's clock thread) is only queued for the loop."""

    def __init__(self, server: "BareServer", call: "BareCall", kind: str) -> None:
        super().__init__()
        self.server, self.call, self.kind = server, call, kind

    def onEof2(self) -> None:
        self.server.eofs.append((self.call, self))  # list.append is atomic; the loop does the rest


class BareCall(pj.Call):
    def __init__(self, server: "BareServer", acc: pj.Account, call_id: int) -> None:
        super().__init__(acc, call_id)
        self.server = server
        self.player = None
        self.recorder = None
        self.am = None  # ivr, b2bua: the call's audio media, once active
        self.peer: BareCall | None = None  # b2bua: the other leg
        self.agent_side = False  # b2bua: this is the dialled agent leg

    # ---- ivr ------------------------------------------------------------------------------
    def play(self, kind: str) -> None:
        self.stop_player()
        player = EofPlayer(self.server, self, kind)
        player.createPlayer(os.path.join(self.server.prompt_dir, f"{kind}.wav"), pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(self.am)
        self.player = player

    def stop_player(self) -> None:
        if self.player is not None:
            try:
                self.player.stopTransmit(self.am)
            except pj.Error:
                pass
            self.server.retired.append(self.player)  # destroyed on the next loop turn, never in a callback
            self.player = None

    def on_eof(self, player: EofPlayer) -> None:
        if player is not self.player:
            return  # stopped before its end of file was handled
        self.stop_player()
        if self.server.workload == "b2bua":
            return  # the menu plays once; the digit may still come
        if player.kind == "menu":
            self.server.menu_deadlines[self] = time.monotonic() + IVR_MENU_WAIT_S
        elif player.kind == "branch":
            self.play("menu")
        elif player.kind == "goodbye":
            self.hangup(pj.CallOpParam())

    def onDtmfDigit(self, prm) -> None:
        try:
            if self.server.workload == "b2bua":
                if prm.digit == "1" and self.peer is None and not self.agent_side:
                    self.stop_player()
                    self.server.dials.append(self)  # dialled from the loop, not inside a callback
                return
            if self.am is None or (self.player is not None and self.player.kind != "menu"):
                return  # the branch and goodbye prompts do not listen for digits (as in the flow)
            self.server.menu_deadlines.pop(self, None)
            if prm.digit in ("1", "2"):
                self.play("branch")
            elif prm.digit == "9":
                self.play("goodbye")
            elif self.player is None:  # no rule matched, the wait goes on
                self.server.menu_deadlines[self] = time.monotonic() + IVR_MENU_WAIT_S
        except Exception as exc:
            print(f"dtmf error: {exc}", file=sys.stderr)

    # ---- both workloads -------------------------------------------------------------------
    def onCallMediaState(self, prm) -> None:
        try:
            ci = self.getInfo()
            for mi in ci.media:
                if mi.type != pj.PJMEDIA_TYPE_AUDIO or mi.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                    continue
                if self.server.workload == "b2bua":
                    if self.am is None:
                        self.am = self.getAudioMedia(mi.index)
                        self.b2bua_media_active(ci)
                elif self.server.workload == "ivr":
                    if self.am is None:
                        self.am = self.getAudioMedia(mi.index)
                        self.play("menu")
                elif self.player is None:
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

    def b2bua_media_active(self, ci) -> None:
        if not self.agent_side:
            # The caller: record from answer (as the demo's Recording branch), then the menu.
            if self.server.record_dir:
                self.recorder = pj.AudioMediaRecorder()
                self.recorder.createRecorder(os.path.join(self.server.record_dir, f"{ci.id}-{ci.callIdString[:12]}.wav"))
                self.am.startTransmit(self.recorder)
            self.play("menu")
            return
        caller = self.peer
        if caller is None or caller.am is None:
            return  # the caller hung up while the agent answered: the loop hangs this leg up
        caller.stop_player()
        caller.am.startTransmit(self.am)
        self.am.startTransmit(caller.am)
        if caller.recorder is not None:
            self.am.startTransmit(caller.recorder)  # the mix: AudioMediaRecorder is mono
        self.server.bridged += 1

    def onCallState(self, prm) -> None:
        try:
            if self.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
                if self.server.workload == "b2bua":
                    self.stop_player()
                    if self.peer is not None:
                        self.server.hangups.append(self.peer)
                        self.peer.peer = None
                        self.peer = None
                    if self.recorder is not None:
                        self.server.retired.append(self.recorder)
                        self.recorder = None
                if self.server.workload == "ivr":
                    self.stop_player()
                    self.server.menu_deadlines.pop(self, None)
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
        self.workload = args.workload
        self.prompt = args.prompt
        self.prompt_dir = args.prompt_dir
        self.record_dir = args.record_dir
        self.calls: dict[int, BareCall] = {}
        self.finished: list[BareCall] = []
        self.eofs: list[tuple[BareCall, EofPlayer]] = []  # appended on the clock thread
        self.retired: list[EofPlayer] = []
        self.menu_deadlines: dict[BareCall, float] = {}
        self.agent_uri = args.agent_uri
        self.dials: list[BareCall] = []  # b2bua: callers who pressed 1
        self.hangups: list[BareCall] = []  # b2bua: legs whose peer ended
        self.agents: list[BareCall] = []  # b2bua: live agent legs (the account owns no outbound call)
        self.bridged = 0
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

    def dial_agent(self, caller: BareCall) -> None:
        """b2bua: call the agent for a caller still on the line; joined once its media is up."""
        try:
            if caller not in self.calls.values() or caller.peer is not None:
                return
            agent = BareCall(self, self.acc, pj.PJSUA_INVALID_ID)
            agent.agent_side = True
            agent.peer, caller.peer = caller, agent
            self.agents.append(agent)
            agent.makeCall(self.agent_uri, pj.CallOpParam(True))
        except pj.Error as exc:
            print(f"dial error: {exc.info()}", file=sys.stderr)

    def run(self) -> None:
        print("bare pjsua2 ready", flush=True)
        while not self.stop:
            self.ep.libHandleEvents(10)
            self.retired.clear()
            while self.eofs:
                call, player = self.eofs.pop(0)
                call.on_eof(player)
            if self.menu_deadlines:
                now = time.monotonic()
                for call in [c for c, t in self.menu_deadlines.items() if t <= now]:
                    del self.menu_deadlines[call]
                    call.play("menu")
            while self.dials:
                self.dial_agent(self.dials.pop(0))
            while self.hangups:
                call = self.hangups.pop(0)
                try:
                    call.hangup(pj.CallOpParam())
                except pj.Error:
                    pass  # already ending
            while self.finished:
                call = self.finished.pop()
                self.calls = {k: v for k, v in self.calls.items() if v is not call}
                if call in self.agents:
                    self.agents.remove(call)
        if self.workload == "b2bua":
            print(f"bare pjsua2 bridged {self.bridged}", flush=True)
        self.ep.hangupAllCalls()
        for _ in range(100):
            self.ep.libHandleEvents(10)
        self.calls.clear()
        self.finished.clear()
        self.eofs.clear()
        self.retired.clear()
        self.menu_deadlines.clear()
        self.dials.clear()
        self.hangups.clear()
        self.agents.clear()
        self.acc.shutdown()
        self.acc = None
        gc.collect()
        self.ep.libDestroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rtp-port", type=int, required=True)
    ap.add_argument("--rtp-count", type=int, default=4000)
    ap.add_argument("--workload", choices=("plain", "ivr", "b2bua"), default="plain")
    ap.add_argument("--prompt", help="plain: the prompt played into every call")
    ap.add_argument("--prompt-dir", help="ivr: the directory of menu.wav, branch.wav and goodbye.wav")
    ap.add_argument("--record-dir", default="")
    ap.add_argument("--agent-uri", help="b2bua: where callers who press 1 are connected")
    args = ap.parse_args()
    if args.workload == "plain" and not args.prompt:
        ap.error("--prompt is required for the plain workload")
    if args.workload in ("ivr", "b2bua") and not args.prompt_dir:
        ap.error(f"--prompt-dir is required for the {args.workload} workload")
    if args.workload == "b2bua" and not args.agent_uri:
        ap.error("--agent-uri is required for the b2bua workload")
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
