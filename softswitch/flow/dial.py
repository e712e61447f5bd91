"""Dial nodes: dial.make, dial.wait, dial.break (reference §2.3 "Resource Dial", §4).

A `Dial` is one outbound call attempt set: its attempt legs (outbound `Leg`s, tracked as flow
legs), a bounded queue (64) of dial events (`ringing`, `progress`, `rejected`, `answered`,
`failed`), a Retention (free-TTL: finalize failed/free_ttl) and, once finalized, a 5 s terminal
snapshot (the Dial itself, so queued events stay visible to a late dial.wait).

First answer wins: the winner gets a `dial-winner:<dialId>` ticket (held until it ends), the other
attempts are hung up (`parallel_loser`) and the dial is finalized answered. While the dial is not
finalized it holds a `dial:<dialId>` ticket on each attempt, so ringing attempts are not hung up by
their free-TTL. Only the parallel strategy is implemented; sequential and websocket are NodeFailed.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..sip.events import LegAnswered, LegDtmf, LegEnded, LegEvent, LegProgress, LegRinging
from .engine import Activation, NodeFailed
from .items import resolve_dial_id, resolve_wait_ids
from .retention import DIAL_EVENT_QUEUE_LEN, EventQueue, Retention, RetentionTicket, TerminalSnapshots

if TYPE_CHECKING:
    from ..sip.legs import Leg
    from .runtime import FlowEngine, FlowLeg

log = logging.getLogger("softswitch.flow")

_wait_ids = itertools.count(1)

FINAL = ("answered", "rejected", "failed", "timeout")


# ---- dial events ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DialEvent:
    dial_id: str
    leg_id: str | None
    kind = "event"


@dataclass(frozen=True)
class DialRinging(DialEvent):
    kind = "ringing"


@dataclass(frozen=True)
class DialProgress(DialEvent):
    kind = "progress"


@dataclass(frozen=True)
class DialRejected(DialEvent):
    reason: str = "rejected"
    kind = "rejected"


@dataclass(frozen=True)
class DialAnswered(DialEvent):
    kind = "answered"


@dataclass(frozen=True)
class DialFailed(DialEvent):
    reason: str = "failed"
    kind = "failed"


# ---- the dial -------------------------------------------------------------------------------
class Dial:
    def __init__(self, engine: "FlowEngine") -> None:
        self.engine = engine
        self.id = engine.ua.ids.new("dial")
        self.status = "created"
        self.attempts: dict[str, "Leg"] = {}
        self.ended_ids: set[str] = set()
        self.queue: EventQueue[DialEvent] = EventQueue(DIAL_EVENT_QUEUE_LEN)
        self.retention = Retention(self.id, engine.ua.timers, self._free_ttl_expired)
        self.waits: list["DialWait"] = []
        self.winner: str | None = None
        self.reason: str | None = None
        self.last_reason: str | None = None
        self.placing = True
        self._holds: dict[str, RetentionTicket] = {}

    @property
    def finalized(self) -> bool:
        return self.status in FINAL

    @property
    def still_dialing(self) -> int:
        return sum(1 for leg_id, leg in self.attempts.items()
                   if leg_id != self.winner and leg_id not in self.ended_ids and not leg.ended)

    # -- attempts --
    def add_attempt(self, leg: "Leg") -> None:
        self.attempts[leg.id] = leg
        if leg.ended or leg.id in self.ended_ids:
            self.ended_ids.add(leg.id)
            return
        flow_leg = self.engine.legs.get(leg.id) or self.engine.track(leg)
        self._holds[leg.id] = flow_leg.retention.acquire(f"dial:{self.id}")

    def placed(self) -> None:
        """All attempts are placed: settle a dial whose attempts all failed synchronously."""
        self.placing = False
        if not self.finalized:
            self.status = "dialing"
            self._check_all_ended()

    def on_leg_event(self, event: LegEvent) -> None:
        leg_id = event.leg_id
        if isinstance(event, LegEnded):
            self.ended_ids.add(leg_id)
            self.last_reason = event.reason
            if self.finalized:
                return
            self.publish(DialRejected(self.id, leg_id, event.reason))
            self._check_all_ended()
            return
        if self.finalized:
            if isinstance(event, LegAnswered) and leg_id != self.winner:
                leg = self.attempts.get(leg_id)
                if leg is not None:  # a 200 that crossed our CANCEL (break, loser): not kept
                    leg.hangup(200, "parallel_loser" if self.status == "answered" else self.reason or "broken")
            return
        if isinstance(event, LegRinging):
            self.publish(DialRinging(self.id, leg_id))
        elif isinstance(event, LegProgress):
            self.publish(DialProgress(self.id, leg_id))
        elif isinstance(event, LegAnswered):
            self._answered(leg_id)

    def _answered(self, leg_id: str) -> None:
        self.winner = leg_id
        flow_leg = self.engine.legs.get(leg_id)
        if flow_leg is not None:
            flow_leg.retention.acquire(f"dial-winner:{self.id}")  # held until the leg ends
        self._hang_up_others("parallel_loser")
        self.publish(DialAnswered(self.id, leg_id))
        self.finalize("answered", None)

    def _check_all_ended(self) -> None:
        if self.placing or self.finalized:
            return
        if all(leg_id in self.ended_ids for leg_id in self.attempts):
            self.fail(self.last_reason or "no_attempts")

    def _hang_up_others(self, reason: str) -> None:
        for leg_id, leg in self.attempts.items():
            if leg_id != self.winner and not leg.ended:
                leg.hangup(487, reason)

    # -- finalization --
    def fail(self, reason: str, *, hang_up_reason: str | None = None) -> None:
        if self.finalized:
            return
        self._hang_up_others(hang_up_reason or reason)
        self.publish(DialFailed(self.id, None, reason))
        self.finalize("failed", reason)

    def finalize(self, status: str, reason: str | None) -> None:
        self.status = status
        self.reason = reason
        for ticket in self._holds.values():
            ticket.release()
        self._holds.clear()
        self.retention.close()
        dials: dict = self.engine.dials  # type: ignore[attr-defined]
        dials.pop(self.id, None)
        self.engine.dial_snapshots.put(self.id, self)  # type: ignore[attr-defined]
        log.info("%s: finalized %s%s", self.id, status, f" ({reason})" if reason else "")

    def _free_ttl_expired(self, _dial_id: str) -> None:
        if not self.finalized:
            log.info("%s: no flow holds this dial any more: failing it (free_ttl)", self.id)
            self.fail("free_ttl")

    # -- events --
    def publish(self, event: DialEvent) -> None:
        for wait in list(self.waits):
            if wait.offer(event):
                return
        self.queue.push(event)


# ---- dial.wait ------------------------------------------------------------------------------
class DialWait:
    """One dial.wait: listens to its dials' events and to the master leg (LegEnded, DTMF)."""

    def __init__(self, engine: "FlowEngine", a: Activation, dials: list[Dial], master: "FlowLeg | None",
                 master_id: str | None, selected: set[str], interrupt_dtmf: bool) -> None:
        self.engine = engine
        self.a = a
        self.dials = dials
        self.master = master
        self.master_id = master_id
        self.selected = selected
        self.interrupt_dtmf = interrupt_dtmf
        self.wanted = selected | {"answered", "failed"}
        self.done = False
        self.timer = None
        tag = f"dial-wait:{next(_wait_ids)}"
        self.tickets = [d.retention.acquire(tag) for d in dials if not d.finalized and not d.retention.closed]
        if master is not None:
            self.tickets.append(master.retention.acquire(tag))

    # queued events and snapshots first
    def start(self, timeout_s: float) -> None:
        if self.master is None and self.master_id:
            self._emit("Interrupted", self.dials[0], {"legId": self.master_id, "interruptReason": "call_ended"})
            return
        if self.master is not None:
            for event in list(self.master.queue):
                if isinstance(event, LegEnded):
                    self.master.queue.take_first(lambda e: e is event)
                    self.offer(event)
                    return
                if isinstance(event, LegDtmf):
                    self.master.queue.take_first(lambda e: e is event)
                    if self.offer(event):
                        if self.done:
                            return
        for dial in self.dials:
            event = dial.queue.take_first(lambda e: e.kind in self.wanted)
            if event is not None:
                self.offer(event)
                return
        for dial in self.dials:
            if dial.finalized:  # final event consumed by an earlier wait: answer from the status
                if dial.status == "answered":
                    self.offer(DialAnswered(dial.id, dial.winner))
                else:
                    self.offer(DialFailed(dial.id, None, dial.reason or "failed"))
                return
        for dial in self.dials:
            dial.waits.append(self)
        if self.master is not None:
            self.master.waits.append(self)  # type: ignore[arg-type]
        self.timer = self.engine.ua.timers.schedule(timeout_s, self._timeout, "dial.wait")

    def offer(self, event: Any) -> bool:
        if self.done:
            return False
        if isinstance(event, LegEnded):
            self._emit("Interrupted", self.dials[0], {"legId": event.leg_id, "interruptReason": "call_ended"})
            return True
        if isinstance(event, LegDtmf):
            if self.interrupt_dtmf:
                self._emit("Interrupted", self.dials[0], {"legId": event.leg_id, "interruptReason": "call_dtmf",
                                                          "digit": event.digit, "digits": event.digit})
            return True  # not selected: consumed, so stale digits do not linger
        if not isinstance(event, DialEvent) or event.kind not in self.wanted:
            return False
        dial = next((d for d in self.dials if d.id == event.dial_id), self.dials[0])
        extra: dict = {}
        if isinstance(event, DialFailed):
            extra["reason"] = event.reason
        elif event.leg_id:
            extra["legId"] = event.leg_id
        self._emit(event.kind.capitalize(), dial, extra)
        return True

    def _timeout(self) -> None:
        if not self.done:
            self._emit("Timeout", self.dials[0], {})

    def _emit(self, branch: str, dial: Dial, extra: dict) -> None:
        self.done = True
        self.cancel()
        payload = {"dialId": dial.id, "stillDialingLegCount": dial.still_dialing, **extra}
        sip_pbx = {"dialId": dial.id, "legId": extra.get("legId")}
        log.debug("dial.wait %s: %s %s", self.a.node.name, branch, payload)
        self.a.emit(branch, payload, sip_pbx)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for dial in self.dials:
            if self in dial.waits:
                dial.waits.remove(self)
        if self.master is not None and self in self.master.waits:
            self.master.waits.remove(self)  # type: ignore[arg-type]
        for ticket in self.tickets:
            ticket.release()
        self.tickets = []


