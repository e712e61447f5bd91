"""Recorders on the bridge.

`CallRecorder` is a leg's call recording (reference §5.5): what the leg sends us (inbound) and
everything softswitch sends the leg (outbound: prompts, tones, the bridged peer), mixed to mono
or split into stereo (channel 1 inbound, channel 2 outbound), time-aligned, written crash-safe
as the call goes (`wavfile.StreamingWav`). Two native frame ports tap the bridge: the leg's slot
feeds the inbound tap, and the outbound tap is a mirror of the leg's slot (`bridge.Bridge`), so
it receives every source connected to the leg. The bridge's clock puts exactly one frame per
tick into each tap (silence when nothing is connected), so both channels advance together; the
UA loop drains both in batches every `DRAIN_INTERVAL_S` with numpy, never per sample.

`WavRecorder` is pjsua's own recorder (one slot to a file, header written on close), kept for
`run --record` with the built-in welcome handler.

Disk errors (a full or read-only recordings disk) stop the one recording they hit, never the
call: one ERROR line names the file, the leg/call and the error; the file is cut back to the
whole frames written and its header finalized (or, with no audio in it, removed); the UA's
`RecordingHealth` counts the failure for metrics and `/status`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pjsua2 as pj
import soxr

from . import bridge
from .frameport import FramePort
from .health import RecordingFailure, RecordingHealth, describe, is_disk_error
from .wavfile import StreamingWav, repair_directory

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent

log = logging.getLogger("softswitch.media.recording")

# How often the UA loop empties a recorder's taps: ~30 us of UA-thread work per drain, so about
# 150 us per second per recorded leg (bench/recording_cost.py). With the WAV header refresh (every
# 0.5 s of audio) it bounds what a kill -9 loses: ~0.7 s before the start-up repair, ~0.2 s after.
DRAIN_INTERVAL_S = 0.2
# Tap ring size in 20 ms frames: the UA loop may stall this long (2.56 s) before frames drop;
# dropped frames are replaced by silence, so the file keeps the call's duration.
TAP_FRAMES = 128
# Frames one channel may run ahead of the other before the short one is padded with silence.
MAX_SKEW_FRAMES = 3

_EMPTY = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True)
class RecordingResult:
    path: Path
    duration_ms: int
    bytes_produced: int
    channels: int
    rate: int
    failure: RecordingFailure | None = None  # a disk error stopped the recording (what it says)
    removed: bool = False  # it failed before any audio was written: no file was left


class RecordingMixer:
    """The recording's data path without the bridge: pairs inbound and outbound frames as the
    taps deliver them, keeps both channels aligned, drops paused audio, mixes or splits, and
    hands int16 samples at the file's rate to `write`.

    Each bridge tick gives each tap one frame, but a drain can catch one tap a frame ahead of
    the other: the surplus is carried to the next batch. A lasting gap (a tap overran and lost
    frames) is padded with silence so both channels keep real time.
    """

    def __init__(self, write: Callable[[np.ndarray], None], *, channels: int, samples_per_frame: int,
                 bridge_rate: int = 8000, rate: int | None = None) -> None:
        self._write_out = write
        self.channels = channels
        self.spf = samples_per_frame
        self.paused = False
        self.frames_written = 0  # bridge-rate samples per channel
        self._carry_in = _EMPTY
        self._carry_out = _EMPTY
        rate = rate or bridge_rate
        # soxr (libsoxr, maintained, band-limited) rather than interpolation of our own. Its
        # stream holds some output back (a few ms to ~160 ms): fine for a file, flushed on the
        # final push; the AI path keeps its low-latency FIR (ai/resample.py) for that reason.
        self._resampler = None if rate == bridge_rate else soxr.ResampleStream(
            bridge_rate, rate, channels, dtype="int16", quality="HQ")

    def push(self, inbound: np.ndarray, outbound: np.ndarray, *, final: bool = False) -> None:
        """Frames drained from the taps (any lengths); `final` flushes everything, padded, and
        the resampler's held-back tail with it (no push may follow a final one)."""
        if self.paused:
            self.discard()
            if final:
                self._write_resampled(_EMPTY if self.channels == 1 else _EMPTY.reshape(0, 2), final=True)
            return
        if len(self._carry_in):
            inbound = np.concatenate((self._carry_in, inbound))
        if len(self._carry_out):
            outbound = np.concatenate((self._carry_out, outbound))
        n_in, n_out = len(inbound), len(outbound)
        if final or abs(n_in - n_out) > MAX_SKEW_FRAMES * self.spf:
            n = max(n_in, n_out)  # one tap lost frames the other kept: pad, keep real time
            inbound, outbound = _pad(inbound, n), _pad(outbound, n)
        else:
            n = min(n_in, n_out)
        self._carry_in = inbound[n:].copy()
        self._carry_out = outbound[n:].copy()
        if n:
            self.frames_written += n
        if n or final:
            self._write_resampled(mix_frames(inbound[:n], outbound[:n], self.channels), final=final)

    def _write_resampled(self, samples: np.ndarray, *, final: bool) -> None:
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=final)
        if len(samples):
            self._write_out(samples)

    def discard(self) -> None:
        """Forget what is carried (audio heard while paused or before the leg had media)."""
        self._carry_in = self._carry_out = _EMPTY

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.discard()
        self.paused = False


