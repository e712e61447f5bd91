"""The `call.wait` algorithm (reference §2.3): a per-leg DTMF matcher and the wait that routes a
leg's queued, snapshot and live events to exactly one output branch.

Both are pure and run on `Timers`, so the runtime owns SIP and tests own time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

from ..clock import TimerHandle, Timers
from ..sip.events import LegDtmf, LegEnded, LegEvent
from .retention import EventQueue, LegInterrupt

DTMF_PATTERN = re.compile(r"[0-9*#ABCD]+")

# The leg interrupt reasons call.wait's "Interrupt On" may select (§2.2).
SELECTABLE_INTERRUPT_REASONS = frozenset({
    "call_bridge_joined",
    "call_bridge_removed_peer_ended",
    "call_bridge_removed_unbridge",
    "call_bridge_removed_rollback",
    "call_bridge_removed_rebridge",
    "call_queue_placed",
    "call_queue_removed",
})

LegQueueEvent = Union[LegDtmf, LegInterrupt, LegEnded]


@dataclass(frozen=True)
class Rule:
    pattern: str
    label: str

    def __post_init__(self) -> None:
        if not DTMF_PATTERN.fullmatch(self.pattern):
            raise ValueError(f"rule {self.label!r}: pattern {self.pattern!r} must match [0-9*#ABCD]+")
        if not self.label:
            raise ValueError(f"rule {self.pattern!r} needs a label")


# What one digit (or the deadline) does to a leg's buffer.
@dataclass(frozen=True)
class RuleMatched:
    label: str
    digits: str


@dataclass(frozen=True)
class Fallback:
    digits: str


@dataclass(frozen=True)
class KeepCollecting:
    deadline: float


@dataclass(frozen=True)
class Reset:
    discarded: str


@dataclass(frozen=True)
class TimedOut:
    pass


Decision = Union[RuleMatched, Fallback, KeepCollecting, Reset, TimedOut]


# The matcher's two states.
@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Collecting:
    digits: str
    deadline: float


class DtmfMatcher:
    """One leg's DTMF buffer. `feed` applies step 4 of §2.3 to each dtmf event, `expire` step 5."""

    def __init__(
        self,
        rules: Sequence[Rule],
        interdigit_s: float = 1.0,
        fallback: bool = False,
        multi_digit_fallback: bool = False,
        terminator: str = "#",
    ) -> None:
        if len(terminator) != 1 or not DTMF_PATTERN.fullmatch(terminator):
            raise ValueError(f"terminator {terminator!r} must be exactly one DTMF character")
        if interdigit_s < 0:
            raise ValueError("interdigit timeout cannot be negative")
        self._by_pattern: dict[str, Rule] = {}
        for rule in rules:
            self._by_pattern.setdefault(rule.pattern, rule)  # first rule wins, like the branch order
        self.interdigit_s = interdigit_s
        self.fallback = fallback
        self.multi_digit_fallback = multi_digit_fallback
        self.terminator = terminator
        self.state: Idle | Collecting = Idle()

    @property
    def buffer(self) -> str:
        return self.state.digits if isinstance(self.state, Collecting) else ""

    def deadline(self) -> float | None:
        """When the interdigit timer fires, or None while no digits are being collected."""
        return self.state.deadline if isinstance(self.state, Collecting) else None

    def feed(self, digits: str, now: float) -> Decision:
        buf = self.buffer + digits.upper()
        exact = self._by_pattern.get(buf)
        if exact is not None and (self.interdigit_s == 0 or not self._longer_rule_shares(buf)):
            return self._finish(RuleMatched(exact.label, buf))
        if exact is not None:
            return self._collect(buf, now)  # a longer rule may still come: decide at the deadline
        if self.multi_digit_fallback and buf.endswith(self.terminator):
            return self._finish(self._terminated(buf[:-1]))
        prefix = self._some_rule_starts_with(buf)
        if not prefix and self.fallback and (not self.multi_digit_fallback or self.interdigit_s == 0):
            return self._finish(Fallback(buf))
        if prefix or self.multi_digit_fallback:
            return self._collect(buf, now)
        return self._finish(Reset(buf))

    def expire(self) -> Decision:
        """Finalize at the deadline: whatever was collected becomes a match or fallback, else
        TimedOut. The runtime also calls this early for `timeoutSeconds = 0`."""
        buf = self.buffer
        self.state = Idle()
        if not buf:
            return TimedOut()
        exact = self._by_pattern.get(buf)
        if exact is not None:
            return RuleMatched(exact.label, buf)
        if self.multi_digit_fallback and buf.endswith(self.terminator):
            buf = buf[:-1]
            exact = self._by_pattern.get(buf)
            if exact is not None:
                return RuleMatched(exact.label, buf)
        if self.fallback and buf:
            return Fallback(buf)
        return TimedOut()

    def clear(self) -> None:
        self.state = Idle()

    def _terminated(self, stripped: str) -> Decision:
        exact = self._by_pattern.get(stripped)
        if exact is not None:
            return RuleMatched(exact.label, stripped)
        if self.fallback and stripped:
            return Fallback(stripped)
        return Reset(stripped + self.terminator)  # a lone terminator reports nothing

    def _collect(self, buf: str, now: float) -> KeepCollecting:
        self.state = Collecting(buf, now + self.interdigit_s)
        return KeepCollecting(self.state.deadline)

    def _finish(self, decision: Decision) -> Decision:
        self.state = Idle()
        return decision

    def _longer_rule_shares(self, buf: str) -> bool:
        return any(len(p) > len(buf) and p.startswith(buf) for p in self._by_pattern)

    def _some_rule_starts_with(self, buf: str) -> bool:
        return any(p.startswith(buf) for p in self._by_pattern)