# ---- nodes ----------------------------------------------------------------------------------
def register(engine: "FlowEngine") -> None:
    engine.dials = {}  # type: ignore[attr-defined]
    engine.dial_snapshots = TerminalSnapshots(engine.ua.timers)  # type: ignore[attr-defined]
    engine.runner.register("dial.make", lambda a: _make(engine, a))
    engine.runner.register("dial.wait", lambda a: _wait(engine, a))
    engine.runner.register("dial.break", lambda a: _break(engine, a))


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def _headers(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict) and "item" in value:
        value = value["item"]
    if isinstance(value, dict):
        return [(str(k), str(v)) for k, v in value.items()]
    return [(str(h["name"]), str(h.get("value", ""))) for h in (value or ()) if isinstance(h, dict) and h.get("name")]


def _find_dial(engine: "FlowEngine", dial_id: str | None) -> Dial | None:
    if not dial_id:
        return None
    return engine.dials.get(dial_id) or engine.dial_snapshots.get(dial_id)  # type: ignore[attr-defined]


def _make(engine: "FlowEngine", a: Activation) -> None:
    mode = a.param("callMode")
    if mode == "websocket":
        raise NodeFailed("dial.make callMode 'websocket' is not supported yet")
    if mode not in ("trunk", "extension", "direct"):
        raise NodeFailed(f"dial.make: unknown callMode {mode!r}")
    if a.param("callStrategy", "parallel") != "parallel":
        raise NodeFailed("dial.make callStrategy 'sequential' is not supported yet")
    dialer = engine.ua.dialer
    if dialer is None:
        raise NodeFailed("dial.make: this server has no dialer")
    from ..sip.dialer import DialError
    common: dict[str, Any] = {
        "caller_number": a.param("callerNumber") or None,
        "caller_name": a.param("callerName") or None,
        "headers": _headers(a.param("customSipHeaders")),
    }
    dial = Dial(engine)
    on_event: Callable[[LegEvent], None] = dial.on_leg_event
    legs: list["Leg"] = []
    try:
        if mode == "extension":
            numbers = _list(a.param("extensionNumbers"))
            legs = dialer.dial_extension(numbers, only_free=bool(a.param("extensionOnlyFreeEndpoints", True)),
                                         on_event=on_event, **common)
            if not legs:
                dial.retention.close()
                a.emit("Unavailable", {"reason": "no_available_endpoints",
                                       "message": f"no available endpoint for extension(s) {', '.join(numbers)}",
                                       "extensionNumbers": numbers})
                return
        else:
            destinations = _list(a.param("destination"))
            if not destinations:
                raise NodeFailed("dial.make has no destination")
            errors: list[str] = []
            for destination in destinations:
                try:
                    if mode == "trunk":
                        leg = dialer.dial_trunk(str(a.param("ref") or ""), destination, on_event=on_event, **common)
                    else:
                        extra = {k: v for k, v in (("codecs", a.param("codecs")),
                                                   ("dtmf_methods", a.param("dtmfMethods"))) if v}
                        leg = dialer.dial_direct(str(a.param("connection") or ""), destination,
                                                 on_event=on_event, **common, **extra)
                except DialError as exc:
                    errors.append(f"{destination}: {exc}")
                    continue
                legs.append(leg)
            if not legs:
                raise NodeFailed("; ".join(errors))
            for error in errors:
                log.warning("%s: attempt not placed: %s", dial.id, error)
    except DialError as exc:
        dial.retention.close()
        raise NodeFailed(str(exc)) from None
    except NodeFailed:
        dial.retention.close()
        raise
    engine.dials[dial.id] = dial  # type: ignore[attr-defined]
    for leg in legs:
        dial.add_attempt(leg)
    dial.placed()
    log.info("%s: %s dial, attempts %s", dial.id, mode, ", ".join(leg.id for leg in legs))
    payload: dict = {"dialId": dial.id}
    leg_id = legs[0].id if len(legs) == 1 else None
    if leg_id:
        payload["legId"] = leg_id
    a.emit("Result", payload, {"dialId": dial.id, "legId": leg_id})


