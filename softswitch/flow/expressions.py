"""n8n-style `{{ … }}` expressions: the small subset flows use, compiled once when a flow loads.

A tokenizer and a Pratt parser turn each expression into a tree of small nodes that evaluate
themselves against an item context with JavaScript semantics (truthiness, `==`, `+`). Nothing
is ever passed to `eval`; anything outside the subset is an `ExpressionError` at load time.

Supported: `$json.a.b`, `$json["a"]`, `$json.list[0]`, `$('node name').item.json.a`,
`$node["node name"].json.a`, string/number/boolean/null/undefined literals, `== != === !==
< <= > >=`, `&&`, `||`, `!`, `a ? b : c`, `+`, parentheses, `.length`, `String(x)`, `Number(x)`.

Deliberate simplifications (documented for the runtime): reading a property of `null` or
`undefined` gives `undefined` instead of throwing; `$('x').item` is the latest output item of
node `x` (n8n follows paired items); in a text template `null`/`undefined` render as "" and
objects as compact JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping, Protocol, Sequence


class _Undefined:
    """JavaScript's `undefined`: what a missing property reads as. Falsy; `evaluate` turns it
    into None at the boundary."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False


UNDEFINED = _Undefined()


class ExpressionError(ValueError):
    """An expression outside the supported subset, or malformed. `node` and `param` say where it
    was written; the loader and the n8n importer fill them in."""

    def __init__(self, reason: str, source: str = "", *, node: str | None = None, param: str | None = None):
        self.reason = reason
        self.source = source
        self.node = node
        self.param = param
        super().__init__(str(self))

    def at(self, node: str | None, param: str | None) -> ExpressionError:
        return ExpressionError(self.reason, self.source, node=node, param=param)

    def __str__(self) -> str:
        where = ""
        if self.node is not None:
            where += f"node {self.node}: "
        if self.param is not None:
            where += f"parameter {self.param}: "
        text = f"{where}{self.reason}"
        if self.source:
            text += f" in {self.source!r}"
        return text


class ExpressionContext(Protocol):
    """What an expression reads: the current item's json and other nodes' latest output items."""

    @property
    def json(self) -> Any: ...

    def node_json(self, name: str) -> Any:
        """The json of the latest output item of node `name`, or None if it has not run."""
        ...


@dataclass(frozen=True)
class Context:
    """A plain ExpressionContext: the item json and a table of node name → latest output json."""

    json: Any = field(default_factory=dict)
    nodes: Mapping[str, Any] = field(default_factory=dict)

    def node_json(self, name: str) -> Any:
        return self.nodes.get(name)


# ---------------------------------------------------------------------------------------------
# JavaScript value semantics (also used by the runtime's core.if / core.switch conditions)
# ---------------------------------------------------------------------------------------------

_JS_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tidy(number: float | int) -> float | int:
    """JS has one number type; keep integral results as Python ints so 5 stays 5, not 5.0."""
    if isinstance(number, float) and number.is_integer() and abs(number) < 2**53:
        return int(number)
    return number


def js_truthy(value: Any) -> bool:
    if value is None or value is UNDEFINED:
        return False
    if isinstance(value, bool):
        return value
    if _is_number(value):
        return not (value == 0 or (isinstance(value, float) and math.isnan(value)))
    if isinstance(value, str):
        return value != ""
    return True  # arrays and objects, even empty ones


