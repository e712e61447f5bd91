"""OpenAI Realtime (reference §6.1): one `session.update` (audio/pcm 24 kHz both ways, server VAD
with auto-response and barge-in), `input_audio_buffer.append` up, `response.output_audio.delta`
(or the older `response.audio.delta`) down; ready on `session.updated`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Mapping

from .base import (AgentConfig, AudioOut, Connection, Profile, ProfileError, ProviderError, ProviderEvent, Ready,
                   SpeechStarted, ToolCallRequested, TurnComplete, json_object, parse_arguments)

PUBLIC_URL = "wss://api.openai.com/v1/realtime"
RATE = 24000
# Errors that do not end the session: a cancel racing the response's own end.
IGNORABLE_ERRORS = frozenset({"response_cancel_not_active"})


@dataclass(frozen=True)
class OpenAiSettings:
    api_key: str
    url: str | None = None  # None: the public endpoint
    model: str = "gpt-realtime"
    voice: str = "marin"
    transcription_model: str = "gpt-4o-transcribe"
    instructions: str = ""
    prompt_id: str = ""
    prompt_version: str = ""
    prompt_variables: Any = "{}"


class OpenAiRealtime(Profile):
    name = "openai_realtime"
    input_rate = RATE
    output_rate = RATE

    def __init__(self, settings: OpenAiSettings) -> None:
        self.s = settings
        self._variables = json_object(settings.prompt_variables, "openaiRealtimePromptVariablesJson")

    def connection(self) -> Connection:
        base = self.s.url or PUBLIC_URL
        sep = "&" if "?" in base else "?"
        url = base if "model=" in base else f"{base}{sep}model={self.s.model}"
        return Connection(url, {"Authorization": f"Bearer {self.s.api_key}"})

    def _session(self, agent: AgentConfig | None) -> dict:
        instructions = self.s.instructions
        if agent is not None and agent.memory:
            instructions = f"{instructions}\n\nMemory context:\n{agent.memory}".strip()
        audio_in: dict[str, Any] = {
            "format": {"type": "audio/pcm", "rate": RATE},
            "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
        }
        if agent is not None and agent.memory and self.s.transcription_model:
            audio_in["transcription"] = {"model": self.s.transcription_model}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.s.model,
            "output_modalities": ["audio"],
            "audio": {"input": audio_in,
                      "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": self.s.voice}},
        }
        if instructions:
            session["instructions"] = instructions
        if agent is not None and agent.tools:
            session["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                                 "parameters": dict(t.parameters)} for t in agent.tools]
            session["tool_choice"] = "auto"
        if self.s.prompt_id:
            prompt: dict[str, Any] = {"id": self.s.prompt_id}
            if self.s.prompt_version:
                prompt["version"] = self.s.prompt_version
            if self._variables:
                prompt["variables"] = self._variables
            session["prompt"] = prompt
        return session

    def initial_messages(self, agent: AgentConfig | None) -> list[dict]:
        return [{"type": "session.update", "session": self._session(agent)}]

    def attach_messages(self, agent: AgentConfig) -> list[dict]:
        return [{"type": "session.update", "session": self._session(agent)}]

    def audio_message(self, b64: str) -> dict:
        return {"type": "input_audio_buffer.append", "audio": b64}

    def parse(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        kind = message.get("type")
        if kind in ("response.output_audio.delta", "response.audio.delta"):
            delta = message.get("delta")
            if isinstance(delta, str) and delta:
                return [AudioOut(base64.b64decode(delta), RATE)]
            return []
        if kind == "input_audio_buffer.speech_started":
            return [SpeechStarted()]
        if kind == "response.done":
            return [TurnComplete()]
        if kind == "session.updated":
            return [Ready()]
        if kind == "response.function_call_arguments.done":
            call_id = str(message.get("call_id") or "")
            name = str(message.get("name") or "")
            if not call_id or not name:
                return [ProviderError("function call without call_id or name", "bad_tool_call", fatal=False)]
            return [ToolCallRequested(call_id, name, parse_arguments(message.get("arguments")))]
        if kind == "error":
            error = message.get("error") if isinstance(message.get("error"), Mapping) else {}
            code = str(error.get("code") or error.get("type") or "")
            text = str(error.get("message") or code or "error")
            return [ProviderError(text, code, fatal=code not in IGNORABLE_ERRORS)]
        return []

    def tool_result_messages(self, call: ToolCallRequested, output: str, is_error: bool) -> list[dict]:
        text = json.dumps({"error": output}) if is_error else output
        return [{"type": "conversation.item.create",
                 "item": {"type": "function_call_output", "call_id": call.call_id, "output": text}},
                {"type": "response.create"}]


def settings_from(params: Mapping[str, Any], api_key: str, url: str | None) -> OpenAiSettings:
    def text(key: str, default: str = "") -> str:
        value = params.get(key)
        return default if value in (None, "") else str(value)

    if not api_key:
        raise ProfileError("openai_realtime needs an API key")
    return OpenAiSettings(api_key=api_key, url=url, model=text("openaiRealtimeModel", "gpt-realtime"),
                          voice=text("openaiRealtimeVoice", "marin"),
                          transcription_model=text("openaiRealtimeInputTranscriptionModel", "gpt-4o-transcribe"),
                          instructions=text("openaiRealtimeInstructions"),
                          prompt_id=text("openaiRealtimePromptId"),
                          prompt_version=text("openaiRealtimePromptVersion"),
                          prompt_variables=params.get("openaiRealtimePromptVariablesJson") or "{}")