def _dial_ids(a: Activation) -> list[str]:
    raw = a.param("dialIds") or ()
    if isinstance(raw, dict):
        raw = raw.get("item") or ()
    explicit = [x.get("dialId") if isinstance(x, dict) else x for x in raw]
    return resolve_wait_ids(a.item, [x for x in explicit if isinstance(x, str) and x], "dialId")


def _wait(engine: "FlowEngine", a: Activation) -> None:
    ids = _dial_ids(a)
    if not ids:
        raise NodeFailed("dial.wait has no dial (set Dial IDs, or pass an item with dialId)")
    dials: list[Dial] = []
    for dial_id in ids:
        dial = _find_dial(engine, dial_id)
        if dial is None:
            raise NodeFailed(f"unknown or expired dial {dial_id!r}")
        dials.append(dial)
    master_id = a.param("legId") or None
    master = engine.legs.get(master_id) if master_id else None
    if master_id and master is None and engine.snapshots.get(master_id) is None:
        raise NodeFailed(f"unknown master leg {master_id!r}")
    selected = set(a.param("waitEventOutputs") or ()) & {"ringing", "progress", "rejected"}
    timeout = float(a.param("dialTimeoutSeconds", 30) or 0) or 30.0
    wait = DialWait(engine, a, dials, master, master_id, selected, "dtmf" in set(a.param("interruptOn") or ()))
    wait.start(timeout)


def _break(engine: "FlowEngine", a: Activation) -> None:
    dial_id = resolve_dial_id(a.item, a.options)
    dial = _find_dial(engine, dial_id)
    if dial is None:
        raise NodeFailed(f"unknown or expired dial {dial_id!r}")
    if not dial.finalized:
        reason = str(a.param("dialBreakReason") or "broken")
        log.info("%s: broken (%s)", dial.id, reason)
        dial.fail(reason)
    a.emit("Result", {"dialId": dial.id}, {"dialId": dial.id})
