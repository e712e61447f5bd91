"""Provider sessions: the WebSocket side of AI legs, on one asyncio event loop in its own thread.

The UA thread never waits for a provider. It hands work to the loop with `call_soon_threadsafe`
(`Session.open/send_audio/attach/tool_result/close` only post), and the loop hands results back
with the UA's `call_soon` to a `SessionSink` (the `AiLeg`). Everything that could block is
bounded here:

* connect (`open_timeout`) and the provider's handshake (`ready_timeout`);
* caller audio waits in a drop-oldest queue of `AUDIO_QUEUE_FRAMES` (1 s) when the socket is
  slow; control messages (session set-up, tool results) are never dropped and go first;
* a provider that stops answering is found by WebSocket keepalive pings (`ping_interval` +
  `ping_timeout`) and by a send that does not finish within `SEND_TIMEOUT_S`; the session then
  ends with reason `ai_provider_timeout`, and the leg ends with it.

Resampling runs here, never on the UA thread: caller audio from the bridge's 8 kHz to the
profile's input rate, provider audio from its rate to 8 kHz (`resample.StreamResampler`: a
polyphase FIR that returns each 20 ms chunk at once; soxr's stream would hold output back).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from .base import (AgentConfig, AudioOut, Profile, ProfileError, ProviderError, Ready, SpeechStarted,
                   ToolCallRequested, TurnComplete)
from .resample import StreamResampler

log = logging.getLogger("softswitch.ai")

BRIDGE_RATE = 8000
AUDIO_QUEUE_FRAMES = 50  # 1 s of 20 ms caller frames waiting for a slow socket; older ones dropped
SEND_TIMEOUT_S = 5.0
CLOSE_FLUSH_S = 1.0  # time given to pending control messages (a tool result) before closing


@dataclass(frozen=True)
class Timeouts:
    open_s: float = 10.0  # TCP + TLS + WebSocket handshake
    ready_s: float = 10.0  # then the provider's own handshake (session.updated, setupComplete)
    ping_interval_s: float = 5.0  # keepalive: a provider that stops answering ends the leg after
    ping_timeout_s: float = 5.0  # at most ping_interval + ping_timeout


class SessionSink(Protocol):
    """The UA-thread side of a session (the AI leg). Each is called with `ua.call_soon`."""

    def on_ready(self) -> None: ...
    def on_audio(self, samples: np.ndarray) -> None: ...  # int16 at 8 kHz
    def on_speech_started(self) -> None: ...
    def on_turn_complete(self) -> None: ...
    def on_tool_call(self, call: ToolCallRequested) -> None: ...
    def on_closed(self, reason: str, detail: str) -> None: ...


class AiLoop:
    """The one asyncio loop (thread `ai-io`) that runs every provider WebSocket."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                self._thread = threading.Thread(target=run, name="ai-io", daemon=True)
                self._thread.start()
                ready.wait(5.0)
                self.loop = loop
            return self.loop

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self.start()
        if not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 3.0) -> None:
        """Close every session's socket (bounded) and stop the thread."""
        with self._lock:
            loop, thread = self.loop, self._thread
            self.loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=timeout) if tasks else None
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        thread.join(timeout + 1.0)


