"""Media nodes (reference §5.1–§5.4): play audio and tones, record, stop, wait, send DTMF.

A `MediaOp` is one playback, tone or recording on one leg, with an id (`media_…`) flows can
stop or wait on. It ends once — `completed`, `failed` (shown as Completed with failed:true) or
`interrupted` with a reason (`call_dtmf`, `media_voice`, `media_silence`, `media_stopped`,
`media_replaced`, `call_ended`, `call_bridge_joined`) — and its final event is kept 5 s for late
waits. Blocking ops hold the leg; background ones do not. Playing or recording on an unanswered
inbound leg sends 183 first (early media).

Audio paths, and why they are cheap for hundreds of legs:
* Playback: every source ends as an 8 kHz WAV that a pjmedia player reads on the clock thread.
  Files pjmedia reads are played as they are; HTTP and binary sources, and files of other
  formats or rates, are fetched, decoded and resampled on a worker thread (never the UA
  thread) into a temporary WAV that is unlinked as soon as the player has it open. Tones are
  rendered once per cadence (`ToneLibrary`) and looped by the player for "repeat forever".
* Inbound audio (recordings, voice barge-in) comes from an `AudioTap` on the leg: a native
  frame port that keeps the newest second in C. Legs of flows that contain `media.recordAudio`
  get one when their media starts, so a recording has its 1 s pre-roll; anything else gets one
  on demand. A tap costs Python work only while a recording or voice detector reads it.
* Ducking (§5.2): gains are set per bridge connection (`bridge.adjust_level`), for each
  playback → leg and for the bridged peer → leg; nothing is mixed in Python. Approximations:
  every playback has priority 0 (so the order is newest first), pjmedia applies levels in
  steps of 1/128, and when the sum into a leg overflows the bridge's own limiter lowers it.

media.sendDtmf publishes each digit as a dtmf event on the leg (interrupting DTMF-interruptible
playbacks there and reaching waits) but does not relay it to a bridged peer: bridges relay only
what the remote side sends.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import queue
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import soundfile as sf

from ..media import bridge as conf
from ..media import transcode
from ..media.frameport import AudioTap
from ..media.players import PromptPlayer
from ..media.tones import ToneLibrary, ToneSyntaxError, dtmf_samples, parse_tone, write_pcm_wav
from ..media.vad import SilenceDetector, VoiceDetector
from ..media.health import RecordingFailure, RecordingHealth, describe, is_disk_error
from ..media.wavfile import StreamingWav
from ..sip.events import LegDtmf, LegEnded, LegEvent, LegMediaActive
from .catalog import DTMF_DIGITS, TONE_PRESETS
from .engine import Activation, NodeFailed
from .items import resolve_leg_id, resolve_media_id, resolve_wait_ids

if TYPE_CHECKING:
    from .runtime import FlowEngine, FlowLeg

log = logging.getLogger("softswitch.flow.media")

PREROLL_FRAMES = 50  # 1 s of 20 ms frames recorded before a recording starts (§5.3)
HTTP_TIMEOUT_S = 30.0
HTTP_MAX_BYTES = 64 * 1024 * 1024
FRAME_S = 0.02


# ---------------------------------------------------------------------------------------------
# Media operations
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MediaEnded:
    """The final event of a media op (also its terminal snapshot)."""

    media_id: str
    leg_id: str
    status: str  # completed | failed | interrupted
    reason: str | None = None
    digit: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # filePath, durationMs, bytesProduced
    binary: Mapping[str, Any] | None = None  # recordings with output type binary

    @property
    def branch(self) -> str:
        return "Interrupted" if self.status == "interrupted" else "Completed"

    def payload(self) -> dict:
        out: dict = {"mediaId": self.media_id, "legId": self.leg_id}
        if self.status == "failed":
            out["failed"] = True
        if self.status == "interrupted":
            out["interruptReason"] = self.reason
            if self.digit:
                out["digit"] = self.digit
        out.update(self.details)
        return out


class MediaOp:
    """One media operation on one leg; subclasses say what happens once the leg has a slot."""

    kind = "media"

    def __init__(self, res: "MediaResource", flow_leg: "FlowLeg", *, blocking: bool, interrupt_dtmf: bool) -> None:
        self.res = res
        self.engine = res.engine
        self.flow_leg = flow_leg
        self.id = res.ua.ids.new("media")
        self.seq = res.next_seq()  # start order: newer playbacks duck older ones
        self.blocking = blocking
        self.interrupt_dtmf = interrupt_dtmf
        self.slot: int | None = None
        self.closing = False
        self.ended: MediaEnded | None = None
        self.listeners: list[Callable[[MediaEnded], None]] = []

    @property
    def live(self) -> bool:
        return not self.closing

    def start(self) -> None:
        leg = self.flow_leg.leg
        leg.early_media()  # a no-op unless the leg is inbound and unanswered
        if leg.slot is not None:
            self.attach(leg.slot)

    def attach(self, slot: int) -> None:
        """The leg's audio is (now) at `slot`: first media, or a re-INVITE moved it."""
        if not self.live or slot == self.slot:
            return
        previous, self.slot = self.slot, slot
        self.on_slot(slot, previous)

    def on_slot(self, slot: int, previous: int | None) -> None:
        raise NotImplementedError

    def finish(self, status: str, reason: str | None = None, digit: str | None = None) -> None:
        """End the op (idempotent). `status` is completed | failed | interrupted."""
        if self.closing:
            return
        self.closing = True
        self.stop_audio()
        self.finalize(status, reason, digit)

    def stop_audio(self) -> None:
        """Release players, taps and timers (no result yet)."""

    def finalize(self, status: str, reason: str | None, digit: str | None) -> None:
        self.conclude(MediaEnded(self.id, self.flow_leg.id, status, reason, digit))

    def conclude(self, ended: MediaEnded) -> None:
        if self.ended is not None:
            return
        self.ended = ended
        self.engine.media.pop(self.id, None)
        self.engine.media_snapshots.put(self.id, ended)
        self.res.mix(self.flow_leg)
        if self.kind == "recording" and ended.details.get("filePath"):  # call records list the file
            self.engine.tell(lambda o: o.recording_finished(ended.leg_id, str(ended.details["filePath"])))
        log.info("%s %s on %s ended: %s%s%s", self.kind, self.id, self.flow_leg.id, ended.status,
                 f" ({ended.reason})" if ended.reason else "", f" {dict(ended.details)}" if ended.details else "")
        for listener in list(self.listeners):
            listener(ended)


