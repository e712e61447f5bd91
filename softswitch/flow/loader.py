"""Loads flow files (softswitch's YAML) into the flow model, checking them against the catalogue.

Every problem is collected, not just the first, each with its file, line (from `yaml.compose`
marks), node and message: unknown ops, trigger kinds, parameters, branch names and tools;
wrong types, values and patterns; missing required parameters; dangling or duplicate names;
nodes no trigger reaches; expressions outside the supported subset. The result has every
parameter's default filled in, `{{ … }}` compiled, branches in reference order and `next`
resolved (see model.py).
"""

from __future__ import annotations

import difflib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Sequence

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node as YamlNode, ScalarNode, SequenceNode

from . import catalog
from .catalog import CONDITION_OPERATORS, UNARY_CONDITION_OPERATORS, NodeType, Param
from .expressions import Expression, ExpressionError, compile_text
from .model import Flow, FlowError, FlowIssue, Node, Trigger

__all__ = ["FlowError", "FlowIssue", "load_flow", "load_flow_text", "load_flows"]

_BAD: Any = object()  # a value that was reported as an error


class _Unknown:
    """Stands for a wrong value when conditions are evaluated (catalog.When treats it like an
    expression: undecided), so one mistake does not cascade into more."""

    source = ""

    def evaluate(self, ctx: Any) -> None:
        return None


_UNKNOWN = _Unknown()

# Why a branch a flow names may be missing: shown after "unknown branch".
_BRANCH_HINTS = {
    ("call.wait", "Interrupted"): "Interrupted exists only when options.interruptReasons is not empty",
    ("call.wait", "DTMF Fallback"): "DTMF Fallback exists only with waitDtmfFallbackEnabled: true",
    ("dial.wait", "Ringing"): "add ringing to waitEventOutputs to get a Ringing branch",
    ("dial.wait", "Progress"): "add progress to waitEventOutputs to get a Progress branch",
    ("dial.wait", "Rejected"): "add rejected to waitEventOutputs to get a Rejected branch",
    ("dial.make", "Unavailable"): "Unavailable exists only with callMode: extension",
    ("trunk", "Recording"): "Recording exists only with enableCallRecording: true",
    ("trunk", "Auth"): "Auth exists only with trunkConnectionMode: dynamic and authMode other than static",
    ("extensions", "Recording"): "Recording exists only with extensionsEnableCallRecording: true",
    ("extensions", "Auth"): "Auth exists only with authMode other than static",
}
for _op in ("media.playAudio", "media.playTone", "media.recordAudio"):
    _BRANCH_HINTS[(_op, "Result")] = "Result is the branch of options.mediaExecutionMode: background"
    _BRANCH_HINTS[(_op, "Completed")] = "Completed exists only in blocking mode (and not with repeatInfinite)"
    _BRANCH_HINTS[(_op, "Interrupted")] = "Interrupted exists only in blocking mode"


