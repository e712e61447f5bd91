"""AI legs: a provider session that is an ordinary leg to flows (bridge, media, waits, recording).

An `AiLeg` has what flows use of a SIP `Leg`: an id, `direction` (outbound), `status`, a bridge
`slot`, `subscribe`, `hangup`, and the same typed events (`LegAnswered`, `LegMediaActive`,
`LegEnded`), plus `transport = "websocket"`. Its slot is a native `FramePort`: what the bridge
sends to it (the caller, prompts) is read every UA loop turn and handed to the session's asyncio
thread; provider audio comes back resampled to 8 kHz and is written into it. The UA thread only
moves frames.

Playout: provider audio arrives faster than real time. It waits in a Python buffer (bounded,
`MAX_PLAYOUT_S`, oldest dropped) and is moved into the port's tx ring, which holds at most
`TX_FRAMES` frames, so a barge-in (`clear_tx` + dropping the buffer) silences the AI within one
frame. Start modes (§6.2): `immediate` connects at dial and answers when the provider is ready;
`deferred` answers at once and opens nothing until `attach` (audio before it is dropped).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..media.frameport import FramePort
from ..sip.events import LegAnswered, LegEnded, LegEvent, LegMediaActive
from ..sip.legs import LegBase, LegStatus
from .base import AgentConfig, Profile, ToolCallRequested
from .session import AiLoop, Session, Timeouts

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent

log = logging.getLogger("softswitch.ai")

TX_FRAMES = 4  # frames queued in the port at most (80 ms): barge-in drops at most this much
MAX_PLAYOUT_S = 120.0  # provider audio buffered ahead of the playout; older audio is dropped
START_MODES = ("immediate", "deferred")




# ---- AI-only leg events (flows see the usual ones too) ------------------------------------
@dataclass(frozen=True)
class AiSpeechStarted(LegEvent):
    """The provider heard the caller start to speak (counts as voice for playbacks, §5.2)."""


class AiLeg(LegBase):
    """One WebSocket leg (UA thread only, except the session it owns)."""

    direction = "outbound"
    transport = "websocket"

    def __init__(self, legs: "AiLegs", profile: Profile, start_mode: str = "immediate") -> None:
        if start_mode not in START_MODES:
            raise ValueError(f"websocketStartMode {start_mode!r} is not immediate or deferred")
        if start_mode == "deferred" and not profile.supports_agent:
            raise ValueError(f"the {profile.name} profile has no deferred start (use immediate)")
        self.legs = legs
        self.ua = legs.ua
        self.id = self.ua.new_leg_id()
        self.profile = profile
        self.start_mode = start_mode
        self.status = LegStatus.CREATED
        self.end_reason: str | None = None
        self.end_detail = ""
        self.early = False
        self.call = None  # no SIP call: DTMF cannot be sent to a WebSocket leg (§5.4)
        self.admission = None
        self.dtmf_methods: tuple[str, ...] = ()
        self.call_id = ""
        self.remote_uri = f"websocket:{profile.name}"
        self.local_uri = ""
        self.agent: AgentConfig | None = None
        self.activated = start_mode == "immediate"
        self.port = FramePort(self.ua, f"ai-{self.id}", capacity_frames=64, tx_capacity_frames=16)
        self.slot: int | None = self.port.slot
        self.session = Session(legs.aio, profile, self, self.ua.call_soon, leg_id=self.id, timeouts=legs.timeouts)
        self._listeners: list[Callable[[LegEvent], None]] = []
        self._playout: deque[np.ndarray] = deque()
        self._playout_samples = 0
        self._partial = 0  # samples written into the port since the last whole frame
        self.stats = {"frames_up": 0, "samples_down": 0, "barge_ins": 0, "playout_dropped": 0}

    # ---- facts (as Leg) ---------------------------------------------------------------------
    @property
    def caller_number(self) -> str:
        return ""

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Immediate: connect now (answered when ready). Deferred: answered on the next turn."""
        self.legs._add(self)
        self.ua.leg_created(self)
        if self.activated:
            self.session.open(None)
        else:
            self.ua.call_soon(self._answer)

    def attach(self, agent: AgentConfig) -> None:
        """Attach Voice Agent: deferred → the session opens now with the tools; immediate →
        the tools are added to the open session (profiles that cannot refuse here)."""
        if self.ended:
            raise RuntimeError(f"AI leg {self.id} has ended")
        if not self.profile.supports_agent:
            raise ValueError(f"the {self.profile.name} profile has no voice-agent features")
        if self.activated and agent.tools:
            self.profile.attach_messages(agent)  # raises ProfileError when the profile cannot
        self.agent = agent
        if not self.activated:
            self.activated = True
            self.session.open(agent)
        elif agent.tools or agent.memory:
            self.session.attach(agent)

    def _answer(self) -> None:
        if self.status is not LegStatus.CREATED:
            return
        self.status = LegStatus.ANSWERED
        log.info("%s: AI leg answered (%s, %s)", self.id, self.profile.name, self.start_mode)
        self._publish(LegAnswered(self.id))
        self._publish(LegMediaActive(self.id, self.port.slot))

    def answer(self) -> None:
        """An outbound leg is answered by its far end (here: the provider), not by us."""

    def ringing(self) -> None:
        pass

    def early_media(self) -> None:
        pass

    def set_queued(self, queued: bool) -> bool:
        if queued and self.status is LegStatus.ANSWERED:
            self.status = LegStatus.QUEUED
            return True
        if not queued and self.status is LegStatus.QUEUED:
            self.status = LegStatus.ANSWERED
            return True
        return False

    def send_dtmf(self, digits: str, method: str = "rfc2833", duration_ms: int = 160) -> None:
        raise RuntimeError(f"leg {self.id} is a WebSocket leg: it cannot send DTMF")

    def hangup(self, code: int = 200, reason: str = "hangup") -> None:
        self._end(reason, "", 200 if self.answered else (code if code >= 300 else 487))

    def respond_tool(self, call: ToolCallRequested, output: str, is_error: bool = False) -> None:
        if not self.ended:
            self.session.tool_result(call, output, is_error)

    def _end(self, reason: str, detail: str, sip_code: int) -> None:
        if self.ended:
            return
        self.status = LegStatus.ENDED
        self.end_reason, self.end_detail = reason, detail
        self.session.close()
        self._drop_playout()
        self.legs._remove(self)
        log.info("%s: AI leg ended: %s%s", self.id, reason, f" ({detail})" if detail else "")
        self._publish(LegEnded(self.id, reason, sip_code))
        self.slot = None
        self._listeners.clear()
        self.port.stop()  # released on the next loop turn, after the bridge dropped its connections

    # ---- the session's side (UA thread, posted by the asyncio loop) ------------------------------
    def on_ready(self) -> None:
        self._answer()

    def on_audio(self, samples: np.ndarray) -> None:
        if self.ended or not self.answered:
            return
        self._playout.append(samples)
        self._playout_samples += samples.size
        limit = int(MAX_PLAYOUT_S * self.port.clock_rate)
        while self._playout_samples > limit and len(self._playout) > 1:
            dropped = self._playout.popleft()
            self._playout_samples -= dropped.size
            self.stats["playout_dropped"] += dropped.size
        self.stats["samples_down"] += samples.size
        self.pump_down()

    def on_speech_started(self) -> None:
        """Barge-in: what the caller has not heard yet is dropped at once."""
        if self.ended:
            return
        self.stats["barge_ins"] += 1
        self._drop_playout()
        self._publish(AiSpeechStarted(self.id))
        if self.legs.speech_handler is not None:
            self.legs.speech_handler(self)

    def on_turn_complete(self) -> None:
        """The turn's tail: pad the last partial frame so it is played, not held."""
        if self.ended:
            return
        spf = self.port.samples_per_frame
        pending = (self._partial + self._playout_samples) % spf
        if pending:
            self.on_audio(np.zeros(spf - pending, dtype=np.int16))

    def on_tool_call(self, call: ToolCallRequested) -> None:
        if self.ended:
            return
        log.info("%s: the model calls %s(%s)", self.id, call.name, ", ".join(map(str, call.arguments)))
        if self.legs.tool_handler is None or self.agent is None:
            self.respond_tool(call, f"Unknown tool: {call.name}", True)
            return
        self.legs.tool_handler(self, call)

    def on_closed(self, reason: str, detail: str) -> None:
        if self.ended:
            return
        if reason in ("ai_provider_timeout", "ai_provider_error", "ai_connect_failed"):
            log.warning("%s: AI provider %s: %s%s", self.id, self.profile.name, reason, f" ({detail})" if detail else "")
        self._end(reason, detail, 200 if self.answered else 503)

    # ---- frames (UA loop) ----------------------------------------------------------------------
    def pump_up(self) -> None:
        """Caller audio (what the bridge sends to this leg) to the provider; dropped while the
        session is not active (deferred, not yet attached; or not answered)."""
        data = self.port.read()
        if data.size and self.activated and self.answered:
            self.session.send_audio(data.tobytes())
            self.stats["frames_up"] += data.size // self.port.samples_per_frame

    def pump_down(self) -> None:
        """Top the port's tx ring up to TX_FRAMES frames from the playout buffer."""
        if not self._playout:
            return
        spf = self.port.samples_per_frame
        room = (TX_FRAMES - self.port.tx_queued) * spf - self._partial
        while room > 0 and self._playout:
            chunk = self._playout[0]
            take = chunk[:room]
            accepted = self.port.write(take)
            if accepted <= 0:
                break
            if accepted < chunk.size:
                self._playout[0] = chunk[accepted:]
            else:
                self._playout.popleft()
            self._playout_samples -= accepted
            self._partial = (self._partial + accepted) % spf
            room -= accepted
            if accepted < take.size:
                break

    def _drop_playout(self) -> None:
        self._playout.clear()
        self._playout_samples = 0
        self._partial = 0
        self.port.clear_tx()