# The branch a wait takes, with the item payload §2.3 gives it.
@dataclass(frozen=True)
class WaitMatched:
    leg_id: str
    label: str

    @property
    def branch(self) -> str:
        return self.label

    def payload(self) -> dict[str, str]:
        return {"legId": self.leg_id, "eventType": "dtmf"}


@dataclass(frozen=True)
class WaitFallback:
    leg_id: str
    digits: str
    branch = "DTMF Fallback"

    def payload(self) -> dict[str, str]:
        return {"legId": self.leg_id, "eventType": "dtmf", "digits": self.digits}


@dataclass(frozen=True)
class WaitInterrupted:
    leg_id: str
    reason: str
    branch = "Interrupted"

    def payload(self) -> dict[str, str]:
        return {"legId": self.leg_id, "eventType": "interrupt", "reason": self.reason}


@dataclass(frozen=True)
class WaitTimeout:
    leg_id: str
    branch = "Timeout"

    def payload(self) -> dict[str, str]:
        return {"legId": self.leg_id, "eventType": "timeout"}


@dataclass(frozen=True)
class WaitEnded:
    leg_id: str
    reason: str
    branch = "Ended"

    def payload(self) -> dict[str, str]:
        return {"legId": self.leg_id, "eventType": "ended", "reason": self.reason}


WaitOutcome = Union[WaitMatched, WaitFallback, WaitInterrupted, WaitTimeout, WaitEnded]


@dataclass(frozen=True)
class CallWaitSettings:
    """call.wait's parameters, defaults from §2.1. `multi_digit_fallback` is only honoured with
    `fallback` on: n8n drops hidden parameters, and the UI shows it only then."""

    rules: tuple[Rule, ...] = ()
    timeout_s: float = 30.0
    interdigit_s: float = 1.0
    fallback: bool = False
    multi_digit_fallback: bool = False
    terminator: str = "#"
    interrupt_reasons: frozenset[str] = frozenset()
    clear_dtmf_buffer: bool = False

    def __post_init__(self) -> None:
        labels = [r.label for r in self.rules]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rule labels must be unique: {labels}")
        if self.timeout_s < 0 or self.interdigit_s < 0:
            raise ValueError("timeouts cannot be negative")
        unknown = set(self.interrupt_reasons) - SELECTABLE_INTERRUPT_REASONS
        if unknown:
            raise ValueError(f"call.wait cannot interrupt on {sorted(unknown)}")
        self.matcher()  # validates the terminator

    def matcher(self) -> DtmfMatcher:
        return DtmfMatcher(
            list(self.rules),
            self.interdigit_s,
            self.fallback,
            self.multi_digit_fallback and self.fallback,
            self.terminator,
        )

    def branches(self) -> list[str]:
        """Output names in n8n's order, which is what connections index by."""
        names = [r.label for r in self.rules]
        if self.fallback:
            names.append(WaitFallback.branch)
        if self.interrupt_reasons:
            names.append(WaitInterrupted.branch)
        return names + [WaitTimeout.branch, WaitEnded.branch]

    def branch_index(self, outcome: WaitOutcome) -> int:
        if isinstance(outcome, WaitMatched):
            return [r.label for r in self.rules].index(outcome.label)
        return self.branches().index(outcome.branch, len(self.rules))


class UnknownLeg(LookupError):
    """call.wait on a leg with neither a live queue nor a terminal snapshot (§2.3 step 1)."""


