"""The flow model: what a loaded flow file is, as frozen dataclasses the runtime executes.

A `Flow` has `Trigger`s and `Node`s. Each step carries its parameters with the catalogue's
defaults filled in and `{{ … }}` strings compiled to `expressions.Expression` objects
(evaluate them with `expressions.resolve(value, ctx)`), its branch names in the reference's
order, and `next`: every branch mapped to the names of the nodes it leads to (empty when the
branch is not connected). Lists are tuples and mappings are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from .catalog import NodeType, node_type, trigger_type

@dataclass(frozen=True)
class FlowIssue:
    """One problem in a flow file, with where it was written."""

    file: str
    line: int | None
    node: str | None  # the node or trigger it concerns, if any
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.node is not None:
            return f"{where}: node {self.node}: {self.message}"
        return f"{where}: {self.message}"


class FlowError(Exception):
    """A flow file (or a set of them) did not load. Every problem found is in `issues`."""

    def __init__(self, issues: list[FlowIssue]):
        self.issues = list(issues)
        plural = "" if len(self.issues) == 1 else "s"
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid flow ({len(self.issues)} error{plural}):\n{lines}")


@dataclass(frozen=True)
class _Step:
    name: str
    params: Mapping[str, Any]  # top-level parameters, defaults filled in
    options: Mapping[str, Any]  # the `options` collection, defaults filled in
    branches: tuple[str, ...]  # in the reference's output order
    next: Mapping[str, tuple[str, ...]]  # every branch → target node names (maybe empty)
    line: int | None = field(default=None, compare=False)  # where `name:` was written

    def get(self, key: str, default: Any = None) -> Any:
        """A parameter or option by its reference key."""
        if key in self.params:
            return self.params[key]
        return self.options.get(key, default)

    def targets(self, branch: str) -> tuple[str, ...]:
        """The node names `branch` leads to; KeyError for a branch this step does not have."""
        if branch not in self.next:
            raise KeyError(f"{self.name} has no branch {branch!r} (branches: {', '.join(self.branches) or 'none'})")
        return self.next[branch]


@dataclass(frozen=True)
class Node(_Step):
    """An action or core node: `op` is `call.wait`, `core.if`, …"""

    op: str = ""
    tools: tuple[str, ...] = ()  # ai.attachVoiceAgent: the ai.invokeAiTool nodes it offers

    @property
    def type(self) -> NodeType:
        return node_type(self.op)


@dataclass(frozen=True)
class Trigger(_Step):
    """A trigger: `kind` is trunk, extensions, queue or aiTool; `ref` its public ref."""

    kind: str = ""

    @property
    def type(self) -> NodeType:
        return trigger_type(self.kind)

    @property
    def ref(self) -> str:
        return self.params.get("ref", "")


@dataclass(frozen=True)
class Flow:
    name: str
    triggers: tuple[Trigger, ...]
    nodes: tuple[Node, ...]
    description: str = ""
    file: str = field(default="", compare=False)
    _index: Mapping[str, _Step] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        index = {step.name: step for step in (*self.triggers, *self.nodes)}
        object.__setattr__(self, "_index", MappingProxyType(index))

    def __iter__(self) -> Iterator[_Step]:
        return iter((*self.triggers, *self.nodes))

    def step(self, name: str) -> Node | Trigger:
        """A node or trigger by name; KeyError if the flow has none."""
        return self._index[name]  # type: ignore[return-value]

    def node(self, name: str) -> Node:
        step = self._index[name]
        if not isinstance(step, Node):
            raise KeyError(f"{name!r} is a trigger, not a node")
        return step

    def triggers_of(self, kind: str) -> tuple[Trigger, ...]:
        return tuple(t for t in self.triggers if t.kind == kind)

    def trigger(self, kind: str, ref: str) -> Trigger | None:
        """The trigger of `kind` with public ref `ref`, if this flow has one."""
        return next((t for t in self.triggers if t.kind == kind and t.ref == ref), None)

    def refs(self, kind: str) -> frozenset[str]:
        return frozenset(t.ref for t in self.triggers if t.kind == kind)

    def next_nodes(self, step: str | _Step, branch: str) -> tuple[Node, ...]:
        """The nodes a step's branch leads to, in the order written."""
        source = self._index[step] if isinstance(step, str) else step
        return tuple(self.node(name) for name in source.targets(branch))

    def tools_of(self, node: str | Node) -> tuple[Node, ...]:
        """The ai.invokeAiTool nodes an ai.attachVoiceAgent node offers to the model."""
        attach = self.node(node) if isinstance(node, str) else node
        return tuple(self.node(name) for name in attach.tools)

