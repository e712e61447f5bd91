"""The node catalogue: every flow node and trigger type, its parameters and its branches.

This is the one table of the reference's facts (reference-sip-pbx.md §2): parameter names,
types, defaults (§2.1 OPTION_DEFAULTS), which are required, allowed values, which live in the
`options` collection, and the branch names in the reference's order, including the branches a
node's parameters add or remove. The loader, `softswitch check` and the n8n importer all read it.

Core nodes (softswitch's own glue, mapped from n8n's IF v2, Switch v3, Set 3.x and NoOp):

* `core.if` — `conditions: [{left, operator, right, type}]`, `combinator: and|or`,
  `ignoreCase: false`. Branches `true`, `false`. `type` is `any|string|number|boolean|array|
  object` (default any); `operator` is one of CONDITION_OPERATORS[type]; `right` is unused by
  the unary operators (exists, notExists, empty, notEmpty, true, false).
* `core.switch` — `mode: rules|expression`. Rules mode: `rules: [{outputKey, conditions,
  combinator}]`, one branch per rule named by its outputKey (or its index, "0", "1", …), plus a
  last branch (`renameFallbackOutput` or `Fallback`) when `fallbackOutput: extra`;
  `fallbackOutput` may also be `none` (default) or the index of a rule's branch; `ignoreCase`,
  `allMatchingOutputs`. Expression mode: `numberOutputs: 4`, `output: "{{ … }}"` (an index);
  branches "0" … "numberOutputs-1".
* `core.set` — `assignments: [{name, type: string|number|boolean|array|object, value}]`,
  `includeOtherFields: false`, `include: all|selected|except`, `includeFields`, `excludeFields`
  (comma lists); options `dotNotation: true`, `ignoreConversionErrors: false`. Branch `Result`.
* `core.noop` — no parameters; passes items on. Branch `Result`.

softswitch differences from the n8n nodes: credentials are not flow parameters (trunks,
extension users, connections and AI keys live in the config). `dial.make` in `direct` mode
names its config `connections` entry with the extra parameter `connection` (the n8n node's
"SIP Connection" credential). fixedCollections are plain lists in flows (`rules: [{pattern,
label}]`, `legIds: [id, …]`) instead of n8n's `{item: [...]}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping
from ..media.tones import TONE_PRESETS as _TONE_PRESETS

# ---------------------------------------------------------------------------------------------
# Vocabulary (reference §2.1, §2.2)
# ---------------------------------------------------------------------------------------------

DTMF_DIGITS = "0123456789*#ABCD"
DTMF_PATTERN = r"[0-9*#ABCD]+"
CUSTOM_TONE_PATTERN = r"\d+(?:\+\d+)*/\d+(?:,\d+(?:\+\d+)*/\d+)*"

CALL_WAIT_INTERRUPT_REASONS = (
    "call_bridge_joined", "call_bridge_removed_peer_ended", "call_bridge_removed_unbridge",
    "call_bridge_removed_rollback", "call_bridge_removed_rebridge", "call_queue_placed",
    "call_queue_removed",
)
INTERRUPT_REASONS = (
    "call_dtmf", "call_ended", *CALL_WAIT_INTERRUPT_REASONS, "media_voice", "media_silence",
    "media_replaced", "media_stopped", "recording_restart", "request_cancelled", "daemon_shutdown",
)
SIP_CODECS = ("opus", "g722", "alaw", "mulaw", "g729")
DTMF_METHODS = ("rfc2833", "info", "inband")
DEFAULT_DTMF_METHODS = ("rfc2833", "info")
TONE_PRESETS = MappingProxyType(dict(_TONE_PRESETS))

# core.if / core.switch condition operators per value type (n8n filter operators we support)
_EXISTENCE = ("exists", "notExists", "empty", "notEmpty")
CONDITION_OPERATORS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "any": _EXISTENCE + ("equals", "notEquals"),
    "string": _EXISTENCE + ("equals", "notEquals", "contains", "notContains", "startsWith",
                            "notStartsWith", "endsWith", "notEndsWith"),
    "number": _EXISTENCE + ("equals", "notEquals", "gt", "lt", "gte", "lte"),
    "boolean": _EXISTENCE + ("true", "false", "equals", "notEquals"),
    "array": _EXISTENCE + ("contains", "notContains"),
    "object": _EXISTENCE,
})
UNARY_CONDITION_OPERATORS = frozenset(_EXISTENCE + ("true", "false"))

# ---------------------------------------------------------------------------------------------
# Parameter and node-type descriptions
# ---------------------------------------------------------------------------------------------

ParamType = Literal["string", "number", "boolean", "enum", "multi", "ids", "records", "json", "any", "fallback"]


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class When:
    """A parameter applies only while another one has one of `values` (or, with `contains`,
    while that list parameter contains one of them)."""

    param: str
    values: tuple[Any, ...]
    contains: bool = False

    def holds(self, view: Mapping[str, Any]) -> bool | None:
        """True/False, or None when the deciding value is an expression (unknown until run)."""
        value = view.get(self.param)
        if _is_dynamic(value):
            return None
        if self.contains:
            return any(v in (value or ()) for v in self.values)
        return value in self.values

    def __str__(self) -> str:
        shown = " or ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in self.values)
        return f"{self.param} {'contains' if self.contains else 'is'} {shown}"


def _is_dynamic(value: Any) -> bool:
    # An Expression (from expressions.py); tested by duck type to keep the catalog free of it.
    return hasattr(value, "evaluate") and hasattr(value, "source")


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    default: Any = NO_DEFAULT
    required: bool = False  # must be present and non-empty while it applies
    choices: tuple[Any, ...] = ()  # enum / multi values
    fields: tuple[Param, ...] = ()  # records: the fields of each record
    item_key: str = ""  # ids: the key of each n8n fixedCollection item ({item: [{legId}]})
    option: bool = False  # lives in the `options` collection
    when: tuple[When, ...] = ()
    static: bool = False  # decides branches: must be written literally, never as an expression
    pattern: str = ""  # a literal string must fullmatch this
    pattern_hint: str = ""
    unique: bool = False  # records field: values must differ between records
    doc: str = ""

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT

    def applies(self, view: Mapping[str, Any]) -> bool | None:
        result: bool | None = True
        for cond in self.when:
            holds = cond.holds(view)
            if holds is False:
                return False
            if holds is None:
                result = None
        return result


Role = Literal["action", "trigger", "core"]


@dataclass(frozen=True)
class NodeType:
    """One node or trigger type. `name` is the op (`call.wait`) or the trigger kind (`trunk`)."""

    name: str
    role: Role
    summary: str
    params: tuple[Param, ...]
    branch_rule: Callable[[Mapping[str, Any]], tuple[str, ...]] = field(repr=False, compare=False)
    accepts_tools: bool = False  # ai.attachVoiceAgent: `tools:` lists ai.invokeAiTool nodes
    is_tool: bool = False  # ai.invokeAiTool: no main input or output, only wired as a tool

    @property
    def top_params(self) -> Mapping[str, Param]:
        return MappingProxyType({p.name: p for p in self.params if not p.option})

    @property
    def option_params(self) -> Mapping[str, Param]:
        return MappingProxyType({p.name: p for p in self.params if p.option})

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def view(self, params: Mapping[str, Any] = MappingProxyType({}),
             options: Mapping[str, Any] = MappingProxyType({})) -> dict[str, Any]:
        """Given values over the defaults of every parameter that applies: what branches and
        conditions read. Parameters are visited in catalogue order, so a parameter's condition
        sees the defaults of the parameters declared before it."""
        given = {**params, **options}
        view: dict[str, Any] = {}
        for p in self.params:
            if p.name in given:
                view[p.name] = given[p.name]
            elif p.has_default and p.applies({**view, **given}) is not False:
                view[p.name] = p.default
        return view

    def branches(self, params: Mapping[str, Any] = MappingProxyType({}),
                 options: Mapping[str, Any] = MappingProxyType({})) -> tuple[str, ...]:
        """Branch names in the reference's output order for these parameter values."""
        return self.branch_rule(self.view(params, options))


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


