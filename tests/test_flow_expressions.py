"""The `{{ … }}` expression compiler: what it evaluates (JS semantics) and what it refuses."""

from __future__ import annotations

import math

import pytest

from softswitch.flow.expressions import (
    UNDEFINED, Context, Expression, ExpressionError, TemplateExpression, ValueExpression, compile_text,
    js_loose_equals, js_strict_equals, js_to_number, js_to_string, js_truthy, resolve,
)

ITEM = {
    "legId": "leg_1", "a": {"b": 2, "length": "own"}, "n": 5, "s": "abc", "list": [1, 2, 3], "zero": 0,
    "empty": "", "nothing": None, "yes": True, "no": False, "num_text": "5", "obj": {}, "arr": [],
}
NODES = {"answer": {"legId": "leg_7"}, "Wait for agent": {"legId": "leg_9", "dialId": "dial_1"}}
CTX = Context(ITEM, NODES)


def ev(text: str):
    return compile_text(text).evaluate(CTX)


@pytest.mark.parametrize("text, expected", [
    # paths
    ("{{ $json.legId }}", "leg_1"),
    ("{{ $json.a.b }}", 2),
    ('{{ $json["a"]["b"] }}', 2),
    ("{{ $json['a'].b }}", 2),
    ("{{ $json.list[1] }}", 2),
    ("{{ $json.list[9] }}", None),
    ("{{ $json.missing }}", None),
    ("{{ $json.missing.deeper.still }}", None),
    ("{{ $json.nothing.x }}", None),
    ("{{ $json }}", ITEM),
    ("{{ $('answer').item.json.legId }}", "leg_7"),
    ('{{ $("Wait for agent").item.json.dialId }}', "dial_1"),
    ('{{ $node["Wait for agent"].json.legId }}', "leg_9"),
    # literals keep their type in a whole-value expression
    ("{{ 42 }}", 42), ("{{ 1.5 }}", 1.5), ("{{ -3 }}", -3), ("{{ 'x' }}", "x"), ('{{ "a\\"b" }}', 'a"b'),
    ("{{ true }}", True), ("{{ false }}", False), ("{{ null }}", None), ("{{ undefined }}", None),
    # .length
    ("{{ $json.s.length }}", 3), ("{{ $json.list.length }}", 3), ("{{ $json.a.length }}", "own"),
    ("{{ $json.n.length }}", None),
    # + : numbers add, strings concatenate, JS conversions
    ("{{ 1 + 2 }}", 3), ("{{ 1.5 + 1.5 }}", 3), ("{{ 'n=' + $json.n }}", "n=5"), ("{{ 1 + '2' }}", "12"),
    ("{{ 1 + 2 + 'x' }}", "3x"), ("{{ 'x' + 1 + 2 }}", "x12"), ("{{ 'x' + (1 + 2) }}", "x3"),
    ("{{ true + 1 }}", 2), ("{{ null + 1 }}", 1), ("{{ 'v' + null }}", "vnull"), ("{{ 'v' + $json.missing }}", "vundefined"),
    ("{{ 'v' + true }}", "vtrue"), ("{{ '' + $json.list }}", "1,2,3"), ("{{ 'o' + $json.obj }}", "o[object Object]"),
    ("{{ 0.5 + 'x' }}", "0.5x"),
    # comparisons
    ("{{ $json.n == '5' }}", True), ("{{ $json.n === '5' }}", False), ("{{ $json.n === 5 }}", True),
    ("{{ $json.n != '5' }}", False), ("{{ $json.n !== '5' }}", True),
    ("{{ $json.nothing == undefined }}", True), ("{{ $json.nothing === undefined }}", False),
    ("{{ $json.missing === undefined }}", True), ("{{ $json.nothing == 0 }}", False),
    ("{{ $json.yes == 1 }}", True), ("{{ $json.yes === 1 }}", False),
    ("{{ $json.n > 3 }}", True), ("{{ $json.n >= 5 }}", True), ("{{ $json.n < 5 }}", False), ("{{ $json.n <= 4 }}", False),
    ("{{ '10' < '9' }}", True), ("{{ '10' < 9 }}", False), ("{{ $json.missing < 1 }}", False),
    # logic: &&, || return operands; ! and the ternary use JS truthiness
    ("{{ $json.zero || 'default' }}", "default"), ("{{ $json.n || 'default' }}", 5),
    ("{{ $json.n && 'yes' }}", "yes"), ("{{ $json.empty && 'yes' }}", ""),
    ("{{ !$json.zero }}", True), ("{{ !$json.empty }}", True), ("{{ !$json.obj }}", False), ("{{ !$json.arr }}", False),
    ("{{ !!$json.s }}", True), ("{{ !$json.missing }}", True),
    ("{{ $json.legId ? 'live' : 'callback' }}", "live"), ("{{ $json.missing ? 'live' : 'callback' }}", "callback"),
    ("{{ $json.n > 9 ? 'big' : $json.n > 3 ? 'mid' : 'small' }}", "mid"),
    ("{{ $json.n > 3 && $json.s == 'abc' || false }}", True),
    ("{{ !$json.n == false }}", True),  # (!5) == false
    # String() / Number()
    ("{{ String($json.n) }}", "5"), ("{{ String($json.yes) }}", "true"), ("{{ String(null) }}", "null"),
    ("{{ String($json.list) }}", "1,2,3"), ("{{ String(1.5) }}", "1.5"),
    ("{{ Number($json.num_text) }}", 5), ("{{ Number('5.5') + 1 }}", 6.5), ("{{ Number('') }}", 0),
    ("{{ Number(true) }}", 1), ("{{ Number(null) }}", 0), ("{{ Number(' 12 ') }}", 12),
    ("{{ Number($json.num_text) + 1 }}", 6),
    # templates: text around expressions makes a string
    ("Leg {{ $json.legId }} of {{ $json.n }}", "Leg leg_1 of 5"),
    ("recordings/{{ $json.legId }}.wav", "recordings/leg_1.wav"),
    ("[{{ $json.missing }}]", "[]"),
    ("obj {{ $json.a }}", 'obj {"b":2,"length":"own"}'),
    ("{{ $json.n }}{{ $json.s }}", "5abc"),
    ("{{ '}}' }} end", "}} end"),
])
def test_evaluation(text, expected):
    assert ev(text) == expected