@dataclass
class PlaybackSource:
    """Where a playback's audio comes from: a file pjmedia reads now, or a loader that makes
    one on a worker thread (HTTP, binary, foreign formats). `temporary` files are unlinked once
    the player has them open."""

    path: Path | None = None
    loader: Callable[[], Path] | None = None
    temporary: bool = False
    describe: str = ""


class Playback(MediaOp):
    """A prompt or a tone into the leg's slot, with DTMF/voice interruption and a ducking factor."""

    def __init__(self, res: "MediaResource", flow_leg: "FlowLeg", source: PlaybackSource, *, kind: str,
                 blocking: bool, interrupt_dtmf: bool, loop: bool = False, ducking: float = 1.0,
                 voice: tuple[float, float] | None = None) -> None:
        super().__init__(res, flow_leg, blocking=blocking, interrupt_dtmf=interrupt_dtmf)
        self.kind = kind
        self.source = source
        self.loop = loop
        self.ducking = max(0.0, float(ducking))
        self.voice = voice
        self.player: PromptPlayer | None = None
        self.level = 1.0
        self.connected: int | None = None
        self._voice_consumer: Callable[[np.ndarray], None] | None = None
        self._tap: AudioTap | None = None

    def start(self) -> None:
        super().start()
        if self.source.loader is not None:
            loader = self.source.loader
            self.res.in_worker(loader, self._loaded)

    def _loaded(self, path: Path | None, error: BaseException | None) -> None:
        if error is not None:
            if path is not None:
                Path(path).unlink(missing_ok=True)
            if self.live:
                log.warning("%s %s on %s failed: %s", self.kind, self.id, self.flow_leg.id, error)
                self.finish("failed")
            return
        if not self.live:
            Path(path).unlink(missing_ok=True)  # type: ignore[arg-type]
            return
        self.source.path = path
        self._maybe_play()

    def on_slot(self, slot: int, previous: int | None) -> None:
        if self.player is not None and self.connected is not None:
            self.player.play_to(slot, self.level)  # the old slot went with the old stream
            self.connected = slot
            if self._tap is not None:
                self._tap.attach(slot)
            return
        self._maybe_play()

    def _maybe_play(self) -> None:
        if not self.live or self.player is not None or self.slot is None or self.source.path is None:
            return
        try:
            self.player = PromptPlayer(self.res.ua, self.source.path, loop=self.loop,
                                       on_done=lambda _p: self.finish("completed"),
                                       unlink=self.source.temporary)
        except (ValueError, FileNotFoundError) as exc:
            log.warning("%s %s on %s cannot play %s: %s", self.kind, self.id, self.flow_leg.id,
                        self.source.describe or self.source.path, exc)
            self.finish("failed")
            return
        self.res.mix(self.flow_leg)  # sets self.level before the first frame is heard
        self.player.play_to(self.slot, self.level)
        self.connected = self.slot
        if self.voice is not None:
            threshold, duration_ms = self.voice
            detector = VoiceDetector(threshold, duration_ms, self.res.rate)

            def on_frame(frame: np.ndarray) -> None:
                if detector.feed(frame):
                    self.finish("interrupted", "media_voice")

            self._voice_consumer = on_frame
            self._tap = self.res.tap(self.flow_leg, self.slot)
            self._tap.add_consumer(on_frame)
            self.res.watch()

    def set_level(self, level: float) -> None:
        if self.player is not None and self.connected is not None and abs(level - self.level) > 1e-6:
            try:
                self.player.set_level(self.connected, level)
            except RuntimeError as exc:
                log.debug("%s: level change failed: %s", self.id, exc)
        self.level = level

    def stop_audio(self) -> None:
        if self._tap is not None and self._voice_consumer is not None:
            self._tap.remove_consumer(self._voice_consumer)
        self._tap = self._voice_consumer = None
        if self.player is not None:
            self.player.stop()
        self.connected = None


@dataclass(frozen=True)
class RecordOptions:
    """media.recordAudio's parameters, validated (a bad value fails the node, not the call)."""

    max_seconds: float
    fmt: str
    output: str  # binary | file | http
    binary_property: str
    file_path: Path | None
    http_url: str
    http_method: str
    http_headers: tuple[tuple[str, str], ...]
    wav_rate: int
    wav_bits: int
    compressed_rate: int
    compressed_kbps: float
    silence: tuple[float, float] | None  # (threshold, duration ms)

    def direct(self, bridge_rate: int) -> bool:
        """Written straight to its final file, as crash-safe PCM16 at the bridge rate."""
        return self.output == "file" and self.fmt == "wav" and self.wav_bits == 16 and self.wav_rate == bridge_rate


