"""Queue entries and the events a queue publishes (reference §3.1, §2.4 "Queue Event").

A `QueueEntry` is one caller waiting in one queue. Its state machine is explicit: `mode` is
live (the caller is on the line) or callback (the caller hung up and asked to be called back),
`state` is idle, dispatching (an operator dial runs for it) or ended, and every change goes
through one of the `to_*` transitions below. Nothing here touches SIP, flows or the database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol


class EntryMode(str, enum.Enum):
    LIVE = "live"
    CALLBACK = "callback"


class EntryState(str, enum.Enum):
    IDLE = "idle"
    DISPATCHING = "dispatching"
    ENDED = "ended"


class InvalidTransition(RuntimeError):
    """A transition the entry's state does not allow (a bug in the caller, reported loudly)."""


class Releasable(Protocol):
    """What an entry holds on its caller leg (a retention ticket): released when it lets go."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class DialConfig:
    """How operators are dialled for this entry (`queueDialConfig`); caller ID is the entry's."""

    call_strategy: str = "parallel"
    caller_number: str = ""
    caller_name: str = ""
    custom_headers: tuple[tuple[str, str], ...] = ()
    only_free_endpoints: bool = True  # forced true for queue operator dialing (§2.3)
    sequential_attempt_timeout_s: float = 30.0
    sequential_gap_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"callStrategy": self.call_strategy, "callerNumber": self.caller_number,
                "callerName": self.caller_name, "customSipHeaders": [list(h) for h in self.custom_headers],
                "extensionOnlyFreeEndpoints": self.only_free_endpoints,
                "sequentialAttemptTimeoutSeconds": self.sequential_attempt_timeout_s,
                "sequentialGapSeconds": self.sequential_gap_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DialConfig":
        return cls(call_strategy=str(data.get("callStrategy", "parallel")),
                   caller_number=str(data.get("callerNumber", "")),
                   caller_name=str(data.get("callerName", "")),
                   custom_headers=tuple((str(n), str(v)) for n, v in data.get("customSipHeaders", ())),
                   only_free_endpoints=bool(data.get("extensionOnlyFreeEndpoints", True)),
                   sequential_attempt_timeout_s=float(data.get("sequentialAttemptTimeoutSeconds", 30)),
                   sequential_gap_s=float(data.get("sequentialGapSeconds", 0)))


@dataclass(eq=False)
class QueueEntry:
    """One caller in one queue. `scope` is the flow that owns the queue trigger (the reference's
    workflow scope); `position` orders the queue (smaller is nearer the head); times are epoch
    seconds so they survive a restart."""

    id: str
    scope: str
    ref: str
    trunk_ref: str
    dial: DialConfig
    created_at: float
    position: int
    leg_id: str | None = None
    retry_attempts: int = 3
    retry_pause_s: float = 30.0
    mode: EntryMode = EntryMode.LIVE
    state: EntryState = EntryState.IDLE
    callback_enabled: bool = False  # false initially (§3.1)
    dispatched_dial_id: str | None = None
    reserved_extensions: tuple[str, ...] = ()
    retry_not_before: float = 0.0
    retry_count: int = 0
    placed_published: bool = False
    retention: Releasable | None = field(default=None, repr=False)

    @property
    def caller_number(self) -> str:
        return self.dial.caller_number

    @property
    def caller_name(self) -> str:
        return self.dial.caller_name

    @property
    def live(self) -> bool:
        return self.mode is EntryMode.LIVE

    @property
    def dispatching(self) -> bool:
        return self.state is EntryState.DISPATCHING

    @property
    def ended(self) -> bool:
        return self.state is EntryState.ENDED

    # ---- transitions: the only places that change mode and state ----------------------------
    def to_dispatching(self, dial_id: str, extensions: tuple[str, ...]) -> None:
        self._require(self.state is EntryState.IDLE, "dispatch")
        self.state = EntryState.DISPATCHING
        self.dispatched_dial_id = dial_id
        self.reserved_extensions = tuple(extensions)
        self.retry_not_before = 0.0

    def to_idle(self) -> None:
        self._require(not self.ended, "go idle")
        self.state = EntryState.IDLE
        self.dispatched_dial_id = None
        self.reserved_extensions = ()

    def to_callback(self) -> None:
        """The caller hung up with callback enabled: keep the position, let go of the leg."""
        self._require(not self.ended and self.mode is EntryMode.LIVE, "switch to callback")
        self.mode = EntryMode.CALLBACK
        self.state = EntryState.IDLE
        self.dispatched_dial_id = None
        self.reserved_extensions = ()
        self.leg_id = None
        self._let_go()

    def to_rejoined(self, leg_id: str, retention: Releasable | None) -> None:
        """A new call from the same number took over this callback entry (§3.2)."""
        self._require(not self.ended and self.mode is EntryMode.CALLBACK, "rejoin")
        self._let_go()
        self.retention = retention
        self.leg_id = leg_id
        self.mode = EntryMode.LIVE
        self.state = EntryState.IDLE
        self.dispatched_dial_id = None
        self.reserved_extensions = ()
        self.retry_not_before = 0.0
        self.retry_count = 0
        self.placed_published = False  # callback_enabled is kept

    def to_ended(self) -> None:
        if self.ended:
            return
        self.state = EntryState.ENDED
        self.dispatched_dial_id = None
        self.reserved_extensions = ()
        self._let_go()

    def _let_go(self) -> None:
        if self.retention is not None:
            self.retention.release()
            self.retention = None

    def _require(self, allowed: bool, what: str) -> None:
        if not allowed:
            raise InvalidTransition(f"queue entry {self.id} ({self.mode.value}, {self.state.value}) cannot {what}")


