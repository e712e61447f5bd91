"""Converts an exported n8n workflow into a softswitch flow file.

Supported nodes: the SIP PBX nodes (`n8n-nodes-sip-pbx.sipPbx`, `.sipPbxTrigger`) and n8n's
IF (v2), Switch (v3), Edit Fields/Set (3.x) and No Operation nodes; sticky notes are skipped.
n8n connects outputs by index, so each index becomes a branch name through the catalogue's
branch order for that node's parameters; `ai_tool` connections become `tools:` on the Attach
Voice Agent node. `=`-prefixed n8n expression strings lose their `=`. The YAML written is
loaded back with the flow loader before it is returned, so anything unsupported (a node, an
operator, an expression) is an N8nImportError naming the node.

Credentials are not carried over (softswitch keeps them in its config), except the SIP
Connection of a `dial.make` in direct mode, which becomes its `connection` parameter by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import catalog
from .catalog import UNARY_CONDITION_OPERATORS, CONDITION_OPERATORS, NodeType, Param
from .loader import load_flow_text
from .model import FlowError

SIP_PBX_PACKAGES = ("n8n-nodes-sip-pbx", "CUSTOM")
ACTION_TYPES = tuple(f"{pkg}.sipPbx" for pkg in SIP_PBX_PACKAGES)
TRIGGER_TYPES = tuple(f"{pkg}.sipPbxTrigger" for pkg in SIP_PBX_PACKAGES)
IF_TYPE = "n8n-nodes-base.if"
SWITCH_TYPE = "n8n-nodes-base.switch"
SET_TYPE = "n8n-nodes-base.set"
NOOP_TYPE = "n8n-nodes-base.noOp"
SKIPPED_TYPES = ("n8n-nodes-base.stickyNote",)


class N8nImportError(Exception):
    """The workflow cannot be converted; `problems` says why, each naming its node."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("cannot import the n8n workflow:\n" + "\n".join(f"  {p}" for p in self.problems))


class _Unsupported(Exception):
    pass


