"""Mutated flows, configs and n8n workflows: each one loads, or is refused with its loader's own
error (FlowError; ConfigError naming the file and, where the problem has one, the line;
N8nImportError), never another exception and never a hang.

Cases are drawn from the real files (flows/, the built-in config, the n8n fixtures) by
`random.Random(f"{SEED}/{kind}/{index}")`: a failure names its seed and index, and
`flow_case(i)`, `config_case(i)` or `n8n_case(i)` rebuilds it.
"""

from __future__ import annotations

import copy
import json
import random
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from softswitch.config import REPO_FLOWS_DIR, Config, ConfigError, default_config_text, load_config
from softswitch.flow.loader import MAX_VALUES, FlowError, load_flow
from softswitch.flow.model import Flow
from softswitch.flow.n8n import N8nImportError, import_workflow, import_workflow_file

SEED = 7
CASES = 300  # per kind
BOUND_S = 10  # per case: a YAML bomb, once expanded, takes minutes, not seconds
FIXTURES = Path(__file__).parent / "fixtures"
FLOW_FILES = sorted(REPO_FLOWS_DIR.glob("*.yaml")) + sorted((FIXTURES / "flows").glob("*.yaml"))
N8N_FILES = sorted((FIXTURES / "n8n").glob("*.json"))
# Issues that concern the whole file, so have no line: an unreadable file, a document nested
# thousands deep (PyYAML gives no position for it).
NO_LINE = ("cannot read config file", "the config nests too deeply")


class Hang(AssertionError):
    pass