class Recording(MediaOp):
    """The leg's inbound audio (with up to 1 s of pre-roll) into a file, a binary or an upload."""

    kind = "recording"

    def __init__(self, res: "MediaResource", flow_leg: "FlowLeg", opts: RecordOptions, *, blocking: bool,
                 interrupt_dtmf: bool) -> None:
        super().__init__(res, flow_leg, blocking=blocking, interrupt_dtmf=interrupt_dtmf)
        self.opts = opts
        self.direct = opts.direct(res.rate)
        self.target: Path = opts.file_path if self.direct else res.scratch / f"{self.id}.wav"  # type: ignore[assignment]
        self.failure: RecordingFailure | None = None  # a disk error ended it (failed: true)
        self._open_error: OSError | None = None
        self._health: RecordingHealth = res.ua.recording_health
        self._token = self._health.opened()
        self.wav: StreamingWav | None = None
        try:
            self.wav = StreamingWav(self.target, res.rate)
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            self._open_error = exc  # reported when the op starts: Completed with failed: true
        self._holder = res.ua.keep(_WavHolder(self.wav))  # finalized by the UA at shutdown too
        self.preroll_frames = 0
        self.live_frames = 0
        self._tap: AudioTap | None = None
        self._silence: SilenceDetector | None = None
        self._guard = None

    def on_slot(self, slot: int, previous: int | None) -> None:
        if self._open_error is not None:
            self._disk_failed(self._open_error, "could not create the file")
            return
        if self._tap is not None:
            self._tap.attach(slot)
            return
        tap = self._tap = self.res.tap(self.flow_leg, slot)
        pre = tap.preroll()
        self.preroll_frames = pre.size // tap.spf
        if not self._write(pre):
            return
        now = self.res.ua.clock.now()
        if self.opts.silence is not None:
            self._silence = SilenceDetector(*self.opts.silence, start=now)
        tap.add_consumer(self._on_frame)
        self.res.tickers.add(self)
        self.res.watch()
        if self.opts.max_seconds > 0:  # frames decide; this only ends a recording whose audio stopped
            self._guard = self.res.ua.timers.schedule(self.opts.max_seconds + 2.0,
                                                      lambda: self.finish("completed"), f"record {self.id}")

    def _on_frame(self, frame: np.ndarray) -> None:
        if not self.live or not self._write(frame):
            return
        self.live_frames += 1
        if self._silence is not None:
            self._silence.feed(frame, self.res.ua.clock.now())
        if self.opts.max_seconds > 0 and self.live_frames * FRAME_S >= self.opts.max_seconds - 1e-9:
            self.finish("completed")

    def tick(self, now: float) -> None:
        """Every loop turn (the reference's 20 ms ticker): silence counts even with no frames."""
        if self.live and self._silence is not None and self._silence.expired(now):
            self.finish("interrupted", "media_silence")

    def stop_audio(self) -> None:
        if self._tap is not None:
            self._tap.remove_consumer(self._on_frame)
            self._tap = None
        self.res.tickers.discard(self)
        if self._guard is not None:
            self._guard.cancel()

    def _write(self, samples: np.ndarray) -> bool:
        """Audio into the file; False (and the op failed) if the disk refused it."""
        assert self.wav is not None
        try:
            self.wav.write(samples)
        except OSError as exc:
            self._disk_failed(exc, "could not write")
            return False
        if self.wav.header_updated and self._token is not None:
            self._health.wrote(self._token)
            self._token = None  # reported once
        return True

    def _disk_failed(self, exc: OSError, doing: str) -> None:
        """A full or read-only disk: one error line, what was written kept as a valid WAV (no
        file if nothing was), Completed with failed: true. The call goes on."""
        kept = "no file is left"
        if self.wav is not None:
            try:
                self.wav.close(remove_empty=True)
                if not self.wav.removed:
                    kept = f"the file is a valid WAV of the {self.wav.seconds:.1f} s written"
            except OSError as header_exc:
                kept = f"its header could not be finalized either ({describe(header_exc)}); the next start repairs it"
        leg = self.flow_leg.leg
        owner = f"leg {self.flow_leg.id} (call-id {getattr(leg, 'call_id', '?')}), {self.id}"
        self.failure = self._health.failed(self.target, owner, exc)
        log.error("recording %s of %s stopped: %s: %s; %s; the call goes on", self.target, owner, doing,
                  self.failure.error, kept)
        self.finish("failed")

    def finalize(self, status: str, reason: str | None, digit: str | None) -> None:
        wav = self.wav
        self.res.ua.release(self._holder)
        if wav is not None and not wav.closed:
            try:
                wav.close()
            except OSError as exc:
                self.failure = self._health.failed(self.target, f"leg {self.flow_leg.id}, {self.id}", exc)
                log.error("recording %s of leg %s: could not finalize the header: %s; the next start repairs it",
                          self.target, self.flow_leg.id, self.failure.error)
        duration_ms = int(round(wav.seconds * 1000)) if wav is not None and not wav.removed else 0
        if self.failure is not None:
            status, reason = "failed", None
            failure, leg_id = self.failure, self.flow_leg.id
            self.engine.tell(lambda o: o.recording_failed(leg_id, str(self.target), failure.error))
            details: dict = {"durationMs": duration_ms, "error": failure.error}
            if self.direct and wav is not None and not wav.removed:
                details.update(filePath=str(self.target), bytesProduced=self.target.stat().st_size)
            self.conclude(MediaEnded(self.id, self.flow_leg.id, status, reason, digit, details))
            return
        if self.direct:
            details = {"filePath": str(self.target), "durationMs": duration_ms,
                       "bytesProduced": self.target.stat().st_size}
            self.conclude(MediaEnded(self.id, self.flow_leg.id, status, reason, digit, details))
            return
        opts, source, media_id, rate = self.opts, self.target, self.id, self.res.rate

        def produce() -> tuple[dict, dict | None]:
            return _produce_recording(opts, source, media_id, rate, duration_ms)

        def done(result: tuple[dict, dict | None] | None, error: BaseException | None) -> None:
            if error is not None:
                log.warning("recording %s on %s: %s", media_id, self.flow_leg.id, error)
                self.conclude(MediaEnded(media_id, self.flow_leg.id, "failed", None, None,
                                         {"durationMs": duration_ms}))
                return
            details, binary = result  # type: ignore[misc]
            self.conclude(MediaEnded(media_id, self.flow_leg.id, status, reason, digit, details, binary))

        self.res.in_worker(produce, done)


