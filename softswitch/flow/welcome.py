"""The built-in call handler used when no flow file is active: answer, play the welcome prompt,
hang up. It is also what a newcomer hears when calling `make run`'s default server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..media.players import PromptPlayer
from ..media.recorders import WavRecorder
from ..sip.events import LegEnded, LegEvent, LegMediaActive

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent
    from ..sip.legs import Leg

log = logging.getLogger("softswitch.flow.welcome")


class WelcomeHandler:
    def __init__(self, ua: "UserAgent", prompt: Path, record_dir: Path | None = None) -> None:
        self.ua = ua
        self.prompt = prompt
        self.record_dir = record_dir
        if not prompt.is_file():
            raise FileNotFoundError(f"welcome prompt not found: {prompt} (check directories.prompts)")

    def on_incoming_leg(self, leg: "Leg") -> None:
        _WelcomeCall(self, leg)


class _WelcomeCall:
    def __init__(self, handler: WelcomeHandler, leg: "Leg") -> None:
        self.handler = handler
        self.leg = leg
        self.player: PromptPlayer | None = None
        self.recorder: WavRecorder | None = None
        leg.subscribe(self.on_event)
        leg.answer()

    def on_event(self, event: LegEvent) -> None:
        if isinstance(event, LegMediaActive) and self.player is None:
            ua = self.handler.ua
            self.player = PromptPlayer(ua, self.handler.prompt, on_done=lambda _: self.leg.hangup(200, "completed"))
            self.player.play_to(event.slot)
            if self.handler.record_dir is not None:
                path = self.handler.record_dir / f"{self.leg.id}.wav"
                try:
                    self.recorder = WavRecorder(ua, path)
                except OSError as exc:  # a full or read-only disk: the call goes on unrecorded
                    owner = f"leg {self.leg.id} (call-id {self.leg.call_id})"
                    failure = ua.recording_health.failed(path, owner, exc)
                    log.error("recording %s of %s could not start: %s; the call goes on unrecorded",
                              path, owner, failure.error)
                else:
                    self.recorder.record_from(event.slot)
        elif isinstance(event, LegEnded):
            if self.player is not None:
                self.player.stop()
            if self.recorder is not None:
                self.recorder.stop()
            log.info("call %s ended: %s", self.leg.id, event.reason)
