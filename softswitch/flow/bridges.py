"""Bridges between flow legs (reference §5.6): audio joined both ways on the conference bridge,
both legs retained, interrupts published, DTMF relayed, and the survivor told when its peer ends.

A leg is in at most one bridge. Bridging finalizes all media on both legs first
(`call_bridge_joined`); bridging a leg that is bridged elsewhere detaches the old pair
(`call_bridge_removed_rebridge`); `unbridge` publishes `call_bridge_removed_unbridge` on both;
a peer's hang-up publishes `call_bridge_removed_peer_ended` on the survivor, which is not hung up
but loses the bridge's retention (the free-TTL then applies unless something else holds it).

Signalling follows the peer (§5.6): an unanswered inbound leg bridged to an outbound leg sends
180 when the peer rings, 183 with SDP when the peer has early media (whose audio then crosses
the bridge like any other), is answered when the peer answers, and is rejected with the peer's
SIP code when the peer is rejected. Bridging an unanswered outbound dial attempt makes it the
dial's winner (`Dial.claim`). DTMF received on one leg is relayed to the other by the bridge's
mode: `auto` (the peer's allowed methods: RFC 2833, then SIP INFO, then in-band), or forced
`rfc2833`, `info` or `inband`; `disabled` relays nothing.

Hold (an addition to the reference): when one side holds the call (its phone sent a=sendonly or
a=inactive), the other side, the held party, hears `media.hold_music` (a looped WAV or tone, or
nothing with `none`) instead of whatever the holding phone sends, and hears the holding side again
when it resumes. The connection is suspended, not removed, so the call recording's channels stay
aligned (the held party's channel has the music) and the bridge is exactly as it was afterwards.
An AI leg that is held gets silence, never music.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..media import bridge as conf
from ..sip.events import (LegAnswered, LegDtmf, LegEnded, LegEvent, LegHold, LegMediaActive, LegProgress,
                          LegRinging)
from ..sip.legs import LegStatus

if TYPE_CHECKING:
    from ..media.players import PromptPlayer
    from ..sip.legs import Leg
    from .retention import RetentionTicket
    from .runtime import FlowEngine, FlowLeg

log = logging.getLogger("softswitch.flow.bridge")

RELAY_MODES = ("disabled", "auto", "rfc2833", "info", "inband")
RELAY_DURATION_MS = 160  # the received digit's length is not known when it is relayed


@dataclass
class Bridge:
    a: "FlowLeg"
    b: "FlowLeg"
    relay_dtmf: str = "auto"  # disabled | auto | rfc2833 | info | inband
    emit_dtmf_events: bool = True
    tickets: list["RetentionTicket"] = field(default_factory=list)
    joined_slots: tuple[int, int] | None = None
    unsubscribes: list[Callable[[], None]] = field(default_factory=list)
    # Hold: the id of each leg that holds the call now, and the music its held peer hears.
    holding: set[str] = field(default_factory=set)
    hold_players: dict[str, "PromptPlayer"] = field(default_factory=dict)

    def peer_of(self, leg: "FlowLeg") -> "FlowLeg":
        return self.b if leg is self.a else self.a


class Bridges:
    """The bridges of one FlowEngine (UA thread only)."""

    def __init__(self, engine: "FlowEngine") -> None:
        self.engine = engine
        self._by_leg: dict[str, Bridge] = {}

    def of(self, leg_id: str) -> Bridge | None:
        return self._by_leg.get(leg_id)

    def bridge(self, a: "FlowLeg", b: "FlowLeg", *, relay_dtmf: str = "auto", emit_dtmf_events: bool = True) -> None:
        if relay_dtmf not in RELAY_MODES:
            raise ValueError(f"relayDtmf {relay_dtmf!r} is not one of {', '.join(RELAY_MODES)}")
        existing = self._by_leg.get(a.id)
        if existing is not None and existing.peer_of(a) is b:
            # The same pair again: idempotent, just joined once more.
            self._publish(a, "call_bridge_joined")
            self._publish(b, "call_bridge_joined")
            return
        for leg in (a, b):
            old = self._by_leg.get(leg.id)
            if old is not None:
                self._detach(old, "call_bridge_removed_rebridge")
        self.engine.finish_media(a, "call_bridge_joined")
        self.engine.finish_media(b, "call_bridge_joined")
        br = Bridge(a, b, relay_dtmf, emit_dtmf_events)
        br.tickets = [a.retention.acquire(f"bridge:{b.id}"), b.retention.acquire(f"bridge:{a.id}")]
        self._by_leg[a.id] = self._by_leg[b.id] = br
        for leg in (a, b):
            br.unsubscribes.append(leg.leg.subscribe(lambda event, leg=leg: self._on_event(br, leg, event)))
        self._claim_attempts(br)
        self._join_audio(br)
        self._follow_peer(br)
        self._publish(a, "call_bridge_joined")
        self._publish(b, "call_bridge_joined")
        log.info("bridged %s <-> %s", a.id, b.id)
        self.engine.tell(lambda o: o.bridged(a.leg, b.leg))

    def unbridge(self, leg: "FlowLeg") -> "FlowLeg | None":
        br = self._by_leg.get(leg.id)
        if br is None:
            return None
        peer = br.peer_of(leg)
        self._detach(br, "call_bridge_removed_unbridge")
        return peer

    # ---- internals ------------------------------------------------------------------------
    def _join_audio(self, br: Bridge) -> None:
        sa, sb = br.a.leg.slot, br.b.leg.slot
        if sa is None or sb is None or br.joined_slots is not None:
            return  # joined when both legs have media (LegMediaActive)
        conf.connect(sa, sb)
        conf.connect(sb, sa)
        br.joined_slots = (sa, sb)
        for leg in (br.a, br.b):
            if leg.leg.held:  # held before the bridge joined: the peer hears music from the start
                self._hold(br, leg, True)

    def _split_audio(self, br: Bridge) -> None:
        if br.joined_slots is None:
            return
        sa, sb = br.joined_slots
        br.joined_slots = None
        for src, dst in ((sa, sb), (sb, sa)):
            try:
                conf.disconnect(src, dst)
            except RuntimeError:
                pass  # a slot already gone with its call

    def _claim_attempts(self, br: Bridge) -> None:
        """An unanswered outbound dial attempt taken into a bridge is its dial's winner (§5.6)."""
        dials = getattr(self.engine, "dials", None)
        if dials is None:
            return
        for leg in (br.a, br.b):
            if leg.leg.direction == "outbound" and not leg.leg.answered:
                dial = dials.of_attempt(leg.id)
                if dial is not None:
                    dial.claim(leg.id)

    def _follow_peer(self, br: Bridge) -> None:
        """An unanswered inbound leg follows its bridged peer: answered when the peer is; while
        the peer is an outbound call still in progress, 183 for its early media, else 180 for its
        ringing."""
        for leg in (br.a, br.b):
            own, peer = leg.leg, br.peer_of(leg).leg
            if own.direction != "inbound" or own.answered or own.ended or peer.ended:
                continue
            if peer.answered:
                own.answer()
            elif peer.direction == "outbound" and peer.early:
                own.early_media()
            elif peer.direction == "outbound" and peer.status is LegStatus.RINGING and not own.early:
                own.ringing()

    def _on_event(self, br: Bridge, leg: "FlowLeg", event: LegEvent) -> None:
        if self._by_leg.get(leg.id) is not br:
            return
        peer = br.peer_of(leg)
        if isinstance(event, LegMediaActive):
            if br.joined_slots is not None and event.slot not in br.joined_slots:
                self._split_audio(br)  # the slot changed (re-INVITE): join again
            self._join_audio(br)
        elif isinstance(event, LegHold):
            self._hold(br, leg, event.held)
        elif isinstance(event, (LegRinging, LegProgress, LegAnswered)):
            self._follow_peer(br)
        elif isinstance(event, LegDtmf) and br.relay_dtmf != "disabled" and event.method != "relay":
            self.relay_dtmf(leg, event.digit, event.method)
        elif isinstance(event, LegEnded):
            self._detach(br, "call_bridge_removed_peer_ended", ended=leg)
            self._follow_rejection(leg, peer, event)

    # ---- hold -----------------------------------------------------------------------------
    def _hold(self, br: Bridge, holder: "FlowLeg", held: bool) -> None:
        """`holder` put the call on hold (or resumed it): its peer is the held party."""
        peer = br.peer_of(holder)
        if held == (holder.id in br.holding):
            return
        if held:
            br.holding.add(holder.id)
        else:
            br.holding.discard(holder.id)
        src, dst = holder.leg.slot, peer.leg.slot
        if held:
            if src is not None and dst is not None:
                conf.suspend(src, dst)
            self._start_hold_music(br, holder, peer)
        else:
            self._stop_hold_music(br, holder.id)
            if src is not None and dst is not None:
                conf.resume(src, dst)
        log.info("%s %s the call: %s %s", holder.id, "holds" if held else "resumed", peer.id,
                 "hears hold music" if held and holder.id in br.hold_players else
                 ("is held" if held else "hears it again"))
        self.engine.tell(lambda o: o.held(holder.leg, peer.leg, held))

    def _start_hold_music(self, br: Bridge, holder: "FlowLeg", peer: "FlowLeg") -> None:
        if peer.leg.transport != "sip" or peer.leg.slot is None:
            return  # an AI leg on hold gets silence: music would only make it talk
        path = self.hold_music_path()
        if path is None:
            return
        from ..media.players import PromptPlayer

        try:
            player = PromptPlayer(self.engine.ua, path, loop=True)
        except (OSError, ValueError) as exc:
            log.error("hold music %s cannot play: %s", path, exc)
            return
        player.play_to(peer.leg.slot)
        br.hold_players[holder.id] = player

    def _stop_hold_music(self, br: Bridge, holder_id: str) -> None:
        player = br.hold_players.pop(holder_id, None)
        if player is not None:
            player.close()

    def hold_music_path(self) -> Path | None:
        """The WAV `media.hold_music` names (a tone rendered once), or None for `none`."""
        media = self.engine.ua.config.media
        if media.hold_music_off:
            return None
        setting = media.hold_music.strip()
        if setting.startswith("tone:"):
            from ..media.tones import TONE_PRESETS
            name = setting[5:].strip()
            try:
                return self.engine.media_resource.tones.cycle_file(TONE_PRESETS.get(name, name))  # type: ignore[attr-defined]
            except ValueError as exc:  # an unknown preset name
                log.error("media.hold_music %r: %s; the held party hears nothing", setting, exc)
                return None
        path = Path(setting)
        path = path if path.is_absolute() else self.engine.ua.config.directories.prompts / path
        return path if path.is_file() else None  # the default in a prompts folder without it

    def _follow_rejection(self, ended: "FlowLeg", survivor: "FlowLeg", event: LegEnded) -> None:
        """An outbound peer refused before it answered: the unanswered inbound leg is refused
        with the same code (a 487 from our own CANCEL becomes 480: the caller cancelled nothing)."""
        own = survivor.leg
        if ended.leg.direction != "outbound" or event.sip_code < 300 or own.direction != "inbound":
            return
        if own.answered or own.ended:
            return
        code = event.sip_code if 400 <= event.sip_code <= 699 and event.sip_code != 487 else 480
        log.info("%s: bridged peer %s refused (%s): refusing with %d", own.id, ended.id, event.reason, code)
        own.hangup(code, event.reason)

    # ---- DTMF relay ------------------------------------------------------------------------
    def relay_dtmf(self, source: "FlowLeg", digit: str, method: str = "rfc2833") -> str | None:
        """Send a digit received on (or sent by a flow to) `source` to its bridged peer, by the
        bridge's relay mode; with emitDtmfEvents the peer also gets a dtmf event (method
        `relay`). Returns the method used, or None (no bridge, relay disabled, or nothing worked)."""
        br = self._by_leg.get(source.id)
        if br is None or br.relay_dtmf == "disabled":
            return None
        peer = br.peer_of(source)
        used = self._send_to_peer(br, peer, digit, method)
        if br.emit_dtmf_events and peer.id in self.engine.legs:
            self.engine.deliver(peer, LegDtmf(peer.id, digit, "relay"))
        return used

    def _send_to_peer(self, br: Bridge, peer: "FlowLeg", digit: str, source_method: str) -> str | None:
        leg = peer.leg
        if leg.ended or leg.call is None:
            return None
        if br.relay_dtmf == "auto":
            methods = [m for m in ("rfc2833", "info", "inband") if m in leg.dtmf_methods or m == "inband"]
        else:
            methods = [br.relay_dtmf]
        errors = []
        for method in methods:
            if method == "inband" and source_method == "inband":
                return "inband"  # an in-band digit is audio: it crossed the bridge already
            try:
                if method == "inband":
                    self._play_inband(leg, digit)
                else:
                    leg.send_dtmf(digit, method, RELAY_DURATION_MS)
            except Exception as exc:  # pjsua2.Error (no telephone-event negotiated, …), RuntimeError
                errors.append(f"{method}: {getattr(exc, 'reason', None) or exc}")
                continue
            log.debug("DTMF %s relayed to %s by %s", digit, peer.id, method)
            return method
        log.warning("DTMF %s not relayed to %s: %s", digit, peer.id, "; ".join(errors) or "no method")
        return None

    def _play_inband(self, leg: "Leg", digit: str) -> None:
        """The digit as a tone pair played into the peer's slot (a throw-away WAV, unlinked once open)."""
        from ..media.players import PromptPlayer
        from ..media.tones import dtmf_samples, write_pcm_wav

        if leg.slot is None:
            raise RuntimeError("the peer has no audio yet")
        fd, name = tempfile.mkstemp(prefix="softswitch-dtmf-", suffix=".wav")
        os.close(fd)
        path = write_pcm_wav(Path(name), dtmf_samples(digit, duration_ms=RELAY_DURATION_MS, gap_ms=0))
        PromptPlayer(self.engine.ua, path, unlink=True).play_to(leg.slot)

    def _detach(self, br: Bridge, reason: str, ended: "FlowLeg | None" = None) -> None:
        for leg in (br.a, br.b):
            if self._by_leg.get(leg.id) is br:
                del self._by_leg[leg.id]
        for unsubscribe in br.unsubscribes:
            unsubscribe()
        for holder_id in list(br.hold_players):
            self._stop_hold_music(br, holder_id)
        br.holding.clear()
        self._split_audio(br)
        self.engine.tell(lambda o: o.unbridged(br.a.leg, br.b.leg))
        for ticket in br.tickets:
            ticket.release()
        for leg in (br.a, br.b):
            if leg is not ended:
                self._publish(leg, reason)
        log.info("bridge %s <-> %s removed: %s", br.a.id, br.b.id, reason)

    def _publish(self, leg: "FlowLeg", reason: str) -> None:
        self.engine.publish_interrupt(leg, reason)
