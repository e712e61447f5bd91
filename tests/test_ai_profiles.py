"""Provider profiles message by message (no sockets), the profile factory's config errors, and
the AI node rules that need no call: function names, tool schemas, invokeAiTool as a step."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from softswitch.ai import AgentConfig, ProfileError, ToolSpec, make_profile
from softswitch.ai.base import AudioOut, ProviderError, Ready, SpeechStarted, ToolCallRequested, TurnComplete
from softswitch.ai.gemini_live import GeminiLive, GeminiSettings
from softswitch.ai.generic import GenericWebSocket, settings_from as generic_settings
from softswitch.ai.openai_realtime import OpenAiRealtime, OpenAiSettings
from softswitch.config import AiConfig, AiProvider, MissingSecretError
from softswitch.flow.ai import _invoke_as_step, agent_tools, tool_name
from softswitch.flow.engine import Activation, Execution, FlowRunner, NodeFailed
from softswitch.flow.items import Item
from softswitch.flow.loader import load_flow_text

PCM = np.arange(480, dtype=np.int16)
B64 = base64.b64encode(PCM.tobytes()).decode()
TOOL = ToolSpec("lookup_order", "Look up an order", {"type": "object", "properties": {}})


def test_openai_parses_audio_deltas_barge_in_turn_end_ready_tool_calls_and_errors():
    p = OpenAiRealtime(OpenAiSettings(api_key="k"))
    assert p.parse({"type": "response.output_audio.delta", "delta": B64}) == [AudioOut(PCM.tobytes(), 24000)]
    assert p.parse({"type": "response.audio.delta", "delta": B64}) == [AudioOut(PCM.tobytes(), 24000)]
    assert p.parse({"type": "input_audio_buffer.speech_started"}) == [SpeechStarted()]
    assert p.parse({"type": "response.done"}) == [TurnComplete()]
    assert p.parse({"type": "session.updated"}) == [Ready()]
    assert p.parse({"type": "response.function_call_arguments.done", "call_id": "c1", "name": "f",
                    "arguments": '{"a": 1}'}) == [ToolCallRequested("c1", "f", {"a": 1})]
    ignorable = p.parse({"type": "error", "error": {"code": "response_cancel_not_active", "message": "x"}})
    assert ignorable == [ProviderError("x", "response_cancel_not_active", fatal=False)]
    assert p.parse({"type": "error", "error": {"code": "invalid_api_key", "message": "bad key"}})[0].fatal
    assert p.parse({"type": "rate_limits.updated"}) == []


def test_openai_session_update_has_pcm_24khz_server_vad_voice_tools_and_stored_prompt():
    p = OpenAiRealtime(OpenAiSettings(api_key="k", voice="cedar", instructions="Hi", prompt_id="pmpt_1",
                                      prompt_version="3", prompt_variables='{"shop": "x"}'))
    [msg] = p.initial_messages(AgentConfig(tools=(TOOL,)))
    s = msg["session"]
    assert msg["type"] == "session.update" and s["type"] == "realtime" and s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["format"] == s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["input"]["turn_detection"] == {"type": "server_vad", "create_response": True,
                                                      "interrupt_response": True}
    assert s["audio"]["output"]["voice"] == "cedar" and s["instructions"] == "Hi"
    assert s["tools"] == [{"type": "function", "name": "lookup_order", "description": "Look up an order",
                           "parameters": {"type": "object", "properties": {}}}]
    assert s["prompt"] == {"id": "pmpt_1", "version": "3", "variables": {"shop": "x"}}
    assert "transcription" not in s["audio"]["input"]  # only with memory, which flows cannot attach
    assert p.audio_message("QUJD") == {"type": "input_audio_buffer.append", "audio": "QUJD"}
    assert p.connection().url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"


def test_gemini_parses_inline_audio_with_its_rate_interruption_turn_end_and_tool_calls():
    p = GeminiLive(GeminiSettings(api_key="k"))
    msg = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=16000", "data": B64}}]},
                             "turnComplete": True}}
    assert p.parse(msg) == [AudioOut(PCM.tobytes(), 16000), TurnComplete()]
    assert p.parse({"serverContent": {"interrupted": True}}) == [SpeechStarted()]
    assert p.parse({"setupComplete": {}}) == [Ready()]
    assert p.parse({"toolCall": {"functionCalls": [{"id": "fc", "name": "f", "args": {"x": 2}}]}}) == \
        [ToolCallRequested("fc", "f", {"x": 2})]
    assert p.connection().url.endswith("generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
    assert p.tool_result_messages(ToolCallRequested("fc", "f", {}), "oops", True) == \
        [{"toolResponse": {"functionResponses": [{"id": "fc", "name": "f", "response": {"error": "oops"}}]}}]


def test_gemini_refuses_tools_on_an_open_immediate_session_but_openai_sends_another_session_update():
    with pytest.raises(ProfileError, match="deferred"):
        GeminiLive(GeminiSettings(api_key="k")).attach_messages(AgentConfig(tools=(TOOL,)))
    [msg] = OpenAiRealtime(OpenAiSettings(api_key="k")).attach_messages(AgentConfig(tools=(TOOL,)))
    assert msg["type"] == "session.update" and msg["session"]["tools"][0]["name"] == "lookup_order"


def test_generic_profile_uses_the_configured_event_types_fields_and_rates():
    s = generic_settings({"websocketUrl": "ws://h/x", "websocketAudioInputEventType": "media",
                          "websocketAudioInputField": "payload", "websocketAudioInputSampleRate": 16000,
                          "websocketAudioOutputEventTypes": "tts, audio", "websocketAudioOutputField": "pcm",
                          "websocketAudioOutputSampleRate": 24000,
                          "websocketInitialMessagesJson": '[{"type": "start"}]'}, None)
    p = GenericWebSocket(s)
    assert (p.input_rate, p.output_rate) == (16000, 24000) and p.ready_on_open and not p.supports_agent
    assert p.audio_message("QQ==") == {"type": "media", "payload": "QQ=="}
    assert p.parse({"type": "audio", "pcm": B64}) == [AudioOut(PCM.tobytes(), 24000)]
    assert p.initial_messages(None) == [{"type": "start"}]
    with pytest.raises(ProfileError, match="ws://"):
        generic_settings({"websocketUrl": "http://h"}, None)
    with pytest.raises(ProfileError, match="JSON"):
        generic_settings({"websocketUrl": "ws://h", "websocketHeadersJson": "{nope"}, None)


def test_the_factory_takes_url_and_key_from_the_config_and_says_which_variable_is_missing():
    ai = AiConfig(providers={"openai_realtime": AiProvider(name="openai_realtime", url="ws://127.0.0.1:9/rt",
                                                           api_key_env="TEST_AI_KEY")})
    p = make_profile("openai_realtime", {"openaiRealtimeModel": "m1"}, ai, {"TEST_AI_KEY": "sk-1"})
    conn = p.connection()
    assert conn.url == "ws://127.0.0.1:9/rt?model=m1" and conn.headers["Authorization"] == "Bearer sk-1"
    with pytest.raises(MissingSecretError, match="TEST_AI_KEY"):
        make_profile("openai_realtime", {}, ai, {})
    with pytest.raises(ProfileError, match="transportProfile"):
        make_profile("watson", {}, ai, {})


def test_function_names_keep_only_letters_digits_underscore_and_dash_up_to_64():
    assert tool_name("get weather") == "get_weather"
    assert tool_name("lookup-order_2") == "lookup-order_2"
    assert tool_name("x" * 70 + "!") == "x" * 64


FLOW = """
name: tools
triggers:
  - {name: t, trigger: trunk, params: {ref: trunk_main}, next: {Call: attach}}
  - {name: tt, trigger: aiTool, params: {ref: weather}}
