"""AI voice legs (reference §6): provider profiles behind one interface (`base.Profile`, one
module per provider), provider sessions on an asyncio thread (`session`), and `AiLeg`, the
WebSocket leg flows bridge, record and attach voice agents to (`leg`)."""

from __future__ import annotations

from typing import Any, Mapping

from .base import AgentConfig, Profile, ProfileError, ToolSpec

PROFILES = ("openai_realtime", "gemini_live", "generic")

__all__ = ["AgentConfig", "PROFILES", "Profile", "ProfileError", "ToolSpec", "make_profile"]


def make_profile(name: str, params: Mapping[str, Any], ai_config: Any,
                 environ: Mapping[str, str] | None = None) -> Profile:
    """The profile `name` for one dial: its node parameters, plus the provider's URL and API key
    from the config (`ai.providers.<name>`). Raises ProfileError (or the config's
    MissingSecretError) with a message that says what to set."""
    if name not in PROFILES:
        raise ProfileError(f"unknown transportProfile {name!r} (use {', '.join(PROFILES)})")
    provider = ai_config.provider(name)
    if name == "openai_realtime":
        from . import openai_realtime
        return openai_realtime.OpenAiRealtime(
            openai_realtime.settings_from(params, provider.api_key(environ), provider.url))
    if name == "gemini_live":
        from . import gemini_live
        return gemini_live.GeminiLive(gemini_live.settings_from(params, provider.api_key(environ), provider.url))
    from . import generic
    return generic.GenericWebSocket(generic.settings_from(params, provider.url))
