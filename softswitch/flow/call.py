"""Call nodes: ringing, answer, hangup, wait, bridge and unbridge (reference §2.3 "Resource Call").

Bridge and unbridge are thin: `bridges.py` holds the bridge rules of §5.6 (audio, interrupts,
signalling that follows the peer, dial winners, DTMF relay).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from .bridges import RELAY_MODES
from .dtmf import CallWait, CallWaitSettings, Rule, UnknownLeg, WaitOutcome
from .engine import Activation, NodeFailed
from .items import resolve_leg_id, resolve_wait_ids

if TYPE_CHECKING:
    from .runtime import FlowEngine

_wait_ids = itertools.count(1)


def register(engine: "FlowEngine") -> None:
    runner = engine.runner
    runner.register("call.ringing", lambda a: _simple(engine, a, "ringing"))
    runner.register("call.answer", lambda a: _simple(engine, a, "answer"))
    runner.register("call.hangup", lambda a: _simple(engine, a, "hangup"))
    runner.register("call.wait", lambda a: _wait(engine, a))
    runner.register("call.bridge", lambda a: _bridge(engine, a))
    runner.register("call.unbridge", lambda a: _unbridge(engine, a))


def _bridge(engine: "FlowEngine", a: Activation) -> None:
    """call.bridge: join legA and legB (§5.6); Success {legIdA, legIdB}."""
    leg_a = engine.leg(str(a.param("legAId") or ""))
    leg_b = engine.leg(str(a.param("legBId") or ""))
    if leg_a is leg_b:
        raise NodeFailed("cannot bridge a leg to itself")
    relay = str(a.param("relayDtmf", "auto") or "auto")
    if relay not in RELAY_MODES:
        raise NodeFailed(f"call.bridge relayDtmf {relay!r} is not one of {', '.join(RELAY_MODES)}")
    engine.bridges.bridge(leg_a, leg_b, relay_dtmf=relay, emit_dtmf_events=bool(a.param("emitDtmfEvents", True)))
    a.emit("Success", {"legIdA": leg_a.id, "legIdB": leg_b.id}, {"legId": leg_a.id})


def _unbridge(engine: "FlowEngine", a: Activation) -> None:
    """call.unbridge: Orig {legId}, and Peer {legId: peer} when it had one."""
    flow_leg = engine.leg(resolve_leg_id(a.item, a.options))
    peer = engine.bridges.unbridge(flow_leg)
    a.emit("Orig", {"legId": flow_leg.id}, {"legId": flow_leg.id}, final=peer is None)
    if peer is not None:
        a.emit("Peer", {"legId": peer.id}, {"legId": peer.id})


def _simple(engine: "FlowEngine", a: Activation, action: str) -> None:
    """An action that holds the leg only while it runs, then emits Result {legId}."""
    leg_id = resolve_leg_id(a.item, a.options)
    if action == "hangup" and leg_id and leg_id not in engine.legs and leg_id in engine.snapshots:
        # The far end hung up a moment ago (terminal snapshot, §1.5): what the hangup asked for
        # has happened. Not a flow error; the race is every call's (agent and flow hang up at once).
        a.emit("Result", {"legId": leg_id}, {"legId": leg_id})
        return
    flow_leg = engine.leg(leg_id)
    ticket = flow_leg.retention.acquire(f"action:{a.node.name}")
    try:
        leg = flow_leg.leg
        if action == "ringing":
            leg.ringing()
        elif action == "answer":
            leg.answer()
        else:
            leg.hangup(603 if not leg.answered else 200, "hangup")
    finally:
        ticket.release()
    a.emit("Result", {"legId": flow_leg.id}, {"legId": flow_leg.id})


def _settings(a: Activation) -> CallWaitSettings:
    rules = tuple(Rule(str(r["pattern"]), str(r["label"])) for r in (a.param("rules") or ()))
    return CallWaitSettings(
        rules=rules,
        timeout_s=float(a.param("timeoutSeconds", 30)),
        interdigit_s=float(a.param("interdigitTimeoutSeconds", 1)),
        fallback=bool(a.param("waitDtmfFallbackEnabled", False)),
        multi_digit_fallback=bool(a.param("waitDtmfMultiDigitFallbackEnabled", False)),
        terminator=str(a.param("dtmfTerminatorDigit", "#")),
        interrupt_reasons=frozenset(a.param("interruptReasons") or ()),
        clear_dtmf_buffer=bool(a.param("clearDtmfBuffer", False)),
    )


def _wait(engine: "FlowEngine", a: Activation) -> None:
    """call.wait: retains its legs, consumes their queued then live events (§2.3)."""
    explicit = [x for x in (a.param("legIds") or ()) if x]
    leg_ids = resolve_wait_ids(a.item, explicit, "legId") if explicit else [
        x for x in [resolve_leg_id(a.item, a.options)] if x]
    if not leg_ids:
        raise NodeFailed("call.wait has no leg (set Leg IDs, or pass an item with legId)")
    live = {leg_id: engine.legs[leg_id] for leg_id in leg_ids if leg_id in engine.legs}
    snapshots = {leg_id: snap for leg_id in leg_ids if leg_id not in live
                 for snap in [engine.snapshots.get(leg_id)] if snap is not None}
    wait_tag = f"wait:{next(_wait_ids)}"
    tickets = [flow_leg.retention.acquire(wait_tag) for flow_leg in live.values()]

    def finish(outcome: WaitOutcome) -> None:
        for flow_leg in live.values():
            if wait in flow_leg.waits:
                flow_leg.waits.remove(wait)
        for ticket in tickets:
            ticket.release()
        payload = outcome.payload()
        a.emit(outcome.branch, payload, {"legId": payload["legId"]})

    wait = CallWait(leg_ids, _settings(a), engine.ua.timers, on_outcome=finish)
    try:
        wait.start({leg_id: fl.queue for leg_id, fl in live.items()}, snapshots)
    except UnknownLeg as exc:
        for ticket in tickets:
            ticket.release()
        raise NodeFailed(str(exc)) from None
    if not wait.done:
        for flow_leg in live.values():
            flow_leg.waits.append(wait)
