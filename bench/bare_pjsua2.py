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
  the mix of both legs (mono), not softswitch's split channels;
- full: what bench/full_demo.py's assembled demo does, by hand (`FullWork`): answer, record the
  call (mono mix), play menu.wav; 1 or 2 stops it and plays hold_music.wav looped, and after
  `--queue-wait` s (a stand-in for the queue: no queue, no registrar here) dials the agent and
  joins both legs; 9 while waiting plays callback_confirm.wav and marks the caller, and once
  that caller has hung up, `--callback-delay` s later (the demo's retry pause) dials the agent,
  then the customer (the caller's number at `--customer-host`), and joins them, or plays
  customer_unavailable.wav to the agent and hangs up when the customer does not answer within
  `--customer-timeout` s; 3 streams the call to the AI provider at `--ai-url` and plays its
  answer back (`bench/bare_ai.py`'s `BareAiBridge`: the native FramePort, as pjsua2 2.12 has
  no Python media port). Whoever hangs up, the other side is hung up.

    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --prompt prompts/hold_music.wav --record-dir /tmp/rec
    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --workload ivr --prompt-dir /tmp/ivr-prompts
    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --workload b2bua --prompt-dir prompts \
        --agent-uri sip:agent@127.0.0.1:5080 --record-dir /tmp/rec
    python bench/bare_pjsua2.py --port 5070 --rtp-port 30000 --workload full --prompt-dir prompts \
        --agent-uri sip:agent@127.0.0.1:5080 --customer-host 127.0.0.1:5090 --ai-url ws://127.0.0.1:9000 \
        --record-dir /tmp/rec
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pjsua2 as pj


IVR_MENU_WAIT_S = 10.0  # the flow's call.wait timeoutSeconds



def start_endpoint(args: argparse.Namespace, account: pj.Account, clock_rate: int = 8000) -> pj.Endpoint:
    """The baseline's endpoint with softswitch's settings (one thread, 8 kHz bridge, no echo
    canceller, no VAD, PCMU/PCMA only); `account` answers on args.port, RTP from args.rtp_port."""
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = 1000
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    cfg.medConfig.clockRate = clock_rate
    cfg.medConfig.sndClockRate = clock_rate
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
    account.create(acfg, True)
    return ep

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
        call = (FullCall if self.server.workload == "full" else BareCall)(self.server, self, prm.callId)
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
        self.acc = BareAccount(self)
        self.ep = start_endpoint(args, self.acc)
        self.full = FullWork(self, args) if self.workload == "full" else None

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
            if self.full is not None:
                self.full.tick()
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
        if self.full is not None:
            self.full.close()
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

# ---- full: the assembled demo's media work, by hand ------------------------------------------------
class FullCall(BareCall):
    """One leg of the full workload. `role`: "caller" (inbound), "agent" (dialled for a live
    caller), "cb_agent" and "customer" (the two outbound legs of a callback)."""

    def __init__(self, server: "BareServer", acc: pj.Account, call_id: int, role: str = "caller") -> None:
        super().__init__(server, acc, call_id)
        self.role = role
        self.state = "new"  # caller: menu, queued, bridged, ai; outbound: up once answered
        self.ended = False
        self.number = ""  # caller: its number; cb_agent: the customer's
        self.digit = ""  # caller: 1 or 2 once queued
        self.digit_at = 0.0
        self.callback = False
        self.music: pj.AudioMediaPlayer | None = None
        self.ai = None  # bare_ai.BareAiBridge while the caller talks to the AI

    @property
    def work(self) -> "FullWork":
        return self.server.full

    def play(self, kind: str, loop: bool = False) -> None:
        player = EofPlayer(self.server, self, kind)
        player.createPlayer(os.path.join(self.server.prompt_dir, f"{kind}.wav"), 0 if loop else pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(self.am)
        if loop:
            self.stop_music()
            self.music = player
        else:
            self.stop_player()
            self.player = player

    def stop_music(self) -> None:
        if self.music is not None:
            try:
                self.music.stopTransmit(self.am)
            except pj.Error:
                pass
            self.server.retired.append(self.music)
            self.music = None

    def on_eof(self, player: EofPlayer) -> None:
        if player is not self.player:
            return  # stopped before its end of file was handled
        self.stop_player()
        if player.kind == "customer_unavailable" and not self.ended:
            self.server.hangups.append(self)  # the agent heard it: the callback is over

    def onDtmfDigit(self, prm) -> None:
        try:
            if self.role != "caller" or self.am is None:
                return
            if self.state == "menu" and prm.digit in ("1", "2"):
                self.stop_player()
                self.play("hold_music", loop=True)
                self.state, self.digit, self.digit_at = "queued", prm.digit, time.monotonic()
                self.work.after(self.work.queue_wait, self.work.dial_agent, self)
            elif self.state == "menu" and prm.digit == "3":
                self.stop_player()
                self.state = "ai"
                self.work.start_ai(self)
            elif self.state == "queued" and prm.digit == "9" and not self.callback:
                self.callback = True
                self.work.counts["callbacks_requested"] += 1
                self.play("callback_confirm")
        except Exception as exc:
            print(f"dtmf error: {exc}", file=sys.stderr)

    def onCallMediaState(self, prm) -> None:
        try:
            ci = self.getInfo()
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and self.am is None:
                    self.am = self.getAudioMedia(mi.index)
                    self.work.media_up(self, ci)
        except Exception as exc:
            print(f"media error: {exc}", file=sys.stderr)

    def onCallState(self, prm) -> None:
        try:
            if self.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.ended:
                self.ended = True
                self.work.ended(self)
                self.server.finished.append(self)
        except Exception as exc:
            print(f"state error: {exc}", file=sys.stderr)


class FullWork:
    """The full workload's state on the loop thread: timers, AI streams, outbound legs, counts."""

    def __init__(self, server: "BareServer", args: argparse.Namespace) -> None:
        from bare_ai import default_io  # websockets and the native module: only this workload

        self.server = server
        self.io = default_io()
        self.ai_url = args.ai_url
        self.agent_uri = args.agent_uri
        self.customer_host = args.customer_host
        self.queue_wait = args.queue_wait
        self.callback_delay = args.callback_delay
        self.customer_timeout = args.customer_timeout
        self.timers: list[tuple[float, int, object, tuple]] = []
        self.seq = itertools.count()
        self.ai_calls: list[FullCall] = []
        self.waits: list[float] = []  # digit to agent answer, live callers
        self.counts = {"answered": 0, "bridged_1": 0, "bridged_2": 0, "ai_sessions": 0, "ai_failures": 0,
                       "callbacks_requested": 0, "callbacks_waiting": 0, "callbacks_dialled": 0,
                       "callbacks_completed": 0, "callbacks_unanswered": 0, "recordings": 0}

    def after(self, seconds: float, fn, *args) -> None:
        heapq.heappush(self.timers, (time.monotonic() + seconds, next(self.seq), fn, args))

    def tick(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(self.timers)
            try:
                fn(*args)
            except Exception as exc:
                print(f"timer error: {exc}", file=sys.stderr)
        for call in self.ai_calls:
            call.ai.poll()

    def record(self, call: FullCall, ci) -> None:
        if self.server.record_dir:
            call.recorder = pj.AudioMediaRecorder()
            call.recorder.createRecorder(os.path.join(self.server.record_dir, f"{ci.id}-{ci.callIdString[:12]}.wav"))
            call.am.startTransmit(call.recorder)
            self.counts["recordings"] += 1

    def join(self, a: FullCall, b: FullCall, recorder) -> None:
        a.am.startTransmit(b.am)
        b.am.startTransmit(a.am)
        if recorder is not None:
            b.am.startTransmit(recorder)  # the mix: AudioMediaRecorder is mono

    def media_up(self, call: FullCall, ci) -> None:
        peer = call.peer
        if call.role == "caller":
            self.counts["answered"] += 1
            found = re.search(r"sip:([^@;>]+)@", ci.remoteUri)
            call.number = found.group(1) if found else ""
            self.record(call, ci)
            call.state = "menu"
            call.play("menu")
        elif call.role == "agent":
            if peer is None or peer.am is None or peer.ended:
                self.server.hangups.append(call)  # the caller left while the agent answered
                return
            peer.stop_player()
            peer.stop_music()
            self.join(peer, call, peer.recorder)
            peer.state = call.state = "bridged"
            self.counts[f"bridged_{peer.digit}"] += 1
            self.waits.append(time.monotonic() - peer.digit_at)
        elif call.role == "cb_agent":
            call.state = "up"
            customer = self.dial(f"sip:{call.number}@{self.customer_host}", "customer", call)
            if customer is not None:
                self.after(self.customer_timeout, self.customer_timed_out, customer)
        elif call.role == "customer":
            if peer is None or peer.ended:
                self.server.hangups.append(call)
                return
            call.state = "up"
            self.record(call, ci)
            self.join(peer, call, call.recorder)
            self.counts["callbacks_completed"] += 1

    def ended(self, call: FullCall) -> None:
        # The call's bridge port is gone: retire its players without disconnecting them.
        for player in (call.player, call.music):
            if player is not None:
                self.server.retired.append(player)
        call.player = call.music = None
        if call.ai is not None:
            self.counts["ai_failures"] += call.ai.failure is not None
            call.ai.stop()
            self.ai_calls.remove(call)
            call.ai = None
        if call.recorder is not None:
            self.server.retired.append(call.recorder)
            call.recorder = None
        peer, call.peer = call.peer, None
        if peer is not None:
            peer.peer = None
        if call.role == "caller" and call.callback and call.state != "bridged":
            self.counts["callbacks_waiting"] += 1
            self.after(self.callback_delay, self.start_callback, call.number)
        if peer is None or peer.ended:
            return
        if call.role == "customer" and call.state != "up":
            # Not answered, rejected or timed out: the agent hears it, then is hung up.
            self.counts["callbacks_unanswered"] += 1
            peer.play("customer_unavailable")
        else:
            self.server.hangups.append(peer)

    def dial(self, uri: str, role: str, peer: FullCall | None) -> FullCall | None:
        call = FullCall(self.server, self.server.acc, pj.PJSUA_INVALID_ID, role)
        if peer is not None:
            call.peer, peer.peer = peer, call
        self.server.agents.append(call)  # the account owns no outbound call: keep it alive
        try:
            call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            print(f"dial error: {exc.info()}", file=sys.stderr)
            self.server.agents.remove(call)
            if peer is not None:
                peer.peer = None
            return None
        return call

    def dial_agent(self, caller: FullCall) -> None:
        if caller.state == "queued" and not caller.ended and caller.peer is None:
            self.dial(self.agent_uri, "agent", caller)

    def start_callback(self, number: str) -> None:
        agent = self.dial(self.agent_uri, "cb_agent", None)
        if agent is not None:
            agent.number = number
            self.counts["callbacks_dialled"] += 1

    def customer_timed_out(self, customer: FullCall) -> None:
        if customer.state != "up" and not customer.ended:
            self.server.hangups.append(customer)  # CANCEL; its end plays the prompt to the agent

    def start_ai(self, caller: FullCall) -> None:
        from bare_ai import BareAiBridge

        caller.ai = BareAiBridge(caller.am, self.ai_url, self.io, name=f"caller-{caller.number}")
        caller.ai.start()
        if caller.recorder is not None:
            native_connect(caller.ai.port.slot, caller.recorder.getPortId())
        self.ai_calls.append(caller)
        self.counts["ai_sessions"] += 1

    def close(self) -> None:
        for call in self.ai_calls:
            call.ai.stop()
        self.ai_calls.clear()
        self.timers.clear()
        waits = sorted(self.waits)

        def pct(q: float) -> float | None:
            return round(waits[min(len(waits) - 1, int(q * len(waits)))], 2) if waits else None

        summary = {**self.counts, "agent_wait_p50": pct(0.5), "agent_wait_p95": pct(0.95),
                   "agent_wait_max": round(waits[-1], 2) if waits else None, "agent_waits": len(waits)}
        print("bare pjsua2 full " + json.dumps(summary), flush=True)
        self.io.stop()


def native_connect(src_slot: int, dst_slot: int) -> None:
    """A conference-bridge connection between two slots (the AI frame port into a recorder)."""
    import _softswitch_native as native

    native.conf_connect(src_slot, dst_slot, 1.0)



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rtp-port", type=int, required=True)
    ap.add_argument("--rtp-count", type=int, default=4000)
    ap.add_argument("--workload", choices=("plain", "ivr", "b2bua", "full"), default="plain")
    ap.add_argument("--prompt", help="plain: the prompt played into every call")
    ap.add_argument("--prompt-dir", help="ivr: the directory of menu.wav, branch.wav and goodbye.wav")
    ap.add_argument("--record-dir", default="")
    ap.add_argument("--agent-uri", help="b2bua, full: where callers who press 1 are connected")
    ap.add_argument("--customer-host", help="full: host:port where callbacks dial the caller's number")
    ap.add_argument("--ai-url", help="full: the OpenAI-Realtime-style WebSocket for callers who press 3")
    ap.add_argument("--queue-wait", type=float, default=12.0,
                    help="full: seconds of hold music before the agent is dialled (default 12)")
    ap.add_argument("--callback-delay", type=float, default=30.0,
                    help="full: seconds from a callback caller's hang-up to the agent dial (default 30)")
    ap.add_argument("--customer-timeout", type=float, default=30.0,
                    help="full: seconds a called-back customer may ring (default 30)")
    args = ap.parse_args()
    if args.workload == "plain" and not args.prompt:
        ap.error("--prompt is required for the plain workload")
    if args.workload in ("ivr", "b2bua", "full") and not args.prompt_dir:
        ap.error(f"--prompt-dir is required for the {args.workload} workload")
    if args.workload in ("b2bua", "full") and not args.agent_uri:
        ap.error(f"--agent-uri is required for the {args.workload} workload")
    if args.workload == "full" and not (args.customer_host and args.ai_url):
        ap.error("--customer-host and --ai-url are required for the full workload")
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
