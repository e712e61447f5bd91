"""Items between nodes, the n8n way (reference §1.6).

Every output item is `{json: payload + sipPbx, binary?}`: the payload *replaces* the incoming
json, while the hidden `sipPbx` ids are inherited (a key missing from the new `sipPbx` keeps the
incoming value). A response handle attached by an Auth/Recording/Request trigger branch travels
with the items until a Respond node uses it. Node implementations find the leg, dial, media or
request they act on with the resolution orders below, never by ad-hoc lookups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

SIP_PBX_KEYS = ("legId", "dialId", "mediaId", "authRequestId", "recordRequestId", "aiToolRequestId", "ref")

HandleKind = Literal["auth", "record", "aiTool"]


@dataclass(frozen=True)
class ResponseHandle:
    """The pending request a Respond node answers first (`_sipPbxResponseHandle`)."""

    kind: HandleKind
    handle: str


@dataclass(frozen=True)
class Item:
    json: Mapping[str, Any] = field(default_factory=dict)
    binary: Mapping[str, Any] = field(default_factory=dict)
    handle: ResponseHandle | None = None

    @property
    def sip_pbx(self) -> Mapping[str, Any]:
        value = self.json.get("sipPbx")
        return value if isinstance(value, Mapping) else MappingProxyType({})


def output_item(incoming: Item | None, payload: Mapping[str, Any], sip_pbx: Mapping[str, Any] | None = None, *,
                binary: Mapping[str, Any] | None = None, handle: ResponseHandle | None = None) -> Item:
    """The item a node emits: its payload as json, with `sipPbx` merged over the incoming one."""
    inherited = dict(incoming.sip_pbx) if incoming is not None else {}
    fresh = {k: v for k, v in (sip_pbx or {}).items() if v not in (None, "")}
    merged = {**inherited, **fresh}
    json = {k: v for k, v in payload.items() if k != "sipPbx"}
    json["sipPbx"] = merged
    return Item(json=json, binary=dict(binary or {}),
                handle=handle if handle is not None else (incoming.handle if incoming is not None else None))


def _first(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None


def resolve_leg_id(item: Item, options: Mapping[str, Any]) -> str | None:
    """Options → Leg ID, then json.legId, then json.sipPbx.legId."""
    return _first(options.get("legId"), item.json.get("legId"), item.sip_pbx.get("legId"))


def resolve_ai_leg_id(item: Item, options: Mapping[str, Any]) -> str | None:
    """Attach Voice Agent: Options → AI Leg ID, json.aiLegId, json.legId, sipPbx.aiLegId, sipPbx.legId."""
    return _first(options.get("legId"), item.json.get("aiLegId"), item.json.get("legId"),
                  item.sip_pbx.get("aiLegId"), item.sip_pbx.get("legId"))


def resolve_dial_id(item: Item, options: Mapping[str, Any]) -> str | None:
    return _first(options.get("dialId"), item.json.get("dialId"), item.sip_pbx.get("dialId"))


def resolve_media_id(item: Item, options: Mapping[str, Any]) -> str | None:
    return _first(options.get("mediaId"), item.json.get("mediaId"), item.sip_pbx.get("mediaId"))


def resolve_request_id(item: Item, kind: HandleKind, options: Mapping[str, Any]) -> str | None:
    """Respond nodes: the hidden handle of that kind, then Options → Request ID, then
    json.<kind>RequestId, then sipPbx.<kind>RequestId."""
    if item.handle is not None and item.handle.kind == kind:
        return item.handle.handle
    key = f"{kind}RequestId"
    return _first(options.get("requestId"), item.json.get(key), item.sip_pbx.get(key))


def resolve_wait_ids(item: Item, explicit: list[str] | tuple[str, ...], key: str) -> list[str]:
    """Waits: the explicit list (legIds, dialIds, mediaIds) if given, else the single id from
    json.<key> then sipPbx.<key>."""
    ids = [i for i in explicit if isinstance(i, str) and i]
    if ids:
        return ids
    single = _first(item.json.get(key), item.sip_pbx.get(key))
    return [single] if single else []


def resolve_queue_ref(item: Item, param: str | None) -> str | None:
    """Queue ref (putLeg/getStats): the node parameter, then json.ref, then sipPbx.ref."""
    return _first(param, item.json.get("ref"), item.sip_pbx.get("ref"))