def import_workflow_file(path: str | Path) -> str:
    """An exported n8n workflow file → the text of a softswitch flow file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise N8nImportError([f"{path}: cannot read the workflow JSON: {exc}"]) from None
    return import_workflow(data)


def import_workflow(data: Mapping[str, Any]) -> str:
    """An n8n workflow (parsed JSON) → flow YAML, checked by loading it back."""
    _check_shape(data)
    try:
        text = dump_flow_document(convert_workflow(data))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, RecursionError, yaml.YAMLError) as exc:
        # A value of a shape n8n never writes (a list where it writes an object, ...) deeper than
        # _check_shape looks: an import error, not Python's own words from the middle of conversion.
        raise N8nImportError([f"the workflow holds a value of a shape n8n does not write "
                              f"({type(exc).__name__}: {exc})"]) from None
    try:
        load_flow_text(text, "<imported>")
    except FlowError as exc:
        raise N8nImportError([_problem(issue.node, issue.message) for issue in exc.issues]) from None
    return text


def _check_shape(data: Any) -> None:
    """The export's skeleton (nodes, their names and types, connections), checked first so that a
    damaged file is answered by what is wrong with it."""
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
        raise N8nImportError(["not an n8n workflow export: it has no nodes list"])
    problems: list[str] = []
    for i, raw in enumerate(data["nodes"]):
        if not isinstance(raw, Mapping):
            problems.append(f"nodes[{i}] is not an object")
            continue
        for key in ("name", "type"):
            if not isinstance(raw.get(key, ""), str):
                problems.append(f"nodes[{i}]: {key} must be a string")
        if not isinstance(raw.get("parameters") or {}, Mapping):
            problems.append(_problem(str(raw.get("name")), "parameters must be an object"))
    connections = data.get("connections") or {}
    if not isinstance(connections, Mapping):
        problems.append("connections must be an object")
        connections = {}
    for source, by_type in connections.items():
        if not isinstance(by_type or {}, Mapping):
            problems.append(f"connections.{source} must be an object")
            continue
        for conn_type, outputs in (by_type or {}).items():
            if not isinstance(outputs or [], list) or not all(
                    isinstance(targets or [], list) and all(isinstance(t, Mapping) and isinstance(t.get("node"), str)
                                                            for t in targets or [])
                    for targets in outputs or []):
                problems.append(f"connections.{source}.{conn_type} must be a list of lists of {{node: name}}")
    if problems:
        raise N8nImportError(problems)


def _problem(node: str | None, message: str) -> str:
    return f"node {node}: {message}" if node else message


def _strip(value: Any) -> Any:
    """n8n marks expression strings with a leading "="; the flow format does not."""
    if isinstance(value, str):
        return value[1:] if value.startswith("=") else value
    if isinstance(value, Mapping):
        return {key: _strip(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _items(value: Any, key: str = "item") -> list[Any]:
    """The entries of an n8n fixedCollection ({item: [...]}); a list is taken as it is."""
    if isinstance(value, Mapping):
        entries = value.get(key) or []
        return list(entries) if isinstance(entries, list) else [entries]
    if isinstance(value, list):
        return value
    return []


def convert_workflow(data: Mapping[str, Any]) -> dict[str, Any]:
    """An n8n workflow → the flow document (plain dicts) that dump_flow_document writes."""
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
        raise N8nImportError(["not an n8n workflow export: it has no nodes list"])
    problems: list[str] = []
    steps: dict[str, dict[str, Any]] = {}  # n8n node name → flow entry
    kinds: dict[str, tuple[bool, NodeType]] = {}
    for raw in data["nodes"]:
        name = str(raw.get("name", ""))
        node_type = raw.get("type", "")
        if node_type in SKIPPED_TYPES:
            continue
        try:
            if raw.get("disabled"):
                raise _Unsupported("disabled nodes are not supported; delete it or enable it")
            entry, is_trigger, ntype = _convert_node(raw)
        except _Unsupported as exc:
            problems.append(_problem(name, str(exc)))
            continue
        steps[name] = entry
        kinds[name] = (is_trigger, ntype)

    tools: dict[str, list[str]] = {}
    for source, by_type in (data.get("connections") or {}).items():
        if source not in steps:
            if source in kinds or any(n.get("name") == source for n in data["nodes"]):
                continue  # a node already reported (or skipped)
            problems.append(f"connections: no node named {source!r}")
            continue
        is_trigger, ntype = kinds[source]
        entry = steps[source]
        for conn_type, outputs in (by_type or {}).items():
            if conn_type == "ai_tool":
                for targets in outputs or []:
                    for target in targets or []:
                        tools.setdefault(target["node"], []).append(source)
                continue
            if conn_type != "main":
                problems.append(_problem(source, f"{conn_type} connections are not supported"))
                continue
            dynamic = _dynamic_branch_params(ntype, entry)
            if dynamic:
                problems.extend(_problem(source, f"parameter {key} decides this node's branches, so it must be "
                                                 "a literal value, not an expression") for key in dynamic)
                continue
            try:
                branches = ntype.branches(entry.get("params", {}), entry.get("params", {}).get("options", {}))
            except Exception as exc:  # a branch-deciding parameter is an expression or malformed
                problems.append(_problem(source, f"cannot work out its outputs: {exc}"))
                continue
            for index, targets in enumerate(outputs or []):
                if not targets:
                    continue
                if index >= len(branches):
                    problems.append(_problem(source, f"output {index} is connected, but with these parameters the "
                                                     f"node has {len(branches)} outputs ({', '.join(branches)})"))
                    continue
                names = [t["node"] for t in targets]
                for target in names:
                    if target not in steps and not any(n.get("name") == target for n in data["nodes"]):
                        problems.append(_problem(source, f"output {branches[index]} leads to unknown node {target!r}"))
                entry.setdefault("next", {}).setdefault(branches[index], []).extend(names)
    for attach, names in tools.items():
        if attach in steps:
            steps[attach]["tools"] = names
    if problems:
        raise N8nImportError(problems)

    for entry in steps.values():  # next in branch order, as the catalogue lists them
        if "next" in entry:
            ntype = catalog.TRIGGERS.get(entry.get("trigger", "")) or catalog.OPS[entry["op"]]
            order = ntype.branches(entry.get("params", {}), entry.get("params", {}).get("options", {}))
            entry["next"] = {b: entry["next"][b] for b in order if b in entry["next"]}
    doc: dict[str, Any] = {"name": str(data.get("name") or "imported")}
    doc["triggers"] = [e for n, e in steps.items() if kinds[n][0]]
    doc["nodes"] = [e for n, e in steps.items() if not kinds[n][0]]
    return doc


def _dynamic_branch_params(ntype: NodeType, entry: Mapping[str, Any]) -> list[str]:
    """Parameters that decide the branches (so the meaning of output indexes) but are expressions."""
    params = entry.get("params", {})
    return [f"options.{p.name}" if p.option else p.name for p in ntype.params
            if p.static and _has_expression(p, (params.get("options", {}) if p.option else params).get(p.name))]


def _has_expression(p: Param, value: Any) -> bool:
    if p.type == "records" and isinstance(value, list):  # only the fields that name branches count
        return any(_has_expression(f, record.get(f.name)) for record in value if isinstance(record, Mapping)
                   for f in p.fields if f.static)
    return "{{" in json.dumps(value)


def _convert_node(raw: Mapping[str, Any]) -> tuple[dict[str, Any], bool, NodeType]:
    name = str(raw.get("name", ""))
    node_type = raw.get("type", "")
    params = dict(raw.get("parameters") or {})
    version = raw.get("typeVersion", 1)
    if node_type in TRIGGER_TYPES:
        kind = params.pop("triggerOn", "")
        ntype = catalog.TRIGGERS.get(kind)
        if ntype is None:
            raise _Unsupported(f"SIP PBX Trigger event {kind!r} is not supported "
                               f"(known: {', '.join(catalog.TRIGGER_KINDS)})")
        return {"name": name, "trigger": kind, **_params(ntype, params)}, True, ntype
    if node_type in ACTION_TYPES:
        params.pop("resource", None)
        op = params.pop("operation", "")
        ntype = catalog.OPS.get(op)
        if ntype is None or ntype.role != "action":
            raise _Unsupported(f"SIP PBX operation {op!r} is not supported" if op
                               else "SIP PBX node without an operation")
        if op == "dial.make" and params.get("callMode") == "direct":
            connection = ((raw.get("credentials") or {}).get("sipPbxExternal") or {}).get("name")
            if connection:
                params["connection"] = connection
        return {"name": name, "op": op, **_params(ntype, params)}, False, ntype
    if node_type == IF_TYPE:
        return {"name": name, "op": "core.if", **_if(params, version)}, False, catalog.OPS["core.if"]
    if node_type == SWITCH_TYPE:
        return {"name": name, "op": "core.switch", **_switch(params, version)}, False, catalog.OPS["core.switch"]
    if node_type == SET_TYPE:
        return {"name": name, "op": "core.set", **_set(params, version)}, False, catalog.OPS["core.set"]
    if node_type == NOOP_TYPE:
        return {"name": name, "op": "core.noop"}, False, catalog.OPS["core.noop"]
    raise _Unsupported(f"node type {node_type!r} is not supported; softswitch imports the SIP PBX nodes and "
                       "n8n's IF, Switch, Edit Fields (Set) and No Operation nodes")


def _params(ntype: NodeType, params: Mapping[str, Any]) -> dict[str, Any]:
    """SIP PBX parameters: the same keys; fixedCollections become lists."""
    top: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in params.items():
        if key == "options" and isinstance(value, Mapping):
            for okey, ovalue in value.items():
                options[okey] = _value(ntype.param(okey), ovalue)
            continue
        top[key] = _value(ntype.param(key), value)
    if options:
        top["options"] = options
    return {"params": top} if top else {}


def _value(p: Param | None, value: Any) -> Any:
    if p is not None and p.type == "ids":
        return [_strip(item.get(p.item_key, "")) if isinstance(item, Mapping) else _strip(item)
                for item in _items(value)]
    if p is not None and p.type == "records":
        return [_strip(dict(item)) for item in _items(value)]
    return _strip(value)


# --- n8n core nodes ------------------------------------------------------------------------


def _conditions(filter_value: Mapping[str, Any] | None) -> tuple[list[dict[str, Any]], str, bool]:
    """An n8n filter ({options, conditions, combinator}) → our conditions, combinator and
    whether it was case sensitive."""
    filter_value = filter_value or {}
    out = []
    for cond in filter_value.get("conditions") or []:
        operator = cond.get("operator") or {}
        ctype = operator.get("type", "string")
        operation = operator.get("operation", "equals")
        if operation not in CONDITION_OPERATORS.get(ctype, ()):
            raise _Unsupported(f"condition operator {ctype}/{operation} is not supported; supported: "
                               + "; ".join(f"{t}: {', '.join(ops)}" for t, ops in CONDITION_OPERATORS.items()))
        entry: dict[str, Any] = {"left": _strip(cond.get("leftValue", "")), "operator": operation}
        if operation not in UNARY_CONDITION_OPERATORS:
            entry["right"] = _strip(cond.get("rightValue", ""))
        if ctype != "any":
            entry["type"] = ctype
        out.append(entry)
    case_sensitive = (filter_value.get("options") or {}).get("caseSensitive", True)
    return out, filter_value.get("combinator", "and"), bool(case_sensitive)


def _if(params: Mapping[str, Any], version: float) -> dict[str, Any]:
    if version < 2:
        raise _Unsupported(f"IF node version {version} is not supported; use IF version 2 or later")
    conditions, combinator, case_sensitive = _conditions(params.get("conditions"))
    ignore_case = (params.get("options") or {}).get("ignoreCase", not case_sensitive)
    out: dict[str, Any] = {"conditions": conditions}
    if combinator != "and":
        out["combinator"] = combinator
    if ignore_case:
        out["ignoreCase"] = True
    return {"params": out}


def _switch(params: Mapping[str, Any], version: float) -> dict[str, Any]:
    if version < 3:
        raise _Unsupported(f"Switch node version {version} is not supported; use Switch version 3 or later")
    options = params.get("options") or {}
    if params.get("mode", "rules") == "expression":
        out: dict[str, Any] = {"mode": "expression", "numberOutputs": params.get("numberOutputs", 4),
                               "output": _strip(params.get("output", ""))}
        return {"params": out}
    rules = []
    sensitivity = []
    for rule in _items(params.get("rules"), "values"):
        conditions, combinator, case_sensitive = _conditions(rule.get("conditions"))
        sensitivity.append(case_sensitive)
        entry: dict[str, Any] = {}
        if rule.get("outputKey"):
            entry["outputKey"] = rule["outputKey"]
        entry["conditions"] = conditions
        if combinator != "and":
            entry["combinator"] = combinator
        rules.append(entry)
    out = {"rules": rules}
    fallback = options.get("fallbackOutput", "none")
    if fallback != "none":
        out["fallbackOutput"] = fallback
    if fallback == "extra" and options.get("renameFallbackOutput"):
        out["renameFallbackOutput"] = options["renameFallbackOutput"]
    ignore_case = options.get("ignoreCase", bool(sensitivity) and not all(sensitivity))
    if ignore_case:
        out["ignoreCase"] = True
    if options.get("allMatchingOutputs"):
        out["allMatchingOutputs"] = True
    return {"params": out}


_SET_TYPES = {"stringValue": "string", "numberValue": "number", "booleanValue": "boolean",
              "arrayValue": "array", "objectValue": "object"}


def _set(params: Mapping[str, Any], version: float) -> dict[str, Any]:
    if version < 3:
        raise _Unsupported(f"Set node version {version} is not supported; use Edit Fields (Set) version 3 or later")
    if params.get("mode", "manual") != "manual":
        raise _Unsupported("Edit Fields (Set) in JSON mode is not supported; use manual mapping")
    assignments = []
    if version >= 3.3:
        for item in _items(params.get("assignments"), "assignments"):
            entry = {"name": item.get("name", ""), "type": item.get("type", "string"), "value": _strip(item.get("value", ""))}
            if entry["type"] == "string":
                del entry["type"]
            assignments.append(entry)
        include_other = bool(params.get("includeOtherFields", False))
        include = params.get("include", "all")
    else:
        for item in _items(params.get("fields"), "values"):
            field_type = item.get("type", "stringValue")
            entry = {"name": item.get("name", ""), "type": _SET_TYPES.get(field_type, field_type),
                     "value": _strip(item.get(field_type, ""))}
            if entry["type"] == "string":
                del entry["type"]
            assignments.append(entry)
        include = params.get("include", "all")
        include_other = include != "none"
    out: dict[str, Any] = {"assignments": assignments}
    if include_other:
        out["includeOtherFields"] = True
        if include != "all":
            out["include"] = include
        if include == "selected" and params.get("includeFields"):
            out["includeFields"] = params["includeFields"]
        if include == "except" and params.get("excludeFields"):
            out["excludeFields"] = params["excludeFields"]
    options = {key: value for key, value in (params.get("options") or {}).items()
               if key in ("dotNotation", "ignoreConversionErrors")}  # binary options: items carry no binary here
    if options:
        out["options"] = options
    return {"params": out}


# --- writing ------------------------------------------------------------------------------


class _FlowDumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data) and len(data) <= 8
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = '"' if "{{" in data or ("'" in data and "\n" not in data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_FlowDumper.add_representer(str, _represent_str)
_FlowDumper.add_representer(list, _represent_list)
_FlowDumper.add_representer(dict, _represent_dict)


def dump_flow_document(doc: Mapping[str, Any]) -> str:
    """A flow document → YAML in the hand-written layout (keys in order, short lists inline)."""
    ordered = {"name": doc["name"], **({"description": doc["description"]} if doc.get("description") else {}),
               "triggers": [_ordered(e, ("name", "trigger", "params", "next")) for e in doc.get("triggers", [])],
               "nodes": [_ordered(e, ("name", "op", "params", "tools", "next")) for e in doc.get("nodes", [])]}
    return yaml.dump(ordered, Dumper=_FlowDumper, sort_keys=False, allow_unicode=True, width=1_000_000)


def _ordered(entry: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: entry[key] for key in keys if key in entry}
