"""Transfers an agent phone asks for (REFER): softswitch, a B2BUA, moves the agent's bridged peer.

Blind (Refer-To a number): the target is resolved in this order (README "Transfer"):
1. an extension of `extension_users`: its registered phones are dialled;
2. a flow: the agent's extensions trigger has a Call branch: the transferred party is handed to
   a new execution of it, like a call the agent dialled to that number (`transfer` in the item);
3. a trunk: the transferred caller's own trunk, when it can dial out;
otherwise NOTIFY 404. While the target rings, the caller stays bridged to the agent (who may have
put it on hold); when the target answers, the caller is bridged to it and the agent's leg ends.
Attended (Refer-To with Replaces naming the agent's consultation call): the caller is bridged at
once to that call's far end, and both agent legs end; no new INVITE.

Every step is told to the referrer as a NOTIFY sipfrag (100 by the native side, 180/183, then 200
or the failure code). From the 202 on, the transfer owns the legs: the flow waits that watched
them (a flow's "whoever hangs up first, hang up the other") end without an outcome, so an agent
phone that hangs up right after its REFER does not take the caller with it; the transfer itself
hangs up the pair together instead: caller and target once transferred, caller and agent when the
transfer failed (the bridge between them was never touched: the call is as it was).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..sip.events import LegEnded, LegEvent, LegProgress, LegRinging, TransferRequested
from ..sip.legs import parse_party
from ..sip.transfer import ACCEPTED, PENDING, REFUSED, Referral

if TYPE_CHECKING:
    from ..clock import TimerHandle
    from ..sip.legs import Leg
    from .dial import Dial, DialFinalized
    from .retention import RetentionTicket
    from .runtime import FlowEngine, FlowLeg

log = logging.getLogger("softswitch.flow.transfer")

RING_TIMEOUT_S = 30.0  # a blind target that has not answered by then: NOTIFY 408, nothing changes


class TransferKind(enum.Enum):
    BLIND = "blind"
    ATTENDED = "attended"


class TransferRoute(enum.Enum):
    EXTENSION = "extension"
    TRUNK = "trunk"
    FLOW = "flow"
    REPLACES = "replaces"


class TransferResult(enum.Enum):
    PENDING = "pending"
    TRANSFERRED = "transferred"  # the caller talks to the target (or the flow has it)
    FAILED = "failed"  # the target could not be reached: the call is as it was
    CALLER_GONE = "caller_hung_up"  # the transferred party hung up during the transfer


@dataclass(eq=False)
class Transfer:
    """One transfer, for the flow observers (call records)."""

    id: str
    kind: TransferKind
    agent: "FlowLeg"
    caller: "FlowLeg"
    target: str  # the number (blind) or the replaced dialog's leg (attended)
    referral: Referral
    referred_by: str = ""
    agent_extension: str | None = None
    route: TransferRoute | None = None
    target_leg: str | None = None
    consult_leg: str | None = None  # attended: the agent's consultation leg
    dial: "Dial | None" = None
    result: TransferResult = TransferResult.PENDING
    sip_code: int | None = None
    reason: str | None = None
    started: float = 0.0
    ended: float | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    timer: "TimerHandle | None" = None
    ticket: "RetentionTicket | None" = None

    @property
    def done(self) -> bool:
        return self.result is not TransferResult.PENDING


class FlowTransfers:
    """The transfers of one FlowEngine (UA thread only); `on_transfer` is the REFER decision."""

    def __init__(self, engine: "FlowEngine") -> None:
        self.engine = engine
        self.live: dict[str, Transfer] = {}  # agent leg id -> its transfer in progress
        # Pairs hung up together (after a transfer): frozenset of two leg ids -> unsubscribe
        self.pairs: dict[frozenset[str], Callable[[], None]] = {}

    # ---- the REFER (inside pjsip's transaction: decide, then work on the next loop turn) ----
    def on_transfer(self, leg: "Leg", request: TransferRequested, referral: Referral) -> int:
        engine = self.engine
        agent = engine.legs.get(leg.id)
        bridge = engine.bridges.of(leg.id)
        extension = self._extension_of(leg)
        if extension is None:
            # Only agent phones transfer: a trunk's REFER must not make softswitch dial for it.
            log.info("%s: REFER refused: the leg is no extension's (only agent phones transfer)", leg.id)
            return REFUSED
        if agent is None or bridge is None:
            log.info("%s: REFER refused: the leg is not bridged", leg.id)
            return REFUSED
        caller = bridge.peer_of(agent)
        if caller.leg.ended or not leg.answered:
            log.info("%s: REFER refused: no answered call with a live peer", leg.id)
            return REFUSED
        if leg.id in self.live:
            return PENDING
        kind = TransferKind.ATTENDED if request.replaces is not None else TransferKind.BLIND
        transfer = Transfer(engine.ua.ids.new("transfer"), kind, agent, caller,
                            request.target if kind is TransferKind.BLIND else "", referral,
                            referred_by=request.referred_by, agent_extension=extension,
                            started=engine.ua.clock.now())
        self.live[leg.id] = transfer
        engine.ua.call_soon(self._start, transfer, request)
        return ACCEPTED

    def _start(self, t: Transfer, request: TransferRequested) -> None:
        self.engine.tell(lambda o: o.transfer_started(t))
        if t.caller.leg.ended:
            self._finish(t, TransferResult.CALLER_GONE, 487, "caller_hung_up")
            return
        # The agent may hang up once it has the 202: the caller must not go with it.
        self.engine.abandon_waits([t.caller, t.agent], f"transfer {t.id}")
        self._unpair(t.caller, t.agent)  # a pair from an earlier transfer: this one decides now
        t.cleanups.append(t.caller.leg.subscribe(lambda e: self._caller_event(t, e)))
        if t.kind is TransferKind.ATTENDED:
            self._attended(t, request)
        else:
            self._blind(t)

    # ---- blind -------------------------------------------------------------------------------
    def _blind(self, t: Transfer) -> None:
        from ..sip.dialer import DialError

        engine, target = self.engine, t.target
        if not target:
            self._fail(t, 404, "no_target")
            return
        caller_number, caller_name = parse_party(t.caller.leg.remote_uri if t.caller.leg.direction == "inbound"
                                                 else t.caller.leg.local_uri)
        try:
            if self._is_extension(target):
                t.route = TransferRoute.EXTENSION
                dial = engine.dials.start_extension_dial(  # type: ignore[attr-defined]
                    [target], only_free=False, caller_number=caller_number or None, caller_name=caller_name or None)
                if dial is None:
                    self._fail(t, 480, "extension_offline")
                    return
            elif (found := engine.transfer_trigger(self._group_of(t))) is not None:
                t.route = TransferRoute.FLOW
                self._to_flow(t, *found)
                return
            elif (trunk := self._caller_trunk(t)) is not None:
                t.route = TransferRoute.TRUNK
                dial = engine.dials.start_trunk_dial(trunk, [target])  # type: ignore[attr-defined]
            else:
                self._fail(t, 404, "unknown_target")
                return
        except DialError as exc:
            log.warning("%s: transfer %s to %s not dialled: %s", t.agent.id, t.id, target, exc)
            self._fail(t, 404 if t.route is TransferRoute.TRUNK else 503, "dial_error")
            return
        t.dial = dial
        if not dial.finalized:  # (one whose attempt failed inside makeCall is over already)
            t.ticket = dial.retention.acquire(f"transfer:{t.id}")
        engine.tell(lambda o: o.transfer_dial_started(t, dial))
        for attempt in list(dial.attempts.values()):
            t.cleanups.append(attempt.subscribe(lambda e: self._attempt_event(t, e)))
        t.timer = engine.ua.timers.schedule(RING_TIMEOUT_S, lambda: self._ring_timeout(t), f"transfer:{t.id}")
        dial.on_finalized(lambda f: self._dial_finalized(t, f))

    def _attempt_event(self, t: Transfer, event: LegEvent) -> None:
        if t.done:
            return
        if isinstance(event, LegRinging):
            t.referral.progress(180)
        elif isinstance(event, LegProgress):
            t.referral.progress(183)

    def _ring_timeout(self, t: Transfer) -> None:
        t.timer = None
        if not t.done and t.dial is not None:
            t.dial.cancel("timeout")

    def _dial_finalized(self, t: Transfer, final: "DialFinalized") -> None:
        if t.done:
            if final.status == "answered" and final.winner_leg_id:  # answered as the caller left
                winner = self.engine.legs.get(final.winner_leg_id)
                if winner is not None:
                    winner.leg.hangup(200, "transfer_cancelled")
            return
        if final.status != "answered" or not final.winner_leg_id:
            reason = final.reason or "failed"
            self._fail(t, _failure_code(reason), reason)
            return
        target = self.engine.legs.get(final.winner_leg_id)
        if target is None:
            self._fail(t, 500, "target_gone")
            return
        t.target_leg = target.id
        self._join(t, target, leaving=[t.agent])

    # ---- to a flow ---------------------------------------------------------------------------
    def _to_flow(self, t: Transfer, flow, trigger) -> None:
        """The caller leaves the agent's bridge and its old flow, and starts the agent's
        extensions trigger like a call the agent dialled to the target number."""
        engine = self.engine
        engine.bridges.unbridge(t.caller)
        t.caller.queue.discard(lambda _e: True)  # the bridge's interrupts are the old flow's
        t.target_leg = None
        self._finish(t, TransferResult.TRANSFERRED, 200, None)
        t.agent.leg.hangup(200, "transferred")
        engine.start_transferred_call(t.caller.leg, flow, trigger, {
            "calledNumber": t.target, "callerNumber": t.agent_extension or "", "extension": t.agent_extension,
            "transfer": {"id": t.id, "kind": t.kind.value, "fromLegId": t.agent.id, "referredBy": t.referred_by}})

    # ---- attended ----------------------------------------------------------------------------
    def _attended(self, t: Transfer, request: TransferRequested) -> None:
        engine = self.engine
        replaces = request.replaces
        referrals = engine.ua.referrals
        consult = referrals.leg_of_dialog(replaces) if referrals is not None and replaces else None
        if consult is None and replaces is not None:  # tags in the other order or not given
            consult = next((leg for leg in engine.ua.legs.values()
                            if getattr(leg, "call_id", None) == replaces.call_id), None)
        consult_fl = engine.legs.get(consult.id) if consult is not None else None
        if consult_fl is None or consult_fl is t.agent or consult_fl is t.caller:
            self._fail(t, 481, "replaced_dialog_not_found")  # RFC 3891 3: no such dialog
            return
        t.consult_leg = consult_fl.id
        bridge = engine.bridges.of(consult_fl.id)
        if bridge is None or bridge.peer_of(consult_fl).leg.ended:
            self._fail(t, 503, "consultation_not_bridged")
            return
        target = bridge.peer_of(consult_fl)
        if target is t.caller:
            self._fail(t, 503, "consultation_is_the_caller")
            return
        t.target_leg = target.id
        t.target = _number(target.leg)
        t.route = TransferRoute.REPLACES
        engine.abandon_waits([consult_fl, target], f"transfer {t.id}")
        self._join(t, target, leaving=[t.agent, consult_fl])

    # ---- outcomes ----------------------------------------------------------------------------
    def _join(self, t: Transfer, target: "FlowLeg", leaving: list["FlowLeg"]) -> None:
        self._unpair(target)
        self.engine.bridges.bridge(t.caller, target)
        self._pair(t.caller, target)
        self._finish(t, TransferResult.TRANSFERRED, 200, None)
        for leg in leaving:
            leg.leg.hangup(200, "transferred")
        log.info("transfer %s: %s now talks to %s (%s %s)", t.id, t.caller.id, target.id, t.kind.value,
                 t.route.value if t.route else "")

    def _fail(self, t: Transfer, code: int, reason: str) -> None:
        """Nothing changes: the caller stays bridged to the agent, the two hung up together. An
        agent that left during the transfer leaves a caller with nobody: it is hung up."""
        if t.agent.leg.ended:
            if not t.caller.leg.ended:
                t.caller.leg.hangup(200, "transfer_failed")
        else:
            self._pair(t.caller, t.agent)
        self._finish(t, TransferResult.FAILED, code, reason)
        log.info("transfer %s of %s to %s failed: %d %s", t.id, t.caller.id, t.target or "?", code, reason)

    def _caller_event(self, t: Transfer, event: LegEvent) -> None:
        if isinstance(event, LegEnded) and not t.done:
            if t.dial is not None:
                t.dial.cancel("caller_hung_up")
            if not t.agent.leg.ended:
                t.agent.leg.hangup(200, "transfer_peer_ended")
            self._finish(t, TransferResult.CALLER_GONE, 487, "caller_hung_up")

    def _finish(self, t: Transfer, result: TransferResult, code: int, reason: str | None) -> None:
        if t.done:
            return
        t.result, t.sip_code, t.reason = result, code, reason
        t.ended = self.engine.ua.clock.now()
        if self.live.get(t.agent.id) is t:
            del self.live[t.agent.id]
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None
        if t.ticket is not None:
            t.ticket.release()
            t.ticket = None
        for cleanup in t.cleanups:
            cleanup()
        t.cleanups.clear()
        t.referral.finish(code)
        self.engine.tell(lambda o: o.transfer_finished(t))

    # ---- helpers -----------------------------------------------------------------------------
    def _pair(self, a: "FlowLeg", b: "FlowLeg") -> None:
        """Whoever of the two hangs up first, the other is hung up too."""
        key = frozenset((a.id, b.id))

        def on_event(other: "FlowLeg", event: LegEvent) -> None:
            if isinstance(event, LegEnded):
                self._unpair_key(key)
                if not other.leg.ended:
                    other.leg.hangup(200, "transfer_peer_ended")

        self._unpair_key(key)
        offs = [a.leg.subscribe(lambda e: on_event(b, e)), b.leg.subscribe(lambda e: on_event(a, e))]
        self.pairs[key] = lambda: [off() for off in offs]

    def _unpair(self, *legs: "FlowLeg") -> None:
        for key in [k for k in self.pairs if any(leg.id in k for leg in legs)]:
            self._unpair_key(key)

    def _unpair_key(self, key: frozenset[str]) -> None:
        off = self.pairs.pop(key, None)
        if off is not None:
            off()

    def _extension_of(self, leg: "Leg") -> str | None:
        admission = getattr(leg, "admission", None)
        if leg.direction == "inbound" and admission is not None and admission.kind == "extension":
            return admission.extension
        dialer = self.engine.ua.dialer
        target = dialer.target_of(leg.id) if dialer is not None else None
        return target.ref if target is not None and target.kind == "extension" else None

    def _group_of(self, t: Transfer) -> str | None:
        admission = getattr(t.agent.leg, "admission", None)
        if admission is not None and admission.kind == "extension" and admission.group:
            return admission.group
        ext = t.agent_extension
        for group, users in self.engine.ua.config.extension_users.items():
            if any(u.extension == ext for u in users):
                return group
        return None

    def _is_extension(self, number: str) -> bool:
        return any(u.extension == number for users in self.engine.ua.config.extension_users.values()
                   for u in users)

    def _caller_trunk(self, t: Transfer) -> str | None:
        admission = getattr(t.caller.leg, "admission", None)
        if admission is None or admission.kind != "trunk":
            return None
        trunk = self.engine.ua.config.trunks.get(admission.ref)
        if trunk is None or (trunk.mode == "fixed" and trunk.connection is None):
            return None
        return admission.ref


def _failure_code(reason: str) -> int:
    """The sipfrag status of a failed dial: the target's own code, else what the failure means."""
    if reason.startswith("sip_") and reason[4:].isdigit():
        code = int(reason[4:])
        return code if 300 <= code <= 699 else 480
    return {"timeout": 408, "caller_hung_up": 487}.get(reason, 480)


def _number(leg: "Leg") -> str:
    return parse_party(leg.remote_uri)[0]
