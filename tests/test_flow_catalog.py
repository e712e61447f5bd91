"""The node catalogue: every op and trigger of the reference, its defaults and its branch order."""

from __future__ import annotations

import pytest

from softswitch.flow import catalog
from softswitch.flow.catalog import NO_DEFAULT, node_type, trigger_type

REFERENCE_OPS = (
    "call.ringing", "call.answer", "call.hangup", "call.bridge", "call.unbridge", "call.wait",
    "dial.make", "dial.wait", "dial.break",
    "media.playAudio", "media.playTone", "media.recordAudio", "media.stopMedia", "media.wait", "media.sendDtmf",
    "queue.putLeg", "queue.setCallback", "queue.getStats",
    "recording.start", "recording.control",
    "ai.attachVoiceAgent", "ai.invokeAiTool",
    "respond.toRecord", "respond.toAuth", "respond.toAiTool",
)


def test_the_catalogue_has_every_reference_op_trigger_and_core_node():
    assert set(catalog.ACTION_OPS) == set(REFERENCE_OPS)
    assert set(catalog.CORE_OPS) == {"core.if", "core.switch", "core.set", "core.noop"}
    assert catalog.TRIGGER_KINDS == ("trunk", "extensions", "queue", "aiTool")


@pytest.mark.parametrize("name", [*catalog.OPS, *catalog.TRIGGERS])
def test_every_type_has_branches_with_its_defaults_and_unique_param_names(name):
    ntype = catalog.OPS.get(name) or catalog.TRIGGERS[name]
    names = [p.name for p in ntype.params]
    assert len(names) == len(set(names)), f"{name} declares a parameter twice"
    branches = ntype.branches()
    assert len(branches) == len(set(branches))
    assert branches or ntype.is_tool or name == "core.switch"  # a switch without rules has no outputs


WAIT_RULES = [{"pattern": "1", "label": "Support"}, {"pattern": "2", "label": "Sales"}]


@pytest.mark.parametrize("name, params, options, expected", [
    # call.wait: rule labels in rule order → DTMF Fallback → Interrupted → Timeout → Ended
    ("call.wait", {}, {}, ("Timeout", "Ended")),
    ("call.wait", {"rules": WAIT_RULES}, {}, ("Support", "Sales", "Timeout", "Ended")),
    ("call.wait", {"rules": WAIT_RULES[::-1]}, {}, ("Sales", "Support", "Timeout", "Ended")),
    ("call.wait", {"rules": WAIT_RULES, "waitDtmfFallbackEnabled": True}, {},
     ("Support", "Sales", "DTMF Fallback", "Timeout", "Ended")),
    ("call.wait", {"rules": WAIT_RULES}, {"interruptReasons": ["call_queue_removed"]},
     ("Support", "Sales", "Interrupted", "Timeout", "Ended")),
    ("call.wait", {"rules": WAIT_RULES, "waitDtmfFallbackEnabled": True}, {"interruptReasons": ["call_bridge_joined"]},
     ("Support", "Sales", "DTMF Fallback", "Interrupted", "Timeout", "Ended")),
    # dial.wait: selected of Ringing, Progress, Rejected (in that order) → Answered → Interrupted → Timeout → Failed
    ("dial.wait", {}, {}, ("Answered", "Interrupted", "Timeout", "Failed")),
    ("dial.wait", {"waitEventOutputs": ["ringing"]}, {}, ("Ringing", "Answered", "Interrupted", "Timeout", "Failed")),
    ("dial.wait", {"waitEventOutputs": ["rejected", "ringing", "progress"]}, {},
     ("Ringing", "Progress", "Rejected", "Answered", "Interrupted", "Timeout", "Failed")),
    ("dial.wait", {"waitEventOutputs": ["rejected"]}, {}, ("Rejected", "Answered", "Interrupted", "Timeout", "Failed")),
    # media: blocking → Interrupted, Completed; background → Result; blocking forever-tone → Interrupted
    ("media.playAudio", {}, {}, ("Interrupted", "Completed")),
    ("media.playAudio", {}, {"mediaExecutionMode": "background"}, ("Result",)),
    ("media.recordAudio", {}, {}, ("Interrupted", "Completed")),
    ("media.recordAudio", {}, {"mediaExecutionMode": "background"}, ("Result",)),
    ("media.playTone", {}, {}, ("Interrupted", "Completed")),
    ("media.playTone", {"repeatInfinite": True}, {}, ("Interrupted",)),
    ("media.playTone", {"repeatInfinite": True}, {"mediaExecutionMode": "background"}, ("Result",)),
    ("media.wait", {}, {}, ("Interrupted", "Timeout", "Completed")),
    # dial.make: extension mode adds Unavailable
    ("dial.make", {"callMode": "trunk"}, {}, ("Result",)),
    ("dial.make", {"callMode": "websocket"}, {}, ("Result",)),
    ("dial.make", {"callMode": "extension"}, {}, ("Result", "Unavailable")),
    ("call.bridge", {}, {}, ("Success",)),
    ("call.unbridge", {}, {}, ("Orig", "Peer")),
    ("call.answer", {}, {}, ("Result",)),
    ("ai.invokeAiTool", {}, {}, ()),
    # triggers
    ("trunk", {}, {}, ("Call",)),
    ("trunk", {"enableCallRecording": True}, {}, ("Call", "Recording")),
    ("trunk", {"trunkConnectionMode": "dynamic"}, {}, ("Call",)),  # dynamic, authMode static
    ("trunk", {"trunkConnectionMode": "dynamic", "authMode": "digest-first"}, {}, ("Call", "Auth")),
    ("trunk", {"trunkConnectionMode": "dynamic", "authMode": "raw", "enableCallRecording": True}, {},
     ("Call", "Recording", "Auth")),
    ("trunk", {"trunkConnectionMode": "fixed", "authMode": "raw"}, {}, ("Call",)),  # Auth only when dynamic
    ("extensions", {}, {}, ("Call",)),
    ("extensions", {"extensionsEnableCallRecording": True}, {}, ("Call", "Recording")),
    ("extensions", {"authMode": "raw", "extensionsEnableCallRecording": True}, {}, ("Call", "Recording", "Auth")),
    ("queue", {}, {}, ("Placed", "Dispatch", "Offline")),
    ("aiTool", {}, {}, ("Request",)),
    # core nodes
    ("core.if", {}, {}, ("true", "false")),
    ("core.set", {}, {}, ("Result",)),
    ("core.noop", {}, {}, ("Result",)),
    ("core.switch", {"rules": [{"outputKey": "sales"}, {}, {"outputKey": "support"}]}, {}, ("sales", "1", "support")),
    ("core.switch", {"rules": [{"outputKey": "a"}, {}], "fallbackOutput": "extra"}, {}, ("a", "1", "Fallback")),
    ("core.switch", {"rules": [{"outputKey": "a"}], "fallbackOutput": "extra", "renameFallbackOutput": "Other"}, {},
     ("a", "Other")),
    ("core.switch", {"rules": [{"outputKey": "a"}, {"outputKey": "b"}], "fallbackOutput": 1}, {}, ("a", "b")),
    ("core.switch", {"mode": "expression", "numberOutputs": 3}, {}, ("0", "1", "2")),
])
def test_branch_order(name, params, options, expected):
    ntype = catalog.OPS.get(name) or catalog.TRIGGERS[name]
    assert ntype.branches(params, options) == expected