class _WavHolder:
    """Lets the UA close (and so finalize the header of) a recording still open at shutdown."""

    def __init__(self, wav: StreamingWav | None) -> None:
        self.wav = wav

    def close(self) -> None:
        if self.wav is not None:
            self.wav.close()


def _produce_recording(opts: RecordOptions, source: Path, media_id: str, rate: int,
                       duration_ms: int) -> tuple[dict, dict | None]:
    """Worker thread: the captured 8 kHz WAV → the requested format and destination."""
    try:
        pcm, _ = sf.read(source, dtype="int16")
        ext = opts.fmt
        kw = dict(wav_rate=opts.wav_rate, wav_bits=opts.wav_bits, compressed_rate=opts.compressed_rate,
                  bitrate_kbps=opts.compressed_kbps)
        details: dict = {"durationMs": duration_ms}
        if opts.output == "file":
            assert opts.file_path is not None
            opts.file_path.parent.mkdir(parents=True, exist_ok=True)
            transcode.encode_recording(pcm, rate, opts.file_path, opts.fmt, **kw)
            details.update(filePath=str(opts.file_path), bytesProduced=opts.file_path.stat().st_size)
            return details, None
        buf = io.BytesIO()
        transcode.encode_recording(pcm, rate, buf, opts.fmt, **kw)
        data = buf.getvalue()
        details["bytesProduced"] = len(data)
        mime = transcode.mime_type(opts.fmt)
        if opts.output == "http":
            status = _http_request(opts.http_url, opts.http_method, dict(opts.http_headers), data, mime)
            details["httpStatus"] = status
            return details, None
        binary = {opts.binary_property: {"data": base64.b64encode(data).decode("ascii"), "mimeType": mime,
                                         "fileName": f"{media_id}.{ext}", "fileExtension": ext}}
        return details, binary
    finally:
        source.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The media resource of one flow engine
# ---------------------------------------------------------------------------------------------

