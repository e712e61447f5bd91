"""Respond nodes (reference §2.3 "Resource Respond"): answers to requests a trigger branch
raised. Each finds its request through the item's hidden response handle first, then
Options → Request ID, then `json.<kind>RequestId`, then `sipPbx.<kind>RequestId` (§1.6).

`respond.toRecord` answers a Recording branch item: `active` false just closes the request;
true starts the leg's call recording as `recording.start` does.
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
