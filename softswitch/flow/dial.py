"""Dial nodes (dial.make, dial.wait, dial.break) and the dial model they share with the queue
engine (reference §2.3 "Resource Dial", §4, §5.6).

A `Dial` is one set of outbound attempts towards its targets, placed all at once (`parallel`) or
one at a time (`sequential`: each attempt rings at most `attempt_timeout_s`, is then cancelled
and rejected with reason `timeout`, and the next one starts `gap_s` later). It has a bounded
queue (64) of dial events (`ringing`, `progress`, `rejected`, `answered`, `failed`), a
Retention (free-TTL: finalized failed/`free_ttl` when nothing holds it for 5 s, armed at
creation) and, once finalized, a 5 s terminal snapshot so a late dial.wait still resolves.
First answer wins: the winner gets a `dial-winner:<dialId>` ticket (held until it ends), the other
attempts are hung up (`parallel_loser`). While the dial is not finalized each live attempt holds
a `dial-attempt:<dialId>` ticket, so ringing attempts are not hung up by their free-TTL.
Bridging an unanswered attempt makes it the winner (`Dial.claim`, §5.6): the others are
cancelled, no further attempt starts, and the dial reports Answered when that attempt answers.

Python API (UA thread), used by `dial.make` and by the queue engine's operator dialing:

    dials = engine.dials                                    # one `Dials` per FlowEngine
    dial = dials.start_extension_dial(
        ["1001", "1002"], strategy="sequential",            # or "parallel" (default)
        caller_number="5551234", caller_name="Alice",        # From (and P-Asserted-Identity)
        headers=[("X-Queue", "support")],                    # custom SIP headers
        only_free=True, attempt_timeout_s=30, gap_s=0)       # sequential timing
    if dial is None: ...                                     # no available endpoint ("Unavailable")
    unsubscribe = dial.on_finalized(lambda f: ...)           # f: DialFinalized(dial_id, status, reason, winner_leg_id)
    dial.cancel("queue_callback")                            # what dial.break does (no-op once finalized)
    dials.get(dial.id)                                       # the live dial, or its 5 s terminal snapshot

`start_trunk_dial(ref, destinations, ...)` and `start_direct_dial(connection, destinations, ...)`
take the same keywords. They raise `softswitch.sip.dialer.DialError` (message says what to fix)
when the options are invalid or no attempt could be placed. `DialFinalized.status` is `answered`
(winner_leg_id set) or `failed` with the reason: the last attempt's (`sip_486`, `timeout`,
`hangup` …), the break reason (`broken`), or `free_ttl`. Listeners run once, on the UA thread, at
finalization (at once if the dial is already final). A dial nobody waits on expires by free-TTL;
hold it with `dial.retention.acquire(tag)` (release the ticket) to keep it longer.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ..sip.dialer import DialError
from ..sip.events import LegAnswered, LegDtmf, LegEnded, LegEvent, LegProgress, LegRinging
from .engine import Activation, NodeFailed
from .items import resolve_dial_id, resolve_wait_ids
from .retention import DIAL_EVENT_QUEUE_LEN, EventQueue, Retention, RetentionTicket, TerminalSnapshots

if TYPE_CHECKING:
    from ..clock import TimerHandle
    from ..sip.legs import Leg
    from .runtime import FlowEngine, FlowLeg

log = logging.getLogger("softswitch.flow")

_wait_ids = itertools.count(1)

FINAL = ("answered", "rejected", "failed", "timeout")
STRATEGIES = ("parallel", "sequential")
DEFAULT_ATTEMPT_TIMEOUT_S = 30.0


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


@dataclass(frozen=True)
class DialFinalized:
    """How a dial ended, for `Dial.on_finalized` listeners (e.g. the queue's dispatch outcome)."""

    dial_id: str
    status: str  # answered | failed
    reason: str | None  # None when answered
    winner_leg_id: str | None  # the answered attempt


@dataclass(frozen=True)
class AttemptPlan:
    """One target of a dial, placed when its turn comes: `place(on_event)` returns the outbound
    leg (already subscribed to `on_event`) or raises DialError."""

    label: str
    place: Callable[[Callable[[LegEvent], None]], "Leg"]


# ---- the dial -------------------------------------------------------------------------------
class Dial:
    def __init__(self, dials: "Dials", plans: Iterable[AttemptPlan], *, strategy: str = "parallel",
                 attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S, gap_s: float = 0.0,
                 mode: str = "trunk") -> None:
        if strategy not in STRATEGIES:
            raise DialError(f"unknown call strategy {strategy!r} (use parallel or sequential)")
        self.dials = dials
        self.engine = dials.engine
        self.timers = self.engine.ua.timers
        self.id = self.engine.ua.ids.new("dial")
        self.mode = mode
        self.strategy = strategy
        # 0 (or less) would mean "give up at once"; like dial.wait's 0, it takes the default.
        self.attempt_timeout_s = attempt_timeout_s if attempt_timeout_s > 0 else DEFAULT_ATTEMPT_TIMEOUT_S
        self.gap_s = max(0.0, gap_s)
        self.status = "created"
        self.plans = list(plans)
        self.attempts: dict[str, "Leg"] = {}  # placed attempts, in order
        self.ended_ids: set[str] = set()  # attempts that ended, were given up or hung up by us
        self.queue: EventQueue[DialEvent] = EventQueue(DIAL_EVENT_QUEUE_LEN)
        self.retention = Retention(self.id, self.timers, self._free_ttl_expired)
        self.waits: list["DialWait"] = []
        self.winner: str | None = None  # the answered attempt
        self.claimed: str | None = None  # the attempt a bridge made the winner before it answered
        self.reason: str | None = None
        self.last_reason: str | None = None
        self.errors: list[str] = []  # attempts that could not be placed
        self._pending: deque[AttemptPlan] = deque(self.plans)
        self._current: str | None = None  # sequential: the attempt ringing now
        self._attempt_timer: "TimerHandle | None" = None
        self._gap_timer: "TimerHandle | None" = None
        self._holds: dict[str, RetentionTicket] = {}
        self._finalized_listeners: list[Callable[[DialFinalized], None]] = []

    @property
    def finalized(self) -> bool:
        return self.status in FINAL

    @property
    def still_dialing(self) -> int:
        return sum(1 for leg_id, leg in self.attempts.items()
                   if leg_id != self.winner and leg_id not in self.ended_ids and not leg.ended)

    # -- the public API --
    def on_finalized(self, listener: Callable[[DialFinalized], None]) -> Callable[[], None]:
        """Call `listener(DialFinalized)` once when the dial ends (at once if it has)."""
        if self.finalized:
            self._notify(listener)
            return lambda: None
        self._finalized_listeners.append(listener)
        return lambda: self._finalized_listeners.remove(listener) if listener in self._finalized_listeners else None

    def cancel(self, reason: str = "broken") -> None:
        """dial.break: finalize failed with `reason`, hanging up every attempt but the answered winner."""
        if not self.finalized:
            log.info("%s: broken (%s)", self.id, reason)
            self.fail(reason)

    def claim(self, leg_id: str) -> bool:
        """A bridge took this unanswered attempt (§5.6): it is the winner; the other attempts are
        cancelled and no further attempt starts. The dial answers (or fails) with it."""
        if self.finalized or self.claimed is not None or leg_id not in self.attempts or leg_id in self.ended_ids:
            return False
        self.claimed = leg_id
        self._pending.clear()
        self._stop_timers()
        self._hang_up_others("parallel_loser", keep=leg_id)
        log.info("%s: attempt %s bridged before it answered: it is the winner", self.id, leg_id)
        return True

    # -- placing attempts --
    def start(self) -> None:
        """Place the first attempts: all (parallel) or the first that can be placed (sequential).
        Raises DialError when none could be placed."""
        self.status = "dialing"
        if self.strategy == "parallel":
            while self._pending:
                self._place_next()
        else:
            while self._pending and not self._place_next():
                pass
        if not self.attempts:
            self.status = "failed"
            self.retention.close()
            raise DialError("; ".join(self.errors) or "nothing to dial")
        self.dials._started(self)
        self._check_all_ended()

    def _place_next(self) -> bool:
        """Place the next planned attempt; True if it is ringing (not failed at once)."""
        plan = self._pending.popleft()
        try:
            leg = plan.place(self._on_leg_event)
        except DialError as exc:
            self.errors.append(f"{plan.label}: {exc}")
            self.last_reason = "dial_error"
            log.warning("%s: attempt to %s not placed: %s", self.id, plan.label, exc)
            return False
        self.attempts[leg.id] = leg
        self.dials._by_attempt[leg.id] = self
        self.engine.tell(lambda o: o.attempt_placed(self, leg))
        if leg.ended:  # failed inside makeCall: its LegEnded came before we knew the leg
            self.ended_ids.add(leg.id)
            self.last_reason = leg.end_reason or "failed"
            self.publish(DialRejected(self.id, leg.id, self.last_reason))
            return False
        flow_leg = self.engine.legs.get(leg.id) or self.engine.track(leg)
        self._holds[leg.id] = flow_leg.retention.acquire(f"dial-attempt:{self.id}")
        if self.strategy == "sequential":
            self._current = leg.id
            self._attempt_timer = self.timers.schedule(
                self.attempt_timeout_s, lambda: self._attempt_timed_out(leg.id), f"dial-attempt:{self.id}")
        log.info("%s: attempt %d %s to %s", self.id, len(self.attempts), leg.id, plan.label)
        return True

    def _attempt_timed_out(self, leg_id: str) -> None:
        self._attempt_timer = None
        leg = self.attempts[leg_id]
        if self.finalized or leg_id in self.ended_ids or leg.answered or self.claimed == leg_id:
            return
        log.info("%s: attempt %s not answered within %gs: cancelled", self.id, leg_id, self.attempt_timeout_s)
        self.ended_ids.add(leg_id)  # given up now; its LegEnded (after the CANCEL) is not news
        self.last_reason = "timeout"
        leg.hangup(487, "timeout")
        self.publish(DialRejected(self.id, leg_id, "timeout"))
        self._attempt_over()

    def _attempt_over(self) -> None:
        """Sequential: the ringing attempt is over; the next one after the gap, or the end."""
        if self._attempt_timer is not None:
            self._attempt_timer.cancel()
            self._attempt_timer = None
        self._current = None
        if self.finalized:
            return
        if self._pending:
            self._gap_timer = self.timers.schedule(self.gap_s, self._next_sequential, f"dial-gap:{self.id}")
        else:
            self._check_all_ended()

    def _next_sequential(self) -> None:
        self._gap_timer = None
        if self.finalized:
            return
        while self._pending:
            if self._place_next():
                return
        self._check_all_ended()

    def _stop_timers(self) -> None:
        for timer in (self._attempt_timer, self._gap_timer):
            if timer is not None:
                timer.cancel()
        self._attempt_timer = self._gap_timer = None

    # -- attempt events --
    def _on_leg_event(self, event: LegEvent) -> None:
        leg_id = event.leg_id
        leg = self.attempts.get(leg_id)
        if leg is None:
            return  # during makeCall, before the leg is known: `_place_next` reads `leg.ended`
        if isinstance(event, LegEnded):
            if leg_id in self.ended_ids:
                return
            self.ended_ids.add(leg_id)
            self.last_reason = event.reason
            if self.finalized:
                return
            self.publish(DialRejected(self.id, leg_id, event.reason))
            if leg_id == self._current:
                self._attempt_over()
            else:
                self._check_all_ended()
            return
        if self.finalized or leg_id in self.ended_ids or (self.claimed is not None and leg_id != self.claimed):
            if isinstance(event, LegAnswered) and leg_id != self.winner:
                # A 200 that crossed our CANCEL (loser, timed out, broken): not kept.
                leg.hangup(200, "parallel_loser" if self.winner or self.claimed else self.reason or "timeout")
            return
        if isinstance(event, LegRinging):
            self.publish(DialRinging(self.id, leg_id))
        elif isinstance(event, LegProgress):
            self.publish(DialProgress(self.id, leg_id))
        elif isinstance(event, LegAnswered):
            self._answered(leg_id)

    def _answered(self, leg_id: str) -> None:
        self.winner = leg_id
        self._pending.clear()
        self._stop_timers()
        flow_leg = self.engine.legs.get(leg_id)
        if flow_leg is not None:
            flow_leg.retention.acquire(f"dial-winner:{self.id}")  # held until the leg ends
        self._hang_up_others("parallel_loser", keep=leg_id)
        self.publish(DialAnswered(self.id, leg_id))
        self.finalize("answered", None)

    def _check_all_ended(self) -> None:
        if self.finalized or self.status == "created" or self._pending or self._gap_timer is not None:
            return
        if all(leg_id in self.ended_ids for leg_id in self.attempts):
            self.fail(self.last_reason or "no_attempts")

    def _hang_up_others(self, reason: str, keep: str | None = None) -> None:
        for leg_id, leg in self.attempts.items():
            if leg_id != keep and leg_id != self.winner and leg_id not in self.ended_ids and not leg.ended:
                self.ended_ids.add(leg_id)
                leg.hangup(487, reason)

    # -- finalization --
    def fail(self, reason: str, *, hang_up_reason: str | None = None) -> None:
        if self.finalized:
            return
        self._pending.clear()
        self._stop_timers()
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
        self.dials._finalized(self)
        log.info("%s: finalized %s%s", self.id, status, f" ({reason})" if reason else "")
        listeners, self._finalized_listeners = self._finalized_listeners, []
        for listener in listeners:
            self._notify(listener)

    def _notify(self, listener: Callable[[DialFinalized], None]) -> None:
        event = DialFinalized(self.id, "answered" if self.status == "answered" else "failed", self.reason, self.winner)
        try:
            listener(event)
        except Exception:  # one broken listener must not keep the others from hearing it
            log.exception("%s: a dial-finalized listener failed", self.id)

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


# ---- the dials of one engine ----------------------------------------------------------------
class Dials:
    """Every live dial of a FlowEngine, their terminal snapshots, and how dials are started."""

    def __init__(self, engine: "FlowEngine") -> None:
        self.engine = engine
        self.live: dict[str, Dial] = {}
        self.snapshots: TerminalSnapshots[Dial] = TerminalSnapshots(engine.ua.timers)
        self._by_attempt: dict[str, Dial] = {}  # attempt leg id -> its dial, while not finalized

    def get(self, dial_id: str | None) -> Dial | None:
        """A live dial, or a finalized one during its 5 s snapshot."""
        if not dial_id:
            return None
        return self.live.get(dial_id) or self.snapshots.get(dial_id)

    def of_attempt(self, leg_id: str) -> Dial | None:
        """The unfinalized dial this leg is an attempt of."""
        return self._by_attempt.get(leg_id)

    # -- starting dials --
    def start_extension_dial(self, numbers: Iterable[str], *, only_free: bool = True, strategy: str = "parallel",
                             caller_number: str | None = None, caller_name: str | None = None,
                             headers: Iterable[tuple[str, str]] = (),
                             attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S, gap_s: float = 0.0,
                             codecs: Sequence[str] | None = None,
                             dtmf_methods: Sequence[str] | None = None) -> Dial | None:
        """Ring the registered endpoints of `numbers` (in that order, then by contact); None when
        no endpoint is available."""
        dialer = self._dialer()
        headers = list(headers)
        dialer.check_call_options(caller_number, caller_name, headers)
        endpoints = dialer.extension_endpoints(list(numbers), only_free=only_free)
        if not endpoints:
            return None
        options = dict(only_free=only_free, caller_number=caller_number, caller_name=caller_name, headers=headers,
                       codecs=codecs, dtmf_methods=dtmf_methods)
        plans = [AttemptPlan(endpoint.label, lambda on_event, endpoint=endpoint: dialer.dial_endpoint(
            endpoint, on_event=on_event, **options)) for endpoint in endpoints]
        return self._start(plans, "extension", strategy, attempt_timeout_s, gap_s)

    def start_trunk_dial(self, trunk_ref: str, destinations: Iterable[str], *, strategy: str = "parallel",
                         caller_number: str | None = None, caller_name: str | None = None,
                         headers: Iterable[tuple[str, str]] = (),
                         attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S, gap_s: float = 0.0) -> Dial:
        """Call each destination (number or SIP user) through the trunk `trunk_ref`."""
        dialer = self._dialer()
        headers = list(headers)
        dialer.check_call_options(caller_number, caller_name, headers)
        options = dict(caller_number=caller_number, caller_name=caller_name, headers=headers)
        plans = [AttemptPlan(f"{d} via trunk {trunk_ref}", lambda on_event, d=d: dialer.dial_trunk(
            trunk_ref, d, on_event=on_event, **options)) for d in self._destinations(destinations)]
        return self._start(plans, "trunk", strategy, attempt_timeout_s, gap_s)

    def start_direct_dial(self, connection: str, destinations: Iterable[str], *, strategy: str = "parallel",
                          caller_number: str | None = None, caller_name: str | None = None,
                          headers: Iterable[tuple[str, str]] = (),
                          attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S, gap_s: float = 0.0,
                          codecs: Sequence[str] | None = None,
                          dtmf_methods: Sequence[str] | None = None) -> Dial:
        """Call each destination at the SIP server of `connection`, with its credentials."""
        dialer = self._dialer()
        headers = list(headers)
        dialer.check_call_options(caller_number, caller_name, headers)
        options = dict(caller_number=caller_number, caller_name=caller_name, headers=headers, codecs=codecs,
                       dtmf_methods=dtmf_methods)
        plans = [AttemptPlan(f"{d} via {connection}", lambda on_event, d=d: dialer.dial_direct(
            connection, d, on_event=on_event, **options)) for d in self._destinations(destinations)]
        return self._start(plans, "direct", strategy, attempt_timeout_s, gap_s)

    # -- websocket (AI) dials: one attempt, an AiLeg (softswitch/ai); see flow/ai.py --
    def start_websocket_dial(self, profile: str, params: Mapping[str, Any], *,
                             start_mode: str = "immediate") -> Dial:
        """One AI leg on the provider `profile` (openai_realtime, gemini_live, generic), with the
        node's parameters (instructions, voice, generic URL …). `immediate` connects now and the
        attempt answers when the provider is ready; `deferred` answers at once and connects on
        Attach Voice Agent. Raises DialError when the profile cannot be set up (no API key, bad
        URL, deferred generic)."""
        from ..ai import ProfileError, make_profile
        from ..config import MissingSecretError

        ai_legs = getattr(self.engine, "ai_legs", None)
        if ai_legs is None:
            raise DialError("AI legs are not available in this server")
        if start_mode not in ("immediate", "deferred"):
            raise DialError(f"websocketStartMode {start_mode!r} is not immediate or deferred")
        if start_mode == "deferred" and profile == "generic":
            raise DialError("websocketStartMode deferred needs a voice-agent profile (openai_realtime or "
                            "gemini_live); the generic profile starts immediately")
        try:
            prof = make_profile(profile, params, self.engine.ua.config.ai)
        except (ProfileError, MissingSecretError, ValueError) as exc:
            raise DialError(str(exc)) from None

        def place(on_event: Callable[[LegEvent], None]) -> "Leg":
            leg = ai_legs.create(prof, start_mode)
            leg.subscribe(on_event)
            leg.start()
            return leg  # type: ignore[return-value]  # an AiLeg: the Leg interface flows use

        return self._start([AttemptPlan(f"{profile} ({start_mode})", place)], "websocket", "parallel",
                           DEFAULT_ATTEMPT_TIMEOUT_S, 0.0)
    # -- end websocket dials --

    def start(self, plans: Iterable[AttemptPlan], *, mode: str = "trunk", strategy: str = "parallel",
              attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S, gap_s: float = 0.0) -> Dial:
        """A dial over any attempt plans (tests, future transports)."""
        return self._start(list(plans), mode, strategy, attempt_timeout_s, gap_s)

    def _start(self, plans: list[AttemptPlan], mode: str, strategy: str, attempt_timeout_s: float,
               gap_s: float) -> Dial:
        dial = Dial(self, plans, strategy=strategy, attempt_timeout_s=attempt_timeout_s, gap_s=gap_s, mode=mode)
        dial.start()
        log.info("%s: %s %s dial, attempts %s", dial.id, strategy, mode, ", ".join(dial.attempts))
        return dial

    def _dialer(self):
        dialer = self.engine.ua.dialer
        if dialer is None:
            raise DialError("this server has no dialer (no SIP outbound edge)")
        return dialer

    @staticmethod
    def _destinations(destinations: Iterable[str]) -> list[str]:
        found = _list(list(destinations) if not isinstance(destinations, str) else destinations)
        if not found:
            raise DialError("no destination to dial: give one or more numbers or SIP users")
        return found

    # -- bookkeeping (called by Dial) --
    def _started(self, dial: Dial) -> None:
        if not dial.finalized:
            self.live[dial.id] = dial

    def _finalized(self, dial: Dial) -> None:
        self.live.pop(dial.id, None)
        for leg_id in dial.attempts:
            if self._by_attempt.get(leg_id) is dial:
                del self._by_attempt[leg_id]
        self.snapshots.put(dial.id, dial)


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
    engine.dials = Dials(engine)  # type: ignore[attr-defined]
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
    return engine.dials.get(dial_id)  # type: ignore[attr-defined]


def _make(engine: "FlowEngine", a: Activation) -> None:
    mode = a.param("callMode")
    if mode == "websocket":
        _make_websocket(engine, a)
        return
    if mode not in ("trunk", "extension", "direct"):
        raise NodeFailed(f"dial.make: unknown callMode {mode!r}")
    strategy = str(a.param("callStrategy") or "parallel")
    if strategy not in STRATEGIES:
        raise NodeFailed(f"dial.make: unknown callStrategy {strategy!r} (parallel or sequential)")
    options: dict[str, Any] = {
        "strategy": strategy,
        "attempt_timeout_s": float(a.param("sequentialAttemptTimeoutSeconds", DEFAULT_ATTEMPT_TIMEOUT_S) or 0),
        "gap_s": float(a.param("sequentialGapSeconds", 0) or 0),
        "caller_number": a.param("callerNumber") or None,
        "caller_name": a.param("callerName") or None,
        "headers": _headers(a.param("customSipHeaders")),
    }
    dials: Dials = engine.dials  # type: ignore[attr-defined]
    try:
        if mode == "extension":
            numbers = _list(a.param("extensionNumbers"))
            dial = dials.start_extension_dial(numbers, only_free=bool(a.param("extensionOnlyFreeEndpoints", True)),
                                              **options)
            if dial is None:
                a.emit("Unavailable", {"reason": "no_available_endpoints",
                                       "message": f"no available endpoint for extension(s) {', '.join(numbers)}",
                                       "extensionNumbers": numbers})
                return
        else:
            destinations = _list(a.param("destination"))
            if not destinations:
                raise NodeFailed("dial.make has no destination")
            if mode == "trunk":
                dial = dials.start_trunk_dial(str(a.param("ref") or ""), destinations, **options)
            else:
                extra = {k: v for k, v in (("codecs", a.param("codecs")), ("dtmf_methods", a.param("dtmfMethods")))
                         if v}
                dial = dials.start_direct_dial(str(a.param("connection") or ""), destinations, **options, **extra)
    except DialError as exc:
        raise NodeFailed(str(exc)) from None
    engine.tell(lambda o: o.dial_started(dial, a.execution))
    payload: dict = {"dialId": dial.id}
    leg_id = next(iter(dial.attempts)) if len(dial.plans) == 1 and len(dial.attempts) == 1 else None
    if leg_id:
        payload["legId"] = leg_id
    a.emit("Result", payload, {"dialId": dial.id, "legId": leg_id})


def _make_websocket(engine: "FlowEngine", a: Activation) -> None:
    """dial.make callMode websocket: one AI leg (§4.1, §6); Result {dialId, legId}."""
    profile = str(a.param("transportProfile") or "")
    start_mode = str(a.param("websocketStartMode") or "immediate")
    params = {**a.options, **a.params}
    try:
        dial = engine.dials.start_websocket_dial(profile, params, start_mode=start_mode)  # type: ignore[attr-defined]
    except DialError as exc:
        raise NodeFailed(f"dial.make websocket: {exc}") from None
    engine.tell(lambda o: o.dial_started(dial, a.execution))
    leg_id = next(iter(dial.attempts))
    a.emit("Result", {"dialId": dial.id, "legId": leg_id}, {"dialId": dial.id, "legId": leg_id})


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
    dial.cancel(str(a.param("dialBreakReason") or "broken"))
    a.emit("Result", {"dialId": dial.id}, {"dialId": dial.id})