class MediaResource:
    """Per-engine media state: taps on legs, scratch files, tones, ducking, worker hand-off."""

    def __init__(self, engine: "FlowEngine") -> None:
        self.engine = engine
        self.ua = engine.ua
        self.rate = int(self.ua.config.media.clock_rate)
        self.taps: dict[str, AudioTap] = {}
        self.tickers: set[Recording] = set()
        self._seq = itertools.count(1)
        self._scratch: Path | None = None
        self._tones: ToneLibrary | None = None
        self._unpoll: Callable[[], None] | None = None
        self._peer_levels: dict[str, tuple[int, int, float]] = {}  # leg id → (peer slot, leg slot, level)
        self.workers = MediaWorkers()

    def next_seq(self) -> int:
        return next(self._seq)

    @property
    def scratch(self) -> Path:
        """A private temporary directory (tones, recordings being converted), removed at stop."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="softswitch-media-"))
            self.ua.keep(_ScratchDir(self._scratch))
        return self._scratch

    @property
    def tones(self) -> ToneLibrary:
        if self._tones is None:
            self._tones = ToneLibrary(self.scratch / "tones", self.rate)
        return self._tones

    def ops_of(self, flow_leg: "FlowLeg") -> list[MediaOp]:
        return [op for op in self.engine.media.values() if op.flow_leg is flow_leg and op.live]

    # ---- taps -------------------------------------------------------------------------------
    def wants_preroll(self) -> bool:
        """Whether legs need a tap from the start: some active flow records audio."""
        return any(node.op == "media.recordAudio" for flow in self.engine.flows for node in flow.nodes)

    def tap(self, flow_leg: "FlowLeg", slot: int) -> AudioTap:
        tap = self.taps.get(flow_leg.id)
        if tap is None:
            tap = self.taps[flow_leg.id] = AudioTap(self.ua, slot, name=f"tap-{flow_leg.id}",
                                                    history_frames=PREROLL_FRAMES)
        else:
            tap.attach(slot)
        return tap

    def watch(self) -> None:
        """Poll taps and tickers from the UA loop while any consumer is active."""
        if self._unpoll is None:
            self._unpoll = self.ua.add_poller(self._poll)

    def _poll(self) -> None:
        busy = False
        for tap in list(self.taps.values()):
            if tap.active:
                busy = True
                tap.poll()
        if self.tickers:
            busy = True
            now = self.ua.clock.now()
            for op in list(self.tickers):
                op.tick(now)
        if not busy and self._unpoll is not None:
            self._unpoll()
            self._unpoll = None

    # ---- leg events ------------------------------------------------------------------------
    def on_media_active(self, flow_leg: "FlowLeg", slot: int) -> None:
        if flow_leg.id in self.taps or self.wants_preroll():
            self.tap(flow_leg, slot)
        for op in self.ops_of(flow_leg):
            op.attach(slot)

    def on_leg_ended(self, flow_leg: "FlowLeg") -> None:
        tap = self.taps.pop(flow_leg.id, None)
        if tap is not None:
            tap.close()
        self._peer_levels.pop(flow_leg.id, None)

    # ---- ducking (§5.2 Mixing/ducking) -----------------------------------------------------
    def mix(self, flow_leg: "FlowLeg") -> None:
        """Gains of the leg's playbacks (newest first) and of its bridged peer, applied to the
        bridge connections into the leg."""
        playing = sorted((op for op in self.ops_of(flow_leg) if isinstance(op, Playback) and op.player is not None),
                         key=lambda op: op.seq, reverse=True)
        gains = duck_gains([op.ducking for op in playing])
        for op, gain in zip(playing, gains.playbacks):
            op.set_level(gain)
        self._set_peer_level(flow_leg, gains.peer)

    def _set_peer_level(self, flow_leg: "FlowLeg", level: float) -> None:
        bridges = getattr(self.engine, "bridges", None)
        br = bridges.of(flow_leg.id) if bridges is not None else None
        slots = getattr(br, "joined_slots", None) if br is not None else None
        leg_slot = flow_leg.leg.slot
        current = self._peer_levels.get(flow_leg.id)
        if not slots or leg_slot is None or leg_slot not in slots:
            self._peer_levels.pop(flow_leg.id, None)
            return
        peer_slot = slots[0] if slots[1] == leg_slot else slots[1]
        if current is not None and current[:2] == (peer_slot, leg_slot) and abs(current[2] - level) < 1e-6:
            return
        if current is None and abs(level - 1.0) < 1e-6:
            return
        try:
            conf.adjust_level(peer_slot, leg_slot, level)
        except RuntimeError as exc:
            log.debug("%s: peer level change failed: %s", flow_leg.id, exc)
            return
        if abs(level - 1.0) < 1e-6:
            self._peer_levels.pop(flow_leg.id, None)
        else:
            self._peer_levels[flow_leg.id] = (peer_slot, leg_slot, level)

    # ---- worker threads ----------------------------------------------------------------------
    def in_worker(self, job: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        """Run `job` on a worker thread (downloads, decoding, encoding, uploads); `done(result,
        error)` runs on the UA thread."""
        self.workers.submit(job, lambda result, error: self.ua.call_soon(done, result, error))


class MediaWorkers:
    """A few daemon threads for media I/O and CPU work, started on demand (at most `size`), so
    a burst of downloads never becomes hundreds of threads, and a hung server never delays exit."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, job: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        self._jobs.put((job, done))
        with self._lock:
            if self._idle == 0 and self._threads < self.size:
                self._threads += 1
                threading.Thread(target=self._run, name=f"media-io-{self._threads}", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job, done = self._jobs.get()
            with self._lock:
                self._idle -= 1
            try:
                result = job()
            except BaseException as exc:  # handed back to the UA thread
                done(None, exc)
                continue
            done(result, None)


class _ScratchDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class DuckGains:
    playbacks: tuple[float, ...]  # in the order given (newest first)
    peer: float


def duck_gains(factors: list[float]) -> DuckGains:
    """The reference's mix rule for playbacks ordered newest first (all priority 0): each gets
    (its factor if > 1 else 1) × the product of the factors ≤ 1 of the newer ones; the bridged
    peer gets the product of all factors ≤ 1; everything is divided by max(1, largest gain)."""
    gains = []
    product = 1.0
    for factor in factors:
        gains.append((factor if factor > 1 else 1.0) * product)
        if factor <= 1:
            product *= factor
    scale = 1.0 / max([1.0, *gains])
    return DuckGains(tuple(g * scale for g in gains), product * scale)


# ---------------------------------------------------------------------------------------------
# Node handlers
# ---------------------------------------------------------------------------------------------

def register(engine: "FlowEngine") -> None:
    res = MediaResource(engine)
    engine.media_resource = res  # type: ignore[attr-defined]  # read by on_leg_event
    engine.runner.register("media.playAudio", lambda a: _play_audio(res, a))
    engine.runner.register("media.playTone", lambda a: _play_tone(res, a))
    engine.runner.register("media.recordAudio", lambda a: _record_audio(res, a))
    engine.runner.register("media.stopMedia", lambda a: _stop_media(engine, a))
    engine.runner.register("media.wait", lambda a: _wait_media(engine, a))
    engine.runner.register("media.sendDtmf", lambda a: _send_dtmf(res, a))


def on_leg_event(engine: "FlowEngine", flow_leg: "FlowLeg", event: LegEvent) -> bool:
    """Media's part of a leg event; returns False when a DTMF digit is swallowed."""
    res: MediaResource | None = getattr(engine, "media_resource", None)
    if isinstance(event, LegMediaActive):
        if res is not None:
            res.on_media_active(flow_leg, event.slot)
        return True
    ops = [op for op in engine.media.values() if op.flow_leg is flow_leg and op.live]
    if isinstance(event, LegEnded):
        reason = "daemon_shutdown" if event.reason == "daemon_shutdown" else "call_ended"
        for op in ops:
            op.finish("interrupted", reason)
        if res is not None:
            res.on_leg_ended(flow_leg)
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


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    """HTTP headers from the node: a list of {name, value} (or a plain mapping)."""
    if not value:
        return ()
    if isinstance(value, Mapping):
        return tuple((str(k), str(v)) for k, v in value.items())
    out = []
    for entry in value:
        if isinstance(entry, Mapping) and entry.get("name"):
            out.append((str(entry["name"]), str(entry.get("value", ""))))
    return tuple(out)


def _no_credentials(a: Activation, key: str) -> None:
    mode = a.param(key, "none") or "none"
    if mode != "none":
        raise NodeFailed(f"{key} {mode!r}: n8n credentials do not exist in softswitch; "
                         "send the authorization as a header instead (e.g. Authorization: Bearer …)")


def _http_request(url: str, method: str, headers: Mapping[str, str], body: bytes | None = None,
                  content_type: str | None = None) -> Any:
    """Worker thread: one HTTP request; returns the body (GET-like) or the status (uploads)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    hdrs = dict(headers)
    if content_type and not any(k.lower() == "content-type" for k in hdrs):
        hdrs["Content-Type"] = content_type
    data = body if body is not None else (b"" if method in ("POST", "PUT") else None)
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            if body is not None:
                return resp.status
            payload = resp.read(HTTP_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ValueError(f"{method} {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ValueError(f"{method} {url}: {getattr(exc, 'reason', exc)}") from None
    if len(payload) > HTTP_MAX_BYTES:
        raise ValueError(f"{method} {url}: more than {HTTP_MAX_BYTES // (1024 * 1024)} MB of audio")
    return payload


def _pjmedia_reads(path: Path) -> bool:
    """Whether pjmedia's WAV player takes this file as it is (mono PCM16 at 8 or 16 kHz)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return False
    return (info.format == "WAV" and info.subtype == "PCM_16" and info.channels == 1
            and info.samplerate in (8000, 16000))


def _decoded_source(res: MediaResource, what: str, fetch: Callable[[], bytes]) -> PlaybackSource:
    """A source decoded off the UA thread into a temporary bridge-rate WAV."""
    scratch, rate = res.scratch, res.rate
    name = f"play-{res.next_seq()}.wav"

    def load() -> Path:
        pcm = transcode.to_bridge_pcm(fetch(), rate, what)
        return write_pcm_wav(scratch / name, pcm, rate)

    return PlaybackSource(loader=load, temporary=True, describe=what)


def _playback_source(res: MediaResource, a: Activation) -> PlaybackSource:
    source = a.param("sourceType", "binary") or "binary"
    if source == "file":
        path = _prompt_path(res.engine, str(a.param("filePath") or ""))
        if _pjmedia_reads(path):
            return PlaybackSource(path=path, describe=str(path))
        return _decoded_source(res, str(path), path.read_bytes)
    if source == "http":
        url = str(a.param("playbackHttpUrl") or "").strip()
        if not url:
            raise NodeFailed("media.playAudio sourceType http needs playbackHttpUrl")
        _no_credentials(a, "playbackHttpAuthentication")
        method = str(a.param("playbackHttpMethod", "GET") or "GET").upper()
        if method not in ("GET", "POST", "PUT"):
            raise NodeFailed(f"playbackHttpMethod {method!r} is not GET, POST or PUT")
        headers = _headers(a.param("playbackHttpHeaders"))
        return _decoded_source(res, f"{method} {url}", lambda: _http_request(url, method, dict(headers)))
    if source == "binary":
        prop = str(a.param("binaryProperty", "data") or "data")
        entry = a.item.binary.get(prop) if a.item.binary else None
        data = entry.get("data") if isinstance(entry, Mapping) else entry
        if not isinstance(data, (str, bytes)) or not data:
            raise NodeFailed(f"the item has no binary property {prop!r} with base64 data to play")
        encoded = data

        def fetch() -> bytes:
            try:
                return base64.b64decode(encoded, validate=False)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"binary property {prop!r} is not base64: {exc}") from None

        return _decoded_source(res, f"binary property {prop!r}", fetch)
    raise NodeFailed(f"media.playAudio sourceType {source!r} is not binary, file or http")


