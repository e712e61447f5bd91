"""Queue nodes and the Queue trigger (reference §2.3 "Resource Queue", §2.4 "Queue Event", §3).

`FlowQueues` wires the flow-independent `queue.QueueEngine` to real calls: operators are
`ua.extensions`, operator dials are extension `Dial`s that `dial.wait` and `dial.break` work on,
trigger events fire the Queue trigger of the flow that queued the caller, and queue interrupts
go to the caller's flow leg. The engine's state lives in `directories.state`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ..queue.engine import DialOutcome, OperatorDialRequest, QueueEngine, QueueError
from ..queue.model import DialConfig, QueueEvent
from ..queue.store import QueueStore
from ..sip.events import LegEnded, LegEvent
from ..sip.legs import parse_party
from .dial import _headers, _list
from .engine import Activation, NodeFailed
from .items import resolve_leg_id, resolve_queue_ref

if TYPE_CHECKING:
    from .dial import DialFinalized
    from .model import Flow, Trigger
    from .runtime import FlowEngine

log = logging.getLogger("softswitch.flow")


class FlowQueues:
    """The queue engine of one FlowEngine, its adapters and the queue.* node handlers."""

    def __init__(self, flow_engine: "FlowEngine") -> None:
        self.flow_engine = flow_engine
        ua = flow_engine.ua
        store = QueueStore.in_directory(ua.config.directories.state)  # QueueStoreError: startup fails
        self.engine = QueueEngine(
            store, ua.timers, ua.extensions if ua.extensions is not None else _NoOperators(),
            _ExtensionDialer(flow_engine), _TriggerSink(flow_engine), _QueueTriggers(flow_engine),
            new_id=lambda: ua.ids.new("queue_entry"),
            # Phones register again after a restart within their refresh interval.
            recovery_grace_s=float(ua.config.registrar.default_expires))
        self._watched: set[str] = set()
        self._unsubscribe: Callable[[], None] | None = None
        if ua.extensions is not None:
            self._unsubscribe = ua.extensions.subscribe(lambda change: self.engine.availability_changed(change.extension))
        flow_engine.reload_listeners.append(lambda _event: self.engine.refresh())
        runner = flow_engine.runner
        runner.register("queue.putLeg", self._put)
        runner.register("queue.setCallback", self._set_callback)
        runner.register("queue.getStats", self._stats)
        # recover() runs once the records watch the engine (FlowEngine): entries the restart
        # drops get their queue events.

    def recover(self) -> None:
        """Load the stored entries (once, at start; after the operator records are attached)."""
        self.engine.recover()

    def stats_json(self) -> dict[str, Any]:
        """Every queue's statistics as JSON-ready data, active Queue triggers included even when
        empty (UA thread; from another thread use `ua.run_sync(queues.stats_json)`)."""
        active = [(flow.name, t.ref) for flow in self.flow_engine.flows for t in flow.triggers_of("queue")]
        return self.engine.stats_json(active)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.engine.close()

    # ---- nodes ------------------------------------------------------------------------------
    def _put(self, a: Activation) -> None:
        """queue.putLeg: an inbound trunk caller into a queue of this flow (§3.2); Result {legId}."""
        ref = resolve_queue_ref(a.item, a.params.get("ref"))
        if not ref:
            raise NodeFailed("queue.putLeg has no queue ref (set Queue Ref, or pass an item with ref)")
        flow_leg = self.flow_engine.leg(resolve_leg_id(a.item, a.options))
        leg = flow_leg.leg
        admission = leg.admission
        if leg.direction != "inbound" or admission is None or admission.kind != "trunk":
            raise NodeFailed(f"queue.putLeg: leg {leg.id} is not an inbound call from a trunk; "
                             f"only trunk callers can be queued (not extension or outbound legs)")
        number, name = parse_party(leg.remote_uri)
        dial = DialConfig(
            call_strategy=str(a.param("callStrategy") or "parallel"),
            caller_number=str(a.param("callerNumber") or "").strip() or number,
            caller_name=str(a.param("callerName") or "").strip() or name,
            custom_headers=tuple(_headers(a.param("customSipHeaders"))),
            only_free_endpoints=True,  # forced for queue operator dialing
            sequential_attempt_timeout_s=float(a.param("sequentialAttemptTimeoutSeconds", 30) or 30),
            sequential_gap_s=float(a.param("sequentialGapSeconds", 0) or 0))
        try:
            self.engine.put(
                scope=a.execution.flow.name, ref=ref, leg_id=leg.id, trunk_ref=admission.ref, dial=dial,
                retain=lambda entry_id: flow_leg.retention.acquire(f"queue:{entry_id}"),
                placement=str(a.param("queuePlacement", "back")), rejoin=bool(a.param("rejoinExisting", True)),
                retry_attempts=int(a.param("retryAttempts", 3)), retry_pause_s=float(a.param("retryPauseSeconds", 30)))
        except QueueError as exc:
            raise NodeFailed(str(exc)) from None
        self._watch(leg)
        a.emit("Result", {"legId": leg.id}, {"legId": leg.id})

    def _set_callback(self, a: Activation) -> None:
        """queue.setCallback: flag the caller's entry; it stays queued (§3.4); Result {legId}."""
        leg_id = resolve_leg_id(a.item, a.options)
        if not leg_id:
            raise NodeFailed("queue.setCallback has no leg (set Options → Leg ID, or pass an item with legId)")
        try:
            self.engine.set_callback(leg_id, bool(a.param("callbackEnabled", True)))
        except QueueError as exc:
            raise NodeFailed(str(exc)) from None
        a.emit("Result", {"legId": leg_id}, {"legId": leg_id})

    def _stats(self, a: Activation) -> None:
        """queue.getStats by ref (this flow's queue) or by legId (the caller's place) (§3.5)."""
        try:
            if a.param("queueStatsTarget", "ref") == "legId":
                leg_id = resolve_leg_id(a.item, a.options)
                if not leg_id:
                    raise NodeFailed("queue.getStats has no leg (set Options → Leg ID, or pass an item with legId)")
                stats = self.engine.stats_for_leg(leg_id)
                a.emit("Result", stats.payload(), {"legId": leg_id})
                return
            ref = resolve_queue_ref(a.item, a.params.get("ref"))
            scope = a.execution.flow.name
            if not ref or _queue_trigger(self.flow_engine, scope, ref) is None:
                raise NodeFailed(f"queue.getStats: flow {scope!r} has no active queue trigger with ref {ref!r}")
            a.emit("Result", self.engine.stats(scope, ref).payload())
        except QueueError as exc:
            raise NodeFailed(str(exc)) from None

    def _watch(self, leg: Any) -> None:
        """Tell the engine when a queued caller hangs up (callback or silent removal)."""
        if leg.id in self._watched:
            return
        self._watched.add(leg.id)

        def on_event(event: LegEvent) -> None:
            if isinstance(event, LegEnded):
                self._watched.discard(leg.id)
                self.engine.leg_ended(leg.id)

        leg.subscribe(on_event)


