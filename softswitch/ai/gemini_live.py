"""Gemini Live (reference §6.1): a `setup` message (AUDIO modality, prebuilt voice, system
instruction, function declarations), `realtimeInput.audio` at 16 kHz up,
`serverContent.modelTurn.parts[].inlineData` down (rate from its mime type, 24 kHz by default);
ready on `setupComplete`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Mapping

from .base import (AgentConfig, AudioOut, Connection, Profile, ProviderError, ProviderEvent, Ready, SpeechStarted,
                   ToolCallRequested, TurnComplete, parse_arguments, rate_from_mime)

PUBLIC_URL = ("wss://generativelanguage.googleapis.com/ws/"
              "google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent")
INPUT_RATE = 16000
OUTPUT_RATE = 24000


@dataclass(frozen=True)
class GeminiSettings:
    api_key: str
    url: str | None = None
    model: str = "gemini-3.1-flash-live-preview"
    voice: str = "Puck"
    api_version: str = "v1beta"
    instructions: str = ""


def _strip_schema(schema: Any) -> Any:
    """Gemini refuses JSON-schema keys it does not know (additionalProperties, $schema)."""
    if isinstance(schema, Mapping):
        return {k: _strip_schema(v) for k, v in schema.items() if k not in ("additionalProperties", "$schema")}
    if isinstance(schema, list):
        return [_strip_schema(v) for v in schema]
    return schema


class GeminiLive(Profile):
    name = "gemini_live"
    input_rate = INPUT_RATE
    output_rate = OUTPUT_RATE

    def __init__(self, settings: GeminiSettings) -> None:
        self.s = settings

    def connection(self) -> Connection:
        url = self.s.url or PUBLIC_URL.format(version=self.s.api_version)
        return Connection(url, {"x-goog-api-key": self.s.api_key})

    def initial_messages(self, agent: AgentConfig | None) -> list[dict]:
        model = self.s.model if self.s.model.startswith("models/") else f"models/{self.s.model}"
        setup: dict[str, Any] = {
            "model": model,
            "generationConfig": {
                "responseModalities": ["AUDIO"],
                "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": self.s.voice}}},
            },
        }
        instructions = self.s.instructions
        if agent is not None and agent.memory:
            instructions = f"{instructions}\n\nMemory context:\n{agent.memory}".strip()
        if instructions:
            setup["systemInstruction"] = {"parts": [{"text": instructions}]}
        if agent is not None:
            if agent.tools:
                setup["tools"] = [{"functionDeclarations": [
                    {"name": t.name, "description": t.description, "parameters": _strip_schema(dict(t.parameters))}
                    for t in agent.tools]}]
            setup["inputAudioTranscription"] = {}
            setup["outputAudioTranscription"] = {}
        return [{"setup": setup}]

    def audio_message(self, b64: str) -> dict:
        return {"realtimeInput": {"audio": {"data": b64, "mimeType": f"audio/pcm;rate={INPUT_RATE}"}}}

    def parse(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        if "setupComplete" in message:
            events.append(Ready())
        content = message.get("serverContent")
        if isinstance(content, Mapping):
            if content.get("interrupted"):
                events.append(SpeechStarted())
            turn = content.get("modelTurn")
            parts = turn.get("parts") if isinstance(turn, Mapping) else None
            for part in parts or ():
                data = part.get("inlineData") if isinstance(part, Mapping) else None
                if isinstance(data, Mapping) and str(data.get("mimeType", "")).startswith("audio/pcm") \
                        and data.get("data"):
                    events.append(AudioOut(base64.b64decode(data["data"]),
                                           rate_from_mime(str(data.get("mimeType")), OUTPUT_RATE)))
            if content.get("turnComplete") or content.get("generationComplete"):
                events.append(TurnComplete())
        call = message.get("toolCall")
        if isinstance(call, Mapping):
            for fc in call.get("functionCalls") or ():
                if isinstance(fc, Mapping) and fc.get("name"):
                    events.append(ToolCallRequested(str(fc.get("id") or fc["name"]), str(fc["name"]),
                                                    parse_arguments(fc.get("args"))))
        error = message.get("error")
        if isinstance(error, Mapping):
            events.append(ProviderError(str(error.get("message") or "error"), str(error.get("status") or "")))
        return events

    def tool_result_messages(self, call: ToolCallRequested, output: str, is_error: bool) -> list[dict]:
        if is_error:
            response: Any = {"error": output}
        else:
            try:
                parsed = json.loads(output)
            except ValueError:
                parsed = None
            response = parsed if isinstance(parsed, dict) else {"result": output}
        return [{"toolResponse": {"functionResponses": [{"id": call.call_id, "name": call.name,
                                                         "response": response}]}}]


def settings_from(params: Mapping[str, Any], api_key: str, url: str | None) -> GeminiSettings:
    def text(key: str, default: str = "") -> str:
        value = params.get(key)
        return default if value in (None, "") else str(value)

    return GeminiSettings(api_key=api_key, url=url, model=text("geminiLiveModel", "gemini-3.1-flash-live-preview"),
                          voice=text("geminiLiveVoice", "Puck"), api_version=text("geminiLiveApiVersion", "v1beta"),
                          instructions=text("geminiLiveInstructions"))
