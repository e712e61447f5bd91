"""The queue engine (reference §3): placement, dispatch to operators, retries, callback, stats.

`QueueEngine` owns every queue entry and runs on the UA thread. It knows SIP and flows only
through four small interfaces, so unit tests drive it with fakes on a `VirtualClock`:
`Operators` (who is online / free), `OperatorDialer` (start and break an extension dial),
`QueueSink` (trigger events, leg interrupts, leg status) and `QueueTriggers` (which extensions a
queue trigger dispatches to). Every change that matters is in the `QueueStore` before the
method that made it returns.

Evaluation ("branch", §3.3) is one pass over the idle entries in queue order, run on the next
loop turn after anything that may change its outcome (placement, an availability change, a
retry cooldown ending, a trigger appearing), so a burst of changes costs one pass and no
callback re-enters it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

from ..clock import TimerHandle, Timers
from ..ids import IdFactory
from .model import (DialConfig, EntryMode, QueueDispatch, QueueEntry, QueueEvent, QueueOffline, QueuePlaced,
                    QueueStats, Releasable)
from .store import CompletionStats, QueueStore, QueueStoreError

log = logging.getLogger("softswitch.queue")

RETRY_ATTEMPTS = 3  # trigger.queue defaults (§2.1)
RETRY_PAUSE_S = 30.0
QUEUE_PLACED = "call_queue_placed"
QUEUE_REMOVED = "call_queue_removed"
RESTART = "restart"  # the reason of the events for live entries a restart found (their callers gone)


class QueueError(RuntimeError):
    """A queue operation was refused; the message says why (flows turn it into NodeFailed)."""


# ---- what the engine needs from the rest of softswitch ----------------------------------------
class Operators(Protocol):
    """Operator availability (`sip.extensions.Extensions`)."""

    def online(self, extension: str) -> bool: ...

    def free(self, extension: str) -> bool: ...


@dataclass(frozen=True)
class OperatorDialRequest:
    entry_id: str
    extensions: tuple[str, ...]
    dial: DialConfig
    scope: str = ""  # the entry's flow and queue (call records group the dialed legs by them)
    ref: str = ""
    leg_id: str | None = None  # the live caller; None for a callback


@dataclass(frozen=True)
class DialOutcome:
    """How an operator dial ended: answered (the entry is taken) or not, with the reason."""

    dial_id: str
    answered: bool
    reason: str | None = None
    winner_leg_id: str | None = None


class OperatorDialer(Protocol):
    def start(self, request: OperatorDialRequest, on_final: Callable[[DialOutcome], None]) -> str | None:
        """Start an extension dial to `request.extensions`; its dial id, or None if no endpoint
        could be dialled. `on_final` is called once, later (never from inside `start`)."""

    def cancel(self, dial_id: str, reason: str) -> None:
        """Break a running dial (a no-op once it is finalized)."""


class QueueSink(Protocol):
    def publish(self, event: QueueEvent) -> None:
        """Fire the Queue trigger's Placed / Dispatch / Offline branch."""

    def interrupt(self, leg_id: str, reason: str) -> None:
        """Publish `call_queue_placed` / `call_queue_removed` on a live caller leg."""

    def set_queued(self, leg_id: str, queued: bool) -> None:
        """Leg status queued (True) or back to answered (False)."""


class QueueTriggers(Protocol):
    def extensions_of(self, scope: str, ref: str) -> tuple[str, ...] | None:
        """The operator extensions of the active Queue trigger `ref` in flow `scope`; None when
        no such trigger is active (the entry then waits for one)."""


ENTRY_EVENTS = ("queued", "rejoined", "placed", "position", "callback_requested", "callback_cancelled",
                "dispatch_started", "dispatch_failed", "taken", "callback_waiting", "abandoned", "offline")


@dataclass(frozen=True)
class QueueEntryEvent:
    """Something that happened to one entry, for operators (queue event log, call records);
    flows see `QueueEvent`s instead. `kind` is one of ENTRY_EVENTS; `size` is the queue's
    entries after the event; `detail` holds what the kind adds (dial, extensions, reason …)."""

    kind: str
    scope: str
    ref: str
    entry_id: str
    leg_id: str | None
    caller_number: str
    mode: str
    created_at: float  # epoch seconds the entry was queued
    at: float  # epoch seconds of the event
    size: int
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def wait_s(self) -> float:
        return max(0.0, self.at - self.created_at)