def _stop_others(res: MediaResource, flow_leg: "FlowLeg") -> None:
    for op in res.ops_of(flow_leg):
        op.finish("interrupted", "media_replaced")


def _voice_options(a: Activation, interrupt_on: set) -> tuple[float, float] | None:
    if "voice" not in interrupt_on:
        return None
    return float(a.param("voiceThreshold", 0.02)), float(a.param("voiceDurationMs", 150))


def _start_op(res: MediaResource, a: Activation, op: MediaOp) -> None:
    """Register and start `op`; blocking ops hold the leg and emit when they end."""
    flow_leg = op.flow_leg
    res.engine.media[op.id] = op
    sip_pbx = {"legId": flow_leg.id, "mediaId": op.id}
    if not op.blocking:
        op.start()
        a.emit("Result", {"mediaId": op.id, "legId": flow_leg.id}, sip_pbx)
        return
    ticket = flow_leg.retention.acquire(f"media:{op.id}")

    def done(ended: MediaEnded) -> None:
        ticket.release()
        if ended.branch in a.node.branches:
            a.emit(ended.branch, ended.payload(), sip_pbx, binary=ended.binary)
        else:  # blocking + repeat forever has no Completed: only a failure can end it so
            a.fail(f"{op.kind} {op.id} ended {ended.status} with no branch for it")

    op.listeners.append(done)
    op.start()


def _playback_common(a: Activation) -> tuple[bool, set, float]:
    blocking = (a.param("mediaExecutionMode", "blocking") or "blocking") == "blocking"
    interrupt_on = set(a.param("interruptOn") or ())
    raw = a.param("duckingFactor", 1)
    try:
        ducking = 1.0 if raw in (None, "") else float(raw)
    except (TypeError, ValueError):
        raise NodeFailed(f"duckingFactor {raw!r} is not a number") from None
    if ducking < 0:
        raise NodeFailed(f"duckingFactor {ducking} is negative (1 = plain mix, 0.3 = lower the rest to 30%)")
    return blocking, interrupt_on, ducking


def _play_audio(res: MediaResource, a: Activation) -> None:
    flow_leg = res.engine.leg(resolve_leg_id(a.item, a.options))
    source = _playback_source(res, a)
    blocking, interrupt_on, ducking = _playback_common(a)
    if a.param("stopOtherMedia", False):
        _stop_others(res, flow_leg)
    op = Playback(res, flow_leg, source, kind="playback", blocking=blocking,
                  interrupt_dtmf="dtmf" in interrupt_on, ducking=ducking, voice=_voice_options(a, interrupt_on))
    _start_op(res, a, op)


def tone_spec(tone: str, custom: str | None) -> str:
    """The cadence of a preset (§2.1 playTone presets) or a custom tone."""
    if tone == "custom":
        if not (custom or "").strip():
            raise NodeFailed("tone custom needs customTone, e.g. 425/1000,0/4000 (freq[+freq]/ms, 0 = silence)")
        return str(custom)
    if tone not in TONE_PRESETS:
        raise NodeFailed(f"tone {tone!r} is not one of {', '.join(TONE_PRESETS)} or custom")
    return TONE_PRESETS[tone]