def test_whole_value_keeps_its_type_and_text_around_makes_a_template():
    assert isinstance(compile_text("{{ $json.n }}"), ValueExpression)
    assert ev("{{ $json.n }}") == 5
    assert isinstance(compile_text(" {{ $json.n }}"), TemplateExpression)
    assert ev(" {{ $json.n }}") == " 5"
    assert compile_text("plain text") == "plain text"
    assert math.isnan(ev("{{ Number('x') }}"))
    assert math.isnan(ev("{{ $json.missing + 1 }}"))


@pytest.mark.parametrize("value, truthy", [
    (None, False), (UNDEFINED, False), (False, False), (0, False), (0.0, False), (math.nan, False), ("", False),
    (True, True), (1, True), (-1, True), ("0", True), ("false", True), ([], True), ({}, True),
])
def test_js_truthiness(value, truthy):
    assert js_truthy(value) is truthy


def test_js_conversions():
    assert js_to_string(1.0) == "1" and js_to_string(0.1) == "0.1" and js_to_string(1e21) == "1e+21"
    assert js_to_string(math.nan) == "NaN" and js_to_string(UNDEFINED) == "undefined"
    assert js_to_number("0x1f") == 31 and math.isnan(js_to_number("1_000")) and math.isnan(js_to_number({}))
    assert js_to_number([]) == 0 and js_to_number([7]) == 7
    assert js_loose_equals("1", 1) and js_loose_equals([1], "1") and not js_loose_equals(None, 0)
    assert not js_strict_equals(math.nan, math.nan) and js_strict_equals("a", "a") and not js_strict_equals(1, True)


