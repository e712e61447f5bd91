"""Executions with the core nodes: items flow between nodes the n8n way, conditions route them,
expressions read earlier nodes, and a failing node stops only its own item."""

from __future__ import annotations

import logging
from collections import deque

import pytest

from softswitch.flow.engine import FlowRunner, NodeFailed
from softswitch.flow.loader import load_flow_text

FLOW = """
name: core-demo
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main}
    next: {Call: [vars]}
nodes:
  - name: vars
    op: core.set
    params:
      assignments:
        - {name: greeting, type: string, value: "{{ 'hello ' + $json.callerNumber }}"}
        - {name: digits.count, type: number, value: "{{ $json.callerNumber.length }}"}
    next: {Result: [is_live, route]}
  - name: is_live
    op: core.if
    params:
      conditions: [{left: "{{ $('trunk_main').item.json.legId }}", operator: exists}]
    next: {"true": [answer], "false": [hangup]}
  - name: route
    op: core.switch
    params:
      rules:
        - outputKey: short
          conditions: [{left: "{{ $json.digits.count }}", operator: lt, right: 4, type: number}]
        - outputKey: long
          conditions: [{left: "{{ $json.digits.count }}", operator: gte, right: 4, type: number}]
      fallbackOutput: extra
    next: {short: [noop_short], long: [noop_long], Fallback: [noop_short]}
  - name: noop_short
    op: core.noop
  - name: noop_long
    op: core.noop
    next: {Result: [ringing]}
  - name: answer
    op: call.answer
    params: {options: {legId: "{{ $('vars').item.json.greeting }}"}}
  - name: hangup
    op: call.hangup
  - name: ringing
    op: call.ringing
"""


class Harness:
    """A runner on a plain queue standing in for the UA loop, with recording SIP handlers."""

    def __init__(self) -> None:
        self.queue: deque = deque()
        self.runner = FlowRunner(self.queue.append)
        self.calls: list[tuple[str, dict, dict]] = []
        for op in ("call.answer", "call.hangup", "call.ringing"):
            self.runner.register(op, self._record(op))
        self.flow = load_flow_text(FLOW, "core-demo.yaml")

    def _record(self, op):
        def handler(activation):
            self.calls.append((op, dict(activation.item.json), dict(activation.options)))
            activation.emit("Result", {"legId": activation.param("legId") or ""})
        return handler

    def fire(self, payload, sip_pbx):
        trigger = self.flow.trigger("trunk", "trunk_main")
        execution = self.runner.fire(self.flow, trigger, "Call", payload, sip_pbx)
        for _ in range(1000):  # bounded drain
            if not self.queue:
                break
            self.queue.popleft()()
        return execution


def test_live_call_is_answered_with_expressions_reading_earlier_nodes():
    h = Harness()
    execution = h.fire({"legId": "leg_1", "callerNumber": "5551234"}, {"ref": "trunk_main", "legId": "leg_1"})
    ops = [op for op, _, _ in h.calls]
    assert ops.count("call.answer") == 1 and "call.hangup" not in ops
    op, json, options = next(c for c in h.calls if c[0] == "call.answer")
    assert options["legId"] == "hello 5551234"
    # core.set without includeOtherFields keeps only its assignments, but the hidden ids travel on.
    assert json["greeting"] == "hello 5551234" and json["digits"] == {"count": 7}
    assert "callerNumber" not in json
    assert json["sipPbx"] == {"ref": "trunk_main", "legId": "leg_1"}
    assert execution.idle and not execution.errors


def test_switch_routes_by_rule_and_one_branch_fans_out_to_two_nodes():
    h = Harness()
    h.fire({"legId": "leg_2", "callerNumber": "5551234"}, {"legId": "leg_2"})
    assert "call.ringing" in [op for op, _, _ in h.calls]  # long number → noop_long → ringing
    h2 = Harness()
    h2.fire({"legId": "leg_3", "callerNumber": "12"}, {"legId": "leg_3"})
    assert "call.ringing" not in [op for op, _, _ in h2.calls]
    assert "call.answer" in [op for op, _, _ in h2.calls]  # the other branch of the fan-out ran too


def test_if_false_branch_when_no_leg():
    h = Harness()
    h.fire({"callerNumber": "5551234"}, {})
    ops = [op for op, _, _ in h.calls]
    assert "call.hangup" in ops and "call.answer" not in ops


def test_a_failing_node_is_logged_with_flow_node_and_ids_and_stops_only_its_item(caplog):
    h = Harness()

    def broken(activation):
        raise NodeFailed("leg leg_9 is gone")

    h.runner.register("call.answer", broken)
    with caplog.at_level(logging.ERROR, logger="softswitch.flow"):
        execution = h.fire({"legId": "leg_9", "callerNumber": "5551234"}, {"legId": "leg_9"})
    assert any("flow 'core-demo' node 'answer' (call.answer): leg leg_9 is gone" in r.getMessage()
               and "leg_9" in r.getMessage() for r in caplog.records)
    assert execution.errors and "call.ringing" in [op for op, _, _ in h.calls]


def test_unknown_runtime_op_fails_clearly():
    h = Harness()
    del h.runner.handlers["call.hangup"]
    execution = h.fire({"callerNumber": "1"}, {})
    assert any("no runtime for 'call.hangup' yet" in e for e in execution.errors)


@pytest.mark.parametrize("cond, expected", [
    ({"left": "abc", "operator": "contains", "right": "b", "type": "string"}, True),
    ({"left": "ABC", "operator": "startsWith", "right": "ab", "type": "string"}, False),
    ({"left": "10", "operator": "gt", "right": 9, "type": "number"}, True),
    ({"left": [1, 2], "operator": "contains", "right": 2, "type": "array"}, True),
    ({"left": "", "operator": "empty"}, True),
    ({"left": None, "operator": "exists"}, False),
    ({"left": "false", "operator": "true", "type": "boolean"}, False),
    ({"left": "1", "operator": "equals", "right": 1}, True),
])
def test_condition_operators(cond, expected):
    from softswitch.flow.core import condition_holds
    assert condition_holds(cond) is expected
