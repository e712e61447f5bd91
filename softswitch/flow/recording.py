"""Global call recording (reference §5.5): `recording.start`, `recording.control`, and the
Recording branch of trunk and extensions triggers whose requests `respond.toRecord` answers.

A leg has at most one global recording: both directions, mono or split stereo, written as the
call goes (`media.recorders.CallRecorder`). It ends when the leg ends (`call_ended`), when a new
`recording.start` replaces it (`recording_restart`) or at shutdown (`daemon_shutdown`). It does
not hold the leg: the recording follows the call, never the other way round. A Recording branch
item carries a record request (`record_…`) that expires after the trigger's
`recordResponseTimeoutSeconds` if no `respond.toRecord` answers it.

A disk error (full or read-only recordings disk) stops the recording, not the call or the flow:
the node's Result is emitted as usual, the recording stays the leg's until it ends, and its final
result (and the call record) say `failed: true` with the error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..clock import TimerHandle
from ..media.recorders import CallRecorder
from ..sip.events import LegAnswered, LegEnded, LegEvent, LegMediaActive
from ..sip.legs import parse_party
from .engine import Activation, NodeFailed
from .items import ResponseHandle, resolve_leg_id

if TYPE_CHECKING:
    from ..sip.legs import Leg
    from .model import Flow, Trigger
    from .runtime import FlowEngine, FlowLeg

log = logging.getLogger("softswitch.flow.recording")

_RECORDING_FLAG = {"trunk": "enableCallRecording", "extensions": "extensionsEnableCallRecording"}
_WAV_RATES = range(8000, 48001)


@dataclass(frozen=True)
class RecordSettings:
    """What recording.start / respond.toRecord asked for, checked."""

    path: Path
    split: bool
    rate: int
    wait: bool


def settings_from(engine: "FlowEngine", a: Activation) -> RecordSettings:
    fmt = str(a.param("recordFileFormat", "wav") or "wav")
    if fmt != "wav":
        raise NodeFailed(f"recordFileFormat {fmt!r} is not supported for call recordings: they are written "
                         "as crash-safe WAV files as the call goes (use wav)")
    raw = str(a.param("recordFilePath") or "").strip()
    if not raw:
        raise NodeFailed("recordFilePath is empty: set the file the call recording is written to "
                         "(relative paths are under directories.recordings)")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = engine.ua.config.directories.recordings / path
    try:
        rate = int(a.param("recordWavSampleRate", 8000))
        bits = int(a.param("recordWavBitDepth", 16))
    except (TypeError, ValueError):
        raise NodeFailed("recordWavSampleRate and recordWavBitDepth must be numbers") from None
    if rate not in _WAV_RATES:
        raise NodeFailed(f"recordWavSampleRate {rate} is out of range (8000..48000 Hz)")
    if bits != 16:
        raise NodeFailed(f"recordWavBitDepth {bits} is not supported: call recordings are 16-bit PCM")
    return RecordSettings(path, bool(a.param("recordSplitChannels", False)), rate,
                          bool(a.param("waitForRecordingCompletion", False)))


class GlobalRecording:
    """One leg's call recording, from start to its final result."""

    def __init__(self, recordings: "Recordings", flow_leg: "FlowLeg", settings: RecordSettings) -> None:
        self.recordings = recordings
        self.flow_leg = flow_leg
        self.settings = settings
        self.final: dict[str, Any] | None = None
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        leg = flow_leg.leg
        owner = f"leg {flow_leg.id} (call-id {leg.call_id})" if getattr(leg, "call_id", None) else f"leg {flow_leg.id}"
        try:
            self.recorder = CallRecorder(recordings.engine.ua, settings.path, split=settings.split,
                                         rate=settings.rate, owner=owner)
        except (OSError, RuntimeError) as exc:
            raise NodeFailed(f"cannot record to {settings.path}: {exc}") from None
        if leg.slot is not None:
            try:
                self.recorder.attach(leg.slot)
            except RuntimeError as exc:
                self.recorder.close()
                raise NodeFailed(f"cannot tap leg {flow_leg.id} for recording: {exc}") from None
        self._unsubscribe = leg.subscribe(self._on_leg_event)

    @property
    def leg_id(self) -> str:
        return self.flow_leg.id

    def _on_leg_event(self, event: LegEvent) -> None:
        if isinstance(event, LegMediaActive):
            self.recorder.attach(event.slot)
        elif isinstance(event, LegEnded):
            self.finish("call_ended")

    def finish(self, reason: str) -> dict[str, Any]:
        """Finalize the file once; listeners (waiting nodes) get the final result."""
        if self.final is not None:
            return self.final
        self._unsubscribe()
        result = self.recorder.close()
        self.final = {
            "legId": self.leg_id, "filePath": str(result.path), "eventType": "completed", "reason": reason,
            "durationMs": result.duration_ms, "bytesProduced": result.bytes_produced,
            "recordFileFormat": "wav", "recordSplitChannels": self.settings.split,
        }
        self.recordings._ended(self)
        path = str(result.path)
        if result.failure is not None:  # a disk error stopped it earlier (logged then, once)
            self.final.update(failed=True, error=result.failure.error)
            log.info("%s: call recording %s ended (%s) after a disk error: %.1f s kept%s", self.leg_id, path,
                     reason, result.duration_ms / 1000, ", no file" if result.removed else "")
            self.recordings.failed += 1
            self.recordings.engine.tell(lambda o: o.recording_failed(self.leg_id, path, result.failure.error))
        else:
            log.info("%s: call recording %s finalized (%s): %.1f s", self.leg_id, path, reason,
                     result.duration_ms / 1000)
        if not result.removed:
            self.recordings.engine.tell(lambda o: o.recording_finished(self.leg_id, path))
        for listener in list(self.listeners):
            listener(self.final)
        return self.final


