"""Call records: one JSON line per finished call, for billing, reporting and support.

A call is a root leg plus the legs dialed for it. An inbound leg is a root; legs a flow dials
belong to the call of the leg that triggered that execution (AI legs too); agent legs the queue
dials for a live caller belong to the caller's call. A callback (the caller gone, the queue dials
an agent, the flow then the customer) is a call of its own, `kind: callback`; legs dialed with no
root make an `outbound` call. `CallRecords` learns legs from the UA's leg watchers and the rest
from flow hooks (`FlowObserver`) and queue entry events; it writes a call once all its legs have
ended and its dials are over, then forgets it. README "Call records" lists the fields.

With a `CallJournal` (ops/journal.py), each live call's state is also appended to the crash
journal once per loop turn in which it changed, so that the next start can write the calls a
kill -9 cut off (`recover_crashed`: hang-up reason `process_crashed`, ended when last seen alive).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..flow.runtime import FlowObserver
from ..sip.events import LegAnswered, LegEnded
from ..sip.legs import parse_party
from .journal import CallJournal

if TYPE_CHECKING:
    from ..clock import Clock, TimerHandle, Timers
    from ..flow.dial import Dial
    from ..flow.engine import Execution
    from ..flow.items import Item
    from ..flow.model import Flow, Trigger
    from ..flow.runtime import FlowEngine
    from ..queue.engine import OperatorDialRequest, QueueEntryEvent

log = logging.getLogger("softswitch.records")

JOURNAL_HEARTBEAT_S = 5.0  # while calls are live: how stale a cut-off call's end time can be
CRASHED = "process_crashed"  # hang-up and leg end reason of a call the process died in


# ---- shared by the operator records ---------------------------------------------------------
def iso_utc(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds: 2024-05-01T09:30:00.125Z."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WallClock:
    """Epoch seconds that move with `clock` (monotonic or virtual) from one anchor, so record
    times and durations agree even if the system time is stepped during a call."""

    def __init__(self, clock: "Clock", wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._offset = wall() - clock.now()

    def now(self) -> float:
        return self._offset + self.clock.now()


class JsonLines:
    """An append-only JSON-lines file: one object per line, flushed per line, so a crash loses
    at most the line being written. The parent directory is made on first use. A failed write is
    logged (once per spell of failures) and the line dropped: records never take calls down."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.written = 0
        self.dropped = 0
        self._file: Any = None
        self._failing = False

    def write(self, obj: Mapping[str, Any]) -> bool:
        try:
            line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            if self._file is None:
                self._open()
            self._file.write(line)
            self._file.flush()
        except (OSError, ValueError, TypeError) as exc:
            self.dropped += 1
            if not self._failing:
                log.error("cannot write %s to %s: %s; dropping lines until writing works again",
                          self.what, self.path, exc)
            self._failing = True
            self._close_quietly()
            return False
        self.written += 1
        if self._failing:
            self._failing = False
            log.warning("writing %s to %s again (%d lines dropped so far)", self.what, self.path, self.dropped)
        return True

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")
        # A line cut short (a crash, a full disk) must not swallow the next one.
        if self._file.tell() > 0:
            self._file.seek(-1, 2)
            if self._file.read(1) != b"\n":
                self._file.write(b"\n")
        self._file.close()
        self._file = open(self.path, "a", encoding="utf-8")

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        self._close_quietly()


def trigger_item(execution: "Execution") -> "tuple[str, Item] | None":
    """The trigger that started the execution and the item it emitted (who or what started it)."""
    for trigger in execution.flow.triggers:
        item = execution.latest.get(trigger.name)
        if item is not None:
            return trigger.name, item
    return None


def _number(uri: str) -> str:
    return parse_party(uri)[0]


# ---- what is kept per live call -------------------------------------------------------------
_REMOTE_AI = ("ai_provider_closed", "ai_provider_error", "ai_provider_timeout", "ai_connect_failed")


