"""The flow engine on the UA: triggers from real calls, and the legs flows act on.

`FlowEngine` is the UA's call handler when flow files are active. An admitted INVITE fires the
Call branch of the trunk trigger (or the extensions trigger of the caller's user set) whose ref
matches. Every leg a flow can reach is a `FlowLeg`: the `Leg`, its bounded event queue (dtmf,
interrupt, ended), its retention tickets with the 5 s free-TTL, and the waits currently
listening to it (reference §1.4–§1.5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from ..sip.events import LegDtmf, LegEnded, LegEvent
from ..sip.legs import parse_party
from .engine import FlowRunner, NodeFailed
from .model import Flow
from .retention import EventQueue, LegInterrupt, Retention, TerminalSnapshots

if TYPE_CHECKING:
    from ..queue.engine import OperatorDialRequest
    from ..sip.endpoint import UserAgent
    from ..sip.legs import Leg
    from .dial import Dial
    from .dtmf import CallWait
    from .engine import Execution
    from .media import MediaOp
    from .model import Trigger
    from .transfer import Transfer

log = logging.getLogger("softswitch.flow")


@dataclass
class FlowLeg:
    leg: "Leg"
    queue: EventQueue
    retention: Retention
    waits: list["CallWait"] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.leg.id


TriggerKey = tuple[str, str]  # (kind, ref): what an admitted call or a queue is matched by


@dataclass(frozen=True)
class FlowsReloaded:
    """The active flows were replaced (SIGHUP). Executions already running keep the `Flow`
    objects they started with; only new trigger emissions use `new`."""

    old: tuple[Flow, ...]
    new: tuple[Flow, ...]
    added: tuple[TriggerKey, ...]  # triggers only in the new flows
    removed: tuple[TriggerKey, ...]  # triggers gone: their live calls continue on the old flow

    def summary(self) -> str:
        keys = _trigger_keys(self.new)
        text = (f"flows reloaded: {len(self.new)} flow{'s' if len(self.new) != 1 else ''} "
                f"({', '.join(f.name for f in self.new) or 'none'}), {len(keys)} trigger{'s' if len(keys) != 1 else ''} "
                f"({', '.join(f'{kind} {ref}' for kind, ref in keys) or 'none'})")
        if self.added:
            text += "; added " + ", ".join(f"{kind} {ref}" for kind, ref in self.added)
        if self.removed:
            text += "; removed " + ", ".join(f"{kind} {ref}" for kind, ref in self.removed)
        return text


class FlowObserver:
    """What operations tooling (call records, queue events) hears from the flow layer, beside
    the UA's leg watchers: which flow took a call, who dialed which legs for whom, bridges and
    recordings. Every method is a no-op here; observers override what they need. Called on the
    UA thread through `FlowEngine.tell`, so a failing observer is logged and changes nothing."""

    def call_started(self, leg: "Leg", flow: Flow, trigger: "Trigger") -> None:
        """An admitted inbound leg fired `trigger`'s Call branch."""

    def attempt_placed(self, dial: "Dial", leg: "Leg") -> None:
        """A dial placed an attempt (also later attempts of a sequential dial)."""

    def dial_started(self, dial: "Dial", execution: "Execution") -> None:
        """dial.make started `dial` in `execution` (its first attempts are placed)."""

    def queue_dial_started(self, dial: "Dial", request: "OperatorDialRequest") -> None:
        """The queue started an operator dial for an entry (live caller, or a callback)."""

    def bridged(self, a: "Leg", b: "Leg") -> None: ...

    def unbridged(self, a: "Leg", b: "Leg") -> None: ...

    def held(self, holder: "Leg", peer: "Leg", held: bool) -> None:
        """`holder`'s phone put its bridge on hold (`held`) or resumed it; `peer` is the held party."""

    def recording_finished(self, leg_id: str, path: str) -> None:
        """A file recorded from a leg is complete (call recording or media.recordAudio)."""

    def recording_failed(self, leg_id: str, path: str, error: str) -> None:
        """A disk error stopped a recording of a leg (`path` is then kept with what was written,
        or gone if nothing was: `recording_finished` follows only if the file exists)."""

    def transfer_started(self, transfer: "Transfer") -> None:
        """An agent phone's REFER was accepted (flow/transfer.py)."""

    def transfer_dial_started(self, transfer: "Transfer", dial: "Dial") -> None:
        """A blind transfer dials its target: the dial belongs to the transferred caller's call."""

    def transfer_finished(self, transfer: "Transfer") -> None:
        """The transfer's result is known (transferred, failed, caller gone)."""

    def close(self) -> None:
        """The engine shuts down (before the UA hangs up the legs still up)."""