@dataclass
class RecordRequest:
    """A Recording branch item waiting for its respond.toRecord."""

    id: str
    leg_id: str
    timer: TimerHandle


class Recordings:
    """The global recordings and pending record requests of one FlowEngine (UA thread only)."""

    def __init__(self, engine: "FlowEngine") -> None:
        self.engine = engine
        self.by_leg: dict[str, GlobalRecording] = {}
        self.requests: dict[str, RecordRequest] = {}
        self.finished = 0  # recordings finalized so far (metrics)
        self.failed = 0  # of those, stopped by a disk error

    # ---- recordings ----------------------------------------------------------------------
    def start(self, flow_leg: "FlowLeg", settings: RecordSettings) -> GlobalRecording:
        """Start the leg's recording; a running one is finalized first (`recording_restart`)."""
        old = self.by_leg.get(flow_leg.id)
        if old is not None:
            old.finish("recording_restart")
        recording = GlobalRecording(self, flow_leg, settings)
        self.by_leg[flow_leg.id] = recording
        if recording.recorder.failure is None:  # else its error line said it all
            log.info("%s: call recording to %s (%s)", flow_leg.id, settings.path,
                     "split channels" if settings.split else "mono")
        return recording

    def _ended(self, recording: GlobalRecording) -> None:
        self.finished += 1
        if self.by_leg.get(recording.leg_id) is recording:
            del self.by_leg[recording.leg_id]

    def control(self, flow_leg: "FlowLeg", action: str) -> None:
        recording = self.by_leg.get(flow_leg.id)
        if recording is None:
            raise NodeFailed(f"leg {flow_leg.id} has no global recording to {action} "
                             "(start one with recording.start or respond.toRecord)")
        if action == "pause":
            recording.recorder.pause()
        elif action == "resume":
            recording.recorder.resume()
        else:
            raise NodeFailed(f"unknown recordingControlAction {action!r} (pause or resume)")

    # ---- the Recording branch ----------------------------------------------------------------
    def offer(self, flow: "Flow", trigger: "Trigger", leg: "Leg", extension: str | None = None) -> str | None:
        """Fire the trigger's Recording branch for a new leg if the trigger records calls;
        returns the record request id."""
        flag = _RECORDING_FLAG.get(trigger.kind)
        if flag is None or not trigger.get(flag) or "Recording" not in trigger.branches:
            return None
        request_id = self.engine.ua.ids.new("record")
        timeout = float(trigger.get("recordResponseTimeoutSeconds", 5) or 5)
        timer = self.engine.ua.timers.schedule(timeout, lambda: self._expire(request_id), f"record-request:{request_id}")
        self.requests[request_id] = RecordRequest(request_id, leg.id, timer)
        payload = record_payload(leg, trigger.kind, trigger.ref, request_id, extension)
        self.engine.runner.fire(flow, trigger, "Recording", payload,
                                {"ref": trigger.ref, "legId": leg.id, "recordRequestId": request_id},
                                handle=ResponseHandle("record", request_id))
        return request_id

    def take_request(self, request_id: str) -> RecordRequest:
        request = self.requests.pop(request_id, None)
        if request is None:
            raise NodeFailed(f"unknown or expired record request {request_id!r} (requests expire after the "
                             "trigger's recordResponseTimeoutSeconds, 5 s by default)")
        request.timer.cancel()
        return request

    def _expire(self, request_id: str) -> None:
        if self.requests.pop(request_id, None) is not None:
            log.info("%s: record request expired without respond.toRecord: not recorded", request_id)

    def watch_outbound(self, flow_leg: "FlowLeg") -> None:
        """An outbound dial leg: when it answers, offer it to the Recording branch of the trigger
        its trunk or extension belongs to (if that trigger records calls)."""
        leg = flow_leg.leg
        state: dict[str, Callable[[], None]] = {}

        def on_event(event: LegEvent) -> None:
            if isinstance(event, (LegAnswered, LegEnded)):
                state["unsubscribe"]()
            if isinstance(event, LegAnswered):
                self._offer_outbound(leg)

        state["unsubscribe"] = leg.subscribe(on_event)

    def _offer_outbound(self, leg: "Leg") -> None:
        dialer = self.engine.ua.dialer
        target = dialer.target_of(leg.id) if dialer is not None else None
        if target is None:
            return
        extension = None
        if target.kind == "trunk":
            kind, ref = "trunk", target.ref
        elif target.kind == "extension":
            kind, extension = "extensions", target.ref
            username = target.endpoint[0] if target.endpoint else None
            ref = next((group for group, users in self.engine.ua.config.extension_users.items()
                        if any(u.username == username or (username is None and u.extension == extension)
                               for u in users)), None)
            if ref is None:
                return
        else:
            return
        match = next(((f, t) for f in self.engine.flows for t in f.triggers_of(kind) if t.ref == ref), None)
        if match is not None:
            self.offer(match[0], match[1], leg, extension)

    # ---- the end ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        for request in self.requests.values():
            request.timer.cancel()
        self.requests.clear()
        for recording in list(self.by_leg.values()):
            recording.finish("daemon_shutdown")