def _s(name: str, default: Any = "", **kw: Any) -> Param:
    return Param(name, "string", default, **kw)


def _req(name: str, **kw: Any) -> Param:
    """A required string (n8n's default "" means "not given")."""
    return Param(name, "string", NO_DEFAULT, required=True, **kw)


def _n(name: str, default: Any, **kw: Any) -> Param:
    return Param(name, "number", default, **kw)


def _b(name: str, default: bool, **kw: Any) -> Param:
    return Param(name, "boolean", default, **kw)


def _e(name: str, choices: tuple[Any, ...], default: Any, **kw: Any) -> Param:
    return Param(name, "enum", default, choices=choices, **kw)


def _m(name: str, choices: tuple[Any, ...], default: tuple[Any, ...] = (), **kw: Any) -> Param:
    return Param(name, "multi", default, choices=choices, **kw)


def _ids(name: str, item_key: str, **kw: Any) -> Param:
    return Param(name, "ids", (), item_key=item_key, **kw)


def _records(name: str, *fields: Param, **kw: Any) -> Param:
    return Param(name, "records", (), fields=fields, **kw)


def _opt(p: Param) -> Param:
    return Param(**{**p.__dict__, "option": True})


def _when(p: Param, *conds: When) -> Param:
    return Param(**{**p.__dict__, "when": p.when + conds})