nodes:
  - name: attach
    op: ai.attachVoiceAgent
    tools: [get weather]
  - name: get weather
    op: ai.invokeAiTool
    params:
      ref: weather
      aiToolDescription: "Weather for {{ $json.city }}"
      aiToolParams:
        - {name: city, type: string, description: City, required: true}
        - {name: days, type: integer, description: Days}
      aiFlowParams:
        - {name: caller, value: "{{ $json.callerNumber }}"}
"""


def test_tools_are_function_schemas_with_flow_parameters_evaluated_in_the_attach_items_context():
    flow = load_flow_text(FLOW)
    execution = Execution(FlowRunner(lambda fn: None), flow, "exec_test")
    a = Activation(execution, flow.node("attach"), Item(json={"city": "Paris", "callerNumber": "5551234"}))
    [(name, tool)] = agent_tools(a, flow, flow.node("attach")).items()
    assert name == "get_weather" and tool.ref == "weather" and tool.flow_params == {"caller": "5551234"}
    assert tool.spec.description == "Weather for Paris"
    assert tool.spec.parameters == {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City"}, "days": {"type": "integer", "description": "Days"}}}
    json.dumps(tool.spec.parameters)  # plain JSON for the provider


def test_invoke_ai_tool_cannot_run_as_a_step():
    with pytest.raises(NodeFailed, match="tools:"):
        _invoke_as_step(None)  # type: ignore[arg-type]
