"""call.wait's DTMF algorithm (reference §2.3) on virtual time: the per-leg matcher, table-driven,
then the wait that routes queued, snapshot and live leg events to one branch."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from softswitch.clock import Timers, VirtualClock
from softswitch.flow.dtmf import (
    CallWait,
    CallWaitSettings,
    DtmfMatcher,
    Fallback,
    KeepCollecting,
    Reset,
    Rule,
    RuleMatched,
    TimedOut,
    UnknownLeg,
    WaitEnded,
    WaitFallback,
    WaitInterrupted,
    WaitMatched,
    WaitOutcome,
    WaitTimeout,
)
from softswitch.flow.retention import EventQueue, LegInterrupt
from softswitch.sip.events import LegDtmf, LegEnded

ONE_TWO_THREE = (Rule("1", "one"), Rule("2", "two"), Rule("3", "three"))
ONE_AND_TWELVE = (Rule("1", "one"), Rule("12", "twelve"))


# The matcher, one row per bullet of step 4/5. Each step is (seconds, digits) or (seconds, "expire").
MATCHER_CASES = [
    ("single-digit-rule-matches-now", ONE_TWO_THREE, {}, [(0, "2")], [RuleMatched("two", "2")]),
    ("digit-no-rule-starts-with-resets", ONE_TWO_THREE, {}, [(0, "5")], [Reset("5")]),
    ("exact-match-waits-when-longer-rule-shares-prefix", ONE_AND_TWELVE, {},
     [(0, "1"), (1, "expire")], [KeepCollecting(1.0), RuleMatched("one", "1")]),
    ("longer-rule-completes-within-interdigit", ONE_AND_TWELVE, {},
     [(0, "1"), (0.5, "2")], [KeepCollecting(1.0), RuleMatched("twelve", "12")]),
    ("interdigit-zero-matches-shorter-rule-now", ONE_AND_TWELVE, {"interdigit_s": 0},
     [(0, "1")], [RuleMatched("one", "1")]),
    ("digit-breaking-the-prefix-resets-the-buffer", (Rule("12", "twelve"),), {},
     [(0, "1"), (0.5, "3")], [KeepCollecting(1.0), Reset("13")]),
    ("deadline-is-last-digit-plus-interdigit", (Rule("123", "x"),), {"interdigit_s": 2},
     [(0, "1"), (1.5, "2")], [KeepCollecting(2.0), KeepCollecting(3.5)]),
    ("multi-digit-fallback-strips-terminator", (Rule("99", "x"),), {"fallback": True, "multi_digit_fallback": True},
     [(0, "1"), (0, "2"), (0, "3"), (0, "#")],
     [KeepCollecting(1.0), KeepCollecting(1.0), KeepCollecting(1.0), Fallback("123")]),
    ("multi-digit-terminated-digits-match-a-rule", (Rule("42", "answer"), Rule("421", "more")),
     {"fallback": True, "multi_digit_fallback": True},
     [(0, "4"), (0, "2"), (0, "#")], [KeepCollecting(1.0), KeepCollecting(1.0), RuleMatched("answer", "42")]),
    ("multi-digit-lone-terminator-resets", (), {"fallback": True, "multi_digit_fallback": True},
     [(0, "#")], [Reset("#")]),
    ("multi-digit-other-terminator", (), {"fallback": True, "multi_digit_fallback": True, "terminator": "*"},
     [(0, "5"), (0, "#"), (0, "*")], [KeepCollecting(1.0), KeepCollecting(1.0), Fallback("5#")]),
    ("multi-digit-without-terminator-falls-back-at-deadline", (), {"fallback": True, "multi_digit_fallback": True},
     [(0, "1"), (0.5, "2"), (1.5, "expire")], [KeepCollecting(1.0), KeepCollecting(1.5), Fallback("12")]),
    ("multi-digit-interdigit-zero-falls-back-per-digit", (), {"fallback": True, "multi_digit_fallback": True,
                                                             "interdigit_s": 0},
     [(0, "7")], [Fallback("7")]),
    ("multi-digit-without-fallback-terminator-resets", (Rule("9", "nine"),), {"multi_digit_fallback": True},
     [(0, "1"), (0, "#")], [KeepCollecting(1.0), Reset("1#")]),
    ("single-digit-fallback-fires-immediately", (Rule("1", "one"),), {"fallback": True},
     [(0, "7")], [Fallback("7")]),
    ("single-digit-fallback-on-a-rule-prefix-waits-then-falls-back", (Rule("12", "twelve"),), {"fallback": True},
     [(0, "1"), (1, "expire")], [KeepCollecting(1.0), Fallback("1")]),
    ("deadline-with-nothing-collected-times-out", ONE_TWO_THREE, {}, [(0, "expire")], [TimedOut()]),
    ("deadline-with-a-bare-prefix-times-out", (Rule("123", "x"),), {},
     [(0, "1"), (0, "2"), (1, "expire")], [KeepCollecting(1.0), KeepCollecting(1.0), TimedOut()]),
    ("letters-and-star-are-digits", (Rule("*A", "star-a"),), {}, [(0, "*"), (0, "a")],
     [KeepCollecting(1.0), RuleMatched("star-a", "*A")]),
]


@pytest.mark.parametrize("rules, options, steps, expected", [c[1:] for c in MATCHER_CASES],
                         ids=[c[0] for c in MATCHER_CASES])
def test_matcher_decisions(rules, options, steps, expected):
    matcher = DtmfMatcher(list(rules), **options)
    got = [matcher.expire() if digits == "expire" else matcher.feed(digits, float(at)) for at, digits in steps]
    assert got == expected
    if not isinstance(expected[-1], KeepCollecting):
        assert matcher.buffer == "" and matcher.deadline() is None


# The wait

def dtmf(digits: str, leg: str = "leg_a") -> LegDtmf:
    return LegDtmf(leg, digits, "rfc2833")


@dataclass
class WaitBench:
    """A wait on virtual time with its legs' queues; records every outcome it reports."""

    settings: CallWaitSettings
    legs: tuple[str, ...] = ("leg_a",)
    clock: VirtualClock = field(default_factory=VirtualClock)
    outcomes: list[WaitOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.timers = Timers(self.clock)
        self.queues = {leg: EventQueue[object]() for leg in self.legs}
        self.wait = CallWait(list(self.legs), self.settings, self.timers, self.outcomes.append)

    def queue(self, *events) -> "WaitBench":
        for event in events:
            self.queues[event.leg_id].push(event)
        return self

    def start(self, snapshots=None) -> "WaitBench":
        self.wait.start(self.queues, snapshots)
        return self

    def at(self, seconds: float) -> "WaitBench":
        """Move to `seconds` after the start and run whatever timers are due."""
        self.clock.advance(1000.0 + seconds - self.clock.now())
        self.timers.run_due()
        return self

    def live(self, *events) -> "WaitBench":
        for event in events:
            if not self.wait.offer(event):
                self.queues[event.leg_id].push(event)
        return self


def settings(**kw) -> CallWaitSettings:
    kw.setdefault("rules", ONE_TWO_THREE)
    return CallWaitSettings(**kw)


def test_rule_digit_takes_the_rule_branch_with_a_dtmf_payload():
    bench = WaitBench(settings()).start().at(3).live(dtmf("2"))
    assert bench.outcomes == [WaitMatched("leg_a", "two")]
    assert bench.outcomes[0].payload() == {"legId": "leg_a", "eventType": "dtmf"}
    assert len(bench.timers) == 0


def test_unmatched_digit_is_ignored_and_the_wait_goes_on():
    bench = WaitBench(settings()).start().live(dtmf("5")).at(10).live(dtmf("3"))
    assert bench.outcomes == [WaitMatched("leg_a", "three")]


def test_overall_timeout_fires_at_timeout_seconds_not_before():
    bench = WaitBench(settings(timeout_s=30)).start().at(29.999)
    assert bench.outcomes == []
    bench.at(30)
    assert bench.outcomes == [WaitTimeout("leg_a")]
    assert bench.outcomes[0].payload() == {"legId": "leg_a", "eventType": "timeout"}


def test_exact_match_waits_interdigit_when_a_longer_rule_shares_the_prefix():
    bench = WaitBench(settings(rules=ONE_AND_TWELVE)).start().at(2).live(dtmf("1")).at(2.999)
    assert bench.outcomes == []
    bench.at(3)
    assert bench.outcomes == [WaitMatched("leg_a", "one")]


def test_longer_rule_wins_when_its_digit_comes_within_interdigit():
    bench = WaitBench(settings(rules=ONE_AND_TWELVE)).start().live(dtmf("1")).at(0.9).live(dtmf("2"))
    assert bench.outcomes == [WaitMatched("leg_a", "twelve")]
    bench.at(5)
    assert len(bench.outcomes) == 1


def test_interdigit_zero_matches_immediately():
    bench = WaitBench(settings(rules=ONE_AND_TWELVE, interdigit_s=0)).start().live(dtmf("1"))
    assert bench.outcomes == [WaitMatched("leg_a", "one")]


def test_interdigit_deadline_replaces_the_overall_deadline():
    bench = WaitBench(settings(rules=(Rule("123", "x"),), timeout_s=2)).start().at(1.5).live(dtmf("1"))
    bench.at(2.2)
    assert bench.outcomes == []  # past the overall timeout, still collecting
    bench.at(2.5)
    assert bench.outcomes == [WaitTimeout("leg_a")]


def test_multi_digit_fallback_collects_until_the_terminator_and_strips_it():
    s = settings(rules=(Rule("9", "nine"),), fallback=True, multi_digit_fallback=True)
    bench = WaitBench(s).start().live(dtmf("4")).at(0.5).live(dtmf("5")).at(1.2).live(dtmf("#"))
    assert bench.outcomes == [WaitFallback("leg_a", "45")]
    assert bench.outcomes[0].payload() == {"legId": "leg_a", "eventType": "dtmf", "digits": "45"}


def test_multi_digit_fallback_without_terminator_falls_back_with_the_digits_at_the_deadline():
    s = settings(rules=(), fallback=True, multi_digit_fallback=True)
    bench = WaitBench(s).start().live(dtmf("4")).at(0.5).live(dtmf("5")).at(1.499)
    assert bench.outcomes == []
    bench.at(1.5)
    assert bench.outcomes == [WaitFallback("leg_a", "45")]


def test_single_digit_fallback_fires_on_the_first_digit_no_rule_starts_with():
    bench = WaitBench(settings(fallback=True)).start().live(dtmf("8"))
    assert bench.outcomes == [WaitFallback("leg_a", "8")]


def test_multi_digit_fallback_is_ignored_when_fallback_is_off():
    # n8n only sends the multi-digit option while "DTMF Fallback" is on.
    s = settings(fallback=False, multi_digit_fallback=True)
    bench = WaitBench(s).start().live(dtmf("8"), dtmf("#"), dtmf("2"))
    assert bench.outcomes == [WaitMatched("leg_a", "two")]


def test_timeout_zero_with_queued_digits_matches_before_timing_out():
    bench = WaitBench(settings(timeout_s=0)).queue(dtmf("5"), dtmf("3"), dtmf("1")).start()
    assert bench.outcomes == [WaitMatched("leg_a", "three")]
    assert list(bench.queues["leg_a"]) == [dtmf("1")]  # the rest waits for the next wait


def test_timeout_zero_finalizes_a_pending_match_instead_of_waiting_interdigit():
    bench = WaitBench(settings(rules=ONE_AND_TWELVE, timeout_s=0)).queue(dtmf("1")).start()
    assert bench.outcomes == [WaitMatched("leg_a", "one")]


def test_timeout_zero_with_nothing_queued_times_out_immediately():
    bench = WaitBench(settings(timeout_s=0)).start()
    assert bench.outcomes == [WaitTimeout("leg_a")]
    assert len(bench.timers) == 0


def test_queued_digits_are_matched_as_one_sequence():
    bench = WaitBench(settings(rules=ONE_AND_TWELVE)).queue(dtmf("1"), dtmf("2")).start()
    assert bench.outcomes == [WaitMatched("leg_a", "twelve")]


def test_unselected_interrupt_is_consumed_and_ignored():
    s = settings(interrupt_reasons=frozenset({"call_queue_removed"}))
    bench = WaitBench(s).queue(LegInterrupt("leg_a", "call_bridge_joined")).start()
    assert bench.outcomes == [] and len(bench.queues["leg_a"]) == 0
    bench.live(LegInterrupt("leg_a", "call_queue_placed")).live(dtmf("1"))
    assert bench.outcomes == [WaitMatched("leg_a", "one")]
    assert len(bench.queues["leg_a"]) == 0


def test_selected_interrupt_takes_the_interrupted_branch():
    s = settings(interrupt_reasons=frozenset({"call_bridge_removed_peer_ended"}))
    bench = WaitBench(s).start().live(LegInterrupt("leg_a", "call_bridge_removed_peer_ended"))
    assert bench.outcomes == [WaitInterrupted("leg_a", "call_bridge_removed_peer_ended")]
    assert bench.outcomes[0].payload() == {
        "legId": "leg_a", "eventType": "interrupt", "reason": "call_bridge_removed_peer_ended"}


def test_ended_wins_over_a_pending_interdigit_match():
    bench = WaitBench(settings(rules=ONE_AND_TWELVE)).start().live(dtmf("1")).at(0.5)
    bench.live(LegEnded("leg_a", "remote_hangup", 200)).at(5)
    assert bench.outcomes == [WaitEnded("leg_a", "remote_hangup")]
    assert bench.outcomes[0].payload() == {"legId": "leg_a", "eventType": "ended", "reason": "remote_hangup"}


def test_queued_ended_resolves_before_later_queued_digits():
    bench = WaitBench(settings()).queue(LegEnded("leg_a", "remote_hangup", 200), dtmf("1")).start()
    assert bench.outcomes == [WaitEnded("leg_a", "remote_hangup")]


@pytest.mark.parametrize("clear, expected", [
    (True, WaitEnded("leg_a", "remote_hangup")),
    (False, WaitMatched("leg_a", "two")),
], ids=["cleared", "kept"])
def test_clear_buffer_drops_queued_dtmf_but_not_other_events(clear, expected):
    bench = WaitBench(settings(clear_dtmf_buffer=clear))
    bench.queue(dtmf("2"), LegEnded("leg_a", "remote_hangup", 200)).start()
    assert bench.outcomes == [expected]


def test_snapshot_ended_resolves_a_wait_started_after_the_leg_was_destroyed():
    bench = WaitBench(settings())
    del bench.queues["leg_a"]
    bench.start({"leg_a": LegEnded("leg_a", "free_ttl", 200)})
    assert bench.outcomes == [WaitEnded("leg_a", "free_ttl")]


def test_unknown_leg_is_an_error():
    bench = WaitBench(settings(), legs=("leg_a", "leg_x"))
    del bench.queues["leg_x"]
    with pytest.raises(UnknownLeg):
        bench.start()


def test_several_legs_take_queued_events_one_per_leg_per_round():
    bench = WaitBench(settings(), legs=("leg_a", "leg_b"))
    bench.queue(dtmf("5", "leg_a"), dtmf("2", "leg_a"), dtmf("3", "leg_b")).start()
    assert bench.outcomes == [WaitMatched("leg_b", "three")]
    assert list(bench.queues["leg_a"]) == [dtmf("2", "leg_a")]


def test_live_queued_and_snapshot_legs_mix():
    bench = WaitBench(settings(), legs=("leg_a", "leg_b"))
    del bench.queues["leg_b"]
    bench.queue(dtmf("9", "leg_a")).start({"leg_b": LegEnded("leg_b", "remote_hangup", 200)})
    assert bench.outcomes == [WaitEnded("leg_b", "remote_hangup")]


def test_timeout_names_the_leg_whose_digits_were_being_collected():
    bench = WaitBench(settings(rules=(Rule("77", "x"),)), legs=("leg_a", "leg_b")).start()
    bench.live(dtmf("7", "leg_b")).at(1)
    assert bench.outcomes == [WaitTimeout("leg_b")]


def test_events_after_the_outcome_are_not_consumed():
    bench = WaitBench(settings()).start().live(dtmf("1"), dtmf("2"), LegEnded("leg_a", "remote_hangup", 200))
    assert bench.outcomes == [WaitMatched("leg_a", "one")]
    assert list(bench.queues["leg_a"]) == [dtmf("2"), LegEnded("leg_a", "remote_hangup", 200)]


def test_events_of_other_legs_are_not_consumed():
    bench = WaitBench(settings()).start()
    assert bench.wait.offer(dtmf("1", "leg_z")) is False
    assert bench.outcomes == []


def test_cancel_stops_the_wait_without_an_outcome_and_frees_its_timer():
    bench = WaitBench(settings()).start()
    bench.wait.cancel()
    bench.at(60)
    assert bench.outcomes == [] and len(bench.timers) == 0
    assert bench.wait.offer(dtmf("1")) is False


def test_branches_follow_the_reference_order_and_index_outcomes():
    s = settings(fallback=True, interrupt_reasons=frozenset({"call_queue_placed"}))
    assert s.branches() == ["one", "two", "three", "DTMF Fallback", "Interrupted", "Timeout", "Ended"]
    assert s.branch_index(WaitMatched("leg_a", "three")) == 2
    assert s.branch_index(WaitEnded("leg_a", "x")) == 6
    plain = settings()
    assert plain.branches() == ["one", "two", "three", "Timeout", "Ended"]
    assert plain.branch_index(WaitTimeout("leg_a")) == 3


def test_a_rule_labelled_like_a_fixed_branch_keeps_its_own_index():
    s = settings(rules=(Rule("1", "Timeout"),))
    assert s.branch_index(WaitMatched("leg_a", "Timeout")) == 0
    assert s.branch_index(WaitTimeout("leg_a")) == 1


@pytest.mark.parametrize("make", [
    lambda: Rule("1x", "bad"),
    lambda: Rule("", "empty"),
    lambda: settings(rules=(Rule("1", "same"), Rule("2", "same"))),
    lambda: settings(terminator="##"),
    lambda: settings(terminator="x"),
    lambda: settings(interrupt_reasons=frozenset({"media_voice"})),
    lambda: settings(timeout_s=-1),
], ids=["pattern-charset", "empty-pattern", "duplicate-labels", "two-char-terminator", "non-dtmf-terminator",
        "not-a-leg-interrupt", "negative-timeout"])
def test_invalid_settings_are_rejected(make):
    with pytest.raises(ValueError):
        make()