def _headers(name: str, **kw: Any) -> Param:
    return _records(name, _req("name"), _s("value"), **kw)


def _leg_id(**kw: Any) -> Param:
    return _opt(_s("legId", **kw))


# ---------------------------------------------------------------------------------------------
# Branch rules
# ---------------------------------------------------------------------------------------------

RESULT = ("Result",)


def _fixed(*names: str) -> Callable[[Mapping[str, Any]], tuple[str, ...]]:
    return lambda _view: names


def _call_wait_branches(v: Mapping[str, Any]) -> tuple[str, ...]:
    rules = [r for r in v.get("rules", ()) if r.get("pattern") and r.get("label")]
    out = [str(r["label"]) for r in rules]
    if v.get("waitDtmfFallbackEnabled"):
        out.append("DTMF Fallback")
    if v.get("interruptReasons"):
        out.append("Interrupted")
    return (*out, "Timeout", "Ended")


def _dial_wait_branches(v: Mapping[str, Any]) -> tuple[str, ...]:
    selected = v.get("waitEventOutputs") or ()
    extra = [name for key, name in (("ringing", "Ringing"), ("progress", "Progress"), ("rejected", "Rejected"))
             if key in selected]
    return (*extra, "Answered", "Interrupted", "Timeout", "Failed")


def _media_branches(v: Mapping[str, Any]) -> tuple[str, ...]:
    if v.get("mediaExecutionMode") == "background":
        return RESULT
    if v.get("repeatInfinite"):  # only media.playTone has it
        return ("Interrupted",)
    return ("Interrupted", "Completed")


def _dial_make_branches(v: Mapping[str, Any]) -> tuple[str, ...]:
    return ("Result", "Unavailable") if v.get("callMode") == "extension" else RESULT


def _trunk_branches(v: Mapping[str, Any]) -> tuple[str, ...]:
    out = ["Call"]
    if v.get("enableCallRecording"):
        out.append("Recording")
    if v.get("trunkConnectionMode") == "dynamic" and v.get("authMode", "static") != "static":
        out.append("Auth")
    return tuple(out)


def _extensions_branches(v: Mapping[str, Any]) -> tuple[str, ...]:
    out = ["Call"]
    if v.get("extensionsEnableCallRecording"):
        out.append("Recording")
    if v.get("authMode", "static") != "static":
        out.append("Auth")
    return tuple(out)


def _switch_branches(v: Mapping[str, Any]) -> tuple[str, ...]:
    if v.get("mode") == "expression":
        count = v.get("numberOutputs", 4)
        return tuple(str(i) for i in range(int(count) if isinstance(count, (int, float)) else 0))
    out = [str(rule.get("outputKey") or index) for index, rule in enumerate(v.get("rules", ()))]
    if v.get("fallbackOutput") == "extra":
        out.append(v.get("renameFallbackOutput") or "Fallback")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Shared parameter groups
# ---------------------------------------------------------------------------------------------

_SIP_DIAL_OPTIONS = (
    _opt(_e("callStrategy", ("parallel", "sequential"), "parallel")),
    _opt(_n("sequentialAttemptTimeoutSeconds", 30)),
    _opt(_n("sequentialGapSeconds", 0)),
    _opt(_s("callerNumber")),
    _opt(_s("callerName")),
    _opt(_headers("customSipHeaders")),
)
_BLOCKING_MODE = _opt(_e("mediaExecutionMode", ("blocking", "background"), "blocking", static=True))
_STOP_OTHER_MEDIA = _opt(_b("stopOtherMedia", False))
_VOICE = When("interruptOn", ("voice",), contains=True)
_SILENCE = When("interruptOn", ("silence",), contains=True)
_HTTP_AUTH = ("none", "predefinedCredentialType", "genericCredentialType")


