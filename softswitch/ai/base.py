"""What every AI voice provider profile provides, and the typed events they produce.

A profile turns softswitch's intents (set the session up, send 20 ms of caller audio, answer a
tool call) into the provider's JSON messages, and the provider's messages into a few typed
events (`Ready`, `AudioOut`, `SpeechStarted`, `TurnComplete`, `ToolCallRequested`,
`ProviderError`). Everything provider-specific lives in one module per profile
(`openai_realtime.py`, `gemini_live.py`, `generic.py`); the session and the leg only see this.
Profiles are pure: no sockets, no threads, so they are tested message by message.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


# ---- the voice agent a flow attaches ------------------------------------------------------
@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call: an `ai.invokeAiTool` node as the provider sees it."""

    name: str  # [A-Za-z0-9_-]{1,64}
    description: str
    parameters: Mapping[str, Any]  # JSON schema of an object


@dataclass(frozen=True)
class AgentConfig:
    """What Attach Voice Agent adds to a session. `memory` is reserved: our flow format has no
    memory node, so it is always empty (reference §6.3 step 2)."""

    tools: tuple[ToolSpec, ...] = ()
    memory: str = ""


# ---- events from the provider ---------------------------------------------------------------
@dataclass(frozen=True)
class ProviderEvent:
    pass


@dataclass(frozen=True)
class Ready(ProviderEvent):
    """The session is configured: audio may flow (the attempt is answered)."""


@dataclass(frozen=True)
class AudioOut(ProviderEvent):
    pcm: bytes  # PCM16 little-endian mono
    rate: int


@dataclass(frozen=True)
class SpeechStarted(ProviderEvent):
    """The provider heard the caller start speaking: barge-in (drop unplayed AI audio)."""


@dataclass(frozen=True)
class TurnComplete(ProviderEvent):
    """The model's turn is over: flush what is buffered so its tail is heard."""


@dataclass(frozen=True)
class ToolCallRequested(ProviderEvent):
    call_id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class ProviderError(ProviderEvent):
    message: str
    code: str = ""
    fatal: bool = True  # a fatal error ends the AI leg


# ---- the profile interface ----------------------------------------------------------------------
@dataclass(frozen=True)
class Connection:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


class ProfileError(ValueError):
    """The dial's settings cannot make a session (message says what to fix)."""


class Profile(ABC):
    """One provider's protocol. Rates are the provider's, in Hz; softswitch resamples."""

    name: str = ""
    input_rate: int = 24000  # audio we send
    output_rate: int = 24000  # audio we receive when a message does not say
    supports_agent: bool = True  # tools (and memory) through Attach Voice Agent
    ready_on_open: bool = False  # answered as soon as the socket is open (no handshake message)

    @abstractmethod
    def connection(self) -> Connection:
        """Where to connect and with which headers (API key included)."""

    @abstractmethod
    def initial_messages(self, agent: AgentConfig | None) -> list[dict]:
        """Sent right after the socket opens (with the agent's tools when opened by an attach)."""

    def attach_messages(self, agent: AgentConfig) -> list[dict]:
        """Sent when an agent is attached to a session that is already open (immediate mode)."""
        raise ProfileError(f"{self.name}: tools can only be attached to a deferred session "
                           "(set websocketStartMode: deferred)")

    @abstractmethod
    def audio_message(self, b64: str) -> dict:
        """One chunk of caller audio (base64 PCM16 at `input_rate`)."""

    @abstractmethod
    def parse(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        """The events in one provider message (none for messages we ignore)."""

    def tool_result_messages(self, call: ToolCallRequested, output: str, is_error: bool) -> list[dict]:
        raise ProfileError(f"{self.name} has no tools")


def rate_from_mime(mime: str, default: int) -> int:
    """`audio/pcm;rate=16000` → 16000."""
    for part in (mime or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "rate" and value.strip().isdigit():
            return int(value.strip())
    return default


def json_object(value: Any, what: str) -> dict:
    """A JSON object parameter given as text or as a mapping."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ProfileError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ProfileError(f"{what} must be a JSON object")
    return dict(value)


def json_array(value: Any, what: str) -> list:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ProfileError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise ProfileError(f"{what} must be a JSON array")
    return list(value)


def parse_arguments(raw: Any) -> dict:
    """A tool call's arguments: a JSON object (text or mapping); anything else becomes {}."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str) and raw.strip():
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return dict(value) if isinstance(value, Mapping) else {}
    return {}