class CallRecorder:
    """One leg's call recording. Create, `attach(slot)` when the leg has media, `close()`.

    Audio before the first `attach` and while paused is discarded, so the file covers the time
    the leg had media and the recording was running.
    """

    def __init__(self, ua: "UserAgent", path: Path, *, split: bool = False, rate: int | None = None,
                 owner: str = "") -> None:
        self.ua = ua
        self.path = Path(path)
        self.owner = owner or "no leg"  # "leg leg_… (call-id …)": named in the error line
        self.failure: RecordingFailure | None = None  # set by a disk error: the recording stopped
        self._health: RecordingHealth = getattr(ua, "recording_health", None) or RecordingHealth()
        self._token = self._health.opened()
        self._wrote_reported = False
        self.split = split
        self.bridge_rate: int = ua.config.media.clock_rate
        self.rate = int(rate or self.bridge_rate)
        self.channels = 2 if split else 1
        self.closed = False
        self.slot: int | None = None
        self.result: RecordingResult | None = None
        self._bridge: bridge.Bridge = ua.bridge
        self._attached_once = False
        self._overruns = {"in": 0, "out": 0}
        self._in: FramePort | None = None
        self._out: FramePort | None = None
        self._remove_poller: Callable[[], None] = lambda: None
        self.mixer = RecordingMixer(self._write, channels=self.channels,  # replaced once the taps exist
                                    samples_per_frame=self.bridge_rate // 50, bridge_rate=self.bridge_rate,
                                    rate=self.rate)
        self._wav: StreamingWav | None = None
        try:
            self._wav = StreamingWav(self.path, self.rate, self.channels)
        except OSError as exc:
            if not is_disk_error(exc):
                raise  # not the disk: the path itself is wrong (a directory, ...): the caller says so
            self._fail(exc, "could not create the file", "no file is left")  # the call goes on unrecorded
            return
        try:
            self._in = FramePort(ua, "rec-in", capacity_frames=TAP_FRAMES, tx_capacity_frames=2)
            self._out = FramePort(ua, "rec-out", capacity_frames=TAP_FRAMES, tx_capacity_frames=2)
        except Exception:
            self._close_ports()
            self._wav.close(remove_empty=True)
            raise
        self.mixer = RecordingMixer(self._write, channels=self.channels,
                                    samples_per_frame=self._in.samples_per_frame,
                                    bridge_rate=self.bridge_rate, rate=self.rate)
        self._next_drain = 0.0
        self._remove_poller = ua.add_poller(self.poll)
        ua.keep(self)

    @property
    def paused(self) -> bool:
        return self.mixer.paused

    # ---- wiring (UA thread) ---------------------------------------------------------------
    def attach(self, slot: int) -> None:
        """Tap the leg at `slot` (again after a re-INVITE moved it)."""
        if self.closed or self.failure is not None or slot == self.slot:
            return
        if self.slot is not None:
            self.drain()
            self._detach()
            if self.failure is not None:
                return
        bridge.connect(slot, self._in.slot)
        self._bridge.add_mirror(slot, self._out.slot)
        self.slot = slot
        if not self._attached_once:
            # What the taps heard before the leg had media is silence heartbeats: not the call.
            self._attached_once = True
            self._in.read()
            self._out.read()
            self.mixer.discard()

    def _detach(self) -> None:
        slot, self.slot = self.slot, None
        if slot is None:
            return
        try:
            bridge.disconnect(slot, self._in.slot)
        except RuntimeError:
            pass  # the leg's port is gone with its call
        self._bridge.remove_mirror(slot, self._out.slot)

    # ---- control --------------------------------------------------------------------------
    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.drain()
            self.mixer.pause()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.drain()  # discards what was heard while paused
            self.mixer.resume()

    # ---- the data path --------------------------------------------------------------------
    def poll(self) -> None:
        """Run by the UA loop every turn; drains only every DRAIN_INTERVAL_S."""
        now = time.monotonic()
        if now >= self._next_drain:
            self._next_drain = now + DRAIN_INTERVAL_S
            self.drain()

    def drain(self, *, final: bool = False) -> None:
        """Move what both taps collected into the file, aligned frame by frame."""
        if self.closed or self.failure is not None:
            return
        inbound = self._take(self._in, "in")
        outbound = self._take(self._out, "out")
        if self.slot is None:
            self.mixer.discard()
            return
        try:
            self.mixer.push(inbound, outbound, final=final)
        except OSError as exc:  # from _write: the disk refused the audio
            self._fail(exc, "could not write")
            return
        if not self._wrote_reported and self._wav is not None and self._wav.header_updated:
            self._wrote_reported = True
            if self._health.wrote(self._token):
                log.info("recordings are written again (%s, %s)", self.path, self.owner)

    def _write(self, samples: np.ndarray) -> None:
        assert self._wav is not None
        self._wav.write(samples)

    def _fail(self, exc: BaseException, doing: str, kept: str = "") -> None:
        """A disk error: stop this recording for good, keep what reached the disk as a valid
        WAV (or no file if nothing did), say so once. The call is not touched."""
        self._remove_poller()
        try:
            self._detach()
        except RuntimeError:
            pass
        if not kept and self._wav is not None:
            kept = "no audio was written, so no file is left"
            try:
                self._wav.close(remove_empty=True)
                if not self._wav.removed:
                    kept = f"the file is a valid WAV of the {self._wav.seconds:.1f} s written"
            except OSError as header_exc:
                kept = (f"its header could not be finalized either ({describe(header_exc)}); the next start "
                        "repairs it")
        self.failure = self._health.failed(self.path, self.owner, exc)
        log.error("recording %s of %s stopped: %s: %s; %s; the call goes on unrecorded",
                  self.path, self.owner, doing, self.failure.error, kept)

    def _take(self, port: FramePort, which: str) -> np.ndarray:
        samples = port.read()
        if len(samples) >= TAP_FRAMES * self.mixer.spf:
            # The ring was full: frames after these may have been dropped. Put silence where
            # they were, so the recording keeps real time (and both channels stay aligned).
            overruns = int(port.stats().get("rx_overruns", 0))
            lost = overruns - self._overruns[which]
            self._overruns[which] = overruns
            if lost > 0:
                log.warning("%s: recording tap %s overran by %d frames; writing silence", self.path.name,
                            which, lost)
                samples = np.concatenate((samples, np.zeros(lost * self.mixer.spf, dtype=np.int16)))
        return samples

    # ---- the end ----------------------------------------------------------------------------
    def close(self) -> RecordingResult:
        """Write what is left, leave the bridge, finalize the file. Idempotent."""
        if self.result is not None:
            return self.result
        try:
            self.drain(final=True)
        except RuntimeError as exc:  # ports already closed by the UA's shutdown
            log.debug("%s: final drain skipped: %s", self.path.name, exc)
        self.closed = True
        self._remove_poller()
        try:
            self._detach()
        except RuntimeError:
            pass
        self._close_ports()
        wav = self._wav
        if wav is not None and not wav.closed:
            try:
                wav.close()
            except OSError as exc:  # the final header write: the next start repairs the header
                self._fail(exc, "could not finalize the header", "the next start repairs the header")
        if wav is not None and not wav.removed:
            seconds, size = wav.seconds, wav.data_bytes + 44
        else:
            seconds, size = 0.0, 0
        self.result = RecordingResult(self.path, int(round(seconds * 1000)), size, self.channels, self.rate,
                                      self.failure, wav is None or wav.removed)
        if self.failure is None and seconds > 0 and not self._wrote_reported:
            self._wrote_reported = True
            if self._health.wrote(self._token):
                log.info("recordings are written again (%s, %s)", self.path, self.owner)
        self.ua.release(self)
        return self.result

    def _close_ports(self) -> None:
        for port in (self._in, self._out):
            if port is not None:
                try:
                    port.close()
                except RuntimeError:
                    pass
                self.ua.release(port)

    @property
    def seconds(self) -> float:
        return self._wav.seconds if self._wav is not None and not self._wav.removed else 0.0