@pytest.mark.parametrize("op, key, default, option", [
    ("call.wait", "timeoutSeconds", 30, False),
    ("call.wait", "dtmfTerminatorDigit", "#", False),
    ("call.wait", "waitDtmfFallbackEnabled", False, False),
    ("call.wait", "interdigitTimeoutSeconds", 1, True),
    ("call.wait", "interruptReasons", (), True),
    ("call.wait", "clearDtmfBuffer", False, True),
    ("call.bridge", "emitDtmfEvents", True, True),
    ("call.bridge", "relayDtmf", "auto", True),
    ("dial.wait", "dialTimeoutSeconds", 30, False),
    ("dial.wait", "legId", "", False),  # Master Leg ID is a main parameter, not an option
    ("dial.break", "dialBreakReason", "broken", True),
    ("dial.make", "callStrategy", "parallel", True),
    ("dial.make", "sequentialAttemptTimeoutSeconds", 30, True),
    ("dial.make", "sequentialGapSeconds", 0, True),
    ("dial.make", "extensionOnlyFreeEndpoints", True, True),
    ("dial.make", "websocketStartMode", "immediate", False),
    ("dial.make", "codecs", ("opus", "g722", "alaw", "mulaw", "g729"), True),
    ("dial.make", "dtmfMethods", ("rfc2833", "info"), True),
    ("dial.make", "openaiRealtimeModel", "gpt-realtime", True),
    ("dial.make", "openaiRealtimeVoice", "marin", True),
    ("dial.make", "geminiLiveModel", "gemini-3.1-flash-live-preview", True),
    ("dial.make", "websocketAudioInputSampleRate", 48000, True),
    ("media.playAudio", "sourceType", "binary", False),
    ("media.playAudio", "binaryProperty", "data", False),
    ("media.playAudio", "voiceThreshold", 0.02, True),
    ("media.playAudio", "voiceDurationMs", 150, True),
    ("media.playAudio", "duckingFactor", 1, True),
    ("media.playAudio", "mediaExecutionMode", "blocking", True),
    ("media.playAudio", "stopOtherMedia", False, True),
    ("media.playAudio", "playbackHttpMethod", "GET", True),
    ("media.playTone", "tone", "ringback", False),
    ("media.playTone", "repeatInfinite", False, False),
    ("media.recordAudio", "maxDurationSeconds", 30, False),
    ("media.recordAudio", "recordOutputType", "binary", False),
    ("media.recordAudio", "recordHttpMethod", "PUT", True),
    ("media.recordAudio", "silenceThreshold", 0.01, True),
    ("media.recordAudio", "silenceDurationMs", 300, True),
    ("media.recordAudio", "recordWavSampleRate", 8000, True),
    ("media.recordAudio", "recordCompressedBitrate", 32, True),
    ("media.stopMedia", "stopMediaTarget", "mediaId", False),
    ("media.wait", "waitMediaTimeoutSeconds", 30, False),
    ("media.sendDtmf", "dtmfMethod", "auto", True),
    ("media.sendDtmf", "dtmfDurationMs", 200, True),
    ("media.sendDtmf", "dtmfGapMs", 100, True),
    ("queue.putLeg", "queuePlacement", "back", True),
    ("queue.putLeg", "rejoinExisting", True, True),
    ("queue.putLeg", "retryAttempts", 3, True),
    ("queue.putLeg", "retryPauseSeconds", 30, True),
    ("queue.setCallback", "callbackEnabled", True, False),
    ("queue.getStats", "queueStatsTarget", "ref", False),
    ("recording.start", "recordSplitChannels", False, False),
    ("recording.control", "recordingControlAction", "pause", False),
    ("respond.toRecord", "active", True, False),
    ("respond.toAuth", "authAction", "not_applicable", False),
    ("respond.toAuth", "statusCode", 401, False),
])
def test_reference_defaults_and_where_they_live(op, key, default, option):
    p = node_type(op).param(key)
    assert p is not None, f"{op} has no parameter {key}"
    assert p.default == default
    assert p.option is option


