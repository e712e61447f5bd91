"""Local stand-ins for AI voice providers: WebSocket servers on 127.0.0.1 (a free port) that speak
OpenAI Realtime, Gemini Live, or a generic echo protocol faithfully enough to drive every path
of softswitch's AI legs. Each runs its own asyncio loop in a thread inside the test process.

They record everything they receive (`received`, `input_audio()`), answer the handshake
(`session.updated` / `setupComplete`), and let the test act as the model: `send_audio` (deltas
faster than real time, as the real services do), `speech_started` (barge-in), `call_tool`,
`hang` (stop reading and answering: no pongs, no replies), `close`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from typing import Any, Callable

import numpy as np

KINDS = ("openai", "gemini", "echo")
RATES = {"openai": (24000, 24000), "gemini": (16000, 24000), "echo": (48000, 48000)}  # (input, output)


class FakeProvider:
    def __init__(self, kind: str = "openai", *, ready: bool = True, echo: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {KINDS}")
        self.kind = kind
        self.ready = ready  # answer the handshake message
        self.echo = echo or kind == "echo"  # send every chunk of caller audio straight back (latency)
        self.record = True  # keep what is received (off for long benchmarks)
        self.echo_batch = 1  # echo every n chunks as one message (benchmarks: fewer, larger deltas)
        self._echo_buf: dict[int, list[str]] = {}
        self.input_rate, self.output_rate = RATES[kind]
        self.received: list[dict] = []
        self.request_headers: dict[str, str] = {}
        self.request_path = ""
        self.connections = 0
        self.closed = threading.Event()  # the current connection ended
        self.hung = False
        self.handler_error: BaseException | None = None
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._ws: Any = None
        self.port = 0

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> "FakeProvider":
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.kind}", daemon=True)
        self._thread.start()
        if not started.wait(10) or errors:
            raise RuntimeError(f"fake {self.kind} provider did not start: {errors}")
        return self

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handler, "127.0.0.1", 0, max_size=None, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._ws is not None and self._ws.transport is not None:
                self._ws.transport.abort()  # a hung connection would not finish a close handshake
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 3)
            except (asyncio.TimeoutError, TimeoutError):
                pass
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=3)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> "FakeProvider":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # ---- the connection (server loop) --------------------------------------------------------
    async def _handler(self, ws: Any) -> None:
        self._ws = ws
        self.connections += 1
        self.closed.clear()
        self.request_headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
        self.request_path = ws.request.path
        try:
            async for raw in ws:
                message = json.loads(raw)
                if self.record:
                    with self._lock:
                        self.received.append({**message, "_t": time.time()})
                if self.hung:
                    continue
                await self._react(ws, message)
        except Exception as exc:  # the test sees it in `handler_error`
            self.handler_error = exc
        finally:
            self.closed.set()

    async def _react(self, ws: Any, message: dict) -> None:
        if self.kind == "openai" and message.get("type") == "session.update" and self.ready:
            await ws.send(json.dumps({"type": "session.updated", "session": message.get("session", {})}))
        elif self.kind == "gemini" and "setup" in message and self.ready:
            await ws.send(json.dumps({"setupComplete": {}}))
        elif self.echo:
            await self._echo(ws, message)

    async def _echo(self, ws: Any, message: dict) -> None:
        if self.kind == "echo" and message.get("type") == "input_audio":
            await ws.send(json.dumps({"type": "audio_output", "audio": message.get("audio", "")}))
        elif self.kind == "openai" and message.get("type") == "input_audio_buffer.append":
            buf = self._echo_buf.setdefault(id(ws), [])
            buf.append(message.get("audio", ""))
            if len(buf) >= self.echo_batch:
                pcm = b"".join(base64.b64decode(c) for c in buf)
                buf.clear()
                await ws.send(json.dumps({"type": "response.output_audio.delta",
                                          "delta": base64.b64encode(pcm).decode()}))
        elif self.kind == "gemini" and "realtimeInput" in message:
            data = message["realtimeInput"].get("audio", {}).get("data", "")
            await ws.send(json.dumps({"serverContent": {"modelTurn": {"parts": [
                {"inlineData": {"mimeType": f"audio/pcm;rate={self.input_rate}", "data": data}}]}}}))

    # ---- acting as the model (any thread) ----------------------------------------------------------
    def _run(self, coro_fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    def send(self, *messages: dict) -> None:
        ws = self._ws
        assert ws is not None, "no connection yet"

        async def go() -> None:
            for m in messages:
                await ws.send(json.dumps(m))

        self._run(go)

    def send_audio(self, samples: np.ndarray, chunk_ms: int = 100) -> None:
        """PCM16 at the provider's output rate, as the provider's audio messages, all at once."""
        step = self.output_rate * chunk_ms // 1000
        messages = []
        for i in range(0, len(samples), step):
            b64 = base64.b64encode(np.asarray(samples[i:i + step], dtype="<i2").tobytes()).decode()
            if self.kind == "openai":
                messages.append({"type": "response.output_audio.delta", "response_id": "resp_1", "delta": b64})
            elif self.kind == "gemini":
                messages.append({"serverContent": {"modelTurn": {"parts": [
                    {"inlineData": {"mimeType": f"audio/pcm;rate={self.output_rate}", "data": b64}}]}}})
            else:
                messages.append({"type": "audio_output", "audio": b64})
        self.send(*messages)

    def turn_complete(self) -> None:
        if self.kind == "openai":
            self.send({"type": "response.done", "response": {"status": "completed"}})
        elif self.kind == "gemini":
            self.send({"serverContent": {"turnComplete": True}})

    def speech_started(self) -> float:
        """Barge-in; returns when it was sent (time.time())."""
        if self.kind == "openai":
            msg = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_1"}
        else:
            msg = {"serverContent": {"interrupted": True}}
        sent = time.time()
        self.send(msg)
        return sent

    def call_tool(self, name: str, arguments: dict, call_id: str = "call_1") -> None:
        if self.kind == "openai":
            self.send({"type": "response.function_call_arguments.done", "response_id": "resp_2", "item_id": "it_2",
                       "output_index": 0, "call_id": call_id, "name": name, "arguments": json.dumps(arguments)})
        else:
            self.send({"toolCall": {"functionCalls": [{"id": call_id, "name": name, "args": arguments}]}})

    def error(self, code: str, message: str = "") -> None:
        self.send({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                               "message": message or code}})

    def hang(self) -> None:
        """Stop answering: no replies, and no more reading (so pings go unanswered)."""
        self.hung = True
        ws = self._ws

        def pause() -> None:
            if ws is not None and ws.transport is not None:
                ws.transport.pause_reading()

        assert self._loop is not None
        self._loop.call_soon_threadsafe(pause)

    def close(self) -> None:
        ws = self._ws
        self._run(lambda: ws.close(1000, "bye"))

    # ---- what was received ---------------------------------------------------------------------
    def messages(self, predicate: Callable[[dict], bool] | None = None) -> list[dict]:
        with self._lock:
            return [m for m in self.received if predicate is None or predicate(m)]

    def of_type(self, kind: str) -> list[dict]:
        return self.messages(lambda m: m.get("type") == kind)

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 15.0) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(predicate)
            if found:
                return found[0]
            time.sleep(0.05)
        return None

    def input_audio(self) -> np.ndarray:
        """Every chunk of caller audio received, decoded (PCM16 at the input rate)."""
        chunks = []
        for m in self.messages():
            if m.get("type") in ("input_audio_buffer.append", "input_audio"):
                chunks.append(m.get("audio", ""))
            elif "realtimeInput" in m:
                chunks.append(m["realtimeInput"].get("audio", {}).get("data", ""))
        data = b"".join(base64.b64decode(c) for c in chunks)
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
