"""The core nodes: the glue n8n flows use between SIP PBX nodes (IF, Switch, Set, NoOp).

Each function takes the node and the resolved parameters of one item and says which branch(es)
the item leaves on, with which json. Conditions follow n8n's filter operators with JavaScript
value semantics (`expressions.js_*`), so an imported workflow routes the way it did in n8n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .expressions import js_compare, js_loose_equals, js_to_number, js_to_string, js_truthy

JsonMap = Mapping[str, Any]


class CoreNodeError(ValueError):
    """A condition or assignment that cannot be evaluated; the message names what to fix."""


@dataclass(frozen=True)
class Routed:
    """Where an item goes: branch names (possibly none: the item stops) and its json."""

    branches: tuple[str, ...]
    json: JsonMap


def _empty(value: Any) -> bool:
    if value is None or value == "":
        return True
    if isinstance(value, (list, tuple, dict)) and len(value) == 0:
        return True
    return False


def _exists(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def condition_holds(cond: Mapping[str, Any], ignore_case: bool = False) -> bool:
    """One n8n filter condition: {left, operator, right, type}, values already resolved."""
    op = cond["operator"]
    kind = cond.get("type", "any")
    left, right = cond.get("left"), cond.get("right")
    if op == "exists":
        return _exists(left)
    if op == "notExists":
        return not _exists(left)
    if op == "empty":
        return _empty(left)
    if op == "notEmpty":
        return not _empty(left)
    if op in ("true", "false"):
        value = left.strip().lower() == "true" if isinstance(left, str) else js_truthy(left)
        return value if op == "true" else not value
    if kind == "number" or op in ("gt", "lt", "gte", "lte"):
        a, b = js_to_number(left), js_to_number(right)
        if op in ("equals", "notEquals"):
            return (a == b) == (op == "equals")
        return js_compare({"gt": ">", "lt": "<", "gte": ">=", "lte": "<="}[op], a, b)
    if kind == "array":
        items = list(left) if isinstance(left, (list, tuple)) else []
        found = any(js_loose_equals(item, right) for item in items)
        return found if op == "contains" else not found
    if kind == "string" or op in ("contains", "notContains", "startsWith", "notStartsWith", "endsWith",
                                  "notEndsWith"):
        a, b = js_to_string(left), js_to_string(right)
        if ignore_case:
            a, b = a.lower(), b.lower()
        checks = {"equals": a == b, "contains": b in a, "startsWith": a.startswith(b), "endsWith": a.endswith(b)}
        base = op[3].lower() + op[4:] if op.startswith("not") else op
        if base not in checks:
            raise CoreNodeError(f"operator {op!r} does not apply to strings")
        return checks[base] if not op.startswith("not") else not checks[base]
    if op in ("equals", "notEquals"):
        a, b = left, right
        if ignore_case and isinstance(a, str) and isinstance(b, str):
            a, b = a.lower(), b.lower()
        return js_loose_equals(a, b) == (op == "equals")
    raise CoreNodeError(f"operator {op!r} is not supported for type {kind!r}")


def conditions_hold(conditions: Sequence[Mapping[str, Any]], combinator: str, ignore_case: bool) -> bool:
    results = (condition_holds(c, ignore_case) for c in conditions)
    return any(results) if combinator == "or" else all(results)


def run_if(params: Mapping[str, Any], json: JsonMap) -> Routed:
    holds = conditions_hold(params.get("conditions") or (), params.get("combinator", "and"),
                            bool(params.get("ignoreCase")))
    return Routed(("true",) if holds else ("false",), json)


def run_switch(params: Mapping[str, Any], branches: Sequence[str], json: JsonMap) -> Routed:
    if params.get("mode", "rules") == "expression":
        index = js_to_number(params.get("output"))
        if index != index or int(index) != index or not 0 <= int(index) < len(branches):
            raise CoreNodeError(f"output {params.get('output')!r} is not a branch index (0..{len(branches) - 1})")
        return Routed((branches[int(index)],), json)
    rules = params.get("rules") or ()
    ignore_case = bool(params.get("ignoreCase"))
    matched = [i for i, rule in enumerate(rules)
               if conditions_hold(rule.get("conditions") or (), rule.get("combinator", "and"), ignore_case)]
    if not params.get("allMatchingOutputs"):
        matched = matched[:1]
    if matched:
        return Routed(tuple(branches[i] for i in matched), json)
    fallback = params.get("fallbackOutput", "none")
    if fallback == "extra":
        return Routed((branches[-1],), json)
    if isinstance(fallback, int) or (isinstance(fallback, str) and fallback.isdigit()):
        return Routed((branches[int(fallback)],), json)
    return Routed((), json)


def _typed(value: Any, kind: str, name: str, lenient: bool) -> Any:
    if kind == "string":
        return js_to_string(value)
    if kind == "number":
        number = js_to_number(value)
        if number != number and not lenient:
            raise CoreNodeError(f"assignment {name!r}: {value!r} is not a number")
        return number
    if kind == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return js_truthy(value)
    if kind == "array" and not isinstance(value, (list, tuple)):
        if not lenient:
            raise CoreNodeError(f"assignment {name!r}: {value!r} is not an array")
        return [value]
    if kind == "object" and not isinstance(value, Mapping):
        if not lenient:
            raise CoreNodeError(f"assignment {name!r}: {value!r} is not an object")
        return {}
    return value


def _put(target: dict, name: str, value: Any, dotted: bool) -> None:
    if not dotted or "." not in name:
        target[name] = value
        return
    *path, last = name.split(".")
    node = target
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def run_set(params: Mapping[str, Any], options: Mapping[str, Any], json: JsonMap) -> Routed:
    """n8n Set 3.x: assignments, with the other fields kept (all, selected, except) or not.
    The hidden `sipPbx` ids always travel on, so later SIP PBX nodes still find their leg."""
    out: dict[str, Any] = {}
    if params.get("includeOtherFields"):
        include = params.get("include", "all")
        fields = [f.strip() for f in str(params.get("includeFields" if include == "selected" else "excludeFields")
                                          or "").split(",") if f.strip()]
        for key, value in json.items():
            if include == "all" or (include == "selected" and key in fields) or (
                    include == "except" and key not in fields):
                out[key] = value
    dotted = bool(options.get("dotNotation", True))
    lenient = bool(options.get("ignoreConversionErrors"))
    for assignment in params.get("assignments") or ():
        _put(out, assignment["name"], _typed(assignment.get("value"), assignment.get("type", "string"),
                                              assignment["name"], lenient), dotted)
    if "sipPbx" in json:
        out["sipPbx"] = json["sipPbx"]
    return Routed(("Result",), out)


def run_noop(json: JsonMap) -> Routed:
    return Routed(("Result",), json)
