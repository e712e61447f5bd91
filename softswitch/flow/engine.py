"""Executions: one run of a flow from a trigger emission, on the UA thread.

A trigger emits an item on a branch; every node connected to that branch is activated with the
item. A node finishes by emitting items on its own branches (which activates the next nodes),
possibly much later: waiting nodes keep their `Activation` and emit when their event arrives, so
nothing ever blocks the UA loop. Activations are handed to `schedule` (the UA's `call_soon`), so
a long chain of instant nodes never recurses deeply and several executions interleave fairly.

Node implementations are `NodeHandler`s registered by op; this module knows only the core nodes.
SIP nodes (call, dial, media, queue, …) register themselves from their own modules.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .core import CoreNodeError, run_if, run_noop, run_set, run_switch
from .expressions import ExpressionError, resolve
from .items import Item, ResponseHandle, output_item
from .model import Flow, Node, Trigger

log = logging.getLogger("softswitch.flow")

NodeHandler = Callable[["Activation"], None]


class NodeFailed(RuntimeError):
    """A node could not do its work; the message says why (logged with flow, node and ids)."""


@dataclass
class _ExprContext:
    json: Any
    execution: "Execution"

    def node_json(self, name: str) -> Any:
        item = self.execution.latest.get(name)
        return None if item is None else item.json


@dataclass
class Activation:
    """One node working on one item. Handlers read `param()`, then `emit()` (once or more)."""

    execution: "Execution"
    node: Node
    item: Item
    _params: dict[str, Any] | None = field(default=None, repr=False)
    _options: dict[str, Any] | None = field(default=None, repr=False)
    finished: bool = False

    @property
    def context(self) -> _ExprContext:
        return _ExprContext(self.item.json, self.execution)

    @property
    def params(self) -> dict[str, Any]:
        """The node's parameters with expressions evaluated against this item (once)."""
        if self._params is None:
            self._params = {k: resolve(v, self.context) for k, v in self.node.params.items() if k != "options"}
        return self._params

    @property
    def options(self) -> dict[str, Any]:
        if self._options is None:
            self._options = {k: resolve(v, self.context) for k, v in self.node.options.items()}
        return self._options

    def param(self, key: str, default: Any = None) -> Any:
        if key in self.params:
            return self.params[key]
        return self.options.get(key, default)

    def emit(self, branch: str, payload: Mapping[str, Any], sip_pbx: Mapping[str, Any] | None = None, *,
             binary: Mapping[str, Any] | None = None, handle: ResponseHandle | None = None,
             final: bool = True) -> Item:
        """Send an item out on `branch`; `final=False` for nodes that emit more than once."""
        if branch not in self.node.branches:
            raise NodeFailed(f"node {self.node.name!r} has no branch {branch!r}")
        item = output_item(self.item, payload, sip_pbx, binary=binary, handle=handle)
        self.execution.latest[self.node.name] = item
        self.finished = final or self.finished
        self.execution.route(self.node, branch, item)
        if final:
            self.execution.done(self)
        return item

    def emit_json(self, branch: str, json: Mapping[str, Any]) -> None:
        """Core nodes: pass json as it is (sipPbx and handle included)."""
        item = Item(json=dict(json), binary=self.item.binary, handle=self.item.handle)
        self.execution.latest[self.node.name] = item
        self.execution.route(self.node, branch, item)

    def fail(self, error: BaseException | str) -> None:
        """The node failed: log it with the flow, node and ids; the item goes no further."""
        if not self.finished:
            self.finished = True
            self.execution.failed(self, error)


class Execution:
    """One trigger emission and every activation it leads to."""

    def __init__(self, runner: "FlowRunner", flow: Flow, execution_id: str) -> None:
        self.runner = runner
        self.flow = flow
        self.id = execution_id
        self.latest: dict[str, Item] = {}
        self.active: set[int] = set()
        self.errors: list[str] = []
        self._seq = itertools.count()

    def route(self, step: Node | Trigger, branch: str, item: Item) -> None:
        for target in step.targets(branch):
            self.activate(self.flow.node(target), item)

    def activate(self, node: Node, item: Item) -> None:
        token = next(self._seq)
        self.active.add(token)

        def run() -> None:
            self.active.discard(token)
            log.debug("%s %s: node %s (%s)", self.flow.name, self.id, node.name, node.op)
            activation = Activation(self, node, item)
            self.runner.running[id(activation)] = activation
            try:
                self.runner.handler_for(node.op)(activation)
            except (NodeFailed, CoreNodeError, ExpressionError, KeyError, ValueError, TypeError) as exc:
                activation.fail(exc)
            except Exception as exc:  # a bug: still only this item stops
                log.exception("flow %s node %s: unexpected error", self.flow.name, node.name)
                activation.fail(exc)
            if activation.finished:
                self.runner.running.pop(id(activation), None)

        self.runner.schedule(run)

    def done(self, activation: Activation) -> None:
        self.runner.running.pop(id(activation), None)

    def failed(self, activation: Activation, error: BaseException | str) -> None:
        ids = {k: v for k, v in activation.item.sip_pbx.items() if k.endswith("Id")}
        message = f"flow {self.flow.name!r} node {activation.node.name!r} ({activation.node.op}): {error}"
        self.errors.append(message)
        log.error("%s; execution %s, ids %s", message, self.id, ids or "none")
        self.runner.running.pop(id(activation), None)

    @property
    def idle(self) -> bool:
        """No activation is queued or waiting."""
        return not self.active and not any(a.execution is self for a in self.runner.running.values())


class FlowRunner:
    """Starts executions and runs node handlers; the SIP side registers its handlers here."""

    def __init__(self, schedule: Callable[[Callable[[], None]], None]) -> None:
        self.schedule = schedule
        self.handlers: dict[str, NodeHandler] = dict(CORE_HANDLERS)
        self.running: dict[int, Activation] = {}
        self._ids = itertools.count(1)

    def register(self, op: str, handler: NodeHandler) -> None:
        self.handlers[op] = handler

    def handler_for(self, op: str) -> NodeHandler:
        try:
            return self.handlers[op]
        except KeyError:
            raise NodeFailed(f"no runtime for {op!r} yet") from None

    def fire(self, flow: Flow, trigger: Trigger, branch: str, payload: Mapping[str, Any],
             sip_pbx: Mapping[str, Any] | None = None, handle: ResponseHandle | None = None) -> Execution:
        """A trigger emitted `payload` on `branch`: start an execution of `flow`."""
        execution = Execution(self, flow, f"exec_{next(self._ids)}")
        item = output_item(None, payload, sip_pbx, handle=handle)
        execution.latest[trigger.name] = item
        execution.route(trigger, branch, item)
        return execution


def _core(run: Callable[[Activation], Any]) -> NodeHandler:
    def handler(activation: Activation) -> None:
        routed = run(activation)
        for branch in routed.branches:
            activation.emit_json(branch, routed.json)
        activation.finished = True

    return handler


CORE_HANDLERS: Mapping[str, NodeHandler] = {
    "core.if": _core(lambda a: run_if(a.params, a.item.json)),
    "core.switch": _core(lambda a: run_switch(a.params, a.node.branches, a.item.json)),
    "core.set": _core(lambda a: run_set(a.params, a.options, a.item.json)),
    "core.noop": _core(lambda a: run_noop(a.item.json)),
}