@pytest.mark.parametrize("kind, key, default, option", [
    ("trunk", "trunkConnectionMode", "fixed", False),
    ("trunk", "trunkUseRegistration", True, False),
    ("trunk", "authMode", "static", False),
    ("trunk", "enableCallRecording", False, False),
    ("trunk", "registrationExpires", 600, True),
    ("trunk", "authTimeoutSeconds", 5, True),
    ("trunk", "recordResponseTimeoutSeconds", 5, True),
    ("extensions", "transports", ("udp",), True),
    ("extensions", "localBindPort", 5060, True),
    ("extensions", "tlsBindPort", 5061, True),
    ("aiTool", "aiToolResponseTimeoutSeconds", 5, True),
])
def test_trigger_defaults(kind, key, default, option):
    p = trigger_type(kind).param(key)
    assert p is not None and p.default == default and p.option is option


def test_required_parameters_and_allowed_values():
    assert node_type("call.bridge").param("legAId").required
    assert node_type("call.bridge").param("legBId").required
    assert node_type("dial.make").param("callMode").choices == ("trunk", "extension", "direct", "websocket")
    assert node_type("dial.make").param("callMode").default is NO_DEFAULT
    assert node_type("media.playAudio").param("interruptOn").choices == ("dtmf", "voice")
    assert node_type("media.recordAudio").param("interruptOn").choices == ("dtmf", "silence")
    assert node_type("dial.wait").param("interruptOn").choices == ("dtmf",)
    assert node_type("call.wait").param("interruptReasons").choices == catalog.CALL_WAIT_INTERRUPT_REASONS
    assert len(catalog.CALL_WAIT_INTERRUPT_REASONS) == 7
    for kind in catalog.TRIGGER_KINDS:
        assert trigger_type(kind).param("ref").required
    rules = node_type("call.wait").param("rules")
    assert [f.name for f in rules.fields] == ["pattern", "label"]
    assert all(f.required for f in rules.fields)


def test_conditional_parameters_follow_the_mode():
    make = node_type("dial.make")
    trunk = make.view({"callMode": "trunk"})
    assert "extensionOnlyFreeEndpoints" not in trunk and trunk["callStrategy"] == "parallel"
    extension = make.view({"callMode": "extension"})
    assert extension["extensionOnlyFreeEndpoints"] is True
    websocket = make.view({"callMode": "websocket", "transportProfile": "openai_realtime"})
    assert "callStrategy" not in websocket and websocket["openaiRealtimeVoice"] == "marin"
    assert "geminiLiveVoice" not in websocket
    play = node_type("media.playAudio")
    assert "voiceThreshold" not in play.view({"interruptOn": ["dtmf"]})
    assert play.view({"interruptOn": ["dtmf", "voice"]})["voiceThreshold"] == 0.02
