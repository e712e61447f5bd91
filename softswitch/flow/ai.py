"""AI nodes (reference §2.3 "Resource AI", §2.4 "AI Tool Call", §6.3–§6.4): Attach Voice Agent,
Invoke AI Tool, the AI Tool trigger, and the requests `respond.toAiTool` answers.

`FlowAi` is the engine's AI resource. It owns the AI legs (`engine.ai_legs`, an
`softswitch.ai.leg.AiLegs`: dial.make websocket creates them) and, per leg with an agent
attached, the tools that agent offers. When the model calls a tool, the AI Tool trigger whose ref
is the tool's `ref` (in the attach's own flow) emits `Request` {ref, aiToolRequestId, aiLegId,
peerLegId, flowParams, toolParams} with a hidden `aiTool` response handle; `respond.toAiTool`
answers it with `outputText`, which goes back to the model as the function's result. No answer
within the trigger's `aiToolResponseTimeoutSeconds` (5), the AI leg ending, or no such trigger
→ an error result to the model. An unknown function name → "Unknown tool: <name>".

Memory (`ai_memory`, §6.3 step 2) is not supported: our flow format has no memory node, so an
agent has tools only and sessions never ask for input transcription.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..ai import AgentConfig, ProfileError, ToolSpec
from ..ai.base import ToolCallRequested
from ..ai.leg import AiLeg, AiLegs
from ..sip.events import LegEnded, LegEvent
from .engine import Activation, NodeFailed
from .expressions import resolve
from .items import ResponseHandle, resolve_ai_leg_id

if TYPE_CHECKING:
    from ..clock import TimerHandle
    from .model import Flow, Node
    from .retention import RetentionTicket
    from .runtime import FlowEngine

log = logging.getLogger("softswitch.flow.ai")

DEFAULT_RESPONSE_TIMEOUT_S = 5.0
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class AgentTool:
    spec: ToolSpec
    ref: str
    flow_params: dict


@dataclass
class Attachment:
    """One Attach Voice Agent, blocking until its AI leg ends."""

    activation: Activation
    flow: "Flow"
    tools: dict[str, AgentTool]
    ticket: "RetentionTicket | None" = None
    unsubscribe: Callable[[], None] | None = None


@dataclass
class ToolRequest:
    id: str
    leg: AiLeg
    call: ToolCallRequested
    ref: str
    timeout_s: float
    timer: "TimerHandle | None" = None
    extra: dict = field(default_factory=dict)


def tool_name(node_name: str) -> str:
    """A node name as a function name: [A-Za-z0-9_-] only (others become _), at most 64."""
    return _NAME_BAD.sub("_", node_name)[:64] or "tool"


def _records(value: Any) -> list[dict]:
    if isinstance(value, dict) and "item" in value:
        value = value["item"]
    return [dict(v) for v in (value or ()) if isinstance(v, dict)]


def agent_tools(a: Activation, flow: "Flow", attach: "Node") -> dict[str, AgentTool]:
    """The ai.invokeAiTool nodes wired to `attach` as functions, their parameters evaluated in
    the attach node's item context (§6.4)."""
    tools: dict[str, AgentTool] = {}
    for node in flow.tools_of(attach):
        params = {k: resolve(v, a.context) for k, v in node.params.items()}
        name = tool_name(node.name)
        if name in tools:
            raise NodeFailed(f"tools {node.name!r} and another node both become the function {name!r}; "
                             "rename one of them")
        properties: dict[str, dict] = {}
        required: list[str] = []
        for p in _records(params.get("aiToolParams")):
            pname = str(p.get("name") or "")
            if not pname:
                continue
            properties[pname] = {"type": str(p.get("type") or "string"), "description": str(p.get("description") or "")}
            if p.get("required"):
                required.append(pname)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        flow_params = {str(p["name"]): p.get("value") for p in _records(params.get("aiFlowParams")) if p.get("name")}
        tools[name] = AgentTool(ToolSpec(name, str(params.get("aiToolDescription") or ""), schema),
                                str(params.get("ref") or ""), flow_params)
    return tools


