"""Bridges between flow legs (reference §5.6): audio joined both ways on the conference bridge,
both legs retained, interrupts published, DTMF relayed, and the survivor told when its peer ends.

A leg is in at most one bridge. Bridging finalizes all media on both legs first
(`call_bridge_joined`); bridging a leg that is bridged elsewhere detaches the old pair
(`call_bridge_removed_rebridge`); `unbridge` publishes `call_bridge_removed_unbridge` on both;
a peer's hang-up publishes `call_bridge_removed_peer_ended` on the survivor, which is not hung up
but loses the bridge's retention (the free-TTL then applies unless something else holds it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..media import bridge as conf
from ..sip.events import LegAnswered, LegDtmf, LegEnded, LegEvent, LegMediaActive, LegRinging

if TYPE_CHECKING:
    from .retention import RetentionTicket
    from .runtime import FlowEngine, FlowLeg

log = logging.getLogger("softswitch.flow.bridge")


@dataclass
class Bridge:
    a: "FlowLeg"
    b: "FlowLeg"
    relay_dtmf: str = "auto"  # disabled | auto | rfc2833 | info | inband
    emit_dtmf_events: bool = True
    tickets: list["RetentionTicket"] = field(default_factory=list)
    joined_slots: tuple[int, int] | None = None
    unsubscribes: list[Callable[[], None]] = field(default_factory=list)

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
        self._join_audio(br)
        self._follow_answer(br)
        self._publish(a, "call_bridge_joined")
        self._publish(b, "call_bridge_joined")
        log.info("bridged %s <-> %s", a.id, b.id)

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

    def _follow_answer(self, br: Bridge) -> None:
        """An unanswered inbound leg follows its bridged peer: answered when the peer is."""
        for leg in (br.a, br.b):
            peer = br.peer_of(leg)
            if leg.leg.direction == "inbound" and not leg.leg.answered and peer.leg.answered:
                leg.leg.answer()

    def _on_event(self, br: Bridge, leg: "FlowLeg", event: LegEvent) -> None:
        if self._by_leg.get(leg.id) is not br:
            return
        peer = br.peer_of(leg)
        if isinstance(event, LegMediaActive):
            if br.joined_slots is not None and event.slot not in br.joined_slots:
                self._split_audio(br)  # the slot changed (re-INVITE): join again
            self._join_audio(br)
        elif isinstance(event, LegAnswered):
            self._follow_answer(br)
        elif isinstance(event, LegRinging):
            if peer.leg.direction == "inbound" and not peer.leg.answered:
                peer.leg.ringing()
        elif isinstance(event, LegDtmf) and br.relay_dtmf != "disabled" and event.method != "relay":
            self._relay(peer, event)
            if br.emit_dtmf_events:
                self.engine.deliver(peer, LegDtmf(peer.id, event.digit, "relay"))
        elif isinstance(event, LegEnded):
            self._detach(br, "call_bridge_removed_peer_ended", ended=leg)

    def _relay(self, peer: "FlowLeg", event: LegDtmf) -> None:
        if peer.leg.ended or peer.leg.call is None:
            return
        try:
            peer.leg.call.dialDtmf(event.digit)  # RFC 2833 towards the peer
        except Exception as exc:  # pjsua2.Error: the peer has no RFC 2833; nothing else to try yet
            log.debug("DTMF relay to %s failed: %s", peer.id, exc)

    def _detach(self, br: Bridge, reason: str, ended: "FlowLeg | None" = None) -> None:
        for leg in (br.a, br.b):
            if self._by_leg.get(leg.id) is br:
                del self._by_leg[leg.id]
        for unsubscribe in br.unsubscribes:
            unsubscribe()
        self._split_audio(br)
        for ticket in br.tickets:
            ticket.release()
        for leg in (br.a, br.b):
            if leg is not ended:
                self._publish(leg, reason)
        log.info("bridge %s <-> %s removed: %s", br.a.id, br.b.id, reason)

    def _publish(self, leg: "FlowLeg", reason: str) -> None:
        self.engine.publish_interrupt(leg, reason)
