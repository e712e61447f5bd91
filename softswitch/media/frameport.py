"""Frame ports: audio frames between the bridge and Python, without Python on the clock thread.

The native `FramePort` (native/frameport.c) is a bridge slot with two lock-free rings. The UA
loop drains received frames and queues frames to send, in batches, as numpy int16 arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import _softswitch_native as native

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent


class FramePort:
    """A bridge slot whose audio Python reads (`read`) and writes (`write`) in 20 ms frames."""

    def __init__(self, ua: "UserAgent", name: str = "frames", *, capacity_frames: int = 64) -> None:
        self.ua = ua
        self._port = native.FramePort(name, ua.config.media.clock_rate, 20, capacity_frames)
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
