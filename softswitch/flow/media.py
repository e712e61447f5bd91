"""Media nodes: play audio files, stop media, wait for media (reference §5.1–§5.4).

A `MediaOp` is one playback on one leg, with an id (`media_…`) flows can stop or wait on. It
ends once, as `completed` or `interrupted` with a reason (`call_dtmf`, `media_stopped`,
`media_replaced`, `call_ended`), and its final event is kept 5 s for late waits. Blocking
playbacks hold the leg; background ones do not. DTMF on a leg interrupts every playback there
that listens for it; while only deaf blocking playbacks run, digits are swallowed.
Tones, recordings, HTTP and binary sources, voice interruption and ducking are still to come.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..media.players import PromptPlayer
from ..sip.events import LegDtmf, LegEnded, LegEvent, LegMediaActive
from .engine import Activation, NodeFailed
from .items import resolve_leg_id, resolve_media_id, resolve_wait_ids

if TYPE_CHECKING:
    from .runtime import FlowEngine, FlowLeg


@dataclass(frozen=True)
class MediaEnded:
    media_id: str
    leg_id: str
    status: str  # completed | interrupted
    reason: str | None = None
    digit: str | None = None

    def payload(self) -> dict:
        out: dict = {"mediaId": self.media_id, "legId": self.leg_id}
        if self.status == "interrupted":
            out["interruptReason"] = self.reason
            if self.digit:
                out["digit"] = self.digit
        return out


class MediaOp:
    def __init__(self, engine: "FlowEngine", flow_leg: "FlowLeg", path: Path, *, blocking: bool,
                 interrupt_dtmf: bool) -> None:
        self.engine = engine
        self.flow_leg = flow_leg
        self.id = engine.ua.ids.new("media")
        self.path = path
        self.blocking = blocking
        self.interrupt_dtmf = interrupt_dtmf
        self.player: PromptPlayer | None = None
        self.ended: MediaEnded | None = None
        self.listeners: list[Callable[[MediaEnded], None]] = []
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        leg = self.flow_leg.leg
        leg.early_media()  # a no-op unless the leg is inbound and unanswered
        if leg.slot is not None:
            self._play(leg.slot)
        else:
            self._unsubscribe = leg.subscribe(self._on_leg_event)

    def _on_leg_event(self, event: LegEvent) -> None:
        if isinstance(event, LegMediaActive) and self.player is None and self.ended is None:
            self._play(event.slot)

    def _play(self, slot: int) -> None:
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        self.player = PromptPlayer(self.engine.ua, self.path, on_done=lambda _: self.finish("completed"))
        self.player.play_to(slot)

    def finish(self, status: str, reason: str | None = None, digit: str | None = None) -> None:
        if self.ended is not None:
            return
        self.ended = MediaEnded(self.id, self.flow_leg.id, status, reason, digit)
        if self.player is not None:
            self.player.stop()
        if self._unsubscribe:
            self._unsubscribe()
        self.engine.media.pop(self.id, None)
        self.engine.media_snapshots.put(self.id, self.ended)
        for listener in list(self.listeners):
            listener(self.ended)


def register(engine: "FlowEngine") -> None:
    engine.runner.register("media.playAudio", lambda a: _play_audio(engine, a))
    engine.runner.register("media.stopMedia", lambda a: _stop_media(engine, a))
    engine.runner.register("media.wait", lambda a: _wait_media(engine, a))


def on_leg_event(engine: "FlowEngine", flow_leg: "FlowLeg", event: LegEvent) -> bool:
    """Media's part of a leg event; returns False when a DTMF digit is swallowed."""
    ops = [op for op in engine.media.values() if op.flow_leg is flow_leg]
    if isinstance(event, LegEnded):
        for op in ops:
            op.finish("interrupted", "call_ended")
        return True
    if isinstance(event, LegDtmf) and ops:
        for op in ops:
            if op.interrupt_dtmf:
                op.finish("interrupted", "call_dtmf", event.digit)
        blocking = [op for op in ops if op.blocking]
        if blocking and not any(op.interrupt_dtmf for op in blocking):
            return False
    return True