def _recording_format_params(show: tuple[When, ...], id_option: Param) -> tuple[Param, ...]:
    """recording.start / respond.toRecord: file, format and its options (§2.3 Global recording)."""
    wav = When("recordFileFormat", ("wav",))
    compressed = When("recordFileFormat", ("mp3", "opus", "ogg"))
    return (
        _when(_req("recordFilePath"), *show),
        _when(_e("recordFileFormat", ("wav", "mp3", "opus", "ogg"), "wav"), *show),
        _when(_b("recordSplitChannels", False), *show),
        _when(_b("waitForRecordingCompletion", False), *show),
        id_option,
        _opt(_when(_n("recordWavSampleRate", 8000), *show, wav)),
        _opt(_when(_n("recordWavBitDepth", 16), *show, wav)),
        _opt(_when(_n("recordCompressedSampleRate", 16000), *show, compressed)),
        _opt(_when(_n("recordCompressedBitrate", 32), *show, compressed)),
    )


def _http_auth(mode: str, predefined: str, generic: str, show: When) -> tuple[Param, ...]:
    """HTTP sources and targets: the auth mode and the n8n credential it names."""
    return (
        _when(_e(mode, _HTTP_AUTH, "none"), show),
        _when(_s(predefined, NO_DEFAULT), show, When(mode, ("predefinedCredentialType",))),
        _when(_s(generic, NO_DEFAULT), show, When(mode, ("genericCredentialType",))),
    )


def _playback_tail(*http_options: Param) -> tuple[Param, ...]:
    """What media.playAudio and media.playTone share: interrupts, options, voice detection."""
    return (
        _m("interruptOn", ("dtmf", "voice")),
        _leg_id(),
        *http_options,
        _STOP_OTHER_MEDIA,
        _opt(_n("duckingFactor", 1)),
        _BLOCKING_MODE,
        _opt(_when(_n("voiceThreshold", 0.02), _VOICE)),
        _opt(_when(_n("voiceDurationMs", 150), _VOICE)),
    )


def _ws(profile: str) -> When:
    return When("transportProfile", (profile,))


_MODE = lambda *modes: When("callMode", modes)  # noqa: E731

# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------