@dataclass(frozen=True)
class RecoveryReport:
    kept: int  # callback entries back at their positions
    converted: int  # live entries with callback enabled, now callback entries
    dropped: int  # live entries whose caller died with the process


# ---- the engine -------------------------------------------------------------------------------
class QueueEngine:
    def __init__(self, store: QueueStore, timers: Timers, operators: Operators, dialer: OperatorDialer,
                 sink: QueueSink, triggers: QueueTriggers, *, wall: Callable[[], float] = time.time,
                 new_id: Callable[[], str] | None = None, recovery_grace_s: float = 600.0) -> None:
        self.store = store
        self.timers = timers
        self.operators = operators
        self.dialer = dialer
        self.sink = sink
        self.triggers = triggers
        self.wall = wall  # epoch seconds: enqueue times and cooldowns survive restarts
        self._new_id = new_id or (lambda ids=IdFactory(): ids.new("queue_entry"))
        self.recovery_grace_s = recovery_grace_s
        self._entries: dict[str, QueueEntry] = {}
        self._by_leg: dict[str, QueueEntry] = {}
        self._stats: dict[tuple[str, str], CompletionStats] = {}
        self._retry_timers: dict[str, TimerHandle] = {}
        self._pass: TimerHandle | None = None
        self._pass_view: _PassView | None = None
        self._recovered: set[str] = set()
        self._grace_until = 0.0
        self._waiting_for_trigger: set[str] = set()
        self._watchers: list[Callable[[QueueEntryEvent], None]] = []
        self.closed = False

    def watch(self, watcher: Callable[[QueueEntryEvent], None]) -> Callable[[], None]:
        """Tell `watcher` every entry event from now on (after the change is stored); returns a remover."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher) if watcher in self._watchers else None

    # ---- start ----------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Load the stored queues (once, at start). Callback entries come back at their positions
        with their retry timers; a live entry's caller died with the process, so it becomes a
        callback entry if the caller enabled callback (event `callback_waiting`), and is dropped
        otherwise (event `abandoned`), both with reason `restart`: watchers attached before this
        call hear them. Phones must
        register again after a restart, so recovered entries are not sent Offline for lack of
        online operators until `recovery_grace_s` has passed."""
        self._stats = self.store.all_stats()
        kept = converted = dropped = 0
        left: list[tuple[str, QueueEntry, str | None]] = []  # the restart's events, once all are loaded
        for entry in self.store.load():
            if entry.live:
                left.append(("callback_waiting" if entry.callback_enabled else "abandoned", entry, entry.leg_id))
                if not entry.callback_enabled:
                    self.store.delete(entry.id)
                    entry.to_ended()
                    dropped += 1
                    continue
                entry.to_callback()
                self.store.save(entry)
                converted += 1
            else:
                kept += 1
            self._entries[entry.id] = entry
            self._recovered.add(entry.id)
            self._arm_retry(entry)
        for kind, entry, leg_id in left:  # the caller's call died with the process
            position = {} if entry.ended else {"position": self._position(entry)}
            self._note(kind, entry, leg_id=leg_id, reason=RESTART, **position)
        if self._recovered:
            self._grace_until = self.wall() + self.recovery_grace_s
            self.timers.schedule(self.recovery_grace_s, self._evaluate_soon, "queue:recovery-grace")
            self._evaluate_soon()
        report = RecoveryReport(kept, converted, dropped)
        if kept or converted or dropped:
            log.info("queues recovered from %s: %d callback entries kept, %d live entries turned into callbacks, "
                     "%d live entries dropped (their callers were gone)", self.store.path, kept, converted, dropped)
        return report

    # ---- placement (§3.2) -------------------------------------------------------------------
    def put(self, *, scope: str, ref: str, leg_id: str, trunk_ref: str, dial: DialConfig,
            retain: Callable[[str], Releasable] | None = None, placement: str = "back", rejoin: bool = True,
            retry_attempts: int = RETRY_ATTEMPTS, retry_pause_s: float = RETRY_PAUSE_S) -> QueueEntry:
        """Queue a live caller leg; the leg is interrupted with `call_queue_placed` and the entry
        is evaluated on the next loop turn. `retain(entry_id)` takes the entry's hold on the
        caller leg (a `queue:<entryId>` ticket), released when the entry lets go of it."""
        self._check_open()
        if self.triggers.extensions_of(scope, ref) is None:
            raise QueueError(f"no active queue trigger with ref {ref!r} in flow {scope!r}")
        if leg_id in self._by_leg:
            raise QueueError(f"leg {leg_id} is already queued (in {self._by_leg[leg_id].ref!r}); a leg owns one entry")
        retry_attempts = max(0, int(retry_attempts))
        retry_pause_s = max(0.0, float(retry_pause_s))
        entry = self._rejoin_candidate(scope, ref, trunk_ref, dial.caller_number) if rejoin else None
        if entry is not None:
            self._abort_dial(entry, "queue_rejoined")
            entry.to_rejoined(leg_id, retain(entry.id) if retain else None)
            entry.retry_attempts, entry.retry_pause_s = retry_attempts, retry_pause_s
            self._cancel_retry(entry)
            self._recovered.discard(entry.id)
            what = "rejoined"
        else:
            positions = [e.position for e in self._entries.values()]
            position = (min(positions, default=1) - 1) if placement == "front" else (max(positions, default=0) + 1)
            entry = QueueEntry(id=self._new_id(), scope=scope, ref=ref, trunk_ref=trunk_ref, dial=dial,
                               created_at=self.wall(), position=position, leg_id=leg_id,
                               retry_attempts=retry_attempts, retry_pause_s=retry_pause_s)
            entry.retention = retain(entry.id) if retain else None
            self._entries[entry.id] = entry
            what = "queued"
        try:
            self.store.save(entry)
        except QueueStoreError:
            # Not acknowledged: forget it here (a stored callback entry is recovered at restart).
            self._forget(entry)
            entry.to_ended()
            raise
        self._by_leg[leg_id] = entry
        position = self._position(entry)
        log.info("%s: %s in queue %s (flow %s) as %s, position %d", leg_id, what, ref, scope, entry.id, position)
        self._note(what, entry, position=position)
        self.sink.set_queued(leg_id, True)
        self.sink.interrupt(leg_id, QUEUE_PLACED)
        self._evaluate_soon()
        return entry

    def set_callback(self, leg_id: str, enabled: bool) -> QueueEntry:
        """`queue.setCallback`: only a flag on the live entry; the caller stays queued (§3.4)."""
        self._check_open()
        entry = self._by_leg.get(leg_id)
        if entry is None:
            raise QueueError(f"leg {leg_id} has no queue entry (queue.putLeg first)")
        entry.callback_enabled = bool(enabled)
        self.store.save(entry)
        log.info("%s: callback %s for queue entry %s", leg_id, "enabled" if enabled else "disabled", entry.id)
        self._note("callback_requested" if enabled else "callback_cancelled", entry)
        return entry

    # ---- what happens to callers and operators ------------------------------------------------
    def leg_ended(self, leg_id: str) -> None:
        """The caller hung up: callback mode at the same position, or silent removal (§3.4)."""
        entry = self._by_leg.pop(leg_id, None) if not self.closed else None
        if entry is None or entry.ended:
            return
        if entry.callback_enabled and entry.live:
            self._abort_dial(entry, "queue_callback")
            entry.to_callback()
            entry.retry_not_before = self.wall() + entry.retry_pause_s
            self.store.save(entry)
            self._arm_retry(entry)
            position = self._position(entry)
            log.info("%s: caller hung up; queue entry %s waits for a callback at position %d",
                     leg_id, entry.id, position)
            self._note("callback_waiting", entry, leg_id=leg_id, position=position)
        else:
            self._end(entry, "queue_entry_removed")
            log.info("%s: caller hung up; removed from queue %s", leg_id, entry.ref)
            self._note("abandoned", entry, leg_id=leg_id)

    def dial_finalized(self, outcome: DialOutcome) -> None:
        """The operator dial ended: answered takes the entry; anything else is a retry (§3.3.5)."""
        if self.closed:
            return
        entry = next((e for e in self._entries.values()
                      if e.dispatching and e.dispatched_dial_id == outcome.dial_id), None)
        if entry is None:
            return  # aborted by the queue itself (callback, removal, rejoin): already handled
        if outcome.answered:
            self._take(entry, outcome)
            return
        entry.to_idle()
        entry.retry_count += 1
        if entry.retry_count > entry.retry_attempts:
            log.info("queue %s entry %s: operator dial %s ended (%s); no retries left", entry.ref, entry.id,
                     outcome.dial_id, outcome.reason)
            self._note("dispatch_failed", entry, dial=outcome.dial_id, reason=outcome.reason,
                       retry=entry.retry_count, retries=entry.retry_attempts, retry_in_seconds=None)
            self._offline(entry, "queue_retries_exhausted")
            return
        self._maybe_placed(entry)
        entry.retry_not_before = self.wall() + entry.retry_pause_s
        self.store.save(entry)
        self._arm_retry(entry)
        log.info("queue %s entry %s: operator dial %s ended (%s); retry %d of %d in %g s", entry.ref, entry.id,
                 outcome.dial_id, outcome.reason, entry.retry_count, entry.retry_attempts, entry.retry_pause_s)
        self._note("dispatch_failed", entry, dial=outcome.dial_id, reason=outcome.reason, retry=entry.retry_count,
                   retries=entry.retry_attempts, retry_in_seconds=entry.retry_pause_s)

    def availability_changed(self, extension: str | None = None) -> None:
        """An operator registered, unregistered, expired, or started or ended a call."""
        if not self.closed and self._entries:
            self._evaluate_soon()

    def refresh(self) -> None:
        """Queue triggers may have appeared or gone (flows reloaded)."""
        if not self.closed and self._entries:
            self._waiting_for_trigger.clear()
            self._evaluate_soon()

    # ---- stats (§3.5) -----------------------------------------------------------------------
    def stats(self, scope: str, ref: str) -> QueueStats:
        completion = self._stats.get((scope, ref), CompletionStats())
        return QueueStats(ref=ref, size=len(self.entries(scope, ref)), average_wait_s=completion.average_wait_s,
                          completed_count=completion.completed_count, updated_at_ms=int(self.wall() * 1000))

    def stats_for_leg(self, leg_id: str) -> QueueStats:
        entry = self._by_leg.get(leg_id)
        if entry is None:
            raise QueueError(f"leg {leg_id} is not queued")
        whole = self.stats(entry.scope, entry.ref)
        position = self._position(entry)
        self._note("position", entry, position=position)  # the hold loop tells the caller
        return QueueStats(ref=whole.ref, size=whole.size, average_wait_s=whole.average_wait_s,
                          completed_count=whole.completed_count, updated_at_ms=whole.updated_at_ms,
                          leg_id=leg_id, position=position, estimated_answer_s=whole.average_wait_s * position)

    def stats_json(self, queues: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
        """Every queue's statistics as JSON-ready data (for metrics and status): the (flow, ref)
        pairs in `queues` (the active Queue triggers) and any queue with entries or completed
        waits. Each carries `queue.getStats`'s fields plus live/callback/dispatching counts and
        the longest current wait."""
        now = self.wall()
        by_queue: dict[tuple[str, str], list[QueueEntry]] = {}
        for entry in self._entries.values():
            if not entry.ended:
                by_queue.setdefault((entry.scope, entry.ref), []).append(entry)
        keys = dict.fromkeys([*queues, *sorted(by_queue), *sorted(self._stats)])
        out = []
        for scope, ref in keys:
            entries = by_queue.get((scope, ref), [])
            completion = self._stats.get((scope, ref), CompletionStats())
            out.append({
                "flow": scope, "ref": ref, "size": len(entries), "averageWaitSeconds": completion.average_wait_s,
                "completedCount": completion.completed_count, "updatedAt": int(now * 1000),
                "live": sum(1 for e in entries if e.live), "callbacks": sum(1 for e in entries if not e.live),
                "dispatching": sum(1 for e in entries if e.dispatching),
                "longestWaitSeconds": round(max((now - e.created_at for e in entries), default=0.0), 3)})
        return {"queues": out, "updatedAt": int(now * 1000)}

    def entries(self, scope: str, ref: str) -> list[QueueEntry]:
        """A queue's entries in order (callback entries included)."""
        return sorted((e for e in self._entries.values() if e.scope == scope and e.ref == ref and not e.ended),
                      key=_order)

    def close(self) -> None:
        """Stop timers and close the database. Entries stay stored as they are: a restart
        recovers them (see `recover`)."""
        if self.closed:
            return
        self.closed = True
        for handle in self._retry_timers.values():
            handle.cancel()
        self._retry_timers.clear()
        if self._pass is not None:
            self._pass.cancel()
        self.store.close()

    # ---- evaluation (§3.3) --------------------------------------------------------------------
    def _evaluate_soon(self) -> None:
        if self.closed or (self._pass is not None and self._pass.active):
            return
        self._pass = self.timers.schedule(0.0, self._evaluate, "queue:evaluate")

    def _evaluate(self) -> None:
        now = self.wall()
        self._pass_view = _PassView(self.operators)
        try:
            for entry in sorted(self._entries.values(), key=_order):
                if self.closed:
                    return
                if entry.ended or entry.dispatching or entry.id not in self._entries:
                    continue
                if entry.retry_not_before > now:
                    timer = self._retry_timers.get(entry.id)
                    if timer is None or not timer.active:  # the wall clock lagged the timer: look again
                        self._arm_retry(entry)
                    continue
                self._branch(entry, now)
        finally:
            self._pass_view = None

    def _branch(self, entry: QueueEntry, now: float) -> None:
        configured = self.triggers.extensions_of(entry.scope, entry.ref)
        if configured is None:
            if entry.id not in self._waiting_for_trigger:
                self._waiting_for_trigger.add(entry.id)
                log.warning("queue %s entry %s waits: no active queue trigger %r in flow %r",
                            entry.ref, entry.id, entry.ref, entry.scope)
            return
        view = self._pass_view or _PassView(self.operators)
        online = view.online(configured)
        if not online:
            if entry.id in self._recovered and now < self._grace_until:
                return  # after a restart, phones have not registered again yet
            self._offline(entry, "queue_offline")
            return
        if entry.scope not in view.reserved:
            view.reserved[entry.scope] = {x for e in self._entries.values() if e.dispatching and e.scope == entry.scope
                                          for x in e.reserved_extensions}
        reserved = view.reserved[entry.scope]
        available = tuple(x for x in online if x not in reserved and view.free(x))
        if not available:
            self._maybe_placed(entry)
            return
        request = OperatorDialRequest(entry.id, available, entry.dial, entry.scope, entry.ref,
                                      entry.leg_id if entry.live else None)
        dial_id = self.dialer.start(request, self.dial_finalized)
        if not dial_id:
            self._maybe_placed(entry)  # nobody could be rung after all: wait for the next change
            return
        entry.to_dispatching(dial_id, available)
        reserved.update(available)
        self._recovered.discard(entry.id)
        leg_id = entry.leg_id if entry.live else None
        log.info("queue %s entry %s: dispatching %s to %s (dial %s)", entry.ref, entry.id, entry.mode.value,
                 ", ".join(available), dial_id)
        self._note("dispatch_started", entry, dial=dial_id, extensions=list(available))
        self.sink.publish(QueueDispatch(entry.scope, entry.ref, entry.caller_number, entry.caller_name,
                                        entry.trunk_ref, mode=entry.mode.value, dial_id=dial_id, leg_id=leg_id))

    def _maybe_placed(self, entry: QueueEntry) -> None:
        """Placed: once per live period, only while the caller is on the line."""
        if not entry.live or entry.placed_published or entry.leg_id is None:
            return
        entry.placed_published = True
        log.info("queue %s entry %s: placed (no operator free)", entry.ref, entry.id)
        self._note("placed", entry)
        self.sink.publish(QueuePlaced(entry.scope, entry.ref, entry.caller_number, entry.caller_name,
                                      entry.trunk_ref, leg_id=entry.leg_id))

    # ---- endings ----------------------------------------------------------------------------
    def _take(self, entry: QueueEntry, outcome: DialOutcome) -> None:
        """An operator answered: completion stats, entry ended, caller told and let go."""
        now = self.wall()
        wait_s = now - entry.created_at
        leg_id = entry.leg_id if entry.live else None
        self._forget(entry)
        entry.to_ended()  # releases the caller: the flow bridges it within the free-TTL
        self._stats[(entry.scope, entry.ref)] = self.store.complete(entry, wait_s, now)
        log.info("queue %s entry %s: taken by %s after %.1f s (dial %s)", entry.ref, entry.id,
                 outcome.winner_leg_id or "an operator", wait_s, outcome.dial_id)
        self._note("taken", entry, dial=outcome.dial_id, agent_leg=outcome.winner_leg_id)
        if leg_id is not None:
            self.sink.set_queued(leg_id, False)
            self.sink.interrupt(leg_id, QUEUE_REMOVED)

    def _offline(self, entry: QueueEntry, reason: str) -> None:
        mode, leg_id = entry.mode.value, (entry.leg_id if entry.live else None)
        self._end(entry, reason)
        if leg_id is not None:
            self.sink.set_queued(leg_id, False)
            self.sink.interrupt(leg_id, QUEUE_REMOVED)
        log.info("queue %s entry %s: offline (%s)", entry.ref, entry.id, reason)
        self._note("offline", entry, reason=reason)
        self.sink.publish(QueueOffline(entry.scope, entry.ref, entry.caller_number, entry.caller_name,
                                       entry.trunk_ref, mode=mode, leg_id=leg_id, reason=reason))

    def _end(self, entry: QueueEntry, reason: str) -> None:
        self._abort_dial(entry, reason)
        self._forget(entry)
        entry.to_ended()
        self.store.delete(entry.id)

    def _forget(self, entry: QueueEntry) -> None:
        self._cancel_retry(entry)
        self._entries.pop(entry.id, None)
        self._recovered.discard(entry.id)
        self._waiting_for_trigger.discard(entry.id)
        if entry.leg_id is not None and self._by_leg.get(entry.leg_id) is entry:
            del self._by_leg[entry.leg_id]

    def _abort_dial(self, entry: QueueEntry, reason: str) -> None:
        """Break the entry's operator dial; idle first, so its finalization is not a retry."""
        dial_id = entry.dispatched_dial_id
        if dial_id is None:
            return
        entry.to_idle()
        self.dialer.cancel(dial_id, reason)

    # ---- helpers ------------------------------------------------------------------------------
    def _note(self, kind: str, entry: QueueEntry, *, leg_id: str | None = None, **detail: Any) -> None:
        """Tell the watchers (none: no cost beyond this check); a failing watcher is logged.
        The event's leg is `leg_id` (a caller that just left), else the live entry's caller."""
        if not self._watchers:
            return
        size = sum(1 for e in self._entries.values() if e.scope == entry.scope and e.ref == entry.ref and not e.ended)
        event = QueueEntryEvent(kind, entry.scope, entry.ref, entry.id, leg_id or (entry.leg_id if entry.live else None),
                                entry.caller_number, entry.mode.value, entry.created_at, self.wall(), size, detail)
        for watcher in list(self._watchers):
            try:
                watcher(event)
            except Exception:
                log.exception("queue %s entry %s: a watcher of %s failed", entry.ref, entry.id, kind)

    def _rejoin_candidate(self, scope: str, ref: str, trunk_ref: str, caller_number: str) -> QueueEntry | None:
        if not caller_number:
            return None
        candidates = [e for e in self._entries.values()
                      if e.scope == scope and e.ref == ref and e.trunk_ref == trunk_ref and not e.ended
                      and e.mode is EntryMode.CALLBACK and e.caller_number == caller_number]
        return min(candidates, key=lambda e: e.created_at, default=None)  # the oldest wins

    def _position(self, entry: QueueEntry) -> int:
        return next(i for i, e in enumerate(self.entries(entry.scope, entry.ref), 1) if e is entry)

    def _arm_retry(self, entry: QueueEntry) -> None:
        self._cancel_retry(entry)
        delay = entry.retry_not_before - self.wall()
        if delay > 0:
            self._retry_timers[entry.id] = self.timers.schedule(delay, self._evaluate_soon, f"queue:retry:{entry.id}")
        else:
            self._evaluate_soon()

    def _cancel_retry(self, entry: QueueEntry) -> None:
        handle = self._retry_timers.pop(entry.id, None)
        if handle is not None:
            handle.cancel()

    def _check_open(self) -> None:
        if self.closed:
            raise QueueError("the queue engine is shut down")


def _order(entry: QueueEntry) -> tuple[int, float]:
    return entry.position, entry.created_at


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        value = value.strip()
        if value:
            seen.setdefault(value, None)
    return list(seen)


class _PassView:
    """Operator availability for one evaluation pass over the queue order.

    Every waiting entry of a queue asks about the same operators; asking the registrar once per
    operator per pass (not once per operator per entry) keeps a pass linear in entries plus
    operators. Extensions reserved by a dispatch made in this pass are added as it goes."""

    def __init__(self, operators: Operators) -> None:
        self.operators = operators
        self._online: dict[str, bool] = {}
        self._free: dict[str, bool] = {}
        self._lists: dict[tuple[str, ...], list[str]] = {}
        self.reserved: dict[str, set[str]] = {}

    def online(self, configured: tuple[str, ...] | list[str]) -> list[str]:
        key = tuple(configured)
        if key not in self._lists:
            self._lists[key] = [x for x in _unique(configured) if self._is_online(x)]
        return self._lists[key]

    def _is_online(self, extension: str) -> bool:
        if extension not in self._online:
            self._online[extension] = self.operators.online(extension)
        return self._online[extension]

    def free(self, extension: str) -> bool:
        if extension not in self._free:
            self._free[extension] = self.operators.free(extension)
        return self._free[extension]
