"""Provider sessions against the local fake providers, without SIP: handshake, audio both ways
with resampling, barge-in, tool results in each provider's format, errors, and a provider that
stops answering."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from softswitch.ai import AgentConfig, ToolSpec
from softswitch.ai.base import ToolCallRequested
from softswitch.ai.gemini_live import GeminiLive, GeminiSettings
from softswitch.ai.generic import GenericSettings, GenericWebSocket
from softswitch.ai.openai_realtime import OpenAiRealtime, OpenAiSettings
from softswitch.ai.session import AiLoop, Session, Timeouts
from tests.support.audio import dominant_frequency, tone
from tests.support.fake_ai import FakeProvider


class Sink:
    """The leg's side, run on the test thread: events arrive through `post` as (name, args)."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def post(self, fn, *args) -> None:
        fn(*args)

    def on_ready(self):
        self.events.put(("ready",))

    def on_audio(self, samples):
        self.events.put(("audio", samples.copy()))

    def on_speech_started(self):
        self.events.put(("speech",))

    def on_turn_complete(self):
        self.events.put(("turn",))

    def on_tool_call(self, call):
        self.events.put(("tool", call))

    def on_closed(self, reason, detail):
        self.events.put(("closed", reason, detail))

    def next(self, kind: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if event[0] == kind:
                return event
        raise AssertionError(f"no {kind} event within {timeout} s")

    def audio(self, seconds: float, timeout: float = 10.0) -> np.ndarray:
        got: list[np.ndarray] = []
        deadline = time.monotonic() + timeout
        while sum(len(g) for g in got) < seconds * 8000 and time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if event[0] == "audio":
                got.append(event[1])
        return np.concatenate(got) if got else np.zeros(0, np.int16)


@pytest.fixture
def aio():
    loop = AiLoop()
    yield loop
    loop.stop()


def session(aio, profile, sink, timeouts=Timeouts(open_s=5, ready_s=5, ping_interval_s=1, ping_timeout_s=1)):
    return Session(aio, profile, sink, sink.post, leg_id="leg_test", timeouts=timeouts)


def feed_tone(s: Session, freq: float, seconds: float) -> None:
    samples = tone(freq, seconds)
    for i in range(0, len(samples), 160):
        s.send_audio(samples[i:i + 160].tobytes())


def test_openai_session_sets_up_then_streams_caller_audio_at_24khz_and_plays_deltas_at_8khz(aio):
    sink = Sink()
    with FakeProvider("openai") as fake:
        s = session(aio, OpenAiRealtime(OpenAiSettings(api_key="sk-test", url=fake.url, instructions="Be brief.")), sink)
        s.open()
        sink.next("ready")
        update = fake.of_type("session.update")[0]["session"]
        assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert update["audio"]["input"]["turn_detection"]["interrupt_response"] is True
        assert update["instructions"] == "Be brief." and update["output_modalities"] == ["audio"]
        assert fake.request_headers["authorization"] == "Bearer sk-test"
        assert "model=gpt-realtime" in fake.request_path
        feed_tone(s, 440, 1.0)
        assert fake.wait_for(lambda m: len(fake.input_audio()) >= 22000, 10)
        up = fake.input_audio()
        assert 22000 <= len(up) <= 24100
        assert abs(dominant_frequency(up[2400:], 24000) - 440) < 5
        fake.send_audio(tone(700, 1.0, rate=24000))
        down = sink.audio(0.9)
        assert abs(dominant_frequency(down[800:], 8000) - 700) < 5
        s.close()
        assert sink.next("closed")[1] == "hangup"


def test_openai_tool_call_result_goes_back_as_function_call_output_then_response_create(aio):
    sink = Sink()
    with FakeProvider("openai") as fake:
        s = session(aio, OpenAiRealtime(OpenAiSettings(api_key="k", url=fake.url)), sink)
        tools = (ToolSpec("lookup_order", "Look up an order", {"type": "object", "properties": {}}),)
        s.open(AgentConfig(tools=tools))
        sink.next("ready")
        assert fake.of_type("session.update")[0]["session"]["tools"][0]["name"] == "lookup_order"
        fake.call_tool("lookup_order", {"orderId": "42"}, "call_7")
        call = sink.next("tool")[1]
        assert call == ToolCallRequested("call_7", "lookup_order", {"orderId": "42"})
        s.tool_result(call, "shipped", False)
        s.tool_result(ToolCallRequested("call_8", "x", {}), "broken", True)
        assert fake.wait_for(lambda m: m.get("type") == "response.create" and
                             len(fake.of_type("conversation.item.create")) == 2)
        items = [m["item"] for m in fake.of_type("conversation.item.create")]
        assert items[0] == {"type": "function_call_output", "call_id": "call_7", "output": "shipped"}
        assert items[1]["output"] == '{"error": "broken"}'
        s.close()


def test_speech_started_and_turn_complete_reach_the_leg_and_an_ignorable_error_does_not_end_the_session(aio):
    sink = Sink()
    with FakeProvider("openai") as fake:
        s = session(aio, OpenAiRealtime(OpenAiSettings(api_key="k", url=fake.url)), sink)
        s.open()
        sink.next("ready")
        fake.error("response_cancel_not_active")
        fake.speech_started()
        sink.next("speech")
        fake.turn_complete()
        sink.next("turn")
        fake.error("invalid_value", "bad session")
        closed = sink.next("closed")
        assert closed[1] == "ai_provider_error" and "bad session" in closed[2]


def test_gemini_session_sends_setup_with_function_declarations_and_16khz_audio_and_answers_tools(aio):
    sink = Sink()
    with FakeProvider("gemini") as fake:
        s = session(aio, GeminiLive(GeminiSettings(api_key="g-key", url=fake.url, instructions="Hi")), sink)
        schema = {"type": "object", "additionalProperties": False, "properties": {"q": {"type": "string"}}}
        s.open(AgentConfig(tools=(ToolSpec("search", "Search", schema),)))
        sink.next("ready")
        setup = fake.messages(lambda m: "setup" in m)[0]["setup"]
        assert setup["model"].startswith("models/")
        decl = setup["tools"][0]["functionDeclarations"][0]
        assert decl["name"] == "search" and "additionalProperties" not in decl["parameters"]
        assert fake.request_headers["x-goog-api-key"] == "g-key"
        feed_tone(s, 440, 1.0)
        assert fake.wait_for(lambda m: len(fake.input_audio()) >= 14000, 10)
        chunk = fake.messages(lambda m: "realtimeInput" in m)[0]["realtimeInput"]["audio"]
        assert chunk["mimeType"] == "audio/pcm;rate=16000"
        assert abs(dominant_frequency(fake.input_audio()[1600:], 16000) - 440) < 5
        fake.send_audio(tone(700, 0.5, rate=24000))
        assert abs(dominant_frequency(sink.audio(0.4)[400:], 8000) - 700) < 5
        fake.call_tool("search", {"q": "x"}, "fc_1")
        call = sink.next("tool")[1]
        s.tool_result(call, '{"hits": 3}', False)
        s.tool_result(ToolCallRequested("fc_2", "search", {}), "plain text", False)
        assert fake.wait_for(lambda m: len(fake.messages(lambda x: "toolResponse" in x)) == 2)
        responses = [m["toolResponse"]["functionResponses"][0] for m in fake.messages(lambda x: "toolResponse" in x)]
        assert responses[0] == {"id": "fc_1", "name": "search", "response": {"hits": 3}}
        assert responses[1]["response"] == {"result": "plain text"}
        s.close()


def test_generic_profile_is_ready_on_open_and_sends_initial_messages_then_echo_comes_back(aio):
    sink = Sink()
    with FakeProvider("echo") as fake:
        settings = GenericSettings(url=fake.url, headers={"X-Test": "1"}, initial_messages=({"type": "hello"},))
        s = session(aio, GenericWebSocket(settings), sink)
        s.open()
        sink.next("ready")
        assert fake.wait_for(lambda m: m.get("type") == "hello")
        assert fake.request_headers["x-test"] == "1"
        feed_tone(s, 440, 1.0)
        echoed = sink.audio(0.8)
        assert abs(dominant_frequency(echoed[800:], 8000) - 440) < 5
        s.close()


def test_a_provider_that_stops_answering_ends_the_session_with_a_timeout_reason(aio):
    sink = Sink()
    with FakeProvider("openai") as fake:
        s = session(aio, OpenAiRealtime(OpenAiSettings(api_key="k", url=fake.url)), sink)
        s.open()
        sink.next("ready")
        fake.hang()
        started = time.monotonic()
        feed_tone(s, 440, 0.5)
        closed = sink.next("closed", timeout=15)
        assert closed[1] == "ai_provider_timeout", closed
        assert time.monotonic() - started < 8


def test_a_provider_that_never_confirms_the_session_times_out_and_a_dead_url_fails_to_connect(aio):
    sink = Sink()
    with FakeProvider("openai", ready=False) as fake:
        s = session(aio, OpenAiRealtime(OpenAiSettings(api_key="k", url=fake.url)), sink)
        s.open()
        closed = sink.next("closed", timeout=15)
        assert closed[1] == "ai_provider_timeout" and "confirm" in closed[2]
    from tests.support.ports import free_port
    s = session(aio, OpenAiRealtime(OpenAiSettings(api_key="k", url=f"ws://127.0.0.1:{free_port('tcp')}")), sink)
    s.open()
    assert sink.next("closed")[1] == "ai_connect_failed"