# ---- adapters -----------------------------------------------------------------------------------
def _queue_trigger(flow_engine: "FlowEngine", scope: str, ref: str) -> "tuple[Flow, Trigger] | None":
    """The active Queue trigger `ref` of flow `scope` (refs are scoped per flow, §1.3)."""
    for flow in flow_engine.flows:
        if flow.name == scope:
            trigger = flow.trigger("queue", ref)
            if trigger is not None:
                return flow, trigger
    return None


class _QueueTriggers:
    def __init__(self, flow_engine: "FlowEngine") -> None:
        self.flow_engine = flow_engine

    def extensions_of(self, scope: str, ref: str) -> tuple[str, ...] | None:
        found = _queue_trigger(self.flow_engine, scope, ref)
        return None if found is None else tuple(_list(found[1].params.get("queueExtensions")))


class _TriggerSink:
    """Queue events → the Queue trigger's branches; queue interrupts and status → flow legs."""

    def __init__(self, flow_engine: "FlowEngine") -> None:
        self.flow_engine = flow_engine

    def publish(self, event: QueueEvent) -> None:
        found = _queue_trigger(self.flow_engine, event.scope, event.ref)
        if found is None:
            log.warning("queue %s: %s not delivered: flow %r has no active queue trigger %r any more",
                        event.ref, event.branch, event.scope, event.ref)
            return
        flow, trigger = found
        payload = event.payload()
        log.info("queue %s: %s %s", event.ref, event.branch, payload)
        self.flow_engine.runner.fire(flow, trigger, event.branch, payload, event.sip_pbx())

    def interrupt(self, leg_id: str, reason: str) -> None:
        flow_leg = self.flow_engine.legs.get(leg_id)
        if flow_leg is not None:
            self.flow_engine.publish_interrupt(flow_leg, reason)

    def set_queued(self, leg_id: str, queued: bool) -> None:
        flow_leg = self.flow_engine.legs.get(leg_id)
        if flow_leg is not None:
            flow_leg.leg.set_queued(queued)


class _NoOperators:
    """No registrar (a UA without SIP edge): nobody is ever online."""

    def online(self, extension: str) -> bool:
        return False

    def free(self, extension: str) -> bool:
        return False


class _ExtensionDialer:
    """`OperatorDialer` over the dial model (`Dials.start_extension_dial`): the Dispatch item's
    dialId is a real `Dial` that dial.wait and dial.break work on."""

    def __init__(self, flow_engine: "FlowEngine") -> None:
        self.flow_engine = flow_engine

    def start(self, request: OperatorDialRequest, on_final: Callable[[DialOutcome], None]) -> str | None:
        from ..sip.dialer import DialError
        ua = self.flow_engine.ua
        config = request.dial
        try:
            dial = self.flow_engine.dials.start_extension_dial(  # type: ignore[attr-defined]
                request.extensions, only_free=True, strategy=config.call_strategy,
                caller_number=config.caller_number or None, caller_name=config.caller_name or None,
                headers=config.custom_headers, attempt_timeout_s=config.sequential_attempt_timeout_s,
                gap_s=config.sequential_gap_s)
        except DialError as exc:
            log.warning("queue entry %s: cannot dial operators %s: %s", request.entry_id,
                        ", ".join(request.extensions), exc)
            return None
        if dial is None:
            return None

        def finalized(f: "DialFinalized") -> None:
            # On a later loop turn: the queue never re-enters a dial that is finalizing (and a
            # dial that failed while starting is reported after `start` has returned its id).
            ua.call_soon(on_final, DialOutcome(f.dial_id, f.status == "answered", f.reason, f.winner_leg_id))

        dial.on_finalized(finalized)
        log.info("%s: queue operator dial for %s to %s", dial.id, request.entry_id, ", ".join(request.extensions))
        self.flow_engine.tell(lambda o: o.queue_dial_started(dial, request))
        return dial.id

    def cancel(self, dial_id: str, reason: str) -> None:
        dial = self.flow_engine.dials.get(dial_id)  # type: ignore[attr-defined]
        if dial is not None:
            dial.cancel(reason)