def _play_tone(res: MediaResource, a: Activation) -> None:
    flow_leg = res.engine.leg(resolve_leg_id(a.item, a.options))
    spec = tone_spec(str(a.param("tone", "ringback") or "ringback"), a.param("customTone"))
    try:
        parse_tone(spec, res.rate)
        path = res.tones.cycle_file(spec)
    except ToneSyntaxError as exc:
        raise NodeFailed(f"customTone {spec!r}: {exc}") from None
    blocking, interrupt_on, ducking = _playback_common(a)
    if a.param("stopOtherMedia", False):
        _stop_others(res, flow_leg)
    op = Playback(res, flow_leg, PlaybackSource(path=path, describe=f"tone {spec}"), kind="tone",
                  blocking=blocking, interrupt_dtmf="dtmf" in interrupt_on, loop=bool(a.param("repeatInfinite", False)),
                  ducking=ducking, voice=_voice_options(a, interrupt_on))
    _start_op(res, a, op)


def _record_options(res: MediaResource, a: Activation, interrupt_on: set) -> RecordOptions:
    fmt = str(a.param("recordFileFormat", "wav") or "wav")
    output = str(a.param("recordOutputType", "binary") or "binary")
    if fmt not in ("wav", "mp3", "opus", "ogg"):
        raise NodeFailed(f"recordFileFormat {fmt!r} is not wav, mp3, opus or ogg")
    if output not in ("binary", "file", "http"):
        raise NodeFailed(f"recordOutputType {output!r} is not binary, file or http")
    try:
        max_seconds = float(a.param("maxDurationSeconds", 30) or 0)
        wav_rate = int(a.param("recordWavSampleRate", 8000) or 8000)
        wav_bits = int(a.param("recordWavBitDepth", 16) or 16)
        compressed_rate = int(a.param("recordCompressedSampleRate", 16000) or 16000)
        kbps = float(a.param("recordCompressedBitrate", 32) or 32)
    except (TypeError, ValueError) as exc:
        raise NodeFailed(f"media.recordAudio: a numeric option is not a number ({exc})") from None
    if max_seconds < 0:
        raise NodeFailed("maxDurationSeconds must be >= 0 (0 = unlimited)")
    if fmt == "wav" and wav_bits not in transcode.WAV_SUBTYPES:
        raise NodeFailed(f"recordWavBitDepth {wav_bits} is not 8, 16, 24 or 32")
    if fmt == "wav" and not 8000 <= wav_rate <= 48000:
        raise NodeFailed(f"recordWavSampleRate {wav_rate} is outside 8000..48000 Hz")
    allowed = transcode.OPUS_RATES if fmt == "opus" else transcode.MP3_RATES if fmt == "mp3" else None
    if allowed and compressed_rate not in allowed:
        raise NodeFailed(f"recordCompressedSampleRate {compressed_rate} is not possible for {fmt}; "
                         f"use one of {', '.join(map(str, allowed))}")
    file_path = None
    if output == "file":
        raw = str(a.param("recordFilePath") or "").strip()
        if not raw:
            raise NodeFailed("recordOutputType file needs recordFilePath")
        file_path = Path(raw)
        if not file_path.is_absolute():
            file_path = Path(res.ua.config.directories.recordings) / file_path
        try:
            file_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeFailed(f"cannot create the folder of {file_path}: {exc}") from None
    url = ""
    method = "PUT"
    if output == "http":
        url = str(a.param("recordHttpUrl") or "").strip()
        if not url.startswith(("http://", "https://")):
            raise NodeFailed(f"recordOutputType http needs an http(s) recordHttpUrl, not {url!r}")
        _no_credentials(a, "recordHttpAuthentication")
        method = str(a.param("recordHttpMethod", "PUT") or "PUT").upper()
        if method not in ("PUT", "POST"):
            raise NodeFailed(f"recordHttpMethod {method!r} is not PUT or POST")
    silence = None
    if "silence" in interrupt_on:
        silence = (float(a.param("silenceThreshold", 0.01)), float(a.param("silenceDurationMs", 300)))
    return RecordOptions(max_seconds, fmt, output, str(a.param("recordBinaryProperty", "data") or "data"), file_path,
                         url, method, _headers(a.param("recordHttpHeaders")), wav_rate, wav_bits, compressed_rate,
                         kbps, silence)


def _record_audio(res: MediaResource, a: Activation) -> None:
    flow_leg = res.engine.leg(resolve_leg_id(a.item, a.options))
    interrupt_on = set(a.param("interruptOn") or ())
    opts = _record_options(res, a, interrupt_on)
    blocking = (a.param("mediaExecutionMode", "blocking") or "blocking") == "blocking"
    if a.param("stopOtherMedia", False):
        _stop_others(res, flow_leg)
    active = next((op for op in res.ops_of(flow_leg) if isinstance(op, Recording)), None)
    if active is not None:
        raise NodeFailed(f"recording_already_active: {flow_leg.id} is already recorded by {active.id} "
                         "(stop it first, or set stopOtherMedia)")
    try:
        op = Recording(res, flow_leg, opts, blocking=blocking, interrupt_dtmf="dtmf" in interrupt_on)
    except OSError as exc:
        raise NodeFailed(f"cannot record to {opts.file_path or res.scratch}: {exc}") from None
    _start_op(res, a, op)


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
            a.emit(snapshot.branch, snapshot.payload(), binary=snapshot.binary)
            return
        if media_id not in engine.media:
            raise NodeFailed(f"unknown media {media_id!r}")
    timeout = float(a.param("waitMediaTimeoutSeconds", 30)) or 30.0
    ops = [engine.media[i] for i in ids]
    tickets = [op.flow_leg.retention.acquire(f"media-wait:{op.id}") for op in ops]
    state: dict = {}

    def resolve(branch: str, payload: dict, binary: Mapping | None = None) -> None:
        if state.get("done"):
            return
        state["done"] = True
        timer.cancel()
        for op in ops:
            if listener in op.listeners:
                op.listeners.remove(listener)
        for ticket in tickets:
            ticket.release()
        a.emit(branch, payload, binary=binary)

    def listener(ended: MediaEnded) -> None:
        resolve(ended.branch, ended.payload(), ended.binary)

    timer = engine.ua.timers.schedule(timeout, lambda: resolve("Timeout", {}), "media.wait")
    for op in ops:
        op.listeners.append(listener)