class CallWait:
    """One call.wait over one or more legs; resolves exactly once through `on_outcome`.

    The runtime holds a `wait:<id>` ticket on every live leg from before `start` until the
    outcome (or `cancel`), offers each live leg event with `offer`, and queues whatever the wait
    does not consume.
    """

    def __init__(
        self,
        leg_ids: Sequence[str],
        settings: CallWaitSettings,
        timers: Timers,
        on_outcome: Callable[[WaitOutcome], None] | None = None,
    ) -> None:
        if not leg_ids:
            raise ValueError("call.wait needs at least one leg")
        self.leg_ids = list(dict.fromkeys(leg_ids))
        self.settings = settings
        self._timers = timers
        self._on_outcome = on_outcome
        self._matchers = {leg: settings.matcher() for leg in self.leg_ids}
        self._deadline = 0.0
        self._deadline_leg: str | None = None  # the leg whose digits replaced the overall deadline
        self._timer: TimerHandle | None = None
        self._started = False
        self.cancelled = False
        self.outcome: WaitOutcome | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.cancelled

    def deadline(self) -> float | None:
        return None if self.done or not self._started else self._deadline

    def start(
        self,
        queues: Mapping[str, EventQueue[LegQueueEvent]],
        snapshots: Mapping[str, LegEnded] | None = None,
    ) -> WaitOutcome | None:
        """Steps 1–3 and 6: consume queued events (one per leg per round), then snapshots; then
        wait for live events, the deadline, or with `timeout_s = 0` time out right away."""
        if self._started:
            raise RuntimeError("a call.wait starts once")
        snapshots = snapshots or {}
        unknown = [leg for leg in self.leg_ids if leg not in queues and leg not in snapshots]
        if unknown:
            raise UnknownLeg(f"unknown leg(s): {', '.join(unknown)}")
        self._started = True
        now = self._timers.clock.now()
        self._deadline = now + self.settings.timeout_s
        live = [(leg, queues[leg]) for leg in self.leg_ids if leg in queues]
        if self.settings.clear_dtmf_buffer:
            for _, queue in live:
                queue.discard(lambda e: isinstance(e, LegDtmf))
        while not self.done and any(len(q) for _, q in live):
            for leg, queue in live:
                event = queue.pop()
                if event is not None:
                    self._handle(leg, event, now)
                if self.done:
                    break
        for leg in self.leg_ids:
            if not self.done and leg not in queues and leg in snapshots:
                self._handle(leg, snapshots[leg], now)
        if not self.done:
            if self.settings.timeout_s == 0:
                self._finalize()
            else:
                self._settle(now)
        return self.outcome

    def offer(self, event: LegEvent) -> bool:
        """A live event on one of the legs; False means not consumed (the runtime queues it)."""
        if not self._started:
            raise RuntimeError("offer before start: queue the event instead")
        if self.done or event.leg_id not in self._matchers:
            return False
        if not isinstance(event, (LegDtmf, LegInterrupt, LegEnded)):
            return False
        now = self._timers.clock.now()
        self._handle(event.leg_id, event, now)
        if not self.done:
            self._settle(now)
        return True

    def cancel(self) -> None:
        """The execution was cancelled: stop without an outcome."""
        self.cancelled = True
        self._disarm()

    def _handle(self, leg: str, event: LegQueueEvent, now: float) -> None:
        if isinstance(event, LegEnded):
            self._resolve(WaitEnded(leg, event.reason))
        elif isinstance(event, LegInterrupt):
            if event.reason in self.settings.interrupt_reasons:
                self._resolve(WaitInterrupted(leg, event.reason))
            # otherwise consumed and ignored, so it cannot interrupt a later wait either
        elif isinstance(event, LegDtmf):
            decision = self._matchers[leg].feed(event.digit, now)
            if isinstance(decision, KeepCollecting):
                self._deadline, self._deadline_leg = decision.deadline, leg
            else:
                self._resolve_decision(leg, decision)

    def _resolve_decision(self, leg: str, decision: Decision) -> None:
        if isinstance(decision, RuleMatched):
            self._resolve(WaitMatched(leg, decision.label))
        elif isinstance(decision, Fallback):
            self._resolve(WaitFallback(leg, decision.digits))

    def _settle(self, now: float) -> None:
        """Finalize a deadline already reached (interdigit 0), else (re)arm its timer."""
        if self._deadline <= now:
            self._finalize()
            return
        if self._timer is not None and self._timer.active and self._timer.deadline == self._deadline:
            return
        self._disarm()
        self._timer = self._timers.schedule(self._deadline - now, self._on_deadline, "call.wait")

    def _on_deadline(self) -> None:
        self._timer = None
        if not self.done:
            self._settle(self._timers.clock.now())

    def _finalize(self) -> None:
        """Step 5: the collecting leg first, then the others in order; else Timeout."""
        order = sorted(self.leg_ids, key=lambda leg: leg != self._deadline_leg)
        for leg in order:
            decision = self._matchers[leg].expire()
            self._resolve_decision(leg, decision)
            if self.done:
                return
        self._resolve(WaitTimeout(self._deadline_leg or self.leg_ids[0]))

    def _resolve(self, outcome: WaitOutcome) -> None:
        self.outcome = outcome
        self._disarm()
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
