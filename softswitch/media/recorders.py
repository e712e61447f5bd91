"""WAV recorders on the bridge: whatever is connected to a recorder's slot is written to file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pjsua2 as pj

from . import bridge

if TYPE_CHECKING:
    from ..sip.endpoint import UserAgent


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
