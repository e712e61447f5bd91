"""Queue events: one JSON line per thing that happens to a queue entry (queued, placed, position
told, dispatch started/failed, taken, callback requested/waiting, abandoned, offline), and, for
a callback whose agent answered, what happened when the flow called the customer
(callback_dialing, callback_answered, callback_not_answered, callback_failed).

Entry events come from `QueueEngine.watch`; the customer's side from the flow hook
`dial_started` (a dial.make in a callback Dispatch execution) and that dial's legs. README
"Queue events" lists the fields.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..flow.runtime import FlowObserver
from ..sip.events import LegAnswered, LegEnded, LegEvent
from .records import JsonLines, iso_utc, trigger_item

if TYPE_CHECKING:
    from ..flow.dial import Dial
    from ..flow.engine import Execution
    from ..flow.runtime import FlowEngine
    from ..queue.engine import QueueEntryEvent

log = logging.getLogger("softswitch.records")

RECENT_CALLBACKS = 1024  # taken callbacks whose customer dial may still come (bounded memory)
_DETAIL_KEYS = ("dial", "extensions", "reason", "retry", "retries", "retry_in_seconds", "position", "agent_leg")


class QueueEventLog(FlowObserver):
    """Writes queue events as JSON lines (UA thread only)."""

    def __init__(self, path: Path, *, agent_of: Callable[[str], str | None] = lambda _leg_id: None,
                 queue_size: Callable[[str, str], int | None] = lambda _scope, _ref: None,
                 wall: Callable[[], float] = time.time) -> None:
        self.out = JsonLines(path, "queue events")
        self._agent_of = agent_of  # agent leg id -> its extension
        self._queue_size = queue_size
        self._wall = wall
        self._taken_callbacks: OrderedDict[str, "QueueEntryEvent"] = OrderedDict()  # agent dial id -> taken
        self._detach: list[Callable[[], None]] = []
        self.closed = False

    @classmethod
    def for_engine(cls, engine: "FlowEngine", path: Path) -> "QueueEventLog":
        ua = engine.ua
        queues = engine.queues.engine

        def agent_of(leg_id: str) -> str | None:
            target = ua.dialer.target_of(leg_id) if ua.dialer is not None else None
            return target.ref if target is not None and target.kind == "extension" else None

        events = cls(path, agent_of=agent_of, queue_size=lambda scope, ref: queues.stats(scope, ref).size)
        events._detach.append(queues.watch(events.entry_event))
        log.info("queue events: %s", path)
        return events

    # ---- entry events (QueueEngine.watch) ------------------------------------------------
    def entry_event(self, event: "QueueEntryEvent") -> None:
        if self.closed:
            return
        line = self._line(event.kind, event.at, event, event.leg_id, event.size)
        line.update((key, event.detail[key]) for key in _DETAIL_KEYS if key in event.detail)
        if event.kind == "taken":
            agent_leg = event.detail.get("agent_leg")
            line["agent"] = self._agent_of(agent_leg) if agent_leg else None
            if event.mode == "callback" and event.detail.get("dial"):
                self._taken_callbacks[event.detail["dial"]] = event
                while len(self._taken_callbacks) > RECENT_CALLBACKS:
                    self._taken_callbacks.popitem(last=False)
        self.out.write(line)

    # ---- the customer of a callback (flow hook) --------------------------------------------
    def dial_started(self, dial: "Dial", execution: "Execution") -> None:
        started_by = trigger_item(execution)
        if self.closed or started_by is None or started_by[1].json.get("mode") != "callback":
            return
        taken = self._taken_callbacks.pop(str(started_by[1].json.get("dialId") or ""), None)
        if taken is None:
            return
        for leg in list(dial.attempts.values()):
            self._customer(taken, dial, leg, "callback_dialing")
            if leg.ended:
                self._customer_ended(taken, dial, leg, getattr(leg, "end_reason", None), None)
                continue
            self._follow(taken, dial, leg)

    def _follow(self, taken: "QueueEntryEvent", dial: "Dial", leg: Any) -> None:
        state: dict[str, Any] = {"answered": False}

        def on_event(event: LegEvent) -> None:
            if isinstance(event, LegAnswered) and not state["answered"]:
                state["answered"] = True
                self._customer(taken, dial, leg, "callback_answered")
            elif isinstance(event, LegEnded):
                state["unsubscribe"]()
                if not state["answered"]:
                    self._customer_ended(taken, dial, leg, event.reason, event.sip_code)

        state["unsubscribe"] = leg.subscribe(on_event)

    def _customer_ended(self, taken: "QueueEntryEvent", dial: "Dial", leg: Any, reason: str | None,
                        sip_code: int | None) -> None:
        # 5xx: the call could not be set up; 4xx/6xx, CANCEL or a timeout: nobody took it.
        failed = (sip_code is not None and 500 <= sip_code < 600) or reason == "dial_error"
        self._customer(taken, dial, leg, "callback_failed" if failed else "callback_not_answered",
                       reason=reason, sip_code=sip_code)

    def _customer(self, taken: "QueueEntryEvent", dial: "Dial", leg: Any, kind: str, **extra: Any) -> None:
        if self.closed:
            return
        line = self._line(kind, self._wall(), taken, leg.id, self._queue_size(taken.scope, taken.ref))
        line.update(dial=dial.id, agent_leg=taken.detail.get("agent_leg"), **extra)
        self.out.write(line)

    # ---- lines --------------------------------------------------------------------------
    @staticmethod
    def _line(kind: str, at: float, event: "QueueEntryEvent", leg_id: str | None, size: int | None) -> dict[str, Any]:
        return {"time": iso_utc(at), "event": kind, "queue": event.ref, "flow": event.scope, "entry": event.entry_id,
                "leg": leg_id, "caller": event.caller_number, "mode": event.mode,
                "wait_seconds": round(max(0.0, at - event.created_at), 3), "size": size}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for detach in self._detach:
            detach()
        self._taken_callbacks.clear()
        self.out.close()
