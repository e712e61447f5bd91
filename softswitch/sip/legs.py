"""Legs: one SIP call each, with an explicit lifecycle and typed events.

A `Leg` is what the rest of softswitch talks to. It owns a `SipCall` (the pjsua2 `Call`
subclass), keeps it referenced until the call is over, and turns pjsua2 callbacks into the
events of `events.py`. States move only through `Leg._enter`, so the lifecycle
(created → ringing → answered → ended) is in one place.
"""

from __future__ import annotations

import enum
import logging
import re
from typing import TYPE_CHECKING, Callable

import _softswitch_native as native
import pjsua2 as pj

from . import srtp
from .events import LegAnswered, LegDtmf, LegEnded, LegEvent, LegHold, LegMediaActive, LegProgress, LegRinging
from .trunks import apply_call_settings

if TYPE_CHECKING:
    from .endpoint import UserAgent

log = logging.getLogger("softswitch.leg")

_URI_USER = re.compile(r'^\s*(?:"?(?P<name>[^"<]*?)"?\s*)?<?(?P<scheme>sips?|tel):(?P<user>[^@;>]*)')


class LegStatus(enum.Enum):
    CREATED = "created"
    RINGING = "ringing"
    ANSWERED = "answered"
    QUEUED = "queued"
    CALLBACK = "callback"
    ENDED = "ended"


# Which states may follow which: anything else is a bug and is refused loudly.
_TRANSITIONS = {
    LegStatus.CREATED: {LegStatus.RINGING, LegStatus.ANSWERED, LegStatus.ENDED},
    LegStatus.RINGING: {LegStatus.ANSWERED, LegStatus.ENDED},
    LegStatus.ANSWERED: {LegStatus.QUEUED, LegStatus.ENDED},
    LegStatus.QUEUED: {LegStatus.ANSWERED, LegStatus.CALLBACK, LegStatus.ENDED},
    LegStatus.CALLBACK: {LegStatus.ENDED},
    LegStatus.ENDED: set(),
}


def parse_party(uri: str) -> tuple[str, str]:
    """(number, display name) from a From/To value such as `"Alice" <sip:1001@host>`."""
    m = _URI_USER.match(uri or "")
    if not m:
        return "", ""
    return m.group("user") or "", (m.group("name") or "").strip()


