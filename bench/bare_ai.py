#!/usr/bin/env python3
"""The bare pjsua2 AI baseline: answer every call and stream it to an OpenAI-Realtime-style
provider, with nothing else. The AI benchmarks (`bench/ai_capacity.py --target bare|both`,
the assistant calls of `bare_pjsua2.py --workload full`) report softswitch's AI ceiling as a
ratio of this one.

Per call it does the media and network work softswitch's AI leg does, in the least code:
the caller's 20 ms frames at 8 kHz are resampled to 24 kHz PCM16, base64'd into
`input_audio_buffer.append` JSON messages and sent over a WebSocket (one asyncio thread for
every socket); `response.output_audio.delta` audio coming back is resampled to 8 kHz and played
into the call. The session starts with one `session.update` and is ready on `session.updated`
(caller audio before that is dropped), as in softswitch.

Frame access uses softswitch's native `FramePort` (`native/frameport.c`, a conference-bridge
port with two lock-free rings), because pjsua2 2.12 has no Python media port (`AudioMediaPort`
arrived in 2.13) and a Python callback per frame on the clock thread would stall every call.
That is the only softswitch code used: no flow engine, no legs, no softswitch resampler (a
plain windowed-sinc FIR here, same taps per phase).

    python bench/bare_ai.py --port 5070 --rtp-port 30000 --provider-url ws://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import signal
import sys
import threading
from collections import deque
from typing import Any, Callable

import numpy as np
import pjsua2 as pj
import _softswitch_native as native
from bare_pjsua2 import start_endpoint

BRIDGE_RATE = 8000
PROVIDER_RATE = 24000
SPF = 160  # 20 ms at 8 kHz
TX_FRAMES = 4  # frames kept queued in the port (as softswitch's AI leg)
AUDIO_QUEUE_FRAMES = 50  # caller audio waiting for a slow socket; older dropped (as softswitch)
SEND_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 10.0
TAPS_PER_PHASE = 24


# ---- resampling ----------------------------------------------------------------------------
class FirResampler:
    """Integer-ratio resampling (up or down) of int16 chunks with a windowed-sinc lowpass."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if max(in_rate, out_rate) % min(in_rate, out_rate):
            raise ValueError(f"{in_rate} -> {out_rate} Hz is not an integer ratio")
        self.up = out_rate // in_rate
        self.down = in_rate // out_rate
        factor = max(self.up, self.down)
        taps = TAPS_PER_PHASE * factor
        n = np.arange(taps) - (taps - 1) / 2.0
        cutoff = 0.45 / factor
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
        self.h = h / h.sum() * (self.up if self.up > 1 else 1)
        self.hist = np.zeros(taps - 1)
        self.skip = 0  # down: samples of the next chunk before the first one kept

    def process(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        if self.up > 1:
            stuffed = np.zeros(x.size * self.up)
            stuffed[:: self.up] = x
            x = stuffed
        buf = np.concatenate([self.hist, x])
        y = np.convolve(buf, self.h, "valid")
        self.hist = buf[-self.hist.size:]
        if self.down > 1:
            kept = y[self.skip:: self.down]
            self.skip = (self.skip - y.size) % self.down
            y = kept
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


# ---- the WebSocket thread --------------------------------------------------------------------
class AiIo:
    """One asyncio loop in its own thread that runs every provider WebSocket of the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="bare-ai-io", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 3.0) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
            self.loop.stop()

        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(shutdown()))
        self._thread.join(timeout + 1.0)


_default_io: AiIo | None = None


def default_io() -> AiIo:
    """The process's WebSocket thread, started on first use (a benchmark script has one)."""
    global _default_io
    if _default_io is None:
        _default_io = AiIo()
    return _default_io


# ---- one call's AI stream ----------------------------------------------------------------------
class BareAiBridge:
    """One call streamed to the provider and back. `start`, `poll` and `stop` run on the pjsua2
    loop thread (the one that calls libHandleEvents); the socket side runs on `io`'s thread.

    `media` is the call's `pj.AudioMedia` (or its conference slot id). `failure` is set (and
    printed as "AI provider openai_realtime: <reason> (<detail>)", the form softswitch logs)
    when the provider side ended before `stop`. Use:

        bridge = BareAiBridge(call.getAudioMedia(mi.index), "ws://127.0.0.1:9000")  # media active
        bridge.start()
        bridge.poll()  # every loop turn, after libHandleEvents
        bridge.stop()  # once the call is disconnected (from the loop, not inside a callback)
    """

    def __init__(self, media: Any, url: str, io: AiIo | None = None, *, name: str = "ai",
                 api_key: str = "bench-key") -> None:
        self.call_slot = media if isinstance(media, int) else media.getPortId()
        self.url = url if "model=" in url else f"{url}{'&' if '?' in url else '?'}model=gpt-realtime"
        self.io = io or default_io()
        self.name = name
        self.api_key = api_key
        self.port: Any = None
        self.ready = False  # set on the io thread; read on the loop thread
        self.failure: str | None = None
        self.stopped = False
        self.down: deque[np.ndarray] = deque()  # 8 kHz audio from the io thread, not yet queued
        self.playout: deque[np.ndarray] = deque()
        self.partial = 0  # samples written into the port since the last whole frame
        self.stats = {"frames_up": 0, "samples_down": 0, "audio_dropped": 0}
        # -- io-thread state --
        self._ws: Any = None
        self._task: asyncio.Task | None = None
        self._audio: deque[str] = deque(maxlen=AUDIO_QUEUE_FRAMES)
        self._wake: asyncio.Event | None = None
        self._up = FirResampler(BRIDGE_RATE, PROVIDER_RATE)
        self._down = FirResampler(PROVIDER_RATE, BRIDGE_RATE)

    # ---- pjsua2 loop thread ------------------------------------------------------------------------
    def start(self) -> None:
        self.port = native.FramePort(f"bare-{self.name}", BRIDGE_RATE, 20, 64, False, 16)
        native.conf_connect(self.call_slot, self.port.slot, 1.0)
        native.conf_connect(self.port.slot, self.call_slot, 1.0)
        self.io.call(self._open)

    def poll(self) -> None:
        """Caller frames up (once the session is ready), provider audio down into the port."""
        if self.port is None:
            return
        data = self.port.read()  # every whole frame received since the last poll, as bytes
        if data and self.ready and self.failure is None:
            self.io.call(self._send_audio, data)
            self.stats["frames_up"] += len(data) // (2 * SPF)
        while self.down:
            chunk = self.down.popleft()
            self.playout.append(chunk)
            self.stats["samples_down"] += chunk.size
        self._top_up()

    def _top_up(self) -> None:
        room = (TX_FRAMES - self.port.tx_queued) * SPF - self.partial
        while room > 0 and self.playout:
            chunk = self.playout[0]
            accepted = self.port.write(chunk[:room])
            if accepted <= 0:
                break
            if accepted < chunk.size:
                self.playout[0] = chunk[accepted:]
            else:
                self.playout.popleft()
            self.partial = (self.partial + accepted) % SPF
            room -= accepted

    def stop(self) -> None:
        """The call ended: close the socket and take the port off the bridge."""
        if self.stopped:
            return
        self.stopped = True
        self.io.call(self._close)
        if self.port is not None:
            self.port.close()  # removing the port drops its bridge connections too
        self.playout.clear()
        self.down.clear()

    # ---- io thread --------------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.stopped:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _fail(self, reason: str, detail: str) -> None:
        if self.failure is None and not self.stopped:
            self.failure = reason
            print(f"{self.name}: AI provider openai_realtime: {reason} ({detail})", flush=True)

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        try:
            self._ws = await connect(self.url, additional_headers={"Authorization": f"Bearer {self.api_key}"},
                                     open_timeout=OPEN_TIMEOUT_S, ping_interval=5.0, ping_timeout=5.0,
                                     close_timeout=2.0, max_size=None, compression=None)
        except Exception as exc:
            self._fail("ai_connect_failed", f"{self.url.split('?')[0]}: {exc or type(exc).__name__}")
            return
        session = {"type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
                   "audio": {"input": {"format": {"type": "audio/pcm", "rate": PROVIDER_RATE},
                                       "turn_detection": {"type": "server_vad", "create_response": True,
                                                          "interrupt_response": True}},
                             "output": {"format": {"type": "audio/pcm", "rate": PROVIDER_RATE}, "voice": "marin"}}}
        sender = asyncio.get_running_loop().create_task(self._send_loop())
        try:
            await self._ws.send(json.dumps({"type": "session.update", "session": session}))
            async with asyncio.timeout(READY_TIMEOUT_S):
                async for raw in self._ws:
                    if json.loads(raw).get("type") == "session.updated":
                        break
            self.ready = True
            async for raw in self._ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind in ("response.output_audio.delta", "response.audio.delta"):
                    pcm = base64.b64decode(message.get("delta") or "")
                    samples = self._down.process(np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2"))
                    if samples.size:
                        self.down.append(samples)
                elif kind == "error":
                    self._fail("ai_provider_error", json.dumps(message.get("error")))
                    return
            self._fail("ai_provider_closed", f"socket closed ({self._ws.close_code})")
        except (asyncio.TimeoutError, TimeoutError):
            self._fail("ai_provider_timeout", "no session.updated")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail("ai_provider_error", f"{type(exc).__name__}: {exc}")
        finally:
            sender.cancel()

    def _send_audio(self, pcm: bytes) -> None:
        if self._ws is None or self._wake is None or self.stopped:
            return
        up = self._up.process(np.frombuffer(pcm, dtype=np.int16))
        if len(self._audio) == self._audio.maxlen:
            self.stats["audio_dropped"] += 1
        b64 = base64.b64encode(up.astype("<i2").tobytes()).decode("ascii")
        self._audio.append(json.dumps({"type": "input_audio_buffer.append", "audio": b64}))
        self._wake.set()

    async def _send_loop(self) -> None:
        ws, wake = self._ws, self._wake
        assert ws is not None and wake is not None
        while True:
            await wake.wait()
            wake.clear()
            while self._audio and not self.stopped:
                try:
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await ws.send(self._audio.popleft())
                except (asyncio.TimeoutError, TimeoutError):
                    self._fail("ai_provider_timeout", f"send took over {SEND_TIMEOUT_S:g} s")
                    ws.transport.abort()
                    return
                except Exception:
                    return  # the receive side reports the close

    def _close(self) -> None:
        ws, task = self._ws, self._task
        if ws is None:
            if task is not None:
                task.cancel()
            return

        async def close() -> None:
            try:
                await asyncio.wait_for(ws.close(1000, "hangup"), 2.0)
            except BaseException:
                pass
            if task is not None:
                task.cancel()

        asyncio.get_running_loop().create_task(close())


# ---- the bare server ------------------------------------------------------------------------------
class AiCall(pj.Call):
    def __init__(self, server: "BareAiServer", acc: pj.Account, call_id: int) -> None:
        super().__init__(acc, call_id)
        self.server = server
        self.bridge: BareAiBridge | None = None

    def onCallMediaState(self, prm) -> None:
        try:
            ci = self.getInfo()
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and self.bridge is None:
                    self.bridge = BareAiBridge(self.getAudioMedia(mi.index), self.server.url, self.server.io,
                                               name=f"call-{ci.id}")
                    self.bridge.start()
                    self.server.bridges.append(self.bridge)
        except Exception as exc:
            print(f"media error: {exc}", file=sys.stderr)

    def onCallState(self, prm) -> None:
        try:
            if self.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.server.finished.append(self)
        except Exception as exc:
            print(f"state error: {exc}", file=sys.stderr)


class AiAccount(pj.Account):
    def __init__(self, server: "BareAiServer") -> None:
        super().__init__()
        self.server = server

    def onIncomingCall(self, prm) -> None:
        call = AiCall(self.server, self, prm.callId)
        self.server.calls[prm.callId] = call
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)


class BareAiServer:
    """Endpoint settings as bench/bare_pjsua2.py's (and softswitch's): one thread, 8 kHz bridge,
    no echo canceller, no VAD, PCMU/PCMA only."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.provider_url
        self.calls: dict[int, AiCall] = {}
        self.finished: list[AiCall] = []
        self.bridges: list[BareAiBridge] = []
        self.stop = False
        self.acc = AiAccount(self)
        self.ep = start_endpoint(args, self.acc, BRIDGE_RATE)
        self.io = AiIo()

    def run(self) -> None:
        print("bare pjsua2 ready", flush=True)
        failures = 0
        while not self.stop:
            self.ep.libHandleEvents(10)
            for bridge in self.bridges:
                bridge.poll()
            while self.finished:
                call = self.finished.pop()
                if call.bridge is not None:
                    failures += call.bridge.failure is not None
                    call.bridge.stop()
                    self.bridges.remove(call.bridge)
                    call.bridge = None
                self.calls = {k: v for k, v in self.calls.items() if v is not call}
        print(f"bare pjsua2 AI calls ended with a provider failure: {failures}", flush=True)
        for bridge in self.bridges:
            bridge.stop()
        self.bridges.clear()
        self.ep.hangupAllCalls()
        for _ in range(100):
            self.ep.libHandleEvents(10)
        self.io.stop()
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
    ap.add_argument("--provider-url", required=True, help="the OpenAI-Realtime-style WebSocket, e.g. ws://127.0.0.1:9000")
    args = ap.parse_args()
    server = BareAiServer(args)

    def on_signal(*_: object) -> None:
        server.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
