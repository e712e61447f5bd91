"""A generic JSON WebSocket (reference §6.1): user headers and initial messages, audio as base64
PCM16 in a configurable event type and field, at configurable rates (48 kHz by default). No
voice-agent features (no tools, no deferred start); ready as soon as the socket is open."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping

from .base import (AgentConfig, AudioOut, Connection, Profile, ProfileError, ProviderError, ProviderEvent,
                   json_array, json_object)


@dataclass(frozen=True)
class GenericSettings:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    initial_messages: tuple = ()
    input_event_type: str = "input_audio"
    input_field: str = "audio"
    input_rate: int = 48000
    output_event_types: tuple[str, ...] = ("audio_output",)
    output_field: str = "audio"
    output_rate: int = 48000


class GenericWebSocket(Profile):
    name = "generic"
    supports_agent = False
    ready_on_open = True

    def __init__(self, settings: GenericSettings) -> None:
        self.s = settings
        self.input_rate = settings.input_rate
        self.output_rate = settings.output_rate

    def connection(self) -> Connection:
        return Connection(self.s.url, dict(self.s.headers))

    def initial_messages(self, agent: AgentConfig | None) -> list[dict]:
        return [dict(m) if isinstance(m, Mapping) else m for m in self.s.initial_messages]

    def audio_message(self, b64: str) -> dict:
        return {"type": self.s.input_event_type, self.s.input_field: b64}

    def parse(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        kind = message.get("type")
        if kind in self.s.output_event_types:
            data = message.get(self.s.output_field)
            return [AudioOut(base64.b64decode(data), self.s.output_rate)] if isinstance(data, str) and data else []
        if kind == "error":
            error = message.get("error")
            text = str(error.get("message") if isinstance(error, Mapping) else error or "error")
            return [ProviderError(text, str(error.get("code", "")) if isinstance(error, Mapping) else "")]
        return []


def settings_from(params: Mapping[str, Any], url: str | None) -> GenericSettings:
    target = str(params.get("websocketUrl") or url or "")
    if not target.startswith(("ws://", "wss://")):
        raise ProfileError(f"generic websocket: websocketUrl {target!r} must start with ws:// or wss://")

    def rate(key: str) -> int:
        try:
            value = int(params.get(key) or 48000)
        except (TypeError, ValueError):
            raise ProfileError(f"{key} must be a sample rate in Hz") from None
        if not 8000 <= value <= 96000:
            raise ProfileError(f"{key} {value} is outside 8000..96000 Hz")
        return value

    headers = {str(k): str(v) for k, v in json_object(params.get("websocketHeadersJson"), "websocketHeadersJson").items()}
    types = tuple(t.strip() for t in str(params.get("websocketAudioOutputEventTypes") or "audio_output").split(",")
                  if t.strip())
    return GenericSettings(
        url=target, headers=headers,
        initial_messages=tuple(json_array(params.get("websocketInitialMessagesJson"), "websocketInitialMessagesJson")),
        input_event_type=str(params.get("websocketAudioInputEventType") or "input_audio"),
        input_field=str(params.get("websocketAudioInputField") or "audio"),
        input_rate=rate("websocketAudioInputSampleRate"),
        output_event_types=types or ("audio_output",),
        output_field=str(params.get("websocketAudioOutputField") or "audio"),
        output_rate=rate("websocketAudioOutputSampleRate"))
