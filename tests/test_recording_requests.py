"""The Recording branch's record requests on virtual time (no SIP): which triggers offer one, the
payload and ids of the branch item, the hidden handle respond.toRecord finds first, expiry after
recordResponseTimeoutSeconds, and the settings respond.toRecord / recording.start accept."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from softswitch.clock import Timers, VirtualClock
from softswitch.flow.engine import NodeFailed
from softswitch.flow.items import Item, ResponseHandle, output_item, resolve_request_id
from softswitch.flow.loader import load_flow_text
from softswitch.flow.recording import Recordings, settings_from
from softswitch.ids import IdFactory

FLOW = """
name: rec
triggers:
  - name: trunk_main
    trigger: trunk
    params: {ref: trunk_main, enableCallRecording: {recording}, options: {recordResponseTimeoutSeconds: 3}}
    next: {Call: [answer]}
  - name: agents
    trigger: extensions
    params: {ref: internal}
    next: {Call: [answer]}
nodes:
  - name: answer
    op: call.answer
"""


@dataclass
class Fired:
    branch: str
    payload: dict
    sip_pbx: dict
    handle: ResponseHandle | None


@dataclass
class FakeRunner:
    fired: list[Fired] = field(default_factory=list)

    def fire(self, flow, trigger, branch, payload, sip_pbx=None, handle=None):
        self.fired.append(Fired(branch, dict(payload), dict(sip_pbx or {}), handle))


def engine_with(tmp_path: Path, recording: bool = True):
    clock = VirtualClock()
    flow = load_flow_text(FLOW.replace("{recording}", "true" if recording else "false"), "rec.yaml")
    ua = SimpleNamespace(ids=IdFactory(), timers=Timers(clock), dialer=None,
                         config=SimpleNamespace(directories=SimpleNamespace(recordings=tmp_path / "recordings")))
    engine = SimpleNamespace(ua=ua, runner=FakeRunner(), flows=[flow])
    return engine, flow, clock


def inbound_leg() -> SimpleNamespace:
    return SimpleNamespace(id="leg_1_1", direction="inbound", call_id="abc@host",
                           remote_uri='"Alice" <sip:5550440@127.0.0.1:5099>', local_uri="<sip:100@127.0.0.1>")


def test_a_recording_trunk_fires_the_recording_branch_with_the_reference_payload(tmp_path):
    engine, flow, _ = engine_with(tmp_path)
    recordings = Recordings(engine)
    request_id = recordings.offer(flow, flow.trigger("trunk", "trunk_main"), inbound_leg())
    assert request_id and request_id.startswith("record_")
    [fired] = engine.runner.fired
    assert fired.branch == "Recording"
    assert fired.payload == {
        "eventType": "record", "recordRequestId": request_id, "kind": "trunk", "ref": "trunk_main",
        "legId": "leg_1_1", "callId": "abc@host", "direction": "inbound",
        "from": '"Alice" <sip:5550440@127.0.0.1:5099>', "callerNumber": "5550440", "callerName": "Alice",
        "to": "<sip:100@127.0.0.1>", "calledNumber": "100", "calledName": "",
    }
    assert fired.sip_pbx == {"ref": "trunk_main", "legId": "leg_1_1", "recordRequestId": request_id}
    assert fired.handle == ResponseHandle("record", request_id)


def test_triggers_without_global_recording_offer_nothing(tmp_path):
    engine, flow, _ = engine_with(tmp_path, recording=False)
    recordings = Recordings(engine)
    assert recordings.offer(flow, flow.trigger("trunk", "trunk_main"), inbound_leg()) is None
    assert recordings.offer(flow, flow.trigger("extensions", "internal"), inbound_leg(), "1001") is None
    assert engine.runner.fired == [] and recordings.requests == {}


def test_a_record_request_expires_after_the_response_timeout(tmp_path):
    engine, flow, clock = engine_with(tmp_path)
    recordings = Recordings(engine)
    request_id = recordings.offer(flow, flow.trigger("trunk", "trunk_main"), inbound_leg())
    clock.advance(2.9)
    engine.ua.timers.run_due()
    assert request_id in recordings.requests
    clock.advance(0.2)
    engine.ua.timers.run_due()
    with pytest.raises(NodeFailed, match="unknown or expired record request"):
        recordings.take_request(request_id)


def test_a_request_is_answered_once(tmp_path):
    engine, flow, _ = engine_with(tmp_path)
    recordings = Recordings(engine)
    request_id = recordings.offer(flow, flow.trigger("trunk", "trunk_main"), inbound_leg())
    assert recordings.take_request(request_id).leg_id == "leg_1_1"
    with pytest.raises(NodeFailed):
        recordings.take_request(request_id)


def test_respond_finds_the_request_by_the_hidden_handle_before_ids_in_json(tmp_path):
    branch_item = output_item(None, {"recordRequestId": "record_json"}, {"recordRequestId": "record_sippbx"},
                              handle=ResponseHandle("record", "record_handle"))
    later = output_item(branch_item, {"legId": "leg_1"})  # an action in between keeps the handle
    assert resolve_request_id(later, "record", {}) == "record_handle"
    assert resolve_request_id(Item(json={"recordRequestId": "record_json"}), "record", {}) == "record_json"


class Params:
    """The bits of an Activation that settings_from reads."""

    def __init__(self, **params) -> None:
        self._params = params

    def param(self, key, default=None):
        return self._params.get(key, default)


def test_relative_recording_paths_are_under_the_recordings_directory(tmp_path):
    engine, _, _ = engine_with(tmp_path)
    settings = settings_from(engine, Params(recordFilePath="calls/leg_1.wav", recordSplitChannels=True))
    assert settings.path == tmp_path / "recordings" / "calls" / "leg_1.wav"
    assert settings.split and settings.rate == 8000 and not settings.wait
    absolute = settings_from(engine, Params(recordFilePath=str(tmp_path / "x.wav")))
    assert absolute.path == tmp_path / "x.wav"


@pytest.mark.parametrize("params, message", [
    ({"recordFilePath": ""}, "recordFilePath is empty"),
    ({"recordFilePath": "a.mp3", "recordFileFormat": "mp3"}, "not supported"),
    ({"recordFilePath": "a.wav", "recordWavBitDepth": 24}, "16-bit"),
    ({"recordFilePath": "a.wav", "recordWavSampleRate": 4000}, "out of range"),
])
def test_unusable_recording_settings_fail_the_node_clearly(tmp_path, params, message):
    engine, _, _ = engine_with(tmp_path)
    with pytest.raises(NodeFailed, match=message):
        settings_from(engine, Params(**params))