# ---------------------------------------------------------------------------------------------
# media.sendDtmf
# ---------------------------------------------------------------------------------------------

class DtmfSender:
    """Digits out on a leg, one at a time so duration and gap hold for every method: RFC 2833
    events and SIP INFO per digit on timers (RFC 2833 events last the build's
    PJMEDIA_DTMF_DURATION, 200 ms: pjproject 2.12 takes no per-call duration), in-band as one
    rendered tone sequence played into the leg. Each digit is also a dtmf event on the leg."""

    def __init__(self, res: MediaResource, flow_leg: "FlowLeg", digits: str, methods: list[str],
                 duration_ms: int, gap_ms: int, done: Callable[[str], None]) -> None:
        self.res = res
        self.flow_leg = flow_leg
        self.digits = digits
        self.methods = methods
        self.duration_ms = duration_ms
        self.gap_ms = gap_ms
        self.done = done
        self.method = ""
        self._timers: list = []
        self._player: PromptPlayer | None = None

    def start(self) -> None:
        """Pick the first method that works (raises NodeFailed when none does) and send."""
        errors = []
        for method in self.methods:
            try:
                if method == "inband":
                    self._start_inband()
                else:
                    self._send_signalled(method, 0)
            except Exception as exc:  # pjsua2.Error, RuntimeError: this method is not possible here
                errors.append(f"{method}: {getattr(exc, 'reason', None) or exc}")
                continue
            self.method = method
            return
        raise NodeFailed(f"cannot send DTMF on {self.flow_leg.id}: " + "; ".join(errors))

    def _publish(self, digit: str) -> None:
        """A sent digit is also an event on the leg, and crosses its bridge like a received one
        (§5.4). Its method for the relay is `sent`: even an in-band digit played towards this
        leg's far end has not reached the bridged peer's audio."""
        if self.flow_leg.id in self.res.engine.legs:
            self.res.engine.deliver(self.flow_leg, LegDtmf(self.flow_leg.id, digit, self.method or "inband"))
            self.res.engine.bridges.relay_dtmf(self.flow_leg, digit, "sent")

    def _send_signalled(self, method: str, index: int) -> None:
        leg = self.flow_leg.leg
        leg.send_dtmf(self.digits[index], method, self.duration_ms)
        self.method = method
        self._publish(self.digits[index])
        timers = self.res.ua.timers
        step = (self.duration_ms + self.gap_ms) / 1000.0
        if index + 1 < len(self.digits):
            self._timers.append(timers.schedule(step, lambda: self._next(method, index + 1), "sendDtmf"))
        else:
            self._timers.append(timers.schedule(self.duration_ms / 1000.0, lambda: self.done(method), "sendDtmf"))

    def _next(self, method: str, index: int) -> None:
        try:
            self._send_signalled(method, index)
        except Exception as exc:
            log.warning("DTMF %r on %s (%s) failed: %s", self.digits[index], self.flow_leg.id, method, exc)
            self.done(method)

    def _start_inband(self) -> None:
        leg = self.flow_leg.leg
        if leg.slot is None:
            raise RuntimeError("the leg has no audio yet")
        pcm = dtmf_samples(self.digits, self.res.rate, self.duration_ms, self.gap_ms)
        path = write_pcm_wav(self.res.scratch / f"dtmf-{self.res.next_seq()}.wav", pcm, self.res.rate)
        self._player = PromptPlayer(self.res.ua, path, unlink=True, on_done=lambda _p: self.done("inband"))
        self._player.play_to(leg.slot)
        self.method = "inband"
        step = (self.duration_ms + self.gap_ms) / 1000.0
        for i, digit in enumerate(self.digits):
            if i == 0:
                self._publish(digit)
            else:
                self._timers.append(self.res.ua.timers.schedule(i * step, lambda d=digit: self._publish(d), "sendDtmf"))


def _send_dtmf(res: MediaResource, a: Activation) -> None:
    flow_leg = res.engine.leg(resolve_leg_id(a.item, a.options))
    digits = str(a.param("dtmfDigits") or "").strip().upper()
    if not digits or any(d not in DTMF_DIGITS for d in digits):
        raise NodeFailed(f"dtmfDigits {digits!r} must be DTMF digits 0-9 * # A-D")
    method = str(a.param("dtmfMethod", "auto") or "auto")
    try:
        duration = int(a.param("dtmfDurationMs", 200))
        gap = int(a.param("dtmfGapMs", 100))
    except (TypeError, ValueError):
        raise NodeFailed("dtmfDurationMs and dtmfGapMs must be whole milliseconds") from None
    if duration <= 0 or gap < 0:
        raise NodeFailed("dtmfDurationMs must be > 0 and dtmfGapMs >= 0")
    if method == "auto":
        allowed = flow_leg.leg.dtmf_methods
        methods = [m for m in ("rfc2833", "info", "inband") if m in allowed]
        if not methods:
            raise NodeFailed(f"{flow_leg.id} allows no DTMF method (dtmfMethods {list(allowed)})")
    elif method in ("rfc2833", "info", "inband"):
        methods = [method]
    else:
        raise NodeFailed(f"dtmfMethod {method!r} is not auto, rfc2833, info or inband")
    ticket = flow_leg.retention.acquire("send-dtmf")

    def done(used: str) -> None:
        ticket.release()
        log.info("%s: sent DTMF %s by %s", flow_leg.id, digits, used)
        a.emit("Result", {"legId": flow_leg.id}, {"legId": flow_leg.id})

    sender = DtmfSender(res, flow_leg, digits, methods, duration, gap, done)
    try:
        sender.start()
    except NodeFailed:
        ticket.release()
        raise
