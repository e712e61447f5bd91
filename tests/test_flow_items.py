"""Items between nodes (reference §1.6): payload replaces json, sipPbx ids are inherited, and
ids resolve in the reference's order."""

from __future__ import annotations

from softswitch.flow.items import (
    Item, ResponseHandle, output_item, resolve_ai_leg_id, resolve_dial_id, resolve_leg_id, resolve_media_id,
    resolve_queue_ref, resolve_request_id, resolve_wait_ids,
)


def trigger_item() -> Item:
    return output_item(None, {"eventType": "invite", "legId": "leg_1", "callerNumber": "555"},
                       {"ref": "trunk_main", "legId": "leg_1"})


def test_payload_replaces_json_and_sip_pbx_ids_are_inherited():
    first = trigger_item()
    played = output_item(first, {"mediaId": "media_1", "legId": "leg_1"}, {"mediaId": "media_1"})
    assert "callerNumber" not in played.json and "eventType" not in played.json
    assert played.json["sipPbx"] == {"ref": "trunk_main", "legId": "leg_1", "mediaId": "media_1"}
    dialed = output_item(played, {"dialId": "dial_1"}, {"dialId": "dial_1", "legId": "leg_2"})
    assert dialed.json["sipPbx"] == {"ref": "trunk_main", "legId": "leg_2", "mediaId": "media_1", "dialId": "dial_1"}


def test_empty_new_ids_do_not_erase_inherited_ones():
    item = output_item(trigger_item(), {"x": 1}, {"legId": "", "dialId": None})
    assert item.json["sipPbx"]["legId"] == "leg_1"
    assert "dialId" not in item.json["sipPbx"]


def test_response_handle_travels_with_later_items():
    handle = ResponseHandle("record", "record_1")
    start = output_item(None, {"recordRequestId": "record_1"}, {"recordRequestId": "record_1"}, handle=handle)
    later = output_item(output_item(start, {"a": 1}), {"b": 2})
    assert later.handle == handle
    assert resolve_request_id(later, "record", {}) == "record_1"
    # A handle of another kind is not used: the ids are.
    assert resolve_request_id(later, "aiTool", {"requestId": "ai_tool_request_9"}) == "ai_tool_request_9"


def test_leg_id_resolution_order():
    item = Item(json={"legId": "from_json", "sipPbx": {"legId": "from_sip_pbx"}})
    assert resolve_leg_id(item, {"legId": "from_options"}) == "from_options"
    assert resolve_leg_id(item, {"legId": ""}) == "from_json"
    assert resolve_leg_id(Item(json={"sipPbx": {"legId": "from_sip_pbx"}}), {}) == "from_sip_pbx"
    assert resolve_leg_id(Item(json={}), {}) is None


def test_ai_leg_id_prefers_ai_leg_over_leg():
    item = Item(json={"legId": "caller", "aiLegId": "ai", "sipPbx": {"legId": "x", "aiLegId": "y"}})
    assert resolve_ai_leg_id(item, {}) == "ai"
    assert resolve_ai_leg_id(Item(json={"sipPbx": {"legId": "x", "aiLegId": "y"}}), {}) == "y"


def test_dial_media_wait_and_queue_resolution():
    item = Item(json={"dialId": "d1", "mediaId": "m1", "ref": "queue_sales", "sipPbx": {"dialId": "d0", "legId": "l0"}})
    assert resolve_dial_id(item, {}) == "d1"
    assert resolve_media_id(item, {"mediaId": "m9"}) == "m9"
    assert resolve_wait_ids(item, [], "legId") == ["l0"]
    assert resolve_wait_ids(item, ["a", "b"], "legId") == ["a", "b"]
    assert resolve_queue_ref(item, "") == "queue_sales"
    assert resolve_queue_ref(item, "queue_support") == "queue_support"