def record_payload(leg: "Leg", kind: str, ref: str, request_id: str, extension: str | None) -> dict[str, Any]:
    """The Recording branch payload (§2.4): who called whom, from the leg's point of view."""
    if leg.direction == "inbound":
        from_uri, to_uri = leg.remote_uri, leg.local_uri
    else:
        from_uri, to_uri = leg.local_uri, leg.remote_uri
    caller_number, caller_name = parse_party(from_uri)
    called_number, called_name = parse_party(to_uri)
    payload: dict[str, Any] = {
        "eventType": "record", "recordRequestId": request_id, "kind": kind, "ref": ref, "legId": leg.id,
        "callId": leg.call_id, "direction": leg.direction, "from": from_uri, "callerNumber": caller_number,
        "callerName": caller_name, "to": to_uri, "calledNumber": called_number, "calledName": called_name,
    }
    if extension is not None:
        payload["extension"] = extension
    return payload


def emit_started(a: Activation, recording: GlobalRecording, payload: Mapping[str, Any],
                 sip_pbx: Mapping[str, Any]) -> None:
    """Result now, or (waitForRecordingCompletion) once the recording is finalized, with its
    final result merged in."""
    if not recording.settings.wait:
        failure = recording.recorder.failure
        if failure is not None:  # the disk refused the file at once: the flow goes on, told so
            payload = {**payload, "failed": True, "error": failure.error}
        a.emit("Result", payload, sip_pbx)
        return
    if recording.final is not None:
        a.emit("Result", {**payload, **recording.final}, sip_pbx)
        return
    recording.listeners.append(lambda final: a.emit("Result", {**payload, **final}, sip_pbx))


# ---- nodes ----------------------------------------------------------------------------------
def register(engine: "FlowEngine") -> None:
    engine.runner.register("recording.start", lambda a: _start(engine, a))
    engine.runner.register("recording.control", lambda a: _control(engine, a))


def _start(engine: "FlowEngine", a: Activation) -> None:
    flow_leg = engine.leg(resolve_leg_id(a.item, a.options))
    settings = settings_from(engine, a)
    recording = engine.recordings.start(flow_leg, settings)
    emit_started(a, recording, {"legId": flow_leg.id, "filePath": str(settings.path)}, {"legId": flow_leg.id})


def _control(engine: "FlowEngine", a: Activation) -> None:
    flow_leg = engine.leg(resolve_leg_id(a.item, a.options))
    action = str(a.param("recordingControlAction", "pause") or "pause")
    ticket = flow_leg.retention.acquire(f"action:{a.node.name}")  # held only while it runs
    try:
        engine.recordings.control(flow_leg, action)
    finally:
        ticket.release()
    a.emit("Result", {"legId": flow_leg.id, "action": action}, {"legId": flow_leg.id})