def _trigger_keys(flows: Iterable[Flow]) -> list[TriggerKey]:
    return [(t.kind, t.ref) for f in flows for t in f.triggers]


class FlowEngine:
    """Runs the active flows for the calls the UA admits (UA thread only)."""

    def __init__(self, ua: "UserAgent", flows: Iterable[Flow]) -> None:
        self.ua = ua
        self.flows = list(flows)
        self.observers: list[FlowObserver] = []  # operations: call records, queue events (set below)
        # Told when SIGHUP replaces the flows (e.g. queue triggers that appear or disappear).
        self.reload_listeners: list[Callable[[FlowsReloaded], None]] = []
        self.runner = FlowRunner(ua.call_soon)
        self.legs: dict[str, FlowLeg] = {}
        self.snapshots: TerminalSnapshots = TerminalSnapshots(ua.timers)
        from .bridges import Bridges
        self.bridges = Bridges(self)
        self.media: dict[str, "MediaOp"] = {}
        self.media_snapshots: TerminalSnapshots = TerminalSnapshots(ua.timers)
        from . import call, dial, media  # the node modules register their handlers
        call.register(self)
        dial.register(self)
        media.register(self)
        self._media_events = media.on_leg_event
        # -- queues: the queue engine with durable state, queue.* nodes, the Queue trigger --
        from .queue import FlowQueues
        self.queues = FlowQueues(self)
        # -- end queues --
        # -- global call recording: recording.*, respond.toRecord, the triggers' Recording branch --
        from . import recording, respond
        from .recording import Recordings
        self.recordings = Recordings(self)
        recording.register(self)
        respond.register(self)
        # -- end global call recording --
        # -- AI: websocket legs (dial.make), ai.* nodes, AI Tool trigger requests (flow/ai.py) --
        from . import ai
        ai.register(self)
        # -- end AI --
        # -- transfer: REFERs from agent phones (flow/transfer.py) --
        from .transfer import FlowTransfers
        self.transfers = FlowTransfers(self)
        # -- end transfer --
        # -- operations: call records and queue events as JSON lines, on unless turned off (softswitch/ops) --
        from ..ops.queue_events import QueueEventLog
        from ..ops.records import CallRecords
        records = ua.config.records.in_state(ua.config.directories.state)
        if records.call_records is not None:
            self.observers.append(CallRecords.for_engine(self, records.call_records))
        if records.queue_events is not None:
            self.observers.append(QueueEventLog.for_engine(self, records.queue_events))
        # -- end operations --
        self.queues.recover()  # after the records: what the restart drops is in them

    def tell(self, hook: Callable[[FlowObserver], None]) -> None:
        """Run `hook` on every observer, e.g. `engine.tell(lambda o: o.bridged(a, b))`."""
        for observer in self.observers:
            self.ua.guard("flow observer", hook, observer)

    # ---- reload (SIGHUP) --------------------------------------------------------------------
    def reload(self, flows: Iterable[Flow]) -> FlowsReloaded:
        """Make `flows` the active flows for calls and trigger emissions from now on (UA thread).

        Nothing running is touched: an `Execution` holds its own `Flow`, so live calls finish the
        path they started on, even when their trigger is gone. Listeners (e.g. queues, whose
        triggers dispatch later) are told what was added and removed; one failing listener is
        logged and does not stop the others or the reload."""
        old, new = tuple(self.flows), tuple(flows)
        old_keys, new_keys = _trigger_keys(old), _trigger_keys(new)
        event = FlowsReloaded(old, new, tuple(k for k in new_keys if k not in old_keys),
                              tuple(k for k in old_keys if k not in new_keys))
        self.flows = list(new)
        for listener in list(self.reload_listeners):
            try:
                listener(event)
            except Exception:
                log.exception("flow reload listener %r failed", listener)
        live = f"; {len(self.legs)} live legs continue on the flows they started with" if self.legs else ""
        log.info("%s%s", event.summary(), live)
        return event

    # ---- triggers -------------------------------------------------------------------------
    def on_incoming_leg(self, leg: "Leg") -> None:
        admission = leg.admission
        if admission is None:
            leg.hangup(403, "not_admitted")
            return
        kind, ref = ("trunk", admission.ref) if admission.kind == "trunk" else ("extensions", admission.group or "")
        match = next(((f, t) for f in self.flows for t in f.triggers_of(kind) if t.ref == ref), None)
        if match is None:
            log.warning("%s: no active %s trigger with ref %r; refusing the call", leg.id, kind, ref)
            leg.hangup(480, "no_flow")
            return
        flow, trigger = match
        self.track(leg)
        payload = self.call_payload(leg, ref, admission.extension if kind == "extensions" else None)
        log.info("%s: flow %s, trigger %s (%s %s)", leg.id, flow.name, trigger.name, kind, ref)
        self.tell(lambda o: o.call_started(leg, flow, trigger))
        self.runner.fire(flow, trigger, "Call", payload, {"ref": ref, "legId": leg.id})
        self.recordings.offer(flow, trigger, leg, payload.get("extension"))  # Recording branch, if on

    @staticmethod
    def call_payload(leg: "Leg", ref: str, extension: str | None) -> dict:
        caller_number, caller_name = parse_party(leg.remote_uri)
        called_number, called_name = parse_party(leg.local_uri)
        payload = {
            "eventType": "invite", "ref": ref, "legId": leg.id, "callId": leg.call_id,
            "direction": leg.direction, "from": leg.remote_uri, "callerNumber": caller_number,
            "callerName": caller_name, "to": leg.local_uri, "calledNumber": called_number,
            "calledName": called_name,
            "raw": {"callId": leg.call_id, "from": leg.remote_uri, "callerName": caller_name, "to": leg.local_uri},
        }
        if extension is not None:
            payload["extension"] = extension
        return payload

    # ---- transfer (REFER from an agent phone; flow/transfer.py) ----------------------------------
    def on_transfer(self, leg: "Leg", request, referral) -> int:
        """The UA's REFER decision (sip/transfer.py): a SIP response code."""
        return self.transfers.on_transfer(leg, request, referral)

    def transfer_trigger(self, group: str | None) -> "tuple[Flow, Trigger] | None":
        """The extensions trigger of `group` whose Call branch leads somewhere: a flow that takes
        calls the agents of that set dial, so also their blind transfers to numbers."""
        if not group:
            return None
        return next(((f, t) for f in self.flows for t in f.triggers_of("extensions")
                     if t.ref == group and t.targets("Call")), None)

    def start_transferred_call(self, leg: "Leg", flow: Flow, trigger: "Trigger", extra: dict) -> None:
        """Fire `trigger`'s Call branch for a transferred party, like a call the agent dialled:
        the payload of an INVITE from the agent's extension to the target number, on this leg."""
        payload = self.call_payload(leg, trigger.ref, extra.get("extension"))
        payload.update({k: v for k, v in extra.items() if v is not None})
        payload["raw"] = dict(payload["raw"], transfer=extra.get("transfer"))
        log.info("%s: transferred to flow %s, trigger %s (extensions %s, number %s)", leg.id, flow.name,
                 trigger.name, trigger.ref, extra.get("calledNumber"))
        self.tell(lambda o: o.call_started(leg, flow, trigger))
        self.runner.fire(flow, trigger, "Call", payload, {"ref": trigger.ref, "legId": leg.id})

    def abandon_waits(self, flow_legs: Iterable[FlowLeg], why: str) -> None:
        """The call.waits watching these legs end without an outcome (their executions stop
        there): something else (a transfer) now decides what happens to the legs."""
        from .items import resolve_leg_id, resolve_wait_ids

        waits = list(dict.fromkeys(w for fl in flow_legs for w in fl.waits))
        for wait in waits:
            wait.cancel()
            live = [fl for fl in self.legs.values() if wait in fl.waits]
            for fl in live:
                fl.waits.remove(wait)
            # Its `wait:<n>` ticket: the one wait tag every leg of this wait holds.
            common = set.intersection(*[{t for t in fl.retention.tags if t.startswith("wait:")} for fl in live]) \
                if live else set()
            if len(common) == 1:
                tag = common.pop()
                for fl in live:
                    for ticket in [t for t in fl.retention._tickets if t.tag == tag]:
                        ticket.release()
            for key, a in list(self.runner.running.items()):
                if a.node.op != "call.wait" or a.finished:
                    continue
                ids = resolve_wait_ids(a.item, list(a.params.get("legIds") or ()), "legId") \
                    if a.params.get("legIds") else [x for x in [resolve_leg_id(a.item, a.options)] if x]
                if list(dict.fromkeys(ids)) == wait.leg_ids:
                    a.finished = True
                    a.execution.done(a)
                    log.info("flow %s node %s: wait on %s ended (%s)", a.execution.flow.name, a.node.name,
                             ", ".join(wait.leg_ids), why)
                    break

    # ---- legs -------------------------------------------------------------------------------
    def track(self, leg: "Leg") -> FlowLeg:
        """Make a leg reachable by flows: event queue, retention (free-TTL armed now)."""
        flow_leg = FlowLeg(leg, EventQueue(), Retention(leg.id, self.ua.timers, self._free_ttl_expired))
        self.legs[leg.id] = flow_leg
        leg.subscribe(lambda event: self._on_leg_event(flow_leg, event))
        if leg.direction == "outbound":
            self.recordings.watch_outbound(flow_leg)  # answered dial legs: Recording branch, if on
        return flow_leg

    def leg(self, leg_id: str | None) -> FlowLeg:
        if not leg_id:
            raise NodeFailed("no leg id (set Options → Leg ID, or pass an item with legId)")
        flow_leg = self.legs.get(leg_id)
        if flow_leg is None:
            raise NodeFailed(f"unknown or ended leg {leg_id!r}")
        return flow_leg

    def _on_leg_event(self, flow_leg: FlowLeg, event: LegEvent) -> None:
        if not self._media_events(self, flow_leg, event):
            return  # a digit swallowed by a blocking playback that does not listen for DTMF
        if isinstance(event, (LegDtmf, LegEnded, LegInterrupt)):
            consumed = False
            for wait in list(flow_leg.waits):
                if wait.offer(event):
                    consumed = True
                    break
            if not consumed:
                flow_leg.queue.push(event)
        if isinstance(event, LegEnded):
            flow_leg.retention.close()
            self.snapshots.put(flow_leg.id, event)
            self.legs.pop(flow_leg.id, None)

    def deliver(self, flow_leg: FlowLeg, event: LegEvent) -> None:
        """An event softswitch itself raises on a leg (interrupts, relayed DTMF): same path as SIP's."""
        self._on_leg_event(flow_leg, event)

    def publish_interrupt(self, flow_leg: FlowLeg, reason: str) -> None:
        if flow_leg.id in self.legs:
            self.deliver(flow_leg, LegInterrupt(flow_leg.id, reason))

    def finish_media(self, flow_leg: FlowLeg, reason: str) -> None:
        for op in [op for op in self.media.values() if op.flow_leg is flow_leg]:
            op.finish("interrupted", reason)

    def _free_ttl_expired(self, leg_id: str) -> None:
        flow_leg = self.legs.get(leg_id)
        if flow_leg is not None and not flow_leg.leg.ended:
            log.info("%s: no flow holds this leg any more: hanging up (free_ttl)", leg_id)
            flow_leg.leg.hangup(480, "free_ttl")

    def shutdown(self) -> None:
        self.queues.close()  # first: entries stay stored as they are, for the next start
        self.recordings.shutdown()  # finalize call recordings (daemon_shutdown)
        self.ai.shutdown()  # AI legs end (daemon_shutdown); their asyncio thread stops  # -- AI --
        for flow_leg in list(self.legs.values()):
            for wait in flow_leg.waits:
                wait.cancel()
            flow_leg.retention.close()
        self.tell(lambda o: o.close())  # last: recordings above are finalized into the records