@dataclass(eq=False)
class LegRecord:
    id: str
    direction: str
    transport: str
    started: float
    role: str = ""  # caller | agent | customer | callee | ai
    remote: str = ""
    local: str = ""
    via: dict[str, str] | None = None  # outbound: {kind: trunk|extension|direct, ref}
    answered: float | None = None
    ended: float | None = None
    end_reason: str | None = None
    sip_code: int | None = None
    peer: "LegRecord | None" = None  # the last leg it was bridged to

    @property
    def ended_by_remote(self) -> bool:
        """The far end hung up or refused (not softswitch, whose reasons are its own words)."""
        reason = self.end_reason or ""
        if self.transport == "websocket":
            return reason in _REMOTE_AI
        return reason == "remote_hangup" or reason.startswith("sip_")

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "direction": self.direction, "transport": self.transport,
                "remote": self.remote, "via": self.via, "started": iso_utc(self.started),
                "answered": iso_utc(self.answered), "ended": iso_utc(self.ended), "end_reason": self.end_reason,
                "sip_code": self.sip_code}


@dataclass(eq=False)
class QueueVisit:
    name: str  # the queue's ref
    flow: str
    entry: str
    enqueued: float | None
    position: int | None = None
    outcome: str = "waiting"
    wait_s: float | None = None
    callback: bool = False  # the caller asked for a callback
    reason: str | None = None
    agent: str | None = None
    agent_leg: str | None = None

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "flow": self.flow, "entry": self.entry, "enqueued": iso_utc(self.enqueued),
                "position": self.position, "wait_seconds": _seconds(self.wait_s), "outcome": self.outcome,
                "reason": self.reason, "agent": self.agent, "agent_leg": self.agent_leg}


@dataclass(eq=False)
class TransferVisit:
    """One transfer an agent phone asked for (REFER) on this call."""

    id: str
    kind: str  # blind | attended
    by_leg: str
    by_extension: str | None
    to: str
    started: float
    route: str | None = None  # extension | trunk | flow | replaces
    target_leg: str | None = None
    result: str = "pending"  # transferred | failed | caller_hung_up
    sip_code: int | None = None
    reason: str | None = None
    ended: float | None = None

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "by_leg": self.by_leg, "by_extension": self.by_extension,
                "to": self.to, "route": self.route, "target_leg": self.target_leg, "result": self.result,
                "sip_code": self.sip_code, "reason": self.reason, "started": iso_utc(self.started),
                "ended": iso_utc(self.ended)}


@dataclass(eq=False)
class CallState:
    id: str
    kind: str  # inbound | outbound | callback
    started: float
    root: LegRecord | None = None
    legs: dict[str, LegRecord] = field(default_factory=dict)
    dials: list["Dial"] = field(default_factory=list)
    from_number: str = ""
    to_number: str = ""
    admitted_via: dict[str, str] | None = None
    flow: dict[str, str] | None = None
    queue: QueueVisit | None = None
    callback_of: str | None = None
    callback_entry: str | None = None
    recordings: list[str] = field(default_factory=list)
    recording_failures: list[dict[str, str]] = field(default_factory=list)  # disk errors: path, error
    transfers: list[TransferVisit] = field(default_factory=list)
    talk_s: float = 0.0
    bridges: dict[tuple[str, str], float] = field(default_factory=dict)  # open: (a, b) -> since
    finishing: bool = False

    @property
    def all_ended(self) -> bool:
        return bool(self.legs) and all(r.ended is not None for r in self.legs.values())


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 3)