_ACTIONS: tuple[NodeType, ...] = (
    # --- Resource Call (§2.3) ---
    NodeType("call.ringing", "action", "send 180 Ringing", (_leg_id(),), _fixed(*RESULT)),
    NodeType("call.answer", "action", "answer (200 OK)", (_leg_id(),), _fixed(*RESULT)),
    NodeType("call.hangup", "action", "reject or hang up", (_leg_id(),), _fixed(*RESULT)),
    NodeType("call.bridge", "action", "bridge two legs", (
        _req("legAId"),
        _req("legBId"),
        _opt(_b("emitDtmfEvents", True)),
        _opt(_e("relayDtmf", ("disabled", "auto", "rfc2833", "info", "inband"), "auto")),
    ), _fixed("Success")),
    NodeType("call.unbridge", "action", "unbridge a leg", (_leg_id(),), _fixed("Orig", "Peer")),
    NodeType("call.wait", "action", "wait for DTMF rules, interrupts, timeout or the end of the call", (
        _n("timeoutSeconds", 30),
        _records("rules",
                 _req("pattern", pattern=DTMF_PATTERN, pattern_hint="DTMF digits 0-9 * # A-D", static=True),
                 _req("label", unique=True, static=True),
                 static=True),
        _b("waitDtmfFallbackEnabled", False, static=True),
        _b("waitDtmfMultiDigitFallbackEnabled", False),
        _s("dtmfTerminatorDigit", "#", pattern="[0-9*#ABCD]", pattern_hint="exactly one DTMF digit (0-9 * # A-D)"),
        _ids("legIds", "legId"),
        _opt(_m("interruptReasons", CALL_WAIT_INTERRUPT_REASONS, static=True)),
        _opt(_b("clearDtmfBuffer", False)),
        _opt(_n("interdigitTimeoutSeconds", 1)),
    ), _call_wait_branches),
    # --- Resource Dial ---
    NodeType("dial.make", "action", "place an outbound call (trunk, extension, direct, websocket)", (
        _e("callMode", ("trunk", "extension", "direct", "websocket"), NO_DEFAULT, required=True, static=True),
        _when(_req("ref"), _MODE("trunk")),
        _when(_req("destination"), _MODE("trunk", "direct")),
        _when(_req("connection", doc="config `connections` entry (the n8n SIP Connection credential)"),
              _MODE("direct")),
        _when(_req("extensionNumbers"), _MODE("extension")),
        _when(_e("transportProfile", ("openai_realtime", "gemini_live", "generic"), NO_DEFAULT, required=True),
              _MODE("websocket")),
        _when(_req("websocketUrl"), _MODE("websocket"), _ws("generic")),
        _when(_e("websocketStartMode", ("immediate", "deferred"), "immediate"),
              _MODE("websocket"), When("transportProfile", ("openai_realtime", "gemini_live"))),
        *(_when(p, _MODE("trunk", "direct", "extension")) for p in _SIP_DIAL_OPTIONS),
        _opt(_when(_m("codecs", SIP_CODECS, SIP_CODECS), _MODE("direct"))),
        _opt(_when(_m("dtmfMethods", DTMF_METHODS, DEFAULT_DTMF_METHODS), _MODE("direct"))),
        _opt(_when(_b("extensionOnlyFreeEndpoints", True), _MODE("extension"))),
        *(_opt(_when(p, _MODE("websocket"), _ws("openai_realtime"))) for p in (
            _s("openaiRealtimeModel", "gpt-realtime"),
            _s("openaiRealtimeVoice", "marin"),
            _s("openaiRealtimeInputTranscriptionModel", "gpt-4o-transcribe"),
            _s("openaiRealtimeInstructions"),
            _s("openaiRealtimePromptId"),
            _s("openaiRealtimePromptVersion"),
            Param("openaiRealtimePromptVariablesJson", "json", "{}"),
        )),
        *(_opt(_when(p, _MODE("websocket"), _ws("gemini_live"))) for p in (
            _s("geminiLiveModel", "gemini-3.1-flash-live-preview"),
            _s("geminiLiveVoice", "Puck"),
            _s("geminiLiveApiVersion", "v1beta"),
            _s("geminiLiveInstructions"),
        )),
        *(_opt(_when(p, _MODE("websocket"), _ws("generic"))) for p in (
            Param("websocketHeadersJson", "json", "{}"),
            Param("websocketInitialMessagesJson", "json", "[]"),
            _s("websocketAudioInputEventType", "input_audio"),
            _s("websocketAudioInputField", "audio"),
            _n("websocketAudioInputSampleRate", 48000),
            _s("websocketAudioOutputEventTypes", "audio_output"),
            _s("websocketAudioOutputField", "audio"),
            _n("websocketAudioOutputSampleRate", 48000),
        )),
    ), _dial_make_branches),
    NodeType("dial.break", "action", "finalize a dial as failed", (
        _opt(_s("dialId")),
        _opt(_s("dialBreakReason", "broken")),
    ), _fixed(*RESULT)),
    NodeType("dial.wait", "action", "wait for a dial's answer, failure or timeout", (
        _n("dialTimeoutSeconds", 30),
        _s("legId", doc="Master Leg ID"),
        _m("interruptOn", ("dtmf",)),
        _m("waitEventOutputs", ("ringing", "progress", "rejected"), static=True),
        _ids("dialIds", "dialId"),
    ), _dial_wait_branches),
    # --- Resource Media ---
    NodeType("media.playAudio", "action", "play a file, URL or binary", (
        _e("sourceType", ("binary", "file", "http"), "binary"),
        _when(_s("binaryProperty", "data"), When("sourceType", ("binary",))),
        _when(_req("filePath"), When("sourceType", ("file",))),
        _when(_req("playbackHttpUrl"), When("sourceType", ("http",))),
        *_http_auth("playbackHttpAuthentication", "playbackHttpNodeCredentialType", "playbackHttpGenericAuthType",
                    When("sourceType", ("http",))),
        *_playback_tail(
            _opt(_when(_e("playbackHttpMethod", ("GET", "POST", "PUT"), "GET"), When("sourceType", ("http",)))),
            _opt(_when(_headers("playbackHttpHeaders"), When("sourceType", ("http",))))),
    ), _media_branches),
    NodeType("media.playTone", "action", "play a preset or custom tone", (
        _e("tone", ("ringback", "busy", "congestion", "custom"), "ringback"),
        _when(_req("customTone", pattern=CUSTOM_TONE_PATTERN,
                   pattern_hint="freq[+freq]/ms segments separated by commas, 0 = silence"),
              When("tone", ("custom",))),
        _b("repeatInfinite", False, static=True),
        *_playback_tail(),
    ), _media_branches),
    NodeType("media.recordAudio", "action", "record the leg's inbound audio", (
        _n("maxDurationSeconds", 30),
        _e("recordFileFormat", ("wav", "mp3", "opus", "ogg"), "wav"),
        _e("recordOutputType", ("binary", "file", "http"), "binary"),
        _when(_s("recordBinaryProperty", "data"), When("recordOutputType", ("binary",))),
        _when(_req("recordFilePath"), When("recordOutputType", ("file",))),
        _when(_req("recordHttpUrl"), When("recordOutputType", ("http",))),
        *_http_auth("recordHttpAuthentication", "recordHttpNodeCredentialType", "recordHttpGenericAuthType",
                    When("recordOutputType", ("http",))),
        _m("interruptOn", ("dtmf", "silence")),
        _leg_id(),
        _opt(_when(_e("recordHttpMethod", ("POST", "PUT"), "PUT"), When("recordOutputType", ("http",)))),
        _opt(_when(_headers("recordHttpHeaders"), When("recordOutputType", ("http",)))),
        _STOP_OTHER_MEDIA,
        _BLOCKING_MODE,
        _opt(_when(_n("recordWavSampleRate", 8000), When("recordFileFormat", ("wav",)))),
        _opt(_when(_n("recordWavBitDepth", 16), When("recordFileFormat", ("wav",)))),
        _opt(_when(_n("recordCompressedSampleRate", 16000), When("recordFileFormat", ("mp3", "opus", "ogg")))),
        _opt(_when(_n("recordCompressedBitrate", 32), When("recordFileFormat", ("mp3", "opus", "ogg")))),
        _opt(_when(_n("silenceThreshold", 0.01), _SILENCE)),
        _opt(_when(_n("silenceDurationMs", 300), _SILENCE)),
    ), _media_branches),
    NodeType("media.stopMedia", "action", "stop a media operation, or all of a leg's", (
        _e("stopMediaTarget", ("mediaId", "legId"), "mediaId"),
        _opt(_when(_s("mediaId"), When("stopMediaTarget", ("mediaId",)))),
        _opt(_when(_s("legId"), When("stopMediaTarget", ("legId",)))),
    ), _fixed(*RESULT)),
    NodeType("media.wait", "action", "wait for background media to end", (
        _n("waitMediaTimeoutSeconds", 30),
        _ids("mediaIds", "mediaId"),
    ), _fixed("Interrupted", "Timeout", "Completed")),
    NodeType("media.sendDtmf", "action", "send DTMF digits on a leg", (
        _req("dtmfDigits", pattern=DTMF_PATTERN, pattern_hint="DTMF digits 0-9 * # A-D"),
        _leg_id(),
        _opt(_e("dtmfMethod", ("auto", *DTMF_METHODS), "auto")),
        _opt(_n("dtmfDurationMs", 200)),
        _opt(_n("dtmfGapMs", 100)),
    ), _fixed(*RESULT)),
    # --- Resource Queue ---
    NodeType("queue.putLeg", "action", "put the caller leg into a queue", (
        _s("ref", doc="queue ref; empty: json.ref, then sipPbx.ref"),
        _leg_id(),
        _opt(_e("queuePlacement", ("back", "front"), "back")),
        _opt(_b("rejoinExisting", True)),
        _opt(_n("retryAttempts", 3)),
        _opt(_n("retryPauseSeconds", 30)),
        *_SIP_DIAL_OPTIONS,
    ), _fixed(*RESULT)),
    NodeType("queue.setCallback", "action", "flag a queue entry for callback", (
        _b("callbackEnabled", True),
        _leg_id(),
    ), _fixed(*RESULT)),
    NodeType("queue.getStats", "action", "queue statistics, or a leg's position", (
        _e("queueStatsTarget", ("ref", "legId"), "ref"),
        _when(_s("ref", doc="queue ref; empty: json.ref, then sipPbx.ref"), When("queueStatsTarget", ("ref",))),
        _opt(_when(_s("legId"), When("queueStatsTarget", ("legId",)))),
    ), _fixed(*RESULT)),
    # --- Resource Global recording ---
    NodeType("recording.start", "action", "start the leg's call recording",
             _recording_format_params((), _leg_id()), _fixed(*RESULT)),
    NodeType("recording.control", "action", "pause or resume the call recording", (
        _e("recordingControlAction", ("pause", "resume"), "pause"),
        _leg_id(),
    ), _fixed(*RESULT)),
    # --- Resource AI ---
    NodeType("ai.attachVoiceAgent", "action", "attach tools to an AI leg; returns when it ends", (
        _opt(_s("legId", doc="AI Leg ID")),
    ), _fixed(*RESULT), accepts_tools=True),
    NodeType("ai.invokeAiTool", "action", "a function the voice agent may call (wired with tools:)", (
        _req("ref"),
        _req("aiToolDescription"),
        _records("aiFlowParams", _req("name", unique=True), Param("value", "any", NO_DEFAULT, required=True)),
        _records("aiToolParams",
                 _req("name", unique=True),
                 _e("type", ("string", "number", "integer", "boolean"), "string"),
                 _req("description"),
                 _b("required", False)),
    ), _fixed(), is_tool=True),
    # --- Resource Respond ---
    NodeType("respond.toRecord", "action", "answer a Recording branch request", (
        _b("active", True),
        *_recording_format_params((When("active", (True,)),), _opt(_s("requestId"))),
    ), _fixed(*RESULT)),
    NodeType("respond.toAuth", "action", "answer an Auth branch request", (
        _e("authAction", ("allow", "verify_password", "not_applicable", "challenge", "deny"), "not_applicable"),
        _when(_req("password"), When("authAction", ("verify_password",))),
        _when(_s("extension"), When("authAction", ("verify_password", "allow"))),
        _when(_n("statusCode", 401), When("authAction", ("challenge", "deny"))),
        _when(_req("reason"), When("authAction", ("deny",))),
        _opt(_s("requestId")),
    ), _fixed(*RESULT)),
    NodeType("respond.toAiTool", "action", "answer an AI tool Request", (
        _req("outputText"),
        _opt(_s("requestId")),
    ), _fixed(*RESULT)),
)