def _number_text(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        if 1e-7 <= abs(value) < 1e21:
            return format(Decimal(text), "f")
        mantissa, exponent = text.split("e")
        power = int(exponent)
        return f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
    return text


def js_to_string(value: Any) -> str:
    """JavaScript's String(value)."""
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_number(value):
        return _number_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join("" if item is None or item is UNDEFINED else js_to_string(item) for item in value)
    return "[object Object]"


def js_to_number(value: Any) -> int | float:
    """JavaScript's Number(value)."""
    if value is UNDEFINED:
        return math.nan
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1 if value else 0
    if _is_number(value):
        return _tidy(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0
        if _JS_NUMBER.fullmatch(text):
            return _tidy(float(text))
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if text in ("Infinity", "+Infinity"):
            return math.inf
        if text == "-Infinity":
            return -math.inf
        return math.nan
    return js_to_number(js_to_string(value))  # arrays and objects go through their string form


def _to_primitive(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)) or isinstance(value, Mapping):
        return js_to_string(value)
    return value


def js_strict_equals(left: Any, right: Any) -> bool:
    if left is UNDEFINED or right is UNDEFINED:
        return left is right
    if left is None or right is None:
        return left is right
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return left == right  # NaN != NaN, as in JS
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if isinstance(left, (str, int, float)) or isinstance(right, (str, int, float)):
        return False
    return left is right  # objects compare by identity


def js_loose_equals(left: Any, right: Any) -> bool:
    left_nullish = left is None or left is UNDEFINED
    right_nullish = right is None or right is UNDEFINED
    if left_nullish or right_nullish:
        return left_nullish and right_nullish
    if isinstance(left, bool):
        return js_loose_equals(js_to_number(left), right)
    if isinstance(right, bool):
        return js_loose_equals(left, js_to_number(right))
    left_object = not isinstance(left, (str, int, float))
    right_object = not isinstance(right, (str, int, float))
    if left_object and right_object:
        return left is right
    if left_object:
        return js_loose_equals(_to_primitive(left), right)
    if right_object:
        return js_loose_equals(left, _to_primitive(right))
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return js_to_number(left) == js_to_number(right)


def js_add(left: Any, right: Any) -> Any:
    left, right = _to_primitive(left), _to_primitive(right)
    if isinstance(left, str) or isinstance(right, str):
        return js_to_string(left) + js_to_string(right)
    return _tidy(js_to_number(left) + js_to_number(right))


def js_compare(op: str, left: Any, right: Any) -> bool:
    left, right = _to_primitive(left), _to_primitive(right)
    if isinstance(left, str) and isinstance(right, str):
        a, b = left, right
    else:
        a, b = js_to_number(left), js_to_number(right)
        if (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
            return False
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def template_text(value: Any) -> str:
    """How a value is written into text around it: nothing for null/undefined, JSON for objects."""
    if value is None or value is UNDEFINED:
        return ""
    if isinstance(value, (list, tuple, dict)) or isinstance(value, Mapping):
        return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False)
    return js_to_string(value)


def _plain(value: Any) -> Any:
    if value is UNDEFINED:
        return None
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# Syntax tree
# ---------------------------------------------------------------------------------------------


class _Node:
    def eval(self, ctx: ExpressionContext) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class _Literal(_Node):
    value: Any

    def eval(self, ctx: ExpressionContext) -> Any:
        return self.value


@dataclass(frozen=True)
class _Json(_Node):
    def eval(self, ctx: ExpressionContext) -> Any:
        value = ctx.json
        return UNDEFINED if value is None else value


@dataclass(frozen=True)
class _NodeJson(_Node):
    name: str

    def eval(self, ctx: ExpressionContext) -> Any:
        value = ctx.node_json(self.name)
        return UNDEFINED if value is None else value


@dataclass(frozen=True)
class _Member(_Node):
    obj: _Node
    key: str | int

    def eval(self, ctx: ExpressionContext) -> Any:
        obj = self.obj.eval(ctx)
        key = self.key
        if obj is None or obj is UNDEFINED:
            return UNDEFINED
        if isinstance(obj, Mapping):
            return obj.get(key if isinstance(key, str) else str(key), UNDEFINED)
        if isinstance(obj, (str, list, tuple)):
            if key == "length":
                return len(obj)
            if isinstance(key, int):
                return obj[key] if 0 <= key < len(obj) else UNDEFINED
        return UNDEFINED


@dataclass(frozen=True)
class _Not(_Node):
    operand: _Node

    def eval(self, ctx: ExpressionContext) -> Any:
        return not js_truthy(self.operand.eval(ctx))


@dataclass(frozen=True)
class _Binary(_Node):
    op: str
    left: _Node
    right: _Node

    def eval(self, ctx: ExpressionContext) -> Any:
        op = self.op
        if op == "&&":
            left = self.left.eval(ctx)
            return self.right.eval(ctx) if js_truthy(left) else left
        if op == "||":
            left = self.left.eval(ctx)
            return left if js_truthy(left) else self.right.eval(ctx)
        left, right = self.left.eval(ctx), self.right.eval(ctx)
        if op == "+":
            return js_add(left, right)
        if op == "==":
            return js_loose_equals(left, right)
        if op == "!=":
            return not js_loose_equals(left, right)
        if op == "===":
            return js_strict_equals(left, right)
        if op == "!==":
            return not js_strict_equals(left, right)
        return js_compare(op, left, right)


@dataclass(frozen=True)
class _Conditional(_Node):
    test: _Node
    then: _Node
    otherwise: _Node

    def eval(self, ctx: ExpressionContext) -> Any:
        return self.then.eval(ctx) if js_truthy(self.test.eval(ctx)) else self.otherwise.eval(ctx)


@dataclass(frozen=True)
class _Convert(_Node):
    function: str  # "String" or "Number"
    arg: _Node

    def eval(self, ctx: ExpressionContext) -> Any:
        value = self.arg.eval(ctx)
        return js_to_string(value) if self.function == "String" else js_to_number(value)


def _node_refs(node: _Node) -> set[str]:
    if isinstance(node, _NodeJson):
        return {node.name}
    refs: set[str] = set()
    for child in vars(node).values():
        if isinstance(child, _Node):
            refs |= _node_refs(child)
    return refs


# ---------------------------------------------------------------------------------------------
# Tokenizer and parser
# ---------------------------------------------------------------------------------------------

_PUNCTUATION = sorted(
    ["===", "!==", "==", "!=", "<=", ">=", "&&", "||", "=>", "?.", "??", "++", "--", "+=", "-=", "*=",
     "/=", "**", "<", ">", "!", "?", ":", "(", ")", "[", "]", ".", ",", "+", "-", "*", "/", "%", "=",
     "{", "}", ";", "&", "|", "^", "~"],
    key=len, reverse=True)
_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "str", "name", "op", "end"
    value: Any
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "`":
            raise ExpressionError("template literals (`…`) are not supported; use + to join strings")
        if c in "'\"":
            value, i = _read_string(text, i)
            tokens.append(_Token("str", value, i))
            continue
        number = _NUMBER.match(text, i)
        if number and (c.isdigit() or (c == "." and i + 1 < len(text) and text[i + 1].isdigit())):
            raw = number.group()
            tokens.append(_Token("num", _tidy(float(raw)) if any(ch in raw for ch in ".eE") else int(raw), i))
            i = number.end()
            continue
        name = _NAME.match(text, i)
        if name:
            tokens.append(_Token("name", name.group(), i))
            i = name.end()
            continue
        for punct in _PUNCTUATION:
            if text.startswith(punct, i):
                tokens.append(_Token("op", punct, i))
                i += len(punct)
                break
        else:
            raise ExpressionError(f"unexpected character {c!r}")
    tokens.append(_Token("end", None, len(text)))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    raise ExpressionError("unterminated string literal")


_BINARY_POWER = {
    "||": 20, "&&": 30,
    "==": 40, "!=": 40, "===": 40, "!==": 40,
    "<": 50, "<=": 50, ">": 50, ">=": 50,
    "+": 60,
}
_TERNARY_POWER = 10
_POSTFIX_POWER = 90
_UNSUPPORTED_OPERATORS = {
    "-": "subtraction (-) is not supported; only + is",
    "*": "multiplication (*) is not supported; only + is",
    "/": "division (/) is not supported; only + is",
    "%": "the remainder operator (%) is not supported",
    "**": "exponentiation (**) is not supported",
    "??": "the nullish operator (??) is not supported; use ||",
    "?.": "optional chaining (?.) is not supported; reading a missing property already gives undefined",
    "=": "assignment (=) is not allowed in an expression; compare with == or ===",
    "+=": "assignment (+=) is not allowed in an expression",
    "-=": "assignment (-=) is not allowed in an expression",
    "*=": "assignment (*=) is not allowed in an expression",
    "/=": "assignment (/=) is not allowed in an expression",
    "++": "increment (++) is not allowed in an expression",
    "--": "decrement (--) is not allowed in an expression",
    "=>": "arrow functions are not supported",
    ";": "only one expression is allowed (no ;)",
    "&": "bitwise operators are not supported", "|": "bitwise operators are not supported",
    "^": "bitwise operators are not supported", "~": "bitwise operators are not supported",
    ",": "the comma operator is not supported",
}
_KNOWN_VARIABLES = "$json, $('node name').item.json and $node[\"node name\"].json"


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def is_op(self, value: str) -> bool:
        return self.token.kind == "op" and self.token.value == value

    def expect_op(self, value: str, what: str) -> None:
        if not self.is_op(value):
            raise ExpressionError(f"expected {value!r} {what}, found {self._describe(self.token)}")
        self.advance()

    @staticmethod
    def _describe(token: _Token) -> str:
        if token.kind == "end":
            return "the end of the expression"
        if token.kind == "str":
            return f"the string {token.value!r}"
        return repr(str(token.value))

    def parse(self) -> _Node:
        if self.token.kind == "end":
            raise ExpressionError("empty expression")
        node = self.expression(0)
        if self.token.kind != "end":
            token = self.token
            if token.kind == "op" and token.value in _UNSUPPORTED_OPERATORS:
                raise ExpressionError(_UNSUPPORTED_OPERATORS[token.value])
            raise ExpressionError(f"unexpected {self._describe(token)}")
        return node

    def expression(self, right_power: int) -> _Node:
        left = self.prefix()
        while True:
            token = self.token
            if token.kind != "op":
                if token.kind == "end":
                    return left
                raise ExpressionError(f"unexpected {self._describe(token)} (missing operator?)")
            op = token.value
            if op in (".", "[", "("):
                power = _POSTFIX_POWER
            elif op == "?":
                power = _TERNARY_POWER
            elif op in _BINARY_POWER:
                power = _BINARY_POWER[op]
            elif op in _UNSUPPORTED_OPERATORS and op != ",":
                raise ExpressionError(_UNSUPPORTED_OPERATORS[op])
            else:
                return left  # ")", "]", ":" and "," end this sub-expression
            if power <= right_power:
                return left
            left = self.infix(left, op, power)

    def prefix(self) -> _Node:
        token = self.advance()
        if token.kind == "num":
            return _Literal(token.value)
        if token.kind == "str":
            return _Literal(token.value)
        if token.kind == "name":
            return self.name(token.value)
        op = token.value
        if op == "!":
            return _Not(self.expression(_POSTFIX_POWER - 10))
        if op == "(":
            inner = self.expression(0)
            self.expect_op(")", "to close (")
            return inner
        if op == "-" and self.token.kind == "num":
            return _Literal(-self.advance().value)
        if op == "[":
            raise ExpressionError("array literals are not supported")
        if op == "{":
            raise ExpressionError("object literals are not supported")
        if op in _UNSUPPORTED_OPERATORS:
            raise ExpressionError(_UNSUPPORTED_OPERATORS[op])
        raise ExpressionError(f"unexpected {self._describe(token)}")

    def name(self, name: str) -> _Node:
        if name == "true":
            return _Literal(True)
        if name == "false":
            return _Literal(False)
        if name == "null":
            return _Literal(None)
        if name == "undefined":
            return _Literal(UNDEFINED)
        if name in ("String", "Number"):
            if not self.is_op("("):
                raise ExpressionError(f"{name} may only be called, as {name}(value)")
            self.advance()
            if self.is_op(")"):
                raise ExpressionError(f"{name}() needs exactly one argument")
            arg = self.expression(0)
            if self.is_op(","):
                raise ExpressionError(f"{name}() takes exactly one argument")
            self.expect_op(")", f"to close {name}(")
            return _Convert(name, arg)
        if name == "$json":
            return _Json()
        if name == "$":
            return self.node_call()
        if name == "$node":
            return self.node_table()
        if name == "$env":
            raise ExpressionError("$env is not available to flows (environment variables stay out of expressions)")
        if name == "eval":
            raise ExpressionError("eval is not allowed")
        if name in ("new", "typeof", "function", "this", "void", "delete", "instanceof", "in"):
            raise ExpressionError(f"'{name}' is not supported")
        if name.startswith("$"):
            raise ExpressionError(f"unsupported variable {name}; use {_KNOWN_VARIABLES}")
        if self.is_op("("):
            raise ExpressionError(f"function calls are not supported ({name}(…)); only String() and Number()")
        raise ExpressionError(f"unknown name '{name}'; use {_KNOWN_VARIABLES}")

    def node_call(self) -> _Node:
        """`$('node name').item.json` → that node's latest output json."""
        self.expect_op("(", "after $ (as in $('node name'))")
        token = self.advance()
        if token.kind != "str":
            raise ExpressionError("$(…) takes the node name as a string literal, as in $('node name')")
        self.expect_op(")", "to close $(")
        name = token.value
        for step in ("item", "json"):
            if not self.is_op("."):
                raise ExpressionError(f"write $('{name}').item.json… to read that node's output")
            self.advance()
            key = self.advance()
            if key.kind != "name" or key.value != step:
                if key.kind == "name" and self.is_op("("):
                    raise ExpressionError(f"method calls are not supported (.{key.value}()); write $('{name}').item.json…")
                raise ExpressionError(f"write $('{name}').item.json… to read that node's output")
        return _NodeJson(name)

    def node_table(self) -> _Node:
        """`$node["node name"].json` → that node's latest output json."""
        if self.is_op("["):
            self.advance()
            token = self.advance()
            if token.kind != "str":
                raise ExpressionError('$node[…] takes the node name as a string literal, as in $node["node name"]')
            self.expect_op("]", "to close $node[")
            name = token.value
        elif self.is_op("."):
            self.advance()
            token = self.advance()
            if token.kind != "name":
                raise ExpressionError('write $node["node name"].json…')
            name = token.value
        else:
            raise ExpressionError('write $node["node name"].json…')
        if not self.is_op("."):
            raise ExpressionError(f'write $node["{name}"].json… to read that node\'s output')
        self.advance()
        key = self.advance()
        if key.kind != "name" or key.value != "json":
            raise ExpressionError(f'write $node["{name}"].json… to read that node\'s output')
        return _NodeJson(name)

    def infix(self, left: _Node, op: str, power: int) -> _Node:
        self.advance()
        if op == ".":
            key = self.advance()
            if key.kind != "name":
                raise ExpressionError(f"expected a property name after '.', found {self._describe(key)}")
            if self.is_op("("):
                raise ExpressionError(f"method calls are not supported (.{key.value}()); only String() and Number()")
            return _Member(left, key.value)
        if op == "[":
            key = self.advance()
            if key.kind not in ("str", "num") or not self.is_op("]"):
                raise ExpressionError("only a string or integer literal may stand in brackets, as in $json[\"key\"]")
            if key.kind == "num" and not isinstance(key.value, int):
                raise ExpressionError("an index in brackets must be an integer")
            self.advance()
            return _Member(left, key.value)
        if op == "(":
            raise ExpressionError("function calls are not supported; only String() and Number()")
        if op == "?":
            then = self.expression(0)
            self.expect_op(":", "in a ? b : c")
            otherwise = self.expression(_TERNARY_POWER - 1)  # right-associative
            return _Conditional(left, then, otherwise)
        return _Binary(op, left, self.expression(power))


# ---------------------------------------------------------------------------------------------
# Compiled expressions
# ---------------------------------------------------------------------------------------------


class Expression:
    """A compiled `{{ … }}` value. Equal when written the same way."""

    source: str
    node_refs: frozenset[str]

    def evaluate(self, ctx: ExpressionContext) -> Any:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.source == self.source  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.source))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