# ---- a live call's state in the crash journal -------------------------------------------------
def call_state_json(call: CallState) -> dict[str, Any]:
    """What the journal keeps of a live call: enough to write its record after a crash (its
    dials are not kept: they die with the process)."""
    legs = []
    for rec in call.legs.values():
        leg = {f.name: getattr(rec, f.name) for f in fields(LegRecord) if f.name != "peer"}
        leg["peer"] = rec.peer.id if rec.peer is not None else None
        legs.append(leg)
    return {
        "id": call.id, "kind": call.kind, "started": call.started, "root": call.root.id if call.root else None,
        "legs": legs, "from_number": call.from_number, "to_number": call.to_number,
        "admitted_via": call.admitted_via, "flow": call.flow,
        "queue": asdict(call.queue) if call.queue is not None else None, "callback_of": call.callback_of,
        "callback_entry": call.callback_entry, "recordings": list(call.recordings),
        "transfers": [asdict(v) for v in call.transfers], "talk_s": call.talk_s,
        "bridges": [[a, b, since] for (a, b), since in call.bridges.items()],
    }


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def call_state_from_json(data: dict[str, Any]) -> CallState:
    """The inverse of `call_state_json` (KeyError, TypeError or ValueError if it is not one)."""
    call = CallState(str(data["id"]), str(data["kind"]), float(data["started"]))
    peers: dict[str, str] = {}
    for leg in data.get("legs") or []:
        rec = LegRecord(**_known(LegRecord, {k: v for k, v in leg.items() if k != "peer"}))
        call.legs[rec.id] = rec
        if leg.get("peer"):
            peers[rec.id] = leg["peer"]
    for leg_id, peer_id in peers.items():
        call.legs[leg_id].peer = call.legs.get(peer_id)
    call.root = call.legs.get(data.get("root") or "")
    call.from_number, call.to_number = data.get("from_number") or "", data.get("to_number") or ""
    call.admitted_via, call.flow = data.get("admitted_via"), data.get("flow")
    call.queue = QueueVisit(**_known(QueueVisit, data["queue"])) if data.get("queue") else None
    call.callback_of, call.callback_entry = data.get("callback_of"), data.get("callback_entry")
    call.recordings = [str(p) for p in data.get("recordings") or []]
    call.transfers = [TransferVisit(**_known(TransferVisit, v)) for v in data.get("transfers") or []]
    call.talk_s = float(data.get("talk_s") or 0.0)
    call.bridges = {(str(a), str(b)): float(since) for a, b, since in data.get("bridges") or []}
    return call