def mix_frames(inbound: np.ndarray, outbound: np.ndarray, channels: int) -> np.ndarray:
    """Equal-length int16 inbound/outbound → mono mix (clipped sum) or stereo (in, out)."""
    if channels == 1:
        mixed = inbound.astype(np.int32)
        mixed += outbound
        np.clip(mixed, -32768, 32767, out=mixed)
        return mixed.astype(np.int16)
    stereo = np.empty((len(inbound), 2), dtype=np.int16)
    stereo[:, 0] = inbound
    stereo[:, 1] = outbound
    return stereo


def _pad(samples: np.ndarray, n: int) -> np.ndarray:
    if len(samples) >= n:
        return samples
    return np.concatenate((samples, np.zeros(n - len(samples), dtype=np.int16)))


def repair_recordings(directory: Path) -> list[Path]:
    """Start-up: make every WAV a crash left unfinished cover all its audio; logs what it fixed.
    Empty `.wav` files (a call started on a full disk, by an earlier version) are removed."""
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.rglob("*.wav"):
            try:
                if path.is_file() and path.stat().st_size == 0:
                    path.unlink()
                    log.warning("removed empty recording %s (no audio was ever written to it)", path)
            except OSError:
                continue
    fixed = repair_directory(directory)
    for path in fixed:
        # Files finalized after a disk error already match their audio and are not listed here.
        log.warning("repaired unfinished recording %s: its header now covers all the audio on disk "
                    "(the process stopped while recording, or a disk error kept it from finalizing the header)", path)
    if fixed:
        log.info("repaired %d unfinished recording(s) in %s", len(fixed), directory)
    return fixed


class WavRecorder:
    """A pjsua recorder. The WAV header is completed when the recorder is closed."""

    def __init__(self, ua: "UserAgent", path: Path) -> None:
        self.ua = ua
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = pj.AudioMediaRecorder()
        try:
            self._rec.createRecorder(str(self.path))
        except pj.Error as exc:
            # pjmedia creates the file before writing its header: on a full disk it stays, empty.
            try:
                if self.path.stat().st_size == 0:
                    self.path.unlink()
            except OSError:
                pass
            raise OSError(f"cannot record to {self.path}: {exc.reason}") from None
        self.slot: int = self._rec.getPortId()
        self._sources: list[int] = []
        ua.keep(self)

    def record_from(self, slot: int) -> None:
        bridge.connect(slot, self.slot)
        self._sources.append(slot)

    def stop(self) -> None:
        self.ua.release(self)

    def close(self) -> None:
        self._rec = None
