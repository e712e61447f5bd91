"""How long legs and dials live (reference §1.5): retention tickets, the free-TTL timer, terminal
snapshots and the bounded per-entity event queue that waits consume.

Nothing here touches SIP: expiry is reported through a callback so the runtime decides what
"destroy" means (hang up a leg with `free_ttl`, finalize a dial `failed`/`free_ttl`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterator, TypeVar

from ..clock import TimerHandle, Timers
from ..sip.events import LegEvent

FREE_TTL_S = 5.0  # SIP_PBX_FREE_TTL_MS = 5000
FREE_TTL_REASON = "free_ttl"
SNAPSHOT_TTL_S = 5.0
LEG_EVENT_QUEUE_LEN = 128
DIAL_EVENT_QUEUE_LEN = 64

T = TypeVar("T")


@dataclass(frozen=True)
class LegInterrupt(LegEvent):
    """A bridge or queue change on the leg (`call_bridge_*`, `call_queue_*`, §2.2), queued for waits."""

    reason: str


class EntityGone(Exception):
    """A ticket was asked of a leg or dial that has already expired or been destroyed."""


@dataclass(eq=False)
class RetentionTicket:
    """One holder's claim on a leg or dial; the entity lives while any ticket is held."""

    entity_id: str
    tag: str  # wait:<id>, bridge:<peer>, queue:<entryId>, dial-winner:<dialId> …
    _owner: "Retention" = field(repr=False)
    released: bool = False

    def release(self) -> None:
        """Idempotent, so teardown paths that race (peer ended vs unbridge) need not coordinate."""
        self._owner.release(self)


class Retention:
    """The ticket count of one leg or dial, and its free-TTL timer.

    The timer is armed at creation (a fresh leg nobody claims is hung up), cancelled by any
    acquire and re-armed when the last ticket is released. When it fires, `on_expired(entity_id)`
    runs once and the entity accepts no more tickets.
    """

    def __init__(
        self,
        entity_id: str,
        timers: Timers,
        on_expired: Callable[[str], None],
        free_ttl_s: float = FREE_TTL_S,
    ) -> None:
        self.entity_id = entity_id
        self._timers = timers
        self._on_expired = on_expired
        self._free_ttl_s = free_ttl_s
        self._tickets: list[RetentionTicket] = []
        self._timer: TimerHandle | None = None
        self.expired = False
        self.closed = False
        self._arm()

    def acquire(self, tag: str) -> RetentionTicket:
        if self.closed:
            raise EntityGone(f"{self.entity_id} is gone (cannot acquire {tag})")
        ticket = RetentionTicket(self.entity_id, tag, self)
        self._tickets.append(ticket)
        self._disarm()
        return ticket

    def release(self, ticket: RetentionTicket) -> None:
        if ticket._owner is not self:
            raise ValueError(f"ticket {ticket.tag} belongs to {ticket.entity_id}, not {self.entity_id}")
        if ticket.released:
            return
        ticket.released = True
        self._tickets.remove(ticket)
        if not self._tickets and not self.closed:
            self._arm()

    def close(self) -> None:
        """The entity ended for another reason (hangup, dial finalized): stop the timer for good."""
        self.closed = True
        self._disarm()

    @property
    def tags(self) -> list[str]:
        return [t.tag for t in self._tickets]

    @property
    def free_deadline(self) -> float | None:
        """When the free-TTL fires, or None while a ticket is held."""
        return self._timer.deadline if self._timer is not None and self._timer.active else None

    def _arm(self) -> None:
        self._disarm()
        self._timer = self._timers.schedule(self._free_ttl_s, self._expire, f"free-ttl:{self.entity_id}")

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.closed or self._tickets:
            return
        self.expired = True
        self.closed = True
        self._on_expired(self.entity_id)


class TerminalSnapshots(Generic[T]):
    """The final event of destroyed legs, dials and media, kept `ttl_s` so a late wait still
    resolves (Ended, final dial event, final media event) instead of failing on an unknown id."""

    def __init__(self, timers: Timers, ttl_s: float = SNAPSHOT_TTL_S) -> None:
        self._timers = timers
        self._ttl_s = ttl_s
        self._events: dict[str, tuple[float, T]] = {}
        self._timers_by_id: dict[str, TimerHandle] = {}

    def put(self, entity_id: str, event: T) -> None:
        old = self._timers_by_id.pop(entity_id, None)
        if old is not None:
            old.cancel()
        expires = self._timers.clock.now() + self._ttl_s
        self._events[entity_id] = (expires, event)
        self._timers_by_id[entity_id] = self._timers.schedule(
            self._ttl_s, lambda: self._forget(entity_id), f"snapshot:{entity_id}"
        )

    def get(self, entity_id: str) -> T | None:
        # Checked against the clock too, so visibility does not depend on when timers run.
        entry = self._events.get(entity_id)
        if entry is None or self._timers.clock.now() >= entry[0]:
            return None
        return entry[1]

    def __contains__(self, entity_id: object) -> bool:
        return isinstance(entity_id, str) and self.get(entity_id) is not None

    def __len__(self) -> int:
        return len(self._events)

    def _forget(self, entity_id: str) -> None:
        self._events.pop(entity_id, None)
        self._timers_by_id.pop(entity_id, None)


class EventQueue(Generic[T]):
    """A leg's (128) or dial's (64) events waiting for the next wait.

    Bounded with drop-oldest: a caller mashing keys while no wait runs must not grow memory, and
    the newest events are the ones a later wait should see. `dropped` counts what was lost.
    """

    def __init__(self, maxlen: int = LEG_EVENT_QUEUE_LEN) -> None:
        if maxlen < 1:
            raise ValueError("an event queue needs room for at least one event")
        self.maxlen = maxlen
        self._events: deque[T] = deque()
        self.dropped = 0

    def push(self, event: T) -> T | None:
        """Append; returns the event dropped to make room, if any."""
        dropped = None
        if len(self._events) >= self.maxlen:
            dropped = self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        return dropped

    def pop(self) -> T | None:
        return self._events.popleft() if self._events else None

    def take_first(self, wanted: Callable[[T], bool]) -> T | None:
        """Remove and return the oldest wanted event; the others keep their order (dial.wait
        leaves unselected events queued for a later wait)."""
        for i, event in enumerate(self._events):
            if wanted(event):
                del self._events[i]
                return event
        return None

    def discard(self, unwanted: Callable[[T], bool]) -> int:
        """Drop every matching event (Clear Queued DTMF); returns how many."""
        kept = deque(e for e in self._events if not unwanted(e))
        removed = len(self._events) - len(kept)
        self._events = kept
        return removed

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._events))

