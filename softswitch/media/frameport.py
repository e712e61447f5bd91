"""Frame ports: audio frames between the bridge and Python, without Python on the clock thread.

The native `FramePort` (native/frameport.c) is a bridge slot with two lock-free rings. The UA
loop drains received frames and queues frames to send, in batches, as numpy int16 arrays.
`AudioTap` is a receive-only port on one leg that keeps its newest second of audio in C and
costs no Python work until a consumer (a recording, a voice detector) starts reading it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable

import numpy as np
import _softswitch_native as native

from . import bridge

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent


class FramePort:
    """A bridge slot whose audio Python reads (`read`) and writes (`write`) in 20 ms frames.

    `keep_newest=True` makes a full receive ring drop its oldest frame instead of the newest
    (a tap that holds the last `capacity_frames` of audio until read)."""

    def __init__(self, ua: "UserAgent", name: str = "frames", *, capacity_frames: int = 64,
                 keep_newest: bool = False, tx_capacity_frames: int = 0) -> None:
        self.ua = ua
        self._port = native.FramePort(name, ua.config.media.clock_rate, 20, capacity_frames, keep_newest,
                                      tx_capacity_frames)
        self.slot: int = self._port.slot
        self.samples_per_frame: int = self._port.samples_per_frame
        self.clock_rate: int = self._port.clock_rate
        self._scratch = np.zeros(self._port.capacity_frames * self.samples_per_frame, dtype=np.int16)
        ua.keep(self)

    def read(self) -> np.ndarray:
        """Every frame received since the last read, as one int16 array (a view: copy to keep)."""
        n = self._port.read_into(self._scratch)
        return self._scratch[:n]

    def write(self, samples: np.ndarray) -> int:
        """Queue samples for the bridge; returns how many were accepted (the rest did not fit)."""
        return self._port.write(np.ascontiguousarray(samples, dtype=np.int16))

    def clear_tx(self) -> None:
        """Drop queued outgoing audio at once (barge-in)."""
        self._port.clear_tx()

    def clear_rx(self) -> None:
        self._port.clear_rx()

    @property
    def rx_available(self) -> int:
        return self._port.rx_available

    @property
    def tx_queued(self) -> int:
        return self._port.tx_queued

    def stats(self) -> dict:
        return self._port.stats()

    def stop(self) -> None:
        self.ua.release(self)

    def close(self) -> None:
        self._port.close()


FrameConsumer = Callable[[np.ndarray], None]


class AudioTap:
    """What one leg sends us, kept in C: the newest `history_frames` 20 ms frames, always.

    Idle, a tap is a bridge slot the clock thread copies into (no Python). While consumers are
    attached, `poll()` (run by the owner from the UA loop) drains the ring, keeps a Python copy
    of the last `history_frames` for later pre-rolls and hands every 20 ms frame to each
    consumer in order. `preroll()` is the audio of up to `history_frames` before now.
    """

    def __init__(self, ua: "UserAgent", source_slot: int, *, name: str = "tap", history_frames: int = 50) -> None:
        self.ua = ua
        self.history_frames = history_frames
        # The ring (rounded up to a power of two in C) holds more than the history while idle.
        self.port = FramePort(ua, name, capacity_frames=history_frames + 8, keep_newest=True,
                              tx_capacity_frames=2)
        self.spf = self.port.samples_per_frame
        self.source_slot: int | None = None
        self._history: deque[np.ndarray] = deque(maxlen=history_frames)
        self.consumers: list[FrameConsumer] = []
        self.attach(source_slot)

    def attach(self, source_slot: int) -> None:
        """(Re)connect to the leg's bridge slot (after a re-INVITE moved it)."""
        if self.source_slot == source_slot:
            return
        self.detach()
        bridge.connect(source_slot, self.port.slot)
        self.source_slot = source_slot

    def detach(self) -> None:
        if self.source_slot is not None:
            try:
                bridge.disconnect(self.source_slot, self.port.slot)
            except RuntimeError:
                pass  # the leg's slot left the bridge with its call
            self.source_slot = None

    @property
    def active(self) -> bool:
        return bool(self.consumers)

    def _drain(self) -> None:
        """Everything received so far: into the history, and to the current consumers."""
        data = self.port.read()
        if data.size == 0:
            return
        for frame in data.reshape(-1, self.spf):
            frame = frame.copy()
            self._history.append(frame)
            for consumer in list(self.consumers):
                consumer(frame)

    def preroll(self) -> np.ndarray:
        """The newest `history_frames` of audio received before now (catching up first)."""
        self._drain()
        if not self._history:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(list(self._history))

    def add_consumer(self, consumer: FrameConsumer) -> None:
        """`consumer` gets every frame received from now on (earlier ones are `preroll()`)."""
        self._drain()
        self.consumers.append(consumer)

    def remove_consumer(self, consumer: FrameConsumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def poll(self) -> None:
        if self.consumers:
            self._drain()

    def close(self) -> None:
        self.consumers.clear()
        self.detach()
        self.port.stop()