def test_expressions_compare_by_source_and_list_node_references():
    a = compile_text("{{ $('answer').item.json.legId + $node[\"x y\"].json.a }}")
    assert a == compile_text("{{ $('answer').item.json.legId + $node[\"x y\"].json.a }}")
    assert a != compile_text("{{ $('answer').item.json.legId }}")
    assert a.node_refs == {"answer", "x y"}
    assert isinstance(a, Expression)


def test_resolve_evaluates_inside_parameter_values():
    value = {"legIds": (compile_text("{{ $json.legId }}"), "fixed"), "n": compile_text("{{ $json.n }}"), "k": 1}
    assert resolve(value, CTX) == {"legIds": ["leg_1", "fixed"], "n": 5, "k": 1}


def test_a_context_without_node_output_reads_undefined():
    ctx = Context({"legId": "x"})
    assert compile_text("{{ $('answer').item.json.legId }}").evaluate(ctx) is None
    assert compile_text("{{ $('answer').item.json.legId || $json.legId }}").evaluate(ctx) == "x"


@pytest.mark.parametrize("text, reason", [
    ("{{ $env.HOME }}", "$env is not available"),
    ("{{ $json.a.toUpperCase() }}", "method calls are not supported (.toUpperCase())"),
    ("{{ $json.s.includes('a') }}", "method calls are not supported"),
    ("{{ parseInt('1') }}", "function calls are not supported"),
    ("{{ Math.max(1, 2) }}", "unknown name 'Math'"),
    ("{{ eval('1') }}", "eval is not allowed"),
    ("{{ $json.a = 1 }}", "assignment"),
    ("{{ $json.n += 1 }}", "assignment"),
    ("{{ $json[$json.s] }}", "only a string or integer literal may stand in brackets"),
    ("{{ $json['a' + 'b'] }}", "only a string or integer literal may stand in brackets"),
    ("{{ $json.n - 1 }}", "subtraction"),
    ("{{ $json.n * 2 }}", "multiplication"),
    ("{{ $json.n / 2 }}", "division"),
    ("{{ `x${1}` }}", "template literals"),
    ("{{ [1, 2] }}", "array literals"),
    ("{{ {a: 1} }}", "object literals"),
    ("{{ $json.a ?? 1 }}", "nullish"),
    ("{{ $json?.a }}", "optional chaining"),
    ("{{ $now }}", "unsupported variable $now"),
    ("{{ $input.item.json.legId }}", "unsupported variable $input"),
    ("{{ $('answer').first().json.legId }}", "method calls are not supported (.first())"),
    ("{{ $('answer').json.legId }}", "$('answer').item.json"),
    ("{{ $(name).item.json }}", "string literal"),
    ("{{ String }}", "may only be called"),
    ("{{ Number(1, 2) }}", "exactly one argument"),
    ("{{ x => x }}", "unknown name 'x'"),
    ("{{ new Date() }}", "'new' is not supported"),
    ("{{ typeof $json }}", "'typeof' is not supported"),
    ("{{ $json.a; $json.b }}", "only one expression"),
    ("{{ }}", "empty expression"),
    ("{{ $json.legId", "without a closing"),
    ("{{ 'open }}", "without a closing"),
    ("{{ $json.a $json.b }}", "missing operator"),
    ("{{ (1 + 2 }}", "expected ')'"),
])
def test_unsupported_constructs_are_rejected_naming_node_and_parameter(text, reason):
    with pytest.raises(ExpressionError) as caught:
        compile_text(text, node="bridge_agent", param="legBId")
    message = str(caught.value)
    assert reason in message
    assert message.startswith("node bridge_agent: parameter legBId: ")
    assert caught.value.node == "bridge_agent" and caught.value.param == "legBId"
