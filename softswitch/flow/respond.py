"""Respond nodes (reference §2.3 "Resource Respond"): answers to requests a trigger branch
raised. Each finds its request through the item's hidden response handle first, then
Options → Request ID, then `json.<kind>RequestId`, then `sipPbx.<kind>RequestId` (§1.6).

`respond.toRecord` answers a Recording branch item: `active` false just closes the request;
true starts the leg's call recording as `recording.start` does.

`respond.toAiTool` answers an AI Tool trigger's Request: its `outputText` is the function's
result for the model (flow/ai.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import recording
from .engine import Activation, NodeFailed
from .items import resolve_request_id

if TYPE_CHECKING:
    from .runtime import FlowEngine


def register(engine: "FlowEngine") -> None:
    engine.runner.register("respond.toRecord", lambda a: _to_record(engine, a))
    engine.runner.register("respond.toAiTool", lambda a: _to_ai_tool(engine, a))


def _to_record(engine: "FlowEngine", a: Activation) -> None:
    request_id = resolve_request_id(a.item, "record", a.options)
    if not request_id:
        raise NodeFailed("respond.toRecord has no record request: connect it after a trigger's Recording "
                         "branch, or set Options → Request ID")
    active = bool(a.param("active", True))
    settings = recording.settings_from(engine, a) if active else None  # bad settings keep the request
    request = engine.recordings.take_request(request_id)
    sip_pbx = {"recordRequestId": request_id, "legId": request.leg_id}
    if settings is None:
        a.emit("Result", {"recordRequestId": request_id, "active": False, "legId": request.leg_id}, sip_pbx)
        return
    flow_leg = engine.leg(request.leg_id)
    started = engine.recordings.start(flow_leg, settings)
    payload = {"recordRequestId": request_id, "active": True, "legId": flow_leg.id, "filePath": str(settings.path)}
    recording.emit_started(a, started, payload, sip_pbx)


def _to_ai_tool(engine: "FlowEngine", a: Activation) -> None:
    request_id = resolve_request_id(a.item, "aiTool", a.options)
    if not request_id:
        raise NodeFailed("respond.toAiTool has no AI tool request: connect it after an AI Tool trigger's "
                         "Request branch, or set Options → Request ID")
    ai = getattr(engine, "ai", None)
    if ai is None:
        raise NodeFailed("respond.toAiTool: AI legs are not available in this server")
    output = a.param("outputText")
    ai.respond(request_id, "" if output is None else str(output))
    a.emit("Result", {"aiToolRequestId": request_id}, {"aiToolRequestId": request_id})