class AiLegs:
    """The live AI legs of one UA: the asyncio loop they share, and the frame pump on the UA loop."""

    def __init__(self, ua: "UserAgent", timeouts: Timeouts = Timeouts()) -> None:
        self.ua = ua
        self.aio = AiLoop()
        self.timeouts = timeouts
        self.live: dict[str, AiLeg] = {}
        # Set by the flow layer: the model called a tool on a leg with an agent attached.
        self.tool_handler: Callable[[AiLeg, ToolCallRequested], None] | None = None
        # Set by the flow layer: the caller started speaking (voice-interruptible playbacks stop).
        self.speech_handler: Callable[[AiLeg], None] | None = None
        self._remove_poller: Callable[[], None] | None = None

    def create(self, profile: Profile, start_mode: str = "immediate") -> AiLeg:
        return AiLeg(self, profile, start_mode)

    def get(self, leg_id: str) -> AiLeg | None:
        return self.live.get(leg_id)

    def _add(self, leg: AiLeg) -> None:
        self.live[leg.id] = leg
        if self._remove_poller is None:
            self._remove_poller = self.ua.add_poller(self._pump)

    def _remove(self, leg: AiLeg) -> None:
        self.live.pop(leg.id, None)
        if not self.live and self._remove_poller is not None:
            self._remove_poller()
            self._remove_poller = None

    def _pump(self) -> None:
        for leg in list(self.live.values()):
            leg.pump_up()
            leg.pump_down()

    def shutdown(self) -> None:
        """Hang up every AI leg (daemon_shutdown), then stop the asyncio thread (bounded)."""
        for leg in list(self.live.values()):
            leg.hangup(200, "daemon_shutdown")
        self.aio.stop()