class Session:
    """One provider WebSocket for one AI leg. Public methods may be called from any thread."""

    def __init__(self, aio: AiLoop, profile: Profile, sink: SessionSink, post: Callable[..., None], *,
                 leg_id: str, timeouts: Timeouts = Timeouts()) -> None:
        self.aio = aio
        self.profile = profile
        self.sink = sink
        self.post = post  # the UA's call_soon
        self.leg_id = leg_id
        self.timeouts = timeouts
        # -- loop-thread state --
        self._ws: Any = None
        self._ready = False
        self._closed = False
        self._control: deque[str] = deque()
        self._audio: deque[str] = deque(maxlen=AUDIO_QUEUE_FRAMES)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._up: StreamResampler | None = None
        self._down: StreamResampler | None = None
        self._down_rate = 0
        self._agent: AgentConfig | None = None
        self.audio_dropped = 0  # caller frames dropped because the socket was slow

    # ---- any thread -----------------------------------------------------------------------------
    def open(self, agent: AgentConfig | None = None) -> None:
        self.aio.call(self._open, agent)

    def send_audio(self, pcm: bytes) -> None:
        """20 ms (or more) of caller audio at 8 kHz, PCM16."""
        self.aio.call(self._audio_in, pcm)

    def attach(self, agent: AgentConfig) -> None:
        self.aio.call(self._attach, agent)

    def tool_result(self, call: ToolCallRequested, output: str, is_error: bool) -> None:
        self.aio.call(self._tool_result, call, output, is_error)

    def close(self) -> None:
        self.aio.call(self._close_soon)

    # ---- loop thread ------------------------------------------------------------------------------
    def _open(self, agent: AgentConfig | None) -> None:
        if self._task is not None or self._closed:
            return
        self._agent = agent
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ai-session-{self.leg_id}")

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        reason, detail = "ai_provider_closed", ""
        try:
            conn = self.profile.connection()
            try:
                self._ws = await connect(conn.url, additional_headers=dict(conn.headers),
                                         open_timeout=self.timeouts.open_s,
                                         ping_interval=self.timeouts.ping_interval_s,
                                         ping_timeout=self.timeouts.ping_timeout_s,
                                         close_timeout=2.0, max_size=None, compression=None)
            except (OSError, asyncio.TimeoutError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                reason, detail = "ai_connect_failed", f"{conn.url.split('?')[0]}: {exc or type(exc).__name__}"
                return
            log.info("%s: connected to %s (%s)", self.leg_id, conn.url.split("?")[0], self.profile.name)
            for message in self.profile.initial_messages(self._agent):
                self._control.append(json.dumps(message))
            self._wake.set()  # type: ignore[union-attr]
            sender = asyncio.get_running_loop().create_task(self._send_loop())
            if self.profile.ready_on_open:
                self._set_ready()
            ready_timer = None if self._ready else asyncio.get_running_loop().call_later(
                self.timeouts.ready_s, self._ready_timed_out)
            try:
                reason, detail = await self._receive_loop(ConnectionClosed)
            finally:
                if ready_timer is not None:
                    ready_timer.cancel()
                sender.cancel()
        except asyncio.CancelledError:
            reason, detail = "daemon_shutdown", ""
            raise
        except ProfileError as exc:
            reason, detail = "ai_provider_error", str(exc)
        except Exception as exc:  # a bug here must still end the leg, not leave it hanging
            log.exception("%s: AI session failed", self.leg_id)
            reason, detail = "ai_provider_error", f"{type(exc).__name__}: {exc}"
        finally:
            self._closed = True
            ws, self._ws = self._ws, None
            if ws is not None:
                try:
                    await asyncio.wait_for(ws.close(), 2.0)
                except BaseException:  # closing a broken socket: nothing more to do
                    pass
            self.post(self.sink.on_closed, reason, detail)

    async def _receive_loop(self, closed_exc: type[Exception]) -> tuple[str, str]:
        ws = self._ws
        try:
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    log.debug("%s: ignoring a non-JSON message", self.leg_id)
                    continue
                if not isinstance(message, dict):
                    continue
                fatal = self._handle(message)
                if fatal is not None:
                    return "ai_provider_error", fatal
                if self._closed:
                    return self._close_reason
        except closed_exc:
            pass
        if self._closed:
            return self._close_reason
        code, text = ws.close_code, ws.close_reason or ""
        sent = getattr(getattr(ws, "protocol", None), "close_sent", None)  # our own close frame, if any
        if "keepalive" in text or "keepalive" in str(getattr(sent, "reason", "")):
            return "ai_provider_timeout", f"no answer to keepalive pings within {self.timeouts.ping_timeout_s:g} s"
        return "ai_provider_closed", f"socket closed ({code} {text})".strip()

    _close_reason: tuple[str, str] = ("hangup", "")

    def _handle(self, message: dict) -> str | None:
        """Turn one message into events for the leg; returns a fatal error's text."""
        for event in self.profile.parse(message):
            if isinstance(event, AudioOut):
                samples = self._resample_down(event)
                if samples.size:
                    self.post(self.sink.on_audio, samples)
            elif isinstance(event, SpeechStarted):
                self._down = None  # what it held belongs to the interrupted response
                self.post(self.sink.on_speech_started)
            elif isinstance(event, TurnComplete):
                if self._down is not None:
                    tail = self._down.flush()
                    self._down = None
                    if tail.size:
                        self.post(self.sink.on_audio, tail)
                self.post(self.sink.on_turn_complete)
            elif isinstance(event, Ready):
                self._set_ready()
            elif isinstance(event, ToolCallRequested):
                self.post(self.sink.on_tool_call, event)
            elif isinstance(event, ProviderError):
                if event.fatal:
                    return f"{event.code}: {event.message}" if event.code else event.message
                log.info("%s: provider error ignored (%s): %s", self.leg_id, event.code, event.message)
        return None

    def _set_ready(self) -> None:
        if not self._ready:
            self._ready = True
            self.post(self.sink.on_ready)

    def _ready_timed_out(self) -> None:
        if not self._ready and not self._closed and self._ws is not None:
            self._close_reason = ("ai_provider_timeout",
                                  f"the provider did not confirm the session within {self.timeouts.ready_s:g} s")
            self._closed = True
            asyncio.get_running_loop().create_task(self._ws.close(1000, "not ready"))

    def _resample_down(self, event: AudioOut) -> np.ndarray:
        samples = np.frombuffer(event.pcm[: len(event.pcm) // 2 * 2], dtype="<i2").astype(np.int16)
        if event.rate == BRIDGE_RATE:
            return samples
        if self._down is None or self._down_rate != event.rate:
            self._down = StreamResampler(event.rate, BRIDGE_RATE)
            self._down_rate = event.rate
        return self._down.process(samples)

    def _audio_in(self, pcm: bytes) -> None:
        if not self._ready or self._closed or self._ws is None:
            return  # not activated, not ready yet, or over: dropped (§6.2)
        samples = np.frombuffer(pcm, dtype=np.int16)
        if self.profile.input_rate != BRIDGE_RATE:
            if self._up is None:
                self._up = StreamResampler(BRIDGE_RATE, self.profile.input_rate)
            samples = self._up.process(samples)
        if not samples.size:
            return
        if len(self._audio) == self._audio.maxlen:
            self.audio_dropped += 1
        b64 = base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")
        self._audio.append(json.dumps(self.profile.audio_message(b64)))
        self._wake.set()  # type: ignore[union-attr]

    def _attach(self, agent: AgentConfig) -> None:
        if self._task is None:
            self._open(agent)  # deferred: the session opens now, with the complete configuration
            return
        if self._closed:
            return
        try:
            messages = self.profile.attach_messages(agent)
        except ProfileError as exc:
            log.warning("%s: %s", self.leg_id, exc)
            return
        self._control.extend(json.dumps(m) for m in messages)
        self._wake.set()  # type: ignore[union-attr]

    def _tool_result(self, call: ToolCallRequested, output: str, is_error: bool) -> None:
        if self._closed or self._ws is None:
            log.info("%s: tool result for %s not sent: the session is over", self.leg_id, call.name)
            return
        self._control.extend(json.dumps(m) for m in self.profile.tool_result_messages(call, output, is_error))
        self._wake.set()  # type: ignore[union-attr]

    def _close_soon(self) -> None:
        """The leg hung up: pending control messages (a tool result) get a moment, then close."""
        if self._task is None:
            self._closed = True
            self.post(self.sink.on_closed, "hangup", "")
            return
        if self._closed:
            return
        self._closed = True
        self._close_reason = ("hangup", "")
        asyncio.get_running_loop().create_task(self._flush_and_close())

    async def _flush_and_close(self) -> None:
        ws = self._ws
        if ws is None:
            if self._task is not None:
                self._task.cancel()
            return
        try:
            while self._control:
                await asyncio.wait_for(ws.send(self._control.popleft()), CLOSE_FLUSH_S)
        except BaseException:  # a dead socket: closing is all that is left
            pass
        try:
            await asyncio.wait_for(ws.close(1000, "hangup"), 2.0)
        except BaseException:
            if self._task is not None:
                self._task.cancel()

    async def _send_loop(self) -> None:
        ws, wake = self._ws, self._wake
        assert ws is not None and wake is not None
        while True:
            await wake.wait()
            wake.clear()
            while (self._control or self._audio) and not self._closed:
                text = self._control.popleft() if self._control else self._audio.popleft()
                try:
                    async with asyncio.timeout(SEND_TIMEOUT_S):  # no task per send, unlike wait_for
                        await ws.send(text)
                except (asyncio.TimeoutError, TimeoutError):
                    self._close_reason = ("ai_provider_timeout",
                                          f"the provider did not take our data within {SEND_TIMEOUT_S:g} s")
                    self._closed = True
                    ws.transport.abort() if getattr(ws, "transport", None) else None
                    return
                except Exception:
                    return  # the receive loop sees the close and reports it