@contextmanager
def bounded(what: str, seconds: int = BOUND_S) -> Iterator[None]:
    """Raise Hang in the body after `seconds`. SIGALRM is pytest-timeout's too: its alarm is put
    back afterwards, less the time spent here."""
    def expired(*_: object) -> None:
        raise Hang(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    outer = signal.alarm(seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.alarm(max(1, outer - int(time.monotonic() - started)))


# ---- generic mutations of parsed documents --------------------------------------------------------

WEIRD = [None, True, False, 0, -1, 2**70, 1.5, float("inf"), float("nan"), "", " ", "x" * 5000, [], {}, [None],
         {"": None}, {"k": [1, {"z": None}]}, "{{", "}}", "{{ $json }}", "{{ $json.", "{{ (((( }}", "\t", "a\nb",
         "../../../etc/passwd", "${HOME}", "%s%n", "\u202e\u0000ok", "☃" * 100, "127.0.0.1", "0xff", "1e999"]
BROKEN_EXPRESSIONS = ["{{", "{{ }}", "{{ $json. }}", "{{ $('x').item.json[ }}", "{{ 1 + }}", "{{ $json.a ? }}",
                      "{{ constructor.constructor('return 1')() }}", "{{ $json.__proto__ }}", "{{ " + "(" * 400 + " }}",
                      "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "{{ '" + "\\" * 50 + "' }}", "{{ $(1)(2)(3) }}",
                      "{{ $json['a'][0][\"b\"]. }}", "{{ import os }}", "{{{{ }}}}", "x {{ a }} {{", "}} {{"]


def positions(doc: Any, path: tuple = ()) -> Iterator[tuple[Any, Any, tuple]]:
    """(container, key, path) of every value in a document of dicts and lists."""
    if isinstance(doc, dict):
        for key in list(doc):
            yield doc, key, path + (key,)
            yield from positions(doc[key], path + (key,))
    elif isinstance(doc, list):
        for i in range(len(doc)):
            yield doc, i, path + (i,)
            yield from positions(doc[i], path + (i,))


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def mutate_document(rng: random.Random, doc: Any, vocabulary: list[str]) -> str:
    """Change `doc` in place in one way; returns a label for the change."""
    spots = list(positions(doc))
    if not spots:
        return "empty"
    parent, key, path = rng.choice(spots)
    kind = rng.choice(("delete", "wrong_type", "rename_key", "unknown_key", "vocabulary", "expression", "huge",
                       "deep", "duplicate", "swap", "shuffle"))
    if kind == "delete":
        del parent[key]
    elif kind == "wrong_type":
        parent[key] = copy.deepcopy(rng.choice(WEIRD))
    elif kind == "rename_key" and isinstance(parent, dict):
        parent[rng.choice(vocabulary + ["bogus", "", "Next", "nexT", "op ", "0"])] = parent.pop(key)
    elif kind == "unknown_key" and isinstance(parent, dict):
        parent[rng.choice(vocabulary + ["bogusKey", "options", "next", "tools", "__class__"])] = copy.deepcopy(
            rng.choice(WEIRD))
    elif kind == "vocabulary":
        parent[key] = rng.choice(vocabulary)
    elif kind == "expression":
        parent[key] = rng.choice(BROKEN_EXPRESSIONS)
    elif kind == "huge":
        parent[key] = rng.choice(("y" * 200_000, list(range(10_000)), 10**300, {f"k{i}": i for i in range(3_000)}))
    elif kind == "deep":
        parent[key] = nested(rng.choice((50, 200)))  # deeper: text mutations (dumping recurses)
    elif kind == "duplicate" and isinstance(parent, list):
        parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(parent[key]))
    elif kind == "swap":
        other_parent, other_key, _ = rng.choice(spots)
        try:
            parent[key], other_parent[other_key] = other_parent[other_key], parent[key]
        except (KeyError, IndexError):  # one spot was inside the other
            kind += "_skipped"
    elif kind == "shuffle" and isinstance(parent[key], list):
        rng.shuffle(parent[key])
    else:
        parent[key] = None
        kind = "null"
    return f"{kind}@{'/'.join(map(str, path))[:80]}"


# ---- text mutations -------------------------------------------------------------------------------

BOMB_LEVELS = 9


def billion_laughs(mapping: bool = False) -> tuple[str, str]:
    """YAML anchors nesting aliases nine wide and nine deep (9**9 values once expanded): the lines
    that define them (as a top-level key `x_laughs`) and the alias of the last level."""
    if mapping:
        lines = ["  l0: &l0 {" + ", ".join(f"{c}: lol" for c in "abcdefghi") + "}"]
        lines += [f"  l{k}: &l{k} {{" + ", ".join(f"{c}: *l{k - 1}" for c in "abcdefghi") + "}"
                  for k in range(1, BOMB_LEVELS)]
    else:
        lines = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [f"  l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, BOMB_LEVELS)]
    return "x_laughs:\n" + "\n".join(lines) + "\n", f"*l{BOMB_LEVELS - 1}"


def mutate_text(rng: random.Random, text: str) -> tuple[bytes, str]:
    kind = rng.choice(("truncate", "junk", "control", "tab", "bomb", "bomb_at_value", "deep", "anchor_loop",
                       "invalid_utf8", "nul", "tags", "duplicate_line", "indent"))
    lines = text.splitlines(keepends=True)
    at = rng.randrange(len(text) + 1)
    if kind == "truncate":
        return text[:at].encode(), f"truncate:{at}"
    if kind == "junk":
        junk = "".join(rng.choice(":-[]{}&*!|>'\"%@`#,?") for _ in range(rng.randrange(1, 8)))
        return (text[:at] + junk + text[at:]).encode(), f"junk:{junk!r}@{at}"
    if kind == "control":
        return (text[:at] + rng.choice("\x01\x07\x1b\x7f\ufeff\u2028") + text[at:]).encode(), f"control@{at}"
    if kind == "tab":
        return text.replace("  ", "\t", 1 + rng.randrange(5)).encode(), "tab"
    if kind in ("bomb", "bomb_at_value"):
        anchors, alias = billion_laughs(mapping=rng.random() < 0.5)
        if kind == "bomb":
            return (anchors + text).encode(), "bomb"
        # The alias as one value of the document, wherever a value stands.
        spots = [i for i, line in enumerate(lines) if line.rstrip().endswith(":") is False and ": " in line]
        if not spots:
            return (anchors + text).encode(), "bomb"
        i = rng.choice(spots)
        head = lines[i].split(": ", 1)[0]
        lines[i] = f"{head}: {alias}\n"
        return (anchors + "".join(lines)).encode(), f"bomb_at_line:{i + 1}"
    if kind == "deep":
        depth = rng.choice((300, 3000))
        return (text + f"x_deep: {'[' * depth}{']' * depth}\n").encode(), f"deep:{depth}"
    if kind == "anchor_loop":
        return (text + "x_loop: &loop [*loop]\n").encode(), "anchor_loop"
    if kind == "invalid_utf8":
        data = text.encode()
        k = rng.randrange(len(data) + 1)
        return data[:k] + bytes([rng.randrange(0x80, 0x100)]) + data[k:], f"invalid_utf8@{k}"
    if kind == "nul":
        return (text[:at] + "\x00" + text[at:]).encode(), f"nul@{at}"
    if kind == "tags":
        tag = rng.choice(("!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "!!set {a, b}",
                          "!!timestamp 2001-12-14", "!custom x", "!!float nan", "!!int 0x1F"))
        spots = [i for i, line in enumerate(lines) if ": " in line]
        if not spots:
            return text.encode(), "tags_skipped"
        i = rng.choice(spots)
        lines[i] = lines[i].split(": ", 1)[0] + f": {tag}\n"
        return "".join(lines).encode(), f"tag:{tag.split()[0]}@{i + 1}"
    if kind == "duplicate_line":
        i = rng.randrange(len(lines))
        return "".join(lines[:i + 1] + [lines[i]] + lines[i + 1:]).encode(), f"duplicate_line:{i + 1}"
    i = rng.randrange(len(lines))
    return "".join(lines[:i] + [" " * rng.randrange(1, 7) + lines[i]] + lines[i + 1:]).encode(), f"indent:{i + 1}"


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the cases' own YAML work, in C when it can be
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def parse(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)


def dump(doc: Any) -> bytes:
    return yaml.dump(doc, Dumper=_DUMPER, allow_unicode=True, sort_keys=False).encode()


def write_case(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


# ---- flows ----------------------------------------------------------------------------------------

FLOW_VOCABULARY = ["call.answer", "call.nope", "core.if", "queue.putLeg", "media.playAudio", "trunk", "queue",
                   "aiTool", "bogusTrigger", "Result", "Completed", "NoSuchBranch", "Timeout", "answer",
                   "missing_node", "ref", "legId", "timeoutSeconds", "rules", "pattern", "label", "(", "[0-9",
                   "*{1000}"]


def flow_graph_mutation(rng: random.Random, doc: dict) -> str:
    """Mutations that keep the YAML well-formed but break the flow as a graph."""
    def entries(key: str) -> list:  # a text mutation may have left a section as a string or a number
        value = doc.get(key)
        return value if isinstance(value, list) else []

    steps = [s for s in entries("triggers") + entries("nodes") if isinstance(s, dict)]
    nodes = [s for s in entries("nodes") if isinstance(s, dict)]
    if not steps or not nodes:
        return "graph_skipped"
    step = rng.choice(steps)
    kind = rng.choice(("dangling_next", "self_cycle", "two_cycle", "unknown_branch", "duplicate_name", "unknown_op",
                       "unknown_param", "orphan", "next_list_garbage"))
    target = rng.choice(nodes)
    if kind == "dangling_next":
        step["next"] = {"Result": ["no_such_node"]}
    elif kind == "self_cycle":
        target["next"] = {"Result": [target.get("name")]}
    elif kind == "two_cycle":
        other = rng.choice(nodes)
        target["next"] = {"Result": [other.get("name")]}
        other["next"] = {"Result": [target.get("name")]}
    elif kind == "unknown_branch":
        step.setdefault("next", {})
        if isinstance(step["next"], dict):
            step["next"]["No Such Branch"] = [target.get("name")]
    elif kind == "duplicate_name":
        target["name"] = step.get("name")
    elif kind == "unknown_op":
        target["op"] = rng.choice(("call.nope", "", "CALL.ANSWER", "call", "call.answer.x", 5))
    elif kind == "unknown_param":
        target.setdefault("params", {})
        if isinstance(target["params"], dict):
            target["params"][rng.choice(("bogus", "timeoutSecond", "", "options"))] = rng.choice(WEIRD)
    elif kind == "orphan":
        doc["nodes"].append({"name": "orphan_node", "op": "call.hangup"})
    else:
        step["next"] = {"Result": rng.choice(([[[]]], [None], "answer answer", {"x": 1}, [1, 2]))}
    return f"graph:{kind}@{step.get('name')}"


def flow_case(index: int, tmp: Path) -> tuple[Path, str]:
    rng = random.Random(f"{SEED}/flow/{index}")
    source = rng.choice(FLOW_FILES)
    text = source.read_text()
    labels = [source.name]
    if rng.random() < 0.35:
        data, label = mutate_text(rng, text)
        labels.append(label)
    else:
        doc = parse(text)
        for _ in range(rng.choice((1, 1, 2, 3))):
            labels.append(flow_graph_mutation(rng, doc) if rng.random() < 0.4 else
                          mutate_document(rng, doc, FLOW_VOCABULARY))
        data = dump(doc)
    return write_case(tmp, f"flow-{index}.yaml", data), f"seed {SEED} flow case {index}: {', '.join(labels)}"


def test_mutated_flows_load_or_raise_flow_error(tmp_path):
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(CASES):
        path, label = flow_case(i, tmp_path)
        with bounded(label):
            try:
                flow = load_flow(path)
            except FlowError as exc:
                assert exc.issues, label
                assert all(issue.file == str(path) for issue in exc.issues), (label, exc.issues)
                outcomes["refused"] += 1
            except Exception as exc:
                raise AssertionError(f"{label}: {type(exc).__name__}: {exc}"[:2000]) from exc
            else:
                assert isinstance(flow, Flow), label
                outcomes["loaded"] += 1
        path.unlink()
    print(f"flows: {CASES} mutated cases, {outcomes}")
    assert outcomes["loaded"] and outcomes["refused"]  # both outcomes occur: the cases are not all broken


def test_a_yaml_bomb_in_a_flow_is_refused_at_once(tmp_path):
    anchors, alias = billion_laughs()
    text = (REPO_FLOWS_DIR / "part-1-step-1-trunk-to-queue-basic.yaml").read_text()
    text = text.replace("params: {ref: queue_support}", "params: {ref: queue_support, data: %s}" % alias, 1)
    path = write_case(tmp_path, "bomb.yaml", (anchors.replace("x_laughs", "description") + text).encode())
    with bounded("a billion laughs in a flow", 5):
        with pytest.raises(FlowError) as refused:
            load_flow(path)
    assert any(f"more than {MAX_VALUES} values" in issue.message for issue in refused.value.issues)


def test_aliases_that_do_not_explode_still_load(tmp_path):
    text = (REPO_FLOWS_DIR / "part-1-step-1-trunk-to-queue-basic.yaml").read_text()
    text = text.replace("params: {ref: queue_support, queueExtensions: \"1001,1002\"}",
                        "params: &support {ref: queue_support, queueExtensions: \"1001,1002\"}", 1)
    assert "&support" in text
    flow = load_flow(write_case(tmp_path, "aliases.yaml", text.encode()))
    assert flow.name == "part-1-step-1-trunk-to-queue-basic"


# ---- configs ----------------------------------------------------------------------------------------

CONFIG_VOCABULARY = ["sip", "udp_port", "media", "codecs", "PCMU", "opus", "trunks", "address", "fixed", "dynamic",
                     "127.0.0.1", "::1", "999.1.1.1", "localhost", "0.0.0.0:5060", "extension_users", "password",
                     "limits", "records", "metrics", "host:99999", "[::1]:9100", "json", "text", "debug", "MD5"]


def base_config() -> dict:
    doc = parse(default_config_text())
    doc["flows"] = [str(REPO_FLOWS_DIR / name) for name in doc.get("flows", [])]  # absolute: the file moves
    return doc


def config_case(index: int, tmp: Path) -> tuple[Path, str]:
    rng = random.Random(f"{SEED}/config/{index}")
    doc = base_config()
    labels = []
    if rng.random() < 0.35:
        data, label = mutate_text(rng, dump(doc).decode())
        labels.append(label)
    else:
        for _ in range(rng.choice((1, 1, 2, 3))):
            labels.append(mutate_document(rng, doc, CONFIG_VOCABULARY))
        data = dump(doc)
    return write_case(tmp, f"config-{index}.yaml", data), f"seed {SEED} config case {index}: {', '.join(labels)}"


def test_mutated_configs_load_or_raise_config_error_with_file_and_line(tmp_path):
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(CASES):
        path, label = config_case(i, tmp_path)
        with bounded(label):
            try:
                config = load_config(path)
            except ConfigError as exc:
                assert exc.issues, label
                for issue in exc.issues:
                    assert issue.file == str(path), (label, issue)
                    assert issue.line is not None or issue.message.startswith(NO_LINE), (label, str(issue))
                outcomes["refused"] += 1
            except Exception as exc:
                raise AssertionError(f"{label}: {type(exc).__name__}: {exc}"[:2000]) from exc
            else:
                assert isinstance(config, Config), label
                outcomes["loaded"] += 1
        path.unlink()
    print(f"configs: {CASES} mutated cases, {outcomes}")
    assert outcomes["loaded"] and outcomes["refused"]


@pytest.mark.parametrize("text, key", [
    ("sip:\n  udp_port: " + "9" * 5000 + "\n", "sip.udp_port"),  # more digits than int() converts
    ("flows: [" + "x" * 5000 + ".yaml]\n", "flows[0]"),  # a name longer than the file system allows
    ("trunks:\n  carrier: {}\n", "trunks.carrier.address"),  # a setting missing: the line of its section
])
def test_config_values_python_cannot_take_are_config_errors_with_a_line(tmp_path, text, key):
    path = write_case(tmp_path, "softswitch.yaml", text.encode())
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    issue = next(i for i in refused.value.issues if i.key == key)
    assert issue.line is not None and issue.file == str(path), issue


def test_config_nested_thousands_deep_is_a_config_error(tmp_path):
    path = write_case(tmp_path, "softswitch.yaml", ("sip: " + "[" * 5000 + "]" * 5000 + "\n").encode())
    with bounded("a deeply nested config"):
        with pytest.raises(ConfigError, match="nests too deeply"):
            load_config(path)


# ---- n8n workflows ------------------------------------------------------------------------------------

N8N_VOCABULARY = ["n8n-nodes-sip-pbx.sipPbx", "n8n-nodes-sip-pbx.sipPbxTrigger", "n8n-nodes-base.if",
                  "n8n-nodes-base.switch", "n8n-nodes-base.set", "n8n-nodes-base.noOp", "n8n-nodes-base.code",
                  "main", "ai_tool", "call.answer", "call.nope", "triggerOn", "operation", "answer", "node",
                  "index", "=", "={{ $json.legId }}", "={{ $env.X }}"]


def n8n_connection_mutation(rng: random.Random, data: dict) -> str:
    connections = data.get("connections")
    if not isinstance(connections, dict) or not connections:
        return "connections_skipped"
    source = rng.choice(sorted(connections))
    kind = rng.choice(("negative_index", "huge_output", "missing_target", "self_loop", "not_a_list", "no_node_key",
                       "unknown_type"))
    if kind == "negative_index":
        connections[source]["main"] = [[{"node": source, "type": "main", "index": -1}]]
    elif kind == "huge_output":
        connections[source]["main"] = [[] for _ in range(500)] + [[{"node": source, "type": "main", "index": 0}]]
    elif kind == "missing_target":
        connections[source]["main"] = [[{"node": "nobody", "type": "main", "index": 0}]]
    elif kind == "self_loop":
        connections[source]["main"] = [[{"node": source, "type": "main", "index": 0}]]
    elif kind == "not_a_list":
        connections[source]["main"] = rng.choice(({"0": 1}, "main", 5, [5], [[5]], [[None]]))
    elif kind == "no_node_key":
        connections[source]["main"] = [[{"type": "main", "index": 0}]]
    else:
        connections[source]["ai_languageModel"] = [[{"node": source, "type": "x", "index": 0}]]
    return f"connections:{kind}@{source}"


def n8n_case(index: int, tmp: Path) -> tuple[Callable[[], str], str]:
    """A mutated workflow and the call that imports it (from parsed JSON, or from a file)."""
    rng = random.Random(f"{SEED}/n8n/{index}")
    source = rng.choice(N8N_FILES)
    data = json.loads(source.read_text())
    labels = [source.name]
    if rng.random() < 0.25:
        text = json.dumps(data)
        kind = rng.choice(("truncate", "junk", "deep", "huge_number", "invalid_utf8", "nan", "empty"))
        at = rng.randrange(len(text) + 1)
        raw = {"truncate": text[:at].encode(), "junk": (text[:at] + "}{,]\"" + text[at:]).encode(),
               "deep": ("[" * 100_000 + "]" * 100_000).encode(), "huge_number": ('{"nodes": ' + "9" * 10_000 + "}").encode(),
               "invalid_utf8": text.encode()[:at] + b"\xff" + text.encode()[at:],
               "nan": text.replace('"typeVersion": 2', '"typeVersion": NaN', 1).encode(), "empty": b""}[kind]
        path = write_case(tmp, f"n8n-{index}.json", raw)
        return (lambda: import_workflow_file(path)), f"seed {SEED} n8n case {index}: {source.name}, file:{kind}"
    for _ in range(rng.choice((1, 1, 2, 3))):
        labels.append(n8n_connection_mutation(rng, data) if rng.random() < 0.3 else
                      mutate_document(rng, data, N8N_VOCABULARY))
    return (lambda: import_workflow(data)), f"seed {SEED} n8n case {index}: {', '.join(labels)}"


def test_mutated_n8n_workflows_import_or_raise_n8n_import_error(tmp_path):
    outcomes = {"imported": 0, "refused": 0}
    for i in range(CASES):
        run, label = n8n_case(i, tmp_path)
        with bounded(label):
            try:
                text = run()
            except N8nImportError as exc:
                assert exc.problems and all(isinstance(p, str) and p for p in exc.problems), label
                outcomes["refused"] += 1
            except Exception as exc:
                raise AssertionError(f"{label}: {type(exc).__name__}: {exc}"[:2000]) from exc
            else:
                assert isinstance(text, str) and text, label
                outcomes["imported"] += 1
    print(f"n8n workflows: {CASES} mutated cases, {outcomes}")
    assert outcomes["imported"] and outcomes["refused"]


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["nodes"].append(float("nan")), "nodes[{n}] is not an object"),
    (lambda d: d["nodes"][0].update(name=["a"]), "nodes[0]: name must be a string"),
    (lambda d: d.update(connections=[1]), "connections must be an object"),
])
def test_a_damaged_n8n_export_says_what_is_wrong(change, problem):
    data = json.loads(N8N_FILES[0].read_text())
    n = len(data["nodes"])
    change(data)
    with pytest.raises(N8nImportError) as refused:
        import_workflow(data)
    assert problem.format(n=n) in refused.value.problems