class ValueExpression(Expression):
    """The whole value is one `{{ … }}`: the result keeps its type (number, object, None…)."""

    def __init__(self, source: str, tree: _Node):
        self.source = source
        self._tree = tree
        self.node_refs = frozenset(_node_refs(tree))

    def evaluate(self, ctx: ExpressionContext) -> Any:
        value = self._tree.eval(ctx)
        return None if value is UNDEFINED else value


class TemplateExpression(Expression):
    """Text with `{{ … }}` inside it: the result is always a string."""

    def __init__(self, source: str, parts: Sequence[str | _Node]):
        self.source = source
        self._parts = tuple(parts)
        refs: set[str] = set()
        for part in self._parts:
            if isinstance(part, _Node):
                refs |= _node_refs(part)
        self.node_refs = frozenset(refs)

    def evaluate(self, ctx: ExpressionContext) -> str:
        return "".join(part if isinstance(part, str) else template_text(part.eval(ctx)) for part in self._parts)


def is_expression_text(text: Any) -> bool:
    return isinstance(text, str) and "{{" in text


def _segments(text: str) -> list[str | _Node]:
    parts: list[str | _Node] = []
    i = 0
    while True:
        start = text.find("{{", i)
        if start < 0:
            parts.append(text[i:])
            return parts
        parts.append(text[i:start])
        k = start + 2
        quote: str | None = None
        while k < len(text):
            c = text[k]
            if quote:
                if c == "\\":
                    k += 2
                    continue
                if c == quote:
                    quote = None
            elif c in "'\"`":
                quote = c
            elif text.startswith("}}", k):
                break
            k += 1
        else:
            raise ExpressionError("'{{' without a closing '}}'", text)
        try:
            parts.append(_Parser(text[start + 2:k]).parse())
        except ExpressionError as exc:
            raise ExpressionError(exc.reason, "{{" + text[start + 2:k] + "}}") from None
        i = k + 2


def compile_text(text: str, *, node: str | None = None, param: str | None = None) -> str | Expression:
    """A string as written in a flow: plain text stays a str, `{{ … }}` becomes an Expression.
    Raises ExpressionError naming `node` and `param`."""
    if not is_expression_text(text):
        return text
    try:
        parts = _segments(text)
    except ExpressionError as exc:
        raise exc.at(node, param) from None
    if len(parts) == 3 and parts[0] == "" and parts[2] == "" and isinstance(parts[1], _Node):
        return ValueExpression(text, parts[1])
    return TemplateExpression(text, [part for part in parts if part != ""])


def resolve(value: Any, ctx: ExpressionContext) -> Any:
    """Evaluate every Expression inside a parameter value, returning plain dicts and lists."""
    if isinstance(value, Expression):
        return value.evaluate(ctx)
    if isinstance(value, Mapping):
        return {key: resolve(item, ctx) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(item, ctx) for item in value]
    return value