# ---- the records ----------------------------------------------------------------------------
class CallRecords(FlowObserver):
    """Groups legs into calls and writes each finished call as one JSON line (UA thread only).

    Memory is per live call (its legs, dials, recordings) and per waiting queue entry (the id of
    the call that queued it, for `callback_of`); everything is dropped once the line is written.
    `journal` (with `timers` for its heartbeat) keeps live calls' states for after a crash."""

    def __init__(self, path: Path, *, clock: "Clock", schedule: Callable[[Callable[[], None]], None],
                 new_id: Callable[[], str], target_of: Callable[[str], Any] = lambda _leg_id: None,
                 trigger_name: Callable[[str, str], str] = lambda _scope, ref: ref,
                 wall: Callable[[], float] = time.time, journal: CallJournal | None = None,
                 timers: "Timers | None" = None) -> None:
        self.out = JsonLines(path, "call records")
        self.journal = journal
        self._timers = timers
        self._dirty: dict[str, None] = {}  # calls changed this loop turn, journaled at its end
        self._flush_scheduled = False
        self._heartbeat: "TimerHandle | None" = None
        self.wall = WallClock(clock, wall)
        self._schedule = schedule
        self._new_id = new_id
        self._target_of = target_of  # leg id -> sip.dialer.DialTarget (kind, ref, uri) or None
        self._trigger_name = trigger_name  # (flow, queue ref) -> the Queue trigger's name
        self.calls: dict[str, CallState] = {}
        self._leg_call: dict[str, CallState] = {}
        self._loose: dict[str, LegRecord] = {}  # outbound legs no dial hook has claimed yet
        self._dial_call: dict[str, CallState] = {}
        self._entry_call: dict[str, CallState] = {}  # callback entry -> its callback call, while dispatching
        self._entry_origin: dict[str, str] = {}  # live queue entry -> the call that queued it
        self._detach: list[Callable[[], None]] = []
        self.closed = False

    @classmethod
    def for_engine(cls, engine: "FlowEngine", path: Path) -> "CallRecords":
        """Records for `engine`'s calls: watches every leg of its UA and its queue entries."""
        ua = engine.ua

        def target_of(leg_id: str) -> Any:
            return ua.dialer.target_of(leg_id) if ua.dialer is not None else None

        def trigger_name(scope: str, ref: str) -> str:
            return next((t.name for f in engine.flows if f.name == scope for t in f.triggers_of("queue")
                         if t.ref == ref), ref)

        records = cls(path, clock=ua.clock, schedule=ua.call_soon, new_id=lambda: ua.ids.new("call"),
                      target_of=target_of, trigger_name=trigger_name, timers=ua.timers,
                      journal=CallJournal.in_directory(ua.config.directories.state))
        records.recover_crashed()  # before any call of this process is recorded
        records._detach.append(ua.watch_legs(records))
        records._detach.append(engine.queues.engine.watch(records.queue_event))
        log.info("call records: %s", path)
        return records

    # ---- legs (UA leg watcher) ---------------------------------------------------------------
    def leg_created(self, leg: Any) -> None:
        if self.closed:
            return
        now = self.wall.now()
        rec = LegRecord(leg.id, leg.direction, getattr(leg, "transport", "sip"), now)
        if leg.direction == "inbound":
            rec.role, rec.remote, rec.local = "caller", _number(leg.remote_uri), _number(leg.local_uri)
            call = self._new_call("inbound", now)
            call.root = rec
            call.from_number, call.to_number = rec.remote, rec.local
            admission = getattr(leg, "admission", None)
            if admission is not None:
                call.admitted_via = {k: v for k, v in (("kind", admission.kind), ("ref", admission.ref),
                                                       ("extension", admission.extension),
                                                       ("group", admission.group)) if v}
            self._add_leg(call, rec)
        else:
            if rec.transport == "websocket":
                rec.role, rec.remote = "ai", leg.remote_uri
            else:
                target = self._target_of(leg.id)
                if target is not None:
                    rec.via = {"kind": target.kind, "ref": target.ref}
                rec.remote = _number(leg.remote_uri or (target.uri if target is not None else ""))
            self._loose[leg.id] = rec
        if leg.ended:  # failed while it was being placed: its LegEnded came first
            self._ended(rec, getattr(leg, "end_reason", None) or "failed", None, now)

    def leg_event(self, leg: Any, event: Any) -> None:
        if self.closed or not isinstance(event, (LegAnswered, LegEnded)):
            return
        rec = self._rec(event.leg_id)
        if rec is None:
            return
        now = self.wall.now()
        if isinstance(event, LegAnswered):
            if rec.answered is None:
                rec.answered = now
                self._touch(self._leg_call.get(rec.id))
            return
        if not rec.remote:
            rec.remote = _number(leg.remote_uri) if rec.transport == "sip" else leg.remote_uri
        if rec.transport == "sip" and leg.direction == "outbound" and not rec.local:
            rec.local = _number(leg.local_uri)
        self._ended(rec, event.reason, event.sip_code, now)

    def _ended(self, rec: LegRecord, reason: str, sip_code: int | None, now: float) -> None:
        if rec.ended is not None:
            return
        rec.ended, rec.end_reason, rec.sip_code = now, reason, sip_code
        call = self._leg_call.get(rec.id)
        if call is None:
            # Not claimed (yet): a dial hook may still claim it in this loop turn.
            self._schedule(lambda: self._settle_loose(rec.id))
            return
        self._touch(call)
        self._maybe_finish(call)

    def _settle_loose(self, leg_id: str) -> None:
        """An ended outbound leg no dial claimed: a call of its own."""
        rec = self._loose.pop(leg_id, None)
        if rec is None or self.closed:
            return
        call = self._new_call("outbound", rec.started)
        self._add_leg(call, rec)
        if call.all_ended:
            self._write(call, None)  # a loop turn after its end already

    # ---- flow hooks ------------------------------------------------------------------------
    def call_started(self, leg: Any, flow: "Flow", trigger: "Trigger") -> None:
        call = self._leg_call.get(leg.id)
        if call is not None and call.flow is None:
            call.flow = {"name": flow.name, "trigger": trigger.name}
            self._touch(call)

    def attempt_placed(self, dial: "Dial", leg: Any) -> None:
        call = self._dial_call.get(dial.id)
        if call is not None:
            self._adopt(call, leg.id)

    def dial_started(self, dial: "Dial", execution: "Execution") -> None:
        call = self._execution_call(execution)
        if call is None:
            call = self._new_call("outbound", self.wall.now())
            started_by = trigger_item(execution)
            call.flow = {"name": execution.flow.name, "trigger": started_by[0] if started_by else None}
        self._claim_dial(call, dial)

    def queue_dial_started(self, dial: "Dial", request: "OperatorDialRequest") -> None:
        call = self._leg_call.get(request.leg_id) if request.leg_id else None
        if call is None:
            call = self._new_call("callback" if request.leg_id is None else "outbound", self.wall.now())
            call.callback_of = self._entry_origin.get(request.entry_id)
            call.callback_entry = request.entry_id
            call.to_number = request.dial.caller_number
            call.flow = {"name": request.scope, "trigger": self._trigger_name(request.scope, request.ref)}
            call.queue = QueueVisit(request.ref, request.scope, request.entry_id, None, outcome="dispatching")
            self._entry_call[request.entry_id] = call
        self._claim_dial(call, dial)

    def bridged(self, a: Any, b: Any) -> None:
        now = self.wall.now()
        ra, rb = self._rec(a.id), self._rec(b.id)
        if ra is not None:
            ra.peer = rb
        if rb is not None:
            rb.peer = ra
        for call in self._calls_of(a.id, b.id):
            call.bridges[(a.id, b.id)] = now
            self._touch(call)

    def unbridged(self, a: Any, b: Any) -> None:
        now = self.wall.now()
        for call in self._calls_of(a.id, b.id):
            self._close_bridge(call, (a.id, b.id), now)
            self._touch(call)

    def recording_finished(self, leg_id: str, path: str) -> None:
        call = self._leg_call.get(leg_id)
        if call is not None and path not in call.recordings:
            call.recordings.append(path)
            self._touch(call)

    def recording_failed(self, leg_id: str, path: str, error: str) -> None:
        call = self._leg_call.get(leg_id)
        if call is not None:
            call.recording_failures.append({"leg": leg_id, "path": path, "error": error})

    def transfer_started(self, transfer: Any) -> None:
        call = self._leg_call.get(transfer.caller.id)
        if call is not None:
            call.transfers.append(TransferVisit(transfer.id, transfer.kind.value, transfer.agent.id,
                                                transfer.agent_extension, transfer.target, self.wall.now()))
            self._touch(call)

    def transfer_dial_started(self, transfer: Any, dial: "Dial") -> None:
        call = self._leg_call.get(transfer.caller.id)
        if call is not None:
            self._claim_dial(call, dial)  # the target's leg belongs to the transferred caller's call

    def transfer_finished(self, transfer: Any) -> None:
        call = self._leg_call.get(transfer.caller.id)
        visit = next((v for v in call.transfers if v.id == transfer.id), None) if call is not None else None
        if visit is None:
            return
        visit.to = transfer.target or visit.to
        visit.route = transfer.route.value if transfer.route is not None else None
        visit.target_leg, visit.result = transfer.target_leg, transfer.result.value
        visit.sip_code, visit.reason, visit.ended = transfer.sip_code, transfer.reason, self.wall.now()
        self._touch(call)
        if transfer.target_leg and visit.result == "transferred":
            self._move(call, transfer.target_leg)

    def _move(self, call: CallState, leg_id: str) -> None:
        """An attended transfer's target leaves the consultation call for the caller's call."""
        old = self._leg_call.get(leg_id)
        if old is None or old is call:
            return
        rec = old.legs.pop(leg_id, None)
        if rec is None:
            return
        self._add_leg(call, rec)
        if old.root is rec:
            old.root = None
        if old.legs:
            self._maybe_finish(old)
        else:
            self._forget(old)

    # ---- queue entry events ------------------------------------------------------------------
    def queue_event(self, event: "QueueEntryEvent") -> None:
        if self.closed:
            return
        kind = event.kind
        if kind in ("taken", "abandoned", "offline"):
            self._entry_origin.pop(event.entry_id, None)
        call = self._leg_call.get(event.leg_id) if event.leg_id else self._entry_call.get(event.entry_id)
        if call is None:
            return
        self._touch(call)
        now = self.wall.now()
        if kind in ("queued", "rejoined"):
            call.queue = QueueVisit(event.ref, event.scope, event.entry_id, now, position=event.detail.get("position"))
            self._entry_origin[event.entry_id] = call.id
            return
        visit = call.queue
        if visit is None or visit.entry != event.entry_id:
            return
        if call.kind == "callback":  # the entry's wait, since the original call queued it
            visit.enqueued = event.created_at
            wait = event.wait_s
        else:
            wait = now - (visit.enqueued if visit.enqueued is not None else now)
        if kind in ("callback_requested", "callback_cancelled"):
            visit.callback = kind == "callback_requested"
        elif kind == "taken":
            visit.outcome, visit.wait_s = "taken", wait
            visit.agent_leg = event.detail.get("agent_leg")
            agent = self._rec(visit.agent_leg) if visit.agent_leg else None
            if agent is not None and agent.via is not None and agent.via.get("kind") == "extension":
                visit.agent = agent.via.get("ref")
        elif kind == "callback_waiting":
            visit.outcome, visit.wait_s = "callback_requested", wait
        elif kind in ("abandoned", "offline"):
            visit.outcome, visit.wait_s = kind, wait
            visit.reason = event.detail.get("reason")
        elif kind == "dispatch_failed" and call.kind == "callback":
            visit.outcome, visit.reason = "agent_not_answered", event.detail.get("reason")
            self._entry_call.pop(event.entry_id, None)  # a retry is a new callback call

    # ---- grouping --------------------------------------------------------------------------
    def _new_call(self, kind: str, started: float) -> CallState:
        call = CallState(self._new_id(), kind, started)
        self.calls[call.id] = call
        self._touch(call)
        return call

    def _add_leg(self, call: CallState, rec: LegRecord) -> None:
        call.legs[rec.id] = rec
        self._leg_call[rec.id] = call
        self._touch(call)
        if call.started > rec.started:
            call.started = rec.started
        if rec.direction == "outbound" and rec.transport == "sip":
            kind = rec.via.get("kind") if rec.via else None
            rec.role = "agent" if kind == "extension" else ("customer" if call.kind == "callback" else "callee")

    def _adopt(self, call: CallState, leg_id: str) -> None:
        rec = self._loose.pop(leg_id, None)
        if rec is None:
            return
        self._add_leg(call, rec)
        if rec.ended is not None:
            self._maybe_finish(call)

    def _claim_dial(self, call: CallState, dial: "Dial") -> None:
        if dial.id in self._dial_call:
            return
        self._dial_call[dial.id] = call
        call.dials.append(dial)
        for leg_id in list(dial.attempts):
            self._adopt(call, leg_id)
        dial.on_finalized(lambda _final: self._maybe_finish(call))

    def _execution_call(self, execution: "Execution") -> CallState | None:
        """The call of the leg (or dial) that triggered `execution`, if it is still live."""
        started_by = trigger_item(execution)
        if started_by is None:
            return None
        ids, payload = started_by[1].sip_pbx, started_by[1].json
        for leg_id in (ids.get("legId"), payload.get("legId"), payload.get("aiLegId"), payload.get("peerLegId")):
            call = self._leg_call.get(leg_id) if isinstance(leg_id, str) else None
            if call is not None:
                return call
        dial_id = ids.get("dialId") or payload.get("dialId")
        return self._dial_call.get(dial_id) if isinstance(dial_id, str) else None

    def _rec(self, leg_id: str | None) -> LegRecord | None:
        if not leg_id:
            return None
        call = self._leg_call.get(leg_id)
        return call.legs.get(leg_id) if call is not None else self._loose.get(leg_id)

    def _calls_of(self, *leg_ids: str) -> list[CallState]:
        calls: list[CallState] = []
        for leg_id in leg_ids:
            call = self._leg_call.get(leg_id)
            if call is not None and call not in calls:
                calls.append(call)
        return calls

    def _close_bridge(self, call: CallState, key: tuple[str, str], now: float) -> None:
        since = call.bridges.pop(key, None)
        if since is None:
            return
        a, b = (self._rec(k) for k in key)
        start = max([since] + [r.answered if r.answered is not None else now for r in (a, b) if r is not None])
        end = min([now] + [r.ended for r in (a, b) if r is not None and r.ended is not None])
        call.talk_s += max(0.0, end - start)

    # ---- writing ---------------------------------------------------------------------------
    def _maybe_finish(self, call: CallState) -> None:
        """Once every leg has ended and no dial of the call still places attempts, write it on
        the next loop turn: what the same turn still does (the queue noticing the hang-up, the
        recording finalized, the bridge detached) belongs in the record."""
        if call.finishing or not call.all_ended or any(not d.finalized for d in call.dials):
            return
        call.finishing = True
        self._schedule(lambda: self._finish(call.id))

    def _finish(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        call.finishing = False
        if not call.all_ended or any(not d.finalized for d in call.dials):
            return  # a leg was added meanwhile
        self._write(call, None)

    def _write(self, call: CallState, hangup: dict[str, Any] | None) -> None:
        legs = list(call.legs.values())
        ended = max((r.ended for r in legs if r.ended is not None), default=call.started)
        for key in list(call.bridges):
            self._close_bridge(call, key, ended)
        root = call.root
        answered = root.answered if root is not None else min(
            (r.answered for r in legs if r.answered is not None), default=None)
        visit = call.queue
        if visit is not None and visit.outcome in ("waiting", "dispatching"):
            # Still queued when the call ended (or the queue closed first): how it left.
            if call.kind == "callback":
                visit.outcome = "agent_not_answered"
            else:
                visit.outcome = "callback_requested" if visit.callback else "abandoned"
                if visit.enqueued is not None:
                    visit.wait_s = (root.ended if root is not None and root.ended else ended) - visit.enqueued
        from_number, to_number = call.from_number, call.to_number
        if call.kind != "inbound":
            agent = next((r for r in legs if r.role == "agent"), None)
            far = next((r for r in legs if r.role in ("customer", "callee")), None)
            first = far or (legs[0] if legs else None)
            from_number = (agent.via or {}).get("ref", "") if call.kind == "callback" and agent else (
                first.local if first is not None else "")
            to_number = to_number or (first.remote if first is not None else "")
        record = {
            "call": call.id, "kind": call.kind, "callback_of": call.callback_of,
            "started": iso_utc(call.started), "answered": iso_utc(answered), "ended": iso_utc(ended),
            "duration_seconds": _seconds(ended - call.started), "from": from_number, "to": to_number,
            "admitted_via": call.admitted_via, "flow": call.flow, "legs": [r.json() for r in legs],
            "queue": visit.json() if visit is not None else None, "talk_seconds": _seconds(call.talk_s),
            "recordings": list(call.recordings), "hangup": hangup or self._hangup(call, legs),
        }
        if call.recording_failures:  # only calls whose recording hit a disk error carry the key
            record["recording_failures"] = list(call.recording_failures)
        if call.transfers:  # only calls with a transfer carry the key (earlier records unchanged)
            record["transfers"] = [v.json() for v in call.transfers]
        self.out.write(record)
        if self.journal is not None:
            self._dirty.pop(call.id, None)
            self.journal.ended(call.id)
        self._forget(call)

    @staticmethod
    def _hangup(call: CallState, legs: list[LegRecord]) -> dict[str, Any]:
        """Who ended the call: the anchor leg (the root; else the first answered leg) if its far
        end hung up, else its last bridged peer if that one's far end hung up first, else softswitch."""
        anchor = call.root or next((r for r in legs if r.answered is not None), None) or (legs[0] if legs else None)
        if anchor is None:
            return {"by": "softswitch", "leg": None, "reason": None, "sip_code": None}
        source, by = anchor, "softswitch"
        peer = anchor.peer
        if anchor.ended_by_remote:
            by = anchor.role
        elif (peer is not None and peer.ended is not None and anchor.ended is not None
              and peer.ended <= anchor.ended and peer.ended_by_remote):
            source, by = peer, peer.role
        return {"by": by, "leg": source.id, "reason": source.end_reason, "sip_code": source.sip_code}

    def _forget(self, call: CallState) -> None:
        self.calls.pop(call.id, None)
        for leg_id in call.legs:
            if self._leg_call.get(leg_id) is call:
                del self._leg_call[leg_id]
        for dial in call.dials:
            if self._dial_call.get(dial.id) is call:
                del self._dial_call[dial.id]
        if call.callback_entry and self._entry_call.get(call.callback_entry) is call:
            del self._entry_call[call.callback_entry]
        call.dials.clear()

    def close(self) -> None:
        """Shutdown: every call still open is written now; legs still up end as `daemon_shutdown`."""
        if self.closed:
            return
        for leg_id in list(self._loose):
            self._settle_loose(leg_id)
        now = self.wall.now()
        for call in list(self.calls.values()):
            if call.all_ended:
                self._write(call, None)  # over already, its line not yet written
                continue
            for rec in call.legs.values():
                if rec.ended is None:
                    rec.ended, rec.end_reason = now, "daemon_shutdown"
            self._write(call, {"by": "softswitch", "leg": None, "reason": "daemon_shutdown", "sip_code": None})
        self.closed = True
        for detach in self._detach:
            detach()
        self._entry_origin.clear()
        self.out.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self.journal is not None:
            self.journal.close()  # every call is written: a clean stop leaves no journal

    # ---- the crash journal -------------------------------------------------------------------
    def _touch(self, call: CallState | None) -> None:
        """`call` changed: journal its state at the end of this loop turn (one line per call
        per turn, however many changes the turn made)."""
        if self.journal is None or call is None or self.closed:
            return
        self._dirty[call.id] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._schedule(self._flush_journal)

    def _flush_journal(self) -> None:
        self._flush_scheduled = False
        if self.journal is None or self.closed:
            return
        now = self.wall.now()
        for call_id in self._dirty:
            call = self.calls.get(call_id)
            # A call over within the turns it lived in is written on the next turn: never journaled.
            if call is not None and not (call.finishing and not self.journal.has(call_id)):
                self.journal.note(call_id, call_state_json(call), now)
        self._dirty.clear()
        self._arm_heartbeat()

    def _arm_heartbeat(self) -> None:
        if (self._timers is None or self.journal is None or not self.journal.live
                or (self._heartbeat is not None and self._heartbeat.active)):
            return
        self._heartbeat = self._timers.schedule(JOURNAL_HEARTBEAT_S, self._beat, "records:journal-heartbeat")

    def _beat(self) -> None:
        self._heartbeat = None
        if self.closed or self.journal is None:
            return
        self.journal.alive(self.wall.now())
        self._arm_heartbeat()

    def recover_crashed(self) -> int:
        """At start, before this process records anything: write the calls the journal of the
        last process holds (cut off by a crash) with hang-up reason `process_crashed`, legs
        still up ending when that process was last seen alive; then empty the journal."""
        if self.journal is None:
            return 0
        contents = self.journal.read()
        written = 0
        for call_id, state in contents.calls.items():
            try:
                call = call_state_from_json(state)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("call journal %s: cannot read call %s (%s); it gets no record", self.journal.path,
                          call_id, exc)
                continue
            last_seen = max([contents.last_seen or call.started, call.started]
                            + [t for r in call.legs.values() for t in (r.started, r.answered, r.ended) if t])
            for rec in call.legs.values():
                if rec.ended is None:
                    rec.ended, rec.end_reason = last_seen, CRASHED
            if call.queue is not None and call.queue.outcome in ("waiting", "dispatching"):
                call.queue.reason = "restart"  # the queue's own event says the same
            self.calls[call.id] = call  # known while it is written (its bridges' legs), then forgotten
            for leg_id in call.legs:
                self._leg_call[leg_id] = call
            self._write(call, {"by": "softswitch", "leg": None, "reason": CRASHED, "sip_code": None})
            written += 1
        self.journal.clear()
        if written:
            log.warning("call records: %d call(s) cut off when the last run stopped without a shutdown, "
                        "written with hang-up reason %s (from %s)", written, CRASHED, self.journal.path)
        return written