_LISTENER_OPTIONS = (
    _opt(_n("localBindPort", 5060)),
    _opt(_n("tlsBindPort", 5061)),
    _opt(_s("localBindIp")),
    _opt(_s("advertisedIp")),
    _opt(_s("realm")),
)
_MEDIA_FILTER_OPTIONS = (
    _opt(_m("codecs", SIP_CODECS, SIP_CODECS)),
    _opt(_m("dtmfMethods", DTMF_METHODS, DEFAULT_DTMF_METHODS)),
)
_AUTH_MODES = ("static", "digest-first", "raw")

_TRIGGERS: tuple[NodeType, ...] = (
    NodeType("trunk", "trigger", "calls (and auth/recording requests) from a trunk", (
        _req("ref"),
        _e("trunkConnectionMode", ("fixed", "dynamic"), "fixed", static=True),
        _when(_b("trunkUseRegistration", True), When("trunkConnectionMode", ("fixed",))),
        _when(_e("authMode", _AUTH_MODES, "static", static=True), When("trunkConnectionMode", ("dynamic",))),
        _when(_s("trunkStaticUsername", NO_DEFAULT), When("trunkConnectionMode", ("dynamic",)),
              When("authMode", ("static",))),
        _when(_s("trunkStaticPassword", NO_DEFAULT), When("trunkConnectionMode", ("dynamic",)),
              When("authMode", ("static",))),
        _b("enableCallRecording", False, static=True),
        *_MEDIA_FILTER_OPTIONS,
        _opt(_n("registrationExpires", 600)),
        _opt(_headers("registerHeaders")),
        _opt(_n("authTimeoutSeconds", 5)),
        _opt(_e("transport", ("udp",), "udp")),
        *_LISTENER_OPTIONS,
        _opt(_b("continueTraversalOnAuthReject", False)),
        _opt(_n("recordResponseTimeoutSeconds", 5)),
    ), _trunk_branches),
    NodeType("extensions", "trigger", "calls from registered extensions", (
        _req("ref"),
        _e("authMode", _AUTH_MODES, "static", static=True),
        _when(_records("staticCredentials", _req("username", unique=True), _req("password"), _req("extension")),
              When("authMode", ("static",))),
        _b("extensionsEnableCallRecording", False, static=True),
        *_MEDIA_FILTER_OPTIONS,
        _opt(_n("authTimeoutSeconds", 5)),
        _opt(_n("recordResponseTimeoutSeconds", 5)),
        _opt(_m("transports", ("udp",), ("udp",))),
        *_LISTENER_OPTIONS,
        _opt(_s("authorizationUsernamePrefix")),
        _opt(_b("continueTraversalOnAuthReject", False)),
    ), _extensions_branches),
    NodeType("queue", "trigger", "queue events: Placed, Dispatch, Offline", (
        _req("ref"),
        _req("queueExtensions", doc="comma-separated operator extension numbers"),
    ), _fixed("Placed", "Dispatch", "Offline")),
    NodeType("aiTool", "trigger", "tool calls from a voice agent", (
        _req("ref"),
        _opt(_n("aiToolResponseTimeoutSeconds", 5)),
    ), _fixed("Request")),
)