class FlowAi:
    """The AI resource of one FlowEngine (UA thread only)."""

    def __init__(self, engine: "FlowEngine") -> None:
        self.engine = engine
        self.legs = AiLegs(engine.ua)
        self.legs.tool_handler = self._tool_call
        self.legs.speech_handler = self._speech_started
        self.attachments: dict[str, Attachment] = {}
        self.requests: dict[str, ToolRequest] = {}

    # ---- Attach Voice Agent -----------------------------------------------------------------
    def attach(self, a: Activation) -> None:
        leg_id = resolve_ai_leg_id(a.item, a.options)
        leg = self.legs.get(leg_id) if leg_id else None
        if leg is None:
            raise NodeFailed(f"ai.attachVoiceAgent: {leg_id!r} is not a live AI leg (set Options → AI Leg ID to "
                             "the legId of a dial.make with callMode websocket)")
        if not leg.profile.supports_agent:
            raise NodeFailed(f"ai.attachVoiceAgent: AI leg {leg.id} uses the {leg.profile.name} profile, which has "
                             "no voice-agent features (use openai_realtime or gemini_live)")
        if leg.id in self.attachments:
            raise NodeFailed(f"ai.attachVoiceAgent: AI leg {leg.id} already has a voice agent attached")
        tools = agent_tools(a, a.execution.flow, a.node)
        try:
            leg.attach(AgentConfig(tools=tuple(t.spec for t in tools.values())))
        except (ProfileError, ValueError, RuntimeError) as exc:
            raise NodeFailed(f"ai.attachVoiceAgent: {exc}") from None
        att = Attachment(a, a.execution.flow, tools)
        flow_leg = self.engine.legs.get(leg.id)
        if flow_leg is not None:
            att.ticket = flow_leg.retention.acquire("voice-agent")
        att.unsubscribe = leg.subscribe(lambda event: self._attached_leg_event(leg, event))
        self.attachments[leg.id] = att
        log.info("%s: voice agent attached (%s), tools: %s", leg.id, a.node.name, ", ".join(tools) or "none")

    def _attached_leg_event(self, leg: AiLeg, event: LegEvent) -> None:
        if not isinstance(event, LegEnded):
            return
        att = self.attachments.pop(leg.id, None)
        for request in [r for r in self.requests.values() if r.leg is leg]:
            self._close_request(request)
        if att is None:
            return
        if att.ticket is not None:
            att.ticket.release()
        payload = {"legId": leg.id, "eventType": "ended", "reason": event.reason}
        att.activation.emit("Result", payload, {"legId": leg.id})

    # ---- tool calls ---------------------------------------------------------------------------
    def _tool_call(self, leg: AiLeg, call: ToolCallRequested) -> None:
        att = self.attachments.get(leg.id)
        tool = att.tools.get(call.name) if att is not None else None
        if att is None or tool is None:
            leg.respond_tool(call, f"Unknown tool: {call.name}", True)
            return
        flow = next((f for f in self.engine.flows if f.name == att.flow.name), None)
        trigger = flow.trigger("aiTool", tool.ref) if flow is not None else None
        if flow is None or trigger is None:
            log.warning("%s: tool %s: no active AI Tool trigger with ref %r", leg.id, call.name, tool.ref)
            leg.respond_tool(call, f"Tool {call.name} is not available (no active AI Tool trigger "
                                   f"with ref {tool.ref!r})", True)
            return
        timeout = float(trigger.options.get("aiToolResponseTimeoutSeconds") or DEFAULT_RESPONSE_TIMEOUT_S)
        request = ToolRequest(self.engine.ua.ids.new("aitool"), leg, call, tool.ref, timeout)
        request.timer = self.engine.ua.timers.schedule(timeout, lambda: self._expired(request.id), "ai-tool")
        self.requests[request.id] = request
        bridge = self.engine.bridges.of(leg.id)
        flow_leg = self.engine.legs.get(leg.id)
        peer = bridge.peer_of(flow_leg).id if bridge is not None and flow_leg is not None else ""
        payload = {"ref": tool.ref, "aiToolRequestId": request.id, "aiLegId": leg.id, "peerLegId": peer,
                   "flowParams": dict(tool.flow_params), "toolParams": dict(call.arguments)}
        log.info("%s: tool %s -> AI Tool trigger %s (%s)", leg.id, call.name, trigger.name, request.id)
        self.engine.runner.fire(flow, trigger, "Request", payload,
                                {"ref": tool.ref, "aiToolRequestId": request.id},
                                handle=ResponseHandle("aiTool", request.id))

    def respond(self, request_id: str, output_text: str) -> ToolRequest:
        """respond.toAiTool: the text goes to the model as the function's result."""
        request = self.requests.pop(request_id, None)
        if request is None:
            raise NodeFailed(f"respond.toAiTool: AI tool request {request_id!r} is not open (already answered, "
                             "past its respond timeout, or its AI leg ended)")
        if request.timer is not None:
            request.timer.cancel()
        request.leg.respond_tool(request.call, output_text, False)
        return request

    def _expired(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        log.warning("%s: tool %s: no respond.toAiTool within %g s", request.leg.id, request.call.name,
                    request.timeout_s)
        request.leg.respond_tool(request.call, f"Tool {request.call.name} did not respond within "
                                               f"{request.timeout_s:g} s", True)

    def _close_request(self, request: ToolRequest) -> None:
        self.requests.pop(request.id, None)
        if request.timer is not None:
            request.timer.cancel()

    # ---- speech started: voice for playbacks (§5.2) ---------------------------------------------
    def _speech_started(self, leg: AiLeg) -> None:
        """A provider's speech-started counts as voice for voice-interruptible playbacks on the AI
        leg and on its bridged peer (the caller)."""
        ids = {leg.id}
        bridge = self.engine.bridges.of(leg.id)
        if bridge is not None:
            ids |= {bridge.a.id, bridge.b.id}
        for op in list(self.engine.media.values()):
            if op.flow_leg.id in ids and op.live and getattr(op, "voice", None) is not None:
                op.finish("interrupted", "media_voice")

    def shutdown(self) -> None:
        for request in list(self.requests.values()):
            self._close_request(request)
        self.legs.shutdown()


# ---- nodes ------------------------------------------------------------------------------------
def register(engine: "FlowEngine") -> None:
    ai = FlowAi(engine)
    engine.ai = ai  # type: ignore[attr-defined]
    engine.ai_legs = ai.legs  # type: ignore[attr-defined]  # dial.make websocket creates legs here
    engine.runner.register("ai.attachVoiceAgent", ai.attach)
    engine.runner.register("ai.invokeAiTool", _invoke_as_step)


def _invoke_as_step(a: Activation) -> None:
    raise NodeFailed("ai.invokeAiTool cannot run as a step: list it under tools: of an ai.attachVoiceAgent "
                     "node; the model calls it and the AI Tool trigger with its ref answers")