# ---- events published to the Queue trigger (§2.4) -------------------------------------------
@dataclass(frozen=True)
class QueueEvent:
    scope: str
    ref: str
    caller_number: str
    caller_name: str
    trunk_ref: str
    branch = ""

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def sip_pbx(self) -> dict[str, Any]:
        raise NotImplementedError

    def _caller(self) -> dict[str, Any]:
        return {"callerNumber": self.caller_number, "callerName": self.caller_name, "trunkRef": self.trunk_ref}


@dataclass(frozen=True)
class QueuePlaced(QueueEvent):
    """Operators are online but none is free: published once per live period."""

    leg_id: str = ""
    branch = "Placed"

    def payload(self) -> dict[str, Any]:
        return {"ref": self.ref, "legId": self.leg_id, **self._caller()}

    def sip_pbx(self) -> dict[str, Any]:
        return {"ref": self.ref, "legId": self.leg_id}


@dataclass(frozen=True)
class QueueDispatch(QueueEvent):
    """An operator dial was started for the entry; `leg_id` only while the caller is live."""

    mode: str = "live"
    dial_id: str = ""
    leg_id: str | None = None
    branch = "Dispatch"

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"ref": self.ref, "mode": self.mode, "dialId": self.dial_id}
        if self.leg_id:
            payload["legId"] = self.leg_id
        return {**payload, **self._caller()}

    def sip_pbx(self) -> dict[str, Any]:
        return {"ref": self.ref, "dialId": self.dial_id, "legId": self.leg_id}


@dataclass(frozen=True)
class QueueOffline(QueueEvent):
    """No operator online, or the retries ran out: the entry ended."""

    mode: str = "live"
    leg_id: str | None = None
    reason: str = "queue_offline"  # for logs: queue_offline | queue_retries_exhausted
    branch = "Offline"

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"ref": self.ref, "mode": self.mode}
        if self.leg_id:
            payload["legId"] = self.leg_id
        return {**payload, **self._caller()}

    def sip_pbx(self) -> dict[str, Any]:
        return {"ref": self.ref, "legId": self.leg_id}


@dataclass(frozen=True)
class QueueStats:
    """`queue.getStats`: the whole queue, or one leg's place in it (§3.5)."""

    ref: str
    size: int
    average_wait_s: float
    completed_count: int
    updated_at_ms: int
    leg_id: str | None = None
    position: int | None = None
    estimated_answer_s: float | None = None

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"ref": self.ref, "size": self.size, "averageWaitSeconds": self.average_wait_s,
                                   "completedCount": self.completed_count, "updatedAt": self.updated_at_ms}
        if self.leg_id is not None:
            payload.update(legId=self.leg_id, position=self.position, estimatedAnswerSeconds=self.estimated_answer_s)
        return payload