_CONDITION = (
    Param("left", "any", ""),
    _e("operator", tuple(sorted({op for ops in CONDITION_OPERATORS.values() for op in ops})), NO_DEFAULT,
       required=True),
    Param("right", "any", ""),
    _e("type", tuple(CONDITION_OPERATORS), "any"),
)

_CORE: tuple[NodeType, ...] = (
    NodeType("core.if", "core", "route items by conditions to true or false", (
        _records("conditions", *_CONDITION),
        _e("combinator", ("and", "or"), "and"),
        _b("ignoreCase", False),
    ), _fixed("true", "false")),
    NodeType("core.switch", "core", "route items to one branch per rule", (
        _e("mode", ("rules", "expression"), "rules", static=True),
        _when(_records("rules",
                       _s("outputKey", "", unique=True, static=True),
                       _records("conditions", *_CONDITION),
                       _e("combinator", ("and", "or"), "and"),
                       static=True),
              When("mode", ("rules",))),
        _when(Param("fallbackOutput", "fallback", "none", static=True), When("mode", ("rules",))),
        _when(_s("renameFallbackOutput", "", static=True), When("mode", ("rules",))),
        _when(_b("ignoreCase", False), When("mode", ("rules",))),
        _when(_b("allMatchingOutputs", False), When("mode", ("rules",))),
        _when(_n("numberOutputs", 4, static=True), When("mode", ("expression",))),
        _when(Param("output", "any", NO_DEFAULT, required=True), When("mode", ("expression",))),
    ), _switch_branches),
    NodeType("core.set", "core", "set fields on the item", (
        _records("assignments",
                 _req("name", unique=True),
                 _e("type", ("string", "number", "boolean", "array", "object"), "string"),
                 Param("value", "any", "")),
        _b("includeOtherFields", False),
        _when(_e("include", ("all", "selected", "except"), "all"), When("includeOtherFields", (True,))),
        _when(_s("includeFields"), When("include", ("selected",))),
        _when(_s("excludeFields"), When("include", ("except",))),
        _opt(_b("dotNotation", True)),
        _opt(_b("ignoreConversionErrors", False)),
    ), _fixed(*RESULT)),
    NodeType("core.noop", "core", "pass items on unchanged", (), _fixed(*RESULT)),
)

OPS: Mapping[str, NodeType] = MappingProxyType({t.name: t for t in (*_ACTIONS, *_CORE)})
TRIGGERS: Mapping[str, NodeType] = MappingProxyType({t.name: t for t in _TRIGGERS})
ACTION_OPS = tuple(t.name for t in _ACTIONS)
CORE_OPS = tuple(t.name for t in _CORE)
TRIGGER_KINDS = tuple(TRIGGERS)


def node_type(op: str) -> NodeType:
    """The type of an action or core node; KeyError for an unknown op."""
    return OPS[op]


def trigger_type(kind: str) -> NodeType:
    """The type of a trigger kind; KeyError for an unknown kind."""
    return TRIGGERS[kind]