def load_flow(path: str | Path) -> Flow:
    """Load one flow file; FlowError lists every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError([FlowIssue(str(path), None, None, f"cannot read flow file: {exc}")]) from None
    return load_flow_text(text, str(path))


def load_flow_text(text: str, file: str = "<flow>") -> Flow:
    """Load a flow from YAML text; `file` names it in errors."""
    loader = _Loader(file)
    try:
        flow = loader.load(text)
    except RecursionError:  # YAML or an expression nested thousands deep: no flow is written so
        raise FlowError([FlowIssue(file, None, None, "the flow nests too deeply (lists, mappings or "
                                   "parentheses thousands of levels deep)")]) from None
    if loader.issues or flow is None:
        raise FlowError(sorted(loader.issues, key=lambda issue: issue.line or 0))
    return flow


def load_flows(paths: Iterable[str | Path]) -> list[Flow]:
    """Load every file, then check them together (flow names, extensions refs unique across
    flows). FlowError lists every problem in every file."""
    flows: list[Flow] = []
    issues: list[FlowIssue] = []
    for path in paths:
        try:
            flows.append(load_flow(path))
        except FlowError as exc:
            issues.extend(exc.issues)
    names: dict[str, Flow] = {}
    extension_refs: dict[str, Flow] = {}
    for flow in flows:
        if flow.name in names:
            issues.append(FlowIssue(flow.file, None, None,
                                    f"flow name {flow.name!r} is also used by {names[flow.name].file}"))
        names.setdefault(flow.name, flow)
        for trigger in flow.triggers_of("extensions"):
            other = extension_refs.get(trigger.ref)
            if other is not None and other is not flow:
                issues.append(FlowIssue(flow.file, trigger.line, trigger.name,
                                        f"extensions ref {trigger.ref!r} is also used in {other.file}; "
                                        "an extensions ref must be unique across all flows"))
            extension_refs.setdefault(trigger.ref, flow)
    if issues:
        raise FlowError(issues)
    return flows


# Values a flow may hold once aliases are expanded: the demo flows hold about a thousand, and
# anchors that nest aliases (a "billion laughs") would otherwise expand exponentially when read.
MAX_VALUES = 200_000


def _expanded_size(root: YamlNode) -> int:
    """How many values the document holds with its aliases expanded, computed without expanding
    them (each node's size once); a node that contains itself counts as too many."""
    sizes: dict[int, int] = {}
    inside: set[int] = set()

    def size(node: YamlNode) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in inside:
            return MAX_VALUES + 1
        inside.add(key)
        if isinstance(node, SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        elif isinstance(node, MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        inside.discard(key)
        sizes[key] = min(total, MAX_VALUES + 1)
        return sizes[key]

    return size(root)


def _line(node: YamlNode | None) -> int | None:
    return None if node is None or node.start_mark is None else node.start_mark.line + 1


def _is_null(node: YamlNode | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null")


def _suggest(word: str, choices: Iterable[str]) -> str:
    choices = [c for c in choices if isinstance(c, str)]
    found = [c for c in choices if c.lower() == word.lower()] or difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""


def _one_of(choices: Sequence[Any]) -> str:
    return ", ".join(str(c) for c in choices)


def _got(node: YamlNode) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    if tag == "null":
        return "null"
    if tag == "str":
        return f"the string {node.value!r}"
    if tag == "bool":
        return f"the boolean {node.value}"
    return f"the number {node.value}"


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


@dataclass
class _Raw:
    """A node or trigger as written, before its parameters are checked."""

    name: str
    line: int | None
    trigger: bool
    type_name: str | None
    type: NodeType | None
    params: YamlNode | None
    params_line: int | None
    next: YamlNode | None
    tools: YamlNode | None
    values: dict[str, Any] = field(default_factory=dict)  # the merged view, after checking
    value_lines: dict[str, int | None] = field(default_factory=dict)
    refs: list[tuple[Expression, int | None, str]] = field(default_factory=list)
    top: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


class _Loader:
    def __init__(self, file: str):
        self.file = file
        self.issues: list[FlowIssue] = []

    def error(self, where: YamlNode | int | None, node: str | None, message: str) -> Any:
        line = where if isinstance(where, int) or where is None else _line(where)
        self.issues.append(FlowIssue(self.file, line, node, message))
        return _BAD

    # --- YAML helpers -------------------------------------------------------------------

    def mapping(self, node: YamlNode, step: str | None, what: str) -> dict[str, tuple[YamlNode, YamlNode]]:
        if _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.error(node, step, f"{what} must be a mapping, not {_got(node)}")
            return {}
        out: dict[str, tuple[YamlNode, YamlNode]] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.error(key, step, f"{what}: keys must be plain names")
                continue
            if key.value in out:
                self.error(key, step, f"{what}: duplicate key {key.value!r} (first on line {_line(out[key.value][0])})")
                continue
            out[key.value] = (key, value)
        return out

    def name_of(self, node: YamlNode, step: str | None, what: str) -> str | None:
        if not isinstance(node, ScalarNode) or _is_null(node) or node.value == "":
            self.error(node, step, f"{what} must be a non-empty string, not {_got(node)}")
            return None
        return node.value

    def construct(self, node: YamlNode, step: str | None) -> Any:
        try:
            return SafeConstructor().construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # e.g. a !!python/... tag
            return self.error(node, step, f"cannot read this value: {getattr(exc, 'problem', None) or exc}")

    # --- the document -------------------------------------------------------------------

    def load(self, text: str) -> Flow | None:
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            detail = getattr(exc, "problem", None) or str(exc)
            self.error(None if mark is None else mark.line + 1, None, f"YAML syntax error: {detail}")
            return None
        if _is_null(root):
            self.error(1, None, "the flow file is empty")
            return None
        if _expanded_size(root) > MAX_VALUES:
            self.error(1, None, f"the flow holds more than {MAX_VALUES} values once its YAML aliases are "
                       "expanded (or an alias contains itself): refused as a YAML bomb")
            return None
        top = self.mapping(root, None, "a flow file")
        for key, (knode, _value) in top.items():
            if key not in ("name", "description", "triggers", "nodes"):
                self.error(knode, None, f"unknown key {key!r}; a flow has name, description, triggers and nodes"
                           + _suggest(key, ("name", "description", "triggers", "nodes")))
        name = Path(self.file).stem
        if "name" in top:
            name = self.name_of(top["name"][1], None, "name") or name
        description = ""
        if "description" in top:
            value = top["description"][1]
            if isinstance(value, ScalarNode) and value.tag.endswith(":str"):
                description = value.value
            else:
                self.error(value, None, f"description must be a string, not {_got(value)}")

        raws: list[_Raw] = []
        written = {"triggers": 0, "nodes": 0}
        for key, trigger in (("triggers", True), ("nodes", False)):
            if key not in top:
                continue
            seq = top[key][1]
            if _is_null(seq):
                continue
            if not isinstance(seq, SequenceNode):
                self.error(seq, None, f"{key} must be a list, not {_got(seq)}")
                continue
            written[key] = len(seq.value)
            for item in seq.value:
                raw = self.raw_step(item, trigger)
                if raw is not None:
                    raws.append(raw)
        if not written["triggers"]:
            self.error(top["triggers"][0] if "triggers" in top else root, None, "a flow needs at least one trigger")

        steps: dict[str, _Raw] = {}
        for raw in raws:
            if raw.name in steps:
                self.error(raw.line, raw.name, f"duplicate name {raw.name!r} (first on line {steps[raw.name].line})")
                continue
            steps[raw.name] = raw

        unique = list(steps.values())
        for raw in unique:
            if raw.type is not None:
                self.check_params(raw)
        built: list[Trigger | Node] = []
        for raw in unique:
            step = self.build_step(raw, steps)
            if step is not None:
                built.append(step)
        self.check_expression_refs(unique, steps)
        self.check_reachable(unique, steps)
        self.check_refs(unique)
        if self.issues:
            return None
        return Flow(name=name, description=description,
                    triggers=tuple(s for s in built if isinstance(s, Trigger)),
                    nodes=tuple(s for s in built if isinstance(s, Node)),
                    file=self.file)

    def raw_step(self, item: YamlNode, trigger: bool) -> _Raw | None:
        what = "a trigger" if trigger else "a node"
        type_key = "trigger" if trigger else "op"
        allowed = ("name", type_key, "params", "next") + (() if trigger else ("tools",))
        if not isinstance(item, MappingNode):
            self.error(item, None, f"{what} must be a mapping with {', '.join(allowed)}, not {_got(item)}")
            return None
        entries = self.mapping(item, None, what)
        if "name" not in entries:
            self.error(item, None, f"{what} needs a name")
            return None
        name = self.name_of(entries["name"][1], None, "name")
        if name is None:
            return None
        for key, (knode, _v) in entries.items():
            if key not in allowed:
                hint = _suggest(key, allowed)
                if key == "trigger" and not trigger:
                    hint = " (triggers go in the triggers: list)"
                elif key == "op" and trigger:
                    hint = " (a trigger has trigger: trunk|extensions|queue|aiTool)"
                self.error(knode, name, f"unknown key {key!r}; {what} has {', '.join(allowed)}{hint}")
        type_name: str | None = None
        ntype: NodeType | None = None
        if type_key not in entries:
            self.error(entries["name"][1], name, f"missing {type_key}:")
        else:
            tnode = entries[type_key][1]
            type_name = self.name_of(tnode, name, type_key)
            if type_name is not None:
                table = catalog.TRIGGERS if trigger else catalog.OPS
                ntype = table.get(type_name)
                if ntype is None:
                    if trigger:
                        message = (f"unknown trigger kind {type_name!r}; known: {_one_of(catalog.TRIGGER_KINDS)}"
                                   + _suggest(type_name, catalog.TRIGGER_KINDS))
                    elif type_name in catalog.TRIGGERS:
                        message = f"{type_name!r} is a trigger kind: declare it under triggers:"
                    else:
                        message = f"unknown op {type_name!r}" + _suggest(type_name, catalog.OPS)
                    self.error(tnode, name, message)
        params = entries.get("params", (None, None))
        return _Raw(
            name=name, line=_line(entries["name"][1]), trigger=trigger, type_name=type_name, type=ntype,
            params=params[1], params_line=_line(params[0]) or _line(entries["name"][1]),
            next=entries.get("next", (None, None))[1], tools=entries.get("tools", (None, None))[1])

    # --- parameters ---------------------------------------------------------------------

    def check_params(self, raw: _Raw) -> None:
        ntype = raw.type
        assert ntype is not None
        top_params, option_params = ntype.top_params, ntype.option_params
        given: dict[str, Any] = {}
        for key, (knode, vnode) in self.mapping(raw.params, raw.name, "params").items():
            if key == "options":
                if not option_params:
                    if not _is_null(vnode) and not (isinstance(vnode, MappingNode) and not vnode.value):
                        self.error(knode, raw.name, f"{ntype.name} has no options")
                    continue
                for okey, (oknode, ovnode) in self.mapping(vnode, raw.name, "options").items():
                    p = option_params.get(okey)
                    if p is None:
                        if okey in top_params:
                            self.error(oknode, raw.name, f"{okey!r} is not an option: write it directly under params:")
                        else:
                            self.error(oknode, raw.name, f"unknown option {okey!r} for {ntype.name}"
                                       + _suggest(okey, option_params))
                        continue
                    self.take(raw, p, ovnode, f"options.{okey}", given)
                continue
            p = top_params.get(key)
            if p is None:
                if key in option_params:
                    self.error(knode, raw.name, f"{key!r} is an option of {ntype.name}: put it under options:")
                else:
                    self.error(knode, raw.name, f"unknown parameter {key!r} for {ntype.name}"
                               + _suggest(key, [*top_params, *option_params]))
                continue
            self.take(raw, p, vnode, key, given)

        # A value already reported as wrong decides nothing: conditions on it count as unknown.
        known = {key: (_UNKNOWN if value is _BAD else value) for key, value in given.items()}
        view: dict[str, Any] = {}
        for p in ntype.params:
            applies = p.applies({**view, **known})
            if p.name in given:
                if given[p.name] is _BAD:
                    continue
                if applies is False:
                    failing = next(c for c in p.when if c.holds({**view, **known}) is False)
                    self.error(raw.value_lines.get(p.name), raw.name,
                               f"parameter {p.name!r} applies only when {failing}")
                    continue
                view[p.name] = given[p.name]
            elif applies is not False:
                if p.has_default:
                    view[p.name] = p.default
                elif p.required and applies:
                    where = f" (required when {' and '.join(str(c) for c in p.when)})" if p.when else ""
                    place = "options." if p.option else ""
                    self.error(raw.params_line, raw.name, f"missing required parameter {place}{p.name}{where}")
        raw.values = view
        raw.top = {k: v for k, v in view.items() if not ntype.param(k).option}  # type: ignore[union-attr]
        raw.options = {k: v for k, v in view.items() if ntype.param(k).option}  # type: ignore[union-attr]
        self.check_conditions(raw)

    def take(self, raw: _Raw, p: Param, vnode: YamlNode, path: str, given: dict[str, Any]) -> None:
        value = self.value(raw, p, vnode, path)
        given[p.name] = value
        raw.value_lines[p.name] = _line(vnode)
        if p.required and value == "":
            self.error(vnode, raw.name, f"parameter {path} must not be empty")
            given[p.name] = _BAD

    def expression(self, raw: _Raw, text: str, vnode: YamlNode, path: str) -> Any:
        try:
            compiled = compile_text(text, node=raw.name, param=path)
        except ExpressionError as exc:
            source = f" in {exc.source!r}" if exc.source else ""
            return self.error(vnode, raw.name, f"parameter {path}: {exc.reason}{source}")
        if isinstance(compiled, Expression):
            raw.refs.append((compiled, _line(vnode), path))
        return compiled

    def value(self, raw: _Raw, p: Param, v: YamlNode, path: str) -> Any:
        step = raw.name
        if isinstance(v, ScalarNode) and v.tag.endswith(":str") and "{{" in v.value:
            if p.static:
                return self.error(v, step, f"parameter {path} decides this node's branches, so it must be "
                                           "written as a literal value, not an expression")
            if p.type in ("string", "number", "boolean", "enum", "multi", "ids", "json", "any", "fallback"):
                return self.expression(raw, v.value, v, path)
            return self.error(v, step, f"parameter {path} must be a list, not an expression")
        kind = p.type

        def wrong(expected: str) -> Any:
            hint = ""
            if expected == "a string" and isinstance(v, ScalarNode) and not _is_null(v):
                hint = f" (quote it: \"{v.value}\")"
            return self.error(v, step, f"parameter {path}: expected {expected}, got {_got(v)}{hint}")

        if kind in ("string", "number", "boolean", "enum", "fallback"):
            if not isinstance(v, ScalarNode):
                return wrong({"string": "a string", "number": "a number", "boolean": "true or false",
                              "enum": f"one of {_one_of(p.choices)}",
                              "fallback": "none, extra or a rule index"}[kind])
            value = self.construct(v, step)
            if value is _BAD:
                return _BAD
            if kind == "string":
                if not isinstance(value, str):
                    return wrong("a string")
                if p.pattern and not _fullmatch(p.pattern, value):
                    return self.error(v, step, f"parameter {path}: {value!r} is not valid: {p.pattern_hint}")
                return value
            if kind == "number":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    return wrong("a number")
                return value
            if kind == "boolean":
                if not isinstance(value, bool):
                    return wrong("true or false")
                return value
            if kind == "fallback":
                if value in ("none", "extra") or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                    return value
                return wrong("none, extra or a rule index")
            if not isinstance(value, str) or value not in p.choices:
                shown = repr(value) if isinstance(value, str) else _got(v)
                return self.error(v, step, f"parameter {path}: {shown} is not one of {_one_of(p.choices)}"
                                  + (_suggest(value, p.choices) if isinstance(value, str) else ""))
            return value

        if kind in ("multi", "ids", "records"):
            if _is_null(v):
                return ()
            if not isinstance(v, SequenceNode):
                return wrong("a list")
            if kind == "records":
                return self.records(raw, p, v, path)
            out: list[Any] = []
            seen: dict[Any, int | None] = {}
            for i, item in enumerate(v.value):
                where = f"{path}[{i}]"
                if not isinstance(item, ScalarNode) or not item.tag.endswith(":str"):
                    self.error(item, step, f"parameter {where}: expected a string, got {_got(item)}")
                    continue
                text = item.value
                if kind == "ids":
                    out.append(self.expression(raw, text, item, where) if "{{" in text else text)
                    continue
                if text not in p.choices:
                    self.error(item, step, f"parameter {where}: {text!r} is not one of {_one_of(p.choices)}"
                               + _suggest(text, p.choices))
                    continue
                if text in seen:
                    self.error(item, step, f"parameter {path}: {text!r} is listed twice")
                    continue
                seen[text] = _line(item)
                out.append(text)
            return tuple(out)

        if kind == "json":
            if isinstance(v, ScalarNode) and v.tag.endswith(":str"):
                try:
                    json.loads(v.value)
                except ValueError as exc:
                    return self.error(v, step, f"parameter {path}: not valid JSON ({exc})")
                return v.value
            if isinstance(v, (MappingNode, SequenceNode)):
                return _freeze(self.construct(v, step))
            return wrong("JSON text, a mapping or a list")

        return self.any_value(raw, v, path)  # "any"

    def any_value(self, raw: _Raw, v: YamlNode, path: str) -> Any:
        if isinstance(v, MappingNode):
            out: dict[str, Any] = {}
            for key, (_k, item) in self.mapping(v, raw.name, f"parameter {path}").items():
                out[key] = self.any_value(raw, item, f"{path}.{key}")
            return MappingProxyType(out)
        if isinstance(v, SequenceNode):
            return tuple(self.any_value(raw, item, f"{path}[{i}]") for i, item in enumerate(v.value))
        if v.tag.endswith(":str") and "{{" in v.value:
            return self.expression(raw, v.value, v, path)
        return self.construct(v, raw.name)

    def records(self, raw: _Raw, p: Param, v: SequenceNode, path: str) -> Any:
        fields = {f.name: f for f in p.fields}
        first: dict[str, dict[Any, int | None]] = {f.name: {} for f in p.fields if f.unique}
        out: list[Any] = []
        for i, item in enumerate(v.value):
            where = f"{path}[{i}]"
            if not isinstance(item, MappingNode):
                self.error(item, raw.name, f"parameter {where}: expected a mapping of {', '.join(fields)}, "
                                           f"got {_got(item)}")
                continue
            record: dict[str, Any] = {}
            entries = self.mapping(item, raw.name, f"parameter {where}")
            for key, (knode, vnode) in entries.items():
                f = fields.get(key)
                if f is None:
                    self.error(knode, raw.name, f"parameter {where}: unknown field {key!r}; fields: "
                                                f"{', '.join(fields)}" + _suggest(key, fields))
                    continue
                value = self.value(raw, f, vnode, f"{where}.{key}")
                if value is _BAD:
                    continue
                if f.required and value == "":
                    self.error(vnode, raw.name, f"parameter {where}.{key} must not be empty")
                    continue
                if f.unique and isinstance(value, str) and value != "":
                    seen = first[key]
                    if value in seen:
                        self.error(vnode, raw.name, f"parameter {where}.{key}: duplicate {key} {value!r} in "
                                                    f"{p.name} (first on line {seen[value]})")
                        continue
                    seen[value] = _line(vnode)
                record[key] = value
            for f in p.fields:
                if f.name in record or f.name in entries:  # given (or given wrongly, already reported)
                    continue
                if f.has_default:
                    record[f.name] = f.default
                elif f.required:
                    self.error(item, raw.name, f"parameter {where}: missing required field {f.name!r}")
            out.append(MappingProxyType(record))
        return tuple(out)

    def check_conditions(self, raw: _Raw) -> None:
        """core.if / core.switch: each condition's operator must suit its type."""
        if raw.type_name == "core.if":
            groups = [("conditions", raw.values.get("conditions", ()))]
        elif raw.type_name == "core.switch":
            groups = [(f"rules[{i}].conditions", rule.get("conditions", ()))
                      for i, rule in enumerate(raw.values.get("rules", ()))]
        else:
            return
        fallback = raw.values.get("fallbackOutput")
        rules = raw.values.get("rules", ())
        if raw.type_name == "core.switch" and isinstance(fallback, int) and fallback >= len(rules):
            self.error(raw.value_lines.get("fallbackOutput"), raw.name,
                       f"parameter fallbackOutput: there is no rule {fallback} (rules are numbered from 0; "
                       f"this node has {len(rules)})")
        for path, conditions in groups:
            for i, cond in enumerate(conditions):
                ctype, operator = cond.get("type", "any"), cond.get("operator")
                allowed = CONDITION_OPERATORS.get(ctype, ())
                if operator is not None and operator not in allowed:
                    self.error(raw.params_line, raw.name,
                               f"parameter {path}[{i}]: operator {operator!r} does not apply to type {ctype}; "
                               f"use one of {_one_of(allowed)}")
                if operator in UNARY_CONDITION_OPERATORS and cond.get("right") not in ("", None):
                    self.error(raw.params_line, raw.name,
                               f"parameter {path}[{i}]: operator {operator!r} takes no right value")

    # --- wiring ----------------------------------------------------------------------------

    def build_step(self, raw: _Raw, steps: dict[str, _Raw]) -> Trigger | Node | None:
        ntype = raw.type
        branches: tuple[str, ...] = ()
        if ntype is not None:
            branches = ntype.branch_rule(raw.values)
            if raw.type_name == "core.switch" and len(set(branches)) != len(branches):
                dup = next(b for b in branches if branches.count(b) > 1)
                self.error(raw.params_line, raw.name, f"two branches are both named {dup!r}; give the rules "
                                                      "distinct outputKey values")
        next_map: dict[str, list[str]] = {b: [] for b in branches}
        entries = self.mapping(raw.next, raw.name, "next") if raw.next is not None else {}
        if entries and ntype is not None and ntype.is_tool:
            self.error(raw.next, raw.name, f"{ntype.name} has no main output: list it under tools: of an "
                                           "ai.attachVoiceAgent node instead")
            entries = {}
        for branch, (knode, vnode) in entries.items():
            if ntype is not None and branch not in branches:
                hint = _BRANCH_HINTS.get((ntype.name, branch))
                detail = f"; {hint}" if hint else _suggest(branch, branches)
                shown = ", ".join(branches) if branches else "none"
                self.error(knode, raw.name, f"unknown branch {branch!r}; this node's branches are {shown}{detail}")
                continue
            for target_node in self.name_list(raw, vnode, f"next {branch}"):
                target = target_node.value
                if target not in steps:
                    self.error(target_node, raw.name, f"next {branch}: no node named {target!r}"
                                                      + _suggest(target, steps))
                    continue
                other = steps[target]
                if other.trigger:
                    self.error(target_node, raw.name, f"next {branch}: {target!r} is a trigger; triggers cannot "
                                                      "be the target of next")
                    continue
                if other.type is not None and other.type.is_tool:
                    self.error(target_node, raw.name, f"next {branch}: {target!r} is an ai.invokeAiTool node, which "
                                                      "has no main input; list it under tools: of an "
                                                      "ai.attachVoiceAgent node")
                    continue
                targets = next_map.setdefault(branch, [])
                if target in targets:
                    self.error(target_node, raw.name, f"next {branch}: {target!r} is listed twice")
                    continue
                targets.append(target)
        tools: list[str] = []
        if raw.tools is not None and not _is_null(raw.tools):
            if ntype is not None and not ntype.accepts_tools:
                self.error(raw.tools, raw.name, "tools: only ai.attachVoiceAgent nodes take tools")
            else:
                for tool_node in self.name_list(raw, raw.tools, "tools"):
                    tool = tool_node.value
                    other = steps.get(tool)
                    if other is None:
                        self.error(tool_node, raw.name, f"tools: no node named {tool!r}" + _suggest(tool, steps))
                    elif other.type_name != "ai.invokeAiTool":
                        self.error(tool_node, raw.name, f"tools: {tool!r} is not an ai.invokeAiTool node")
                    elif tool in tools:
                        self.error(tool_node, raw.name, f"tools: {tool!r} is listed twice")
                    else:
                        tools.append(tool)
        if ntype is None:
            return None
        common = dict(name=raw.name, params=_freeze_view(raw.top), options=_freeze_view(raw.options),
                      branches=branches,
                      next=MappingProxyType({b: tuple(next_map.get(b, ())) for b in branches}),
                      line=raw.line)
        if raw.trigger:
            return Trigger(kind=ntype.name, **common)
        return Node(op=ntype.name, tools=tuple(tools), **common)

    def name_list(self, raw: _Raw, node: YamlNode, what: str) -> list[ScalarNode]:
        """A node name or a list of them."""
        if isinstance(node, ScalarNode) and not _is_null(node):
            return [node]
        if _is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.error(node, raw.name, f"{what}: expected a node name or a list of them, got {_got(node)}")
            return []
        out: list[ScalarNode] = []
        for item in node.value:
            if isinstance(item, ScalarNode) and not _is_null(item):
                out.append(item)
            else:
                self.error(item, raw.name, f"{what}: expected a node name, got {_got(item)}")
        return out

    def check_expression_refs(self, raws: list[_Raw], steps: dict[str, _Raw]) -> None:
        for raw in raws:
            for expression, line, path in raw.refs:
                for name in sorted(expression.node_refs):
                    if name not in steps:
                        self.error(line, raw.name, f"parameter {path}: $('{name}') names no node in this flow"
                                                   + _suggest(name, steps))

    def check_reachable(self, raws: list[_Raw], steps: dict[str, _Raw]) -> None:
        seen: set[str] = set()
        queue = deque(r.name for r in raws if r.trigger)
        while queue:
            name = queue.popleft()
            if name in seen or name not in steps:
                continue
            seen.add(name)
            raw = steps[name]
            for _branch, (_k, vnode) in (self.quiet_mapping(raw.next)).items():
                queue.extend(n.value for n in self.quiet_names(vnode))
            if raw.tools is not None:
                queue.extend(n.value for n in self.quiet_names(raw.tools))
        for raw in raws:
            if raw.name not in seen and not raw.trigger:
                hint = (" (an ai.invokeAiTool node is reached through tools: of an ai.attachVoiceAgent node)"
                        if raw.type_name == "ai.invokeAiTool" else "")
                self.error(raw.line, raw.name, f"not reachable from any trigger{hint}")

    @staticmethod
    def quiet_mapping(node: YamlNode | None) -> dict[str, tuple[YamlNode, YamlNode]]:
        if not isinstance(node, MappingNode):
            return {}
        return {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}

    @staticmethod
    def quiet_names(node: YamlNode) -> list[ScalarNode]:
        if isinstance(node, ScalarNode) and not _is_null(node):
            return [node]
        if isinstance(node, SequenceNode):
            return [i for i in node.value if isinstance(i, ScalarNode) and not _is_null(i)]
        return []

    def check_refs(self, raws: list[_Raw]) -> None:
        """Refs an action resolves among this flow's triggers (§1.3) must name one, and a
        (kind, ref) pair may have only one trigger."""
        refs: dict[str, dict[str, _Raw]] = {kind: {} for kind in catalog.TRIGGER_KINDS}
        for raw in raws:
            if raw.trigger and raw.type is not None:
                ref = raw.values.get("ref")
                if isinstance(ref, str) and ref:
                    first = refs[raw.type.name].get(ref)
                    if first is not None:
                        self.error(raw.value_lines.get("ref"), raw.name,
                                   f"{raw.type.name} ref {ref!r} is already used by trigger {first.name!r}")
                    refs[raw.type.name].setdefault(ref, raw)
        for raw in raws:
            if raw.trigger or raw.type is None:
                continue
            kind = None
            if raw.type_name == "dial.make" and raw.values.get("callMode") == "trunk":
                kind = "trunk"
            elif raw.type_name == "queue.putLeg" or (raw.type_name == "queue.getStats"
                                                     and raw.values.get("queueStatsTarget") == "ref"):
                kind = "queue"
            elif raw.type_name == "ai.invokeAiTool":
                kind = "aiTool"
            ref = raw.values.get("ref")
            if kind and isinstance(ref, str) and ref and ref not in refs[kind]:
                known = ", ".join(sorted(refs[kind])) or "none"
                self.error(raw.value_lines.get("ref"), raw.name,
                           f"no {kind} trigger with ref {ref!r} in this flow (its {kind} refs: {known})"
                           + _suggest(ref, refs[kind]))


def _fullmatch(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def _freeze_view(values: dict[str, Any]) -> MappingProxyType:
    return MappingProxyType({key: _freeze(value) for key, value in values.items()})