def _prompt_path(engine: "FlowEngine", value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = engine.ua.config.directories.prompts / path
    if not path.is_file():
        raise NodeFailed(f"audio file not found: {path}")
    return path


def _play_audio(engine: "FlowEngine", a: Activation) -> None:
    source = a.param("sourceType", "binary")
    if source != "file":
        raise NodeFailed(f"media.playAudio sourceType {source!r} is not supported yet (use file)")
    flow_leg = engine.leg(resolve_leg_id(a.item, a.options))
    path = _prompt_path(engine, str(a.param("filePath") or ""))
    if a.param("stopOtherMedia", False):
        for op in [op for op in engine.media.values() if op.flow_leg is flow_leg]:
            op.finish("interrupted", "media_replaced")
    blocking = a.param("mediaExecutionMode", "blocking") == "blocking"
    interrupt_on = set(a.param("interruptOn") or ())
    op = MediaOp(engine, flow_leg, path, blocking=blocking, interrupt_dtmf="dtmf" in interrupt_on)
    engine.media[op.id] = op
    sip_pbx = {"legId": flow_leg.id, "mediaId": op.id}
    if not blocking:
        op.start()
        a.emit("Result", {"mediaId": op.id, "legId": flow_leg.id}, sip_pbx)
        return
    ticket = flow_leg.retention.acquire(f"media:{op.id}")

    def done(ended: MediaEnded) -> None:
        ticket.release()
        a.emit("Completed" if ended.status == "completed" else "Interrupted", ended.payload(), sip_pbx)

    op.listeners.append(done)
    op.start()


def _stop_media(engine: "FlowEngine", a: Activation) -> None:
    if a.param("stopMediaTarget", "mediaId") == "legId":
        leg_id = resolve_leg_id(a.item, a.options)
        for op in [op for op in engine.media.values() if op.flow_leg.id == leg_id]:
            op.finish("interrupted", "media_stopped")
        a.emit("Result", {"legId": leg_id or ""}, {"legId": leg_id})
        return
    media_id = resolve_media_id(a.item, a.options)
    op = engine.media.get(media_id or "")
    if op is None and engine.media_snapshots.get(media_id or "") is None:
        raise NodeFailed(f"unknown media {media_id!r}")
    leg_id = op.flow_leg.id if op else engine.media_snapshots.get(media_id).leg_id  # type: ignore[union-attr]
    if op is not None:
        op.finish("interrupted", "media_stopped")
    a.emit("Result", {"mediaId": media_id, "legId": leg_id}, {"mediaId": media_id, "legId": leg_id})


def _wait_media(engine: "FlowEngine", a: Activation) -> None:
    ids = resolve_wait_ids(a.item, [x for x in (a.param("mediaIds") or ()) if x], "mediaId")
    if not ids:
        raise NodeFailed("media.wait has no media id (set Media IDs, or pass an item with mediaId)")
    for media_id in ids:
        snapshot = engine.media_snapshots.get(media_id)
        if snapshot is not None:
            a.emit("Completed" if snapshot.status == "completed" else "Interrupted", snapshot.payload())
            return
        if media_id not in engine.media:
            raise NodeFailed(f"unknown media {media_id!r}")
    timeout = float(a.param("waitMediaTimeoutSeconds", 30)) or 30.0
    ops = [engine.media[i] for i in ids]
    tickets = [op.flow_leg.retention.acquire(f"media-wait:{op.id}") for op in ops]
    state: dict = {}

    def resolve(branch: str, payload: dict) -> None:
        if state.get("done"):
            return
        state["done"] = True
        timer.cancel()
        for op in ops:
            if listener in op.listeners:
                op.listeners.remove(listener)
        for ticket in tickets:
            ticket.release()
        a.emit(branch, payload)

    def listener(ended: MediaEnded) -> None:
        resolve("Completed" if ended.status == "completed" else "Interrupted", ended.payload())

    timer = engine.ua.timers.schedule(timeout, lambda: resolve("Timeout", {}), "media.wait")
    for op in ops:
        op.listeners.append(listener)