class LegBase:
    """What every leg flows act on shares, SIP or WebSocket: a status and typed events.
    Subclasses set `ua`, `status` and `_listeners`."""

    ua: "UserAgent"
    status: LegStatus
    _listeners: list[Callable[[LegEvent], None]]
    held = False  # the far end holds the call (SIP legs: see Leg._on_media_state; an AI leg never does)

    @property
    def answered(self) -> bool:
        return self.status in (LegStatus.ANSWERED, LegStatus.QUEUED)

    @property
    def ended(self) -> bool:
        return self.status is LegStatus.ENDED

    def subscribe(self, listener: Callable[[LegEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _publish(self, event: LegEvent) -> None:
        self.ua.leg_event(self, event)
        for listener in list(self._listeners):
            self.ua.guard(f"listener of {type(event).__name__}", listener, event)


class Leg(LegBase):
    transport = "sip"

    def __init__(self, ua: "UserAgent", call: "SipCall", direction: str) -> None:
        self.ua = ua
        self.id = ua.new_leg_id()
        self.direction = direction
        self.call = call
        self.status = LegStatus.CREATED
        self.slot: int | None = None
        # The bridge table's record of this leg's connections while it has no port (a=inactive).
        self._wiring = None
        # Held by the far end (it sent a=sendonly or a=inactive): see LegHold.
        self.held = False
        self.end_reason: str | None = None
        self._pending_end_reason: str | None = None
        self._listeners: list[Callable[[LegEvent], None]] = []
        self.call_id = ""
        self.remote_uri = ""
        self.local_uri = ""
        self.admission = None  # registrar.Admission: which trunk or extension an inbound call came from
        # DTMF methods allowed on this call (trunk/dial options); pjsua2 cannot restrict them per call,
        # so the nodes that send or accept DTMF read them here.
        self.dtmf_methods: tuple[str, ...] = ("rfc2833", "info")
        # Early media: 183 sent (inbound; after a 180 too) or received (outbound) before the answer.
        self.early = False
        # Inside pjsua2's on_incoming_call for this call (see hangup).
        self.offering = False
        call.leg = self

    # ---- facts --------------------------------------------------------------------------
    @property
    def caller_number(self) -> str:
        return parse_party(self.remote_uri if self.direction == "inbound" else self.local_uri)[0]

    # ---- events -------------------------------------------------------------------------
    def _enter(self, status: LegStatus) -> bool:
        if status is self.status:
            return False
        if status not in _TRANSITIONS[self.status]:
            log.warning("leg %s: ignoring transition %s -> %s", self.id, self.status.value, status.value)
            return False
        self.status = status
        return True

    # ---- actions (UA thread) ------------------------------------------------------------
    def ringing(self) -> None:
        if self.status is LegStatus.CREATED and self.direction == "inbound":
            self.call.answer(_op(180))
            self._enter(LegStatus.RINGING)
            self._publish(LegRinging(self.id))

    def early_media(self) -> None:
        """183 Session Progress with SDP, so media can play to an unanswered inbound leg.
        Not once our 200 is sent: the leg stays CREATED until the ACK, but pjsua refuses a 183 then."""
        if (self.status in (LegStatus.CREATED, LegStatus.RINGING) and self.direction == "inbound"
                and not self.early and self.call.getInfo().state < pj.PJSIP_INV_STATE_CONNECTING):
            self.call.answer(_op(183))
            self.early = True  # once: a 183 after a 183 is noise (and a bridge may ask again)

    def set_queued(self, queued: bool) -> bool:
        """Queue placement (§3.2): an answered leg becomes queued, and answered again when its
        live queue entry ends (taken, offline). Returns whether the status changed."""
        if queued:
            return self.status is LegStatus.ANSWERED and self._enter(LegStatus.QUEUED)
        return self.status is LegStatus.QUEUED and self._enter(LegStatus.ANSWERED)

    def answer(self) -> None:
        if self.direction != "inbound" or self.answered or self.ended:
            return
        try:
            state = self.call.getInfo().state
        except pj.Error as exc:  # no session left; its end reaches the leg through the callback
            log.warning("leg %s: cannot answer: %s", self.id, exc.reason or exc.info())
            return
        if state >= pj.PJSIP_INV_STATE_CONNECTING:
            return  # our 200 is sent already (the leg is ANSWERED at the ACK); a second one is refused
        try:
            self.call.answer(_op(200))
        except pj.Error as exc:
            # An offer pjsua cannot answer (no usable media, e.g. only an IPv6 address): it has
            # answered 488 itself; the leg ends with that, not with a traceback in the flow.
            log.warning("leg %s: the offer cannot be answered (%s); refusing it", self.id, exc.reason or exc.info())
            self.hangup(488, "answer_failed")

    def hangup(self, code: int = 200, reason: str = "hangup") -> None:
        if self.ended:
            return
        if self.offering:
            # pjsua2 frees the INVITE it cloned once onIncomingCall returns; a call refused inside
            # the callback may have freed it already, and pjsua2 then aborts the process
            # (pjsip_rx_data_free_cloned assertion; seen with INVITEs without SDP). Refuse next turn.
            self.ua.call_soon(lambda: self.hangup(code, reason))
            return
        self._pending_end_reason = reason
        try:
            self.call.hangup(_op(code if not self.answered else 200))
        except pj.Error as exc:
            log.debug("leg %s: hangup: %s", self.id, exc.info())

    def send_dtmf(self, digits: str, method: str = "rfc2833", duration_ms: int = 160) -> None:
        """Send digits as RFC 2833 events or SIP INFO (in-band digits are audio: see media/)."""
        if self.ended or self.call is None:
            raise RuntimeError(f"leg {self.id} has ended")
        if method not in _DTMF_SEND:
            raise ValueError(f"DTMF method {method!r} is not rfc2833 or info")
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = _DTMF_SEND[method]
        prm.duration = duration_ms
        self.call.sendDtmf(prm)

    def destroy(self) -> None:
        """Last resort at shutdown: drop the pjsua2 call object."""
        if self.call is not None:
            self.call.leg = None
        self.call = None  # type: ignore[assignment]

    # ---- pjsua2 callbacks, forwarded by SipCall (UA thread) ----------------------------
    def _on_state(self, ci: "pj.CallInfo") -> None:
        self.call_id = ci.callIdString
        self.remote_uri = ci.remoteUri
        self.local_uri = ci.localUri
        state = ci.state
        if state == pj.PJSIP_INV_STATE_EARLY:
            if self.direction == "outbound":
                if ci.lastStatusCode == 183:
                    self.early = True
                    self._publish(LegProgress(self.id))
                elif self._enter(LegStatus.RINGING):
                    self._publish(LegRinging(self.id))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            if self._enter(LegStatus.ANSWERED):
                self._publish(LegAnswered(self.id))
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            code = int(ci.lastStatusCode)
            reason = self._pending_end_reason or self._ended_by(code)
            self.end_reason = reason
            if self.slot is not None and self.ua.bridge is not None:
                self.ua.bridge.forget(self.slot)  # pjsua removed the port; its number is free
            self.slot = None
            self._wiring = None
            if self._enter(LegStatus.ENDED):
                self._publish(LegEnded(self.id, reason, code))
            self.ua.call_soon(self._forget)

    def _ended_by(self, code: int) -> str:
        """The end reason of a call softswitch did not hang up itself, from pjsua's last status.

        An answered call that pjsua ended with 408 lost its session: with RFC 4028 timers on,
        either no refresh came before Session-Expires (pjsua sends BYE) or our refresh got no
        answer; both say the peer is gone, which the call record tells apart from a hang-up."""
        if self.answered and code == 408 and self.ua.config.sip.session_timers != "off":
            return "session_expired"
        return "remote_hangup" if code < 300 or self.answered else f"sip_{code}"

    def _forget(self) -> None:
        """Drop the ended leg from the loop (not inside its callback; its pjsua2 Call is
        already destroyed, see SipCall.release)."""
        self.ua.legs.pop(self.id, None)
        self._listeners.clear()

    def _on_media_state(self) -> None:
        """Every media update (the answer, hold, resume, a codec change, a new RTP address,
        pjsua's own codec-lock UPDATE, a re-INVITE with the same SDP) lands here. pjsua may have
        rebuilt the stream as a new bridge port, with the same slot number or another, and the
        old port's connections are gone either way: the UA's bridge table makes them again
        for the port now there, so bridges, players, recorder taps and frame ports of this leg
        stay exactly as the flow set them."""
        ci = self.call.getInfo()
        slot: int | None = None
        held = False
        for mi in ci.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if mi.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                # The far end holds us when we may not send: a=sendonly (REMOTE_HOLD) or a=inactive
                # (pjsua reports that ACTIVE with no direction, and has no stream at all).
                held = mi.status == pj.PJSUA_CALL_MEDIA_REMOTE_HOLD or mi.dir == pj.PJMEDIA_DIR_NONE
                try:
                    port = self.call.getAudioMedia(mi.index).getPortId()
                    slot = port if port >= 0 else None
                except pj.Error:  # active per the SDP but no bridge port (a=inactive): no audio now
                    slot = None
            break
        self._rewire(slot)
        if held != self.held:
            self.held = held
            log.info("%s: %s by the far end", self.id, "held" if held else "resumed")
            self._publish(LegHold(self.id, held))

    def _rewire(self, slot: int | None) -> None:
        table = self.ua.bridge
        previous = self.slot
        if slot is None:
            if previous is not None and table is not None:
                self._wiring = table.detach(previous)  # kept until a port is back
            self.slot = None
            return
        if table is not None:
            if self._wiring is not None:
                table.attach(self._wiring, slot)
                self._wiring = None
            elif previous is not None:
                table.move(previous, slot)  # the same slot: reapplied
        if slot != previous:
            self.slot = slot
            self._publish(LegMediaActive(self.id, slot))

    def _on_dtmf(self, digit: str, method: str) -> None:
        self._publish(LegDtmf(self.id, digit, method))


# RFC 3551's static payload types of the codecs softswitch can carry.
_STATIC_PAYLOADS = {"0": "PCMU", "8": "PCMA", "9": "G722"}


def usable_audio(sdp: str, allowed: set[str]) -> bool:
    """Whether an SDP offers no audio at all (or only disabled streams, port 0), or audio in at
    least one of the `allowed` codec names (upper case)."""
    offered = False
    for block in re.split(r"\r?\n(?=m=)", sdp):
        m = re.match(r"m=audio\s+(\d+)\s+\S+\s*(.*)", block)
        if not m or m.group(1) == "0":
            continue
        offered = True
        names = {pt: _STATIC_PAYLOADS.get(pt, "") for pt in m.group(2).split()}
        for pt, name in re.findall(r"a=rtpmap:(\d+)\s+([^/\s]+)", block):
            names[pt] = name.upper()
        if any(name in allowed for name in names.values()):
            return True
    return not offered


def _op(code: int) -> "pj.CallOpParam":
    prm = pj.CallOpParam()
    prm.statusCode = code
    return prm


_DTMF_METHODS = {0: "rfc2833", 1: "info"}
_DTMF_SEND = {"rfc2833": pj.PJSUA_DTMF_METHOD_RFC2833, "info": pj.PJSUA_DTMF_METHOD_SIP_INFO}


class SipCall(pj.Call):
    """The pjsua2 side of a leg: every callback is guarded and forwarded to the Leg."""

    def __init__(self, ua: "UserAgent", account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.ua = ua
        self.leg: Leg | None = None

    def onCallState(self, prm) -> None:
        try:
            ci = self.getInfo()
        except pj.Error:
            # A call that failed inside makeCall is reported here with no session left;
            # makeCall raises, and the dialer releases the call.
            return
        if self.leg is not None:
            self.ua.guard("onCallState", self.leg._on_state, ci)
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.release()

    def release(self) -> None:
        """Destroy the C++ call now, while pjsua's call slot is still this call's or free.

        pjsua2's Call destructor clears the user data of, and hangs up, whichever call holds
        its slot number *when it runs*, and pjsua gives a freed slot to the next call at once
        (often the very next INVITE). Destroyed a loop turn later, or whenever Python dropped
        the last reference, an ended leg's Call declined a new caller with 603 and detached it
        from its leg, which then never ended. Inside the DISCONNECTED callback (pjsua2 allows
        deleting the call there) or after a failed makeCall, the destructor touches nothing
        else. The Python object stays, empty: nothing may call it again."""
        leg, self.leg = self.leg, None
        if leg is not None and leg.call is self:
            leg.call = None  # type: ignore[assignment]
        if self.thisown:
            pj.Call.__swig_destroy__(self)

    def onCallMediaState(self, prm) -> None:
        if self.leg is not None:
            self.ua.guard("onCallMediaState", self.leg._on_media_state)

    def onCallRxOffer(self, prm) -> None:
        """A re-INVITE or UPDATE offer in a live call. One with audio in no codec softswitch
        allows is refused with 488 (RFC 3261 §13.3.1.1): pjsua would answer 500 and log an
        error. The call then carries on with the media it had."""
        self.ua.guard("onCallRxOffer", self._check_offer, prm)

    def _check_offer(self, prm) -> None:
        allowed = {c.upper() for c in self.ua.config.media.codecs} - {"TELEPHONE-EVENT"}
        if not usable_audio(prm.offer.wholeSdp, allowed):
            log.warning("%s: re-offer with no usable audio codec (allowed: %s): 488",
                        self.leg.id if self.leg else "call", ", ".join(sorted(allowed)))
            prm.statusCode = 488

    def onDtmfDigit(self, prm) -> None:
        if self.leg is not None:
            self.ua.guard("onDtmfDigit", self.leg._on_dtmf, prm.digit,
                          _DTMF_METHODS.get(int(getattr(prm, "method", 0)), "rfc2833"))

    # No onDtmfEvent: where pjsua2 has it (this build, pjproject >= 2.13) it fires for every RTP
    # event packet (start, each update, end) and pjsua2 then calls onDtmfDigit once per digit,
    # with the method (RFC 2833 or SIP INFO application/dtmf-relay). Forwarding both repeated
    # each RFC 2833 digit about eight times.


class LocalAccount(pj.Account):
    """The account that receives every inbound INVITE (no registration of its own)."""

    def __init__(self, ua: "UserAgent") -> None:
        super().__init__()
        self.ua = ua
        cfg = ua.config.sip
        public = cfg.advertised_address or cfg.listen_address
        port = cfg.udp_port or cfg.tcp_port
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:softswitch@{public}:{port}"
        tc = acfg.mediaConfig.transportConfig
        tc.port = cfg.rtp_port_start
        tc.portRange = cfg.rtp_port_count
        tc.boundAddress = cfg.listen_address
        tc.publicAddress = public
        apply_call_settings(acfg, cfg)
        # Every inbound call arrives here: optional SRTP when any source may use it; the gate
        # applies each trunk's and extension set's own use to the offer (sip/srtp.py).
        self.srtp_use = srtp.OPTIONAL if srtp.inbound_srtp(ua.config) else srtp.DISABLED
        srtp.apply(acfg.mediaConfig, self.srtp_use)
        self.create(acfg, True)

    def onIncomingCall(self, prm) -> None:
        self.ua.guard("onIncomingCall", self._incoming, prm.callId)

    def _incoming(self, call_id: int) -> None:
        native.rtp_cursor_leave(self.getId())  # outbound calls continue after this call's RTP ports
        call = SipCall(self.ua, self, call_id)
        leg = Leg(self.ua, call, "inbound")
        leg.offering = True
        try:
            self._offered(leg)
        finally:
            leg.offering = False

    def _offered(self, leg: Leg) -> None:
        call = leg.call
        ci = call.getInfo()
        leg.call_id, leg.remote_uri, leg.local_uri = ci.callIdString, ci.remoteUri, ci.localUri
        self.ua.legs[leg.id] = leg
        leg.admission = self.ua.registrar.take_admission(leg.call_id) if self.ua.registrar else None
        self.ua.leg_created(leg)
        if leg.admission is None:
            # The gate passes only INVITEs it classified; anything else is refused, never routed.
            log.warning("%s: INVITE from %s was not admitted by the gate; refusing", leg.id, leg.remote_uri)
            leg.hangup(403, "not_admitted")
            return
        log.info("%s: INVITE from %s via %s %s (%d live legs)", leg.id, leg.remote_uri, leg.admission.kind,
                 leg.admission.ref, len(self.ua.legs))
        if leg.admission.kind == "extension" and leg.admission.extension and self.ua.extensions:
            # An extension originating a call is busy until it ends (queues re-evaluate).
            self.ua.extensions.track_leg(leg, leg.admission.extension)
        handler = self.ua.handler
        if handler is None:
            leg.hangup(480, "no_handler")
            return
        handler.on_incoming_leg(leg)
