"""Whether recordings are being written: the state behind `softswitch_recordings_failing`,
`softswitch_recording_failures_total` and `/status` `recordings`.

Every writer of recordings (call recordings, `media.recordAudio`, `run --record`) reports here
when a file fails (a full or read-only disk) and when one is written successfully. The failing
state is not sticky: it clears as soon as a recording opened after the last failure has written
audio to disk, so new calls record again when space returns, and the status says so.
One per UserAgent, used on the UA thread only.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable


class RecordingState(str, Enum):
    OK = "ok"
    FAILING = "failing"


# Errors of the disk rather than of the path the flow asked for: the call goes on unrecorded.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                         errno.EFBIG})


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def describe(exc: BaseException) -> str:
    """'No space left on device (ENOSPC)': the reason an operator can act on."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
    return str(exc)


@dataclass(frozen=True)
class RecordingFailure:
    path: str
    owner: str  # which leg/call the recording belonged to
    error: str
    at: float  # epoch seconds


class RecordingHealth:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.failures_total = 0
        self.state = RecordingState.OK
        self.last_failure: RecordingFailure | None = None
        self.recovered_at: float | None = None
        self._generation = 0  # bumped by each failure; a recording remembers the one it opened in

    @property
    def failing(self) -> bool:
        return self.state is RecordingState.FAILING

    def opened(self) -> int:
        """A recording starts: the token to hand to `wrote` once it has written audio."""
        return self._generation

    def failed(self, path: Path | str, owner: str, exc: BaseException | str) -> RecordingFailure:
        error = exc if isinstance(exc, str) else describe(exc)
        failure = RecordingFailure(str(path), owner, error, self._wall())
        self.failures_total += 1
        self._generation += 1
        self.state = RecordingState.FAILING
        self.last_failure = failure
        return failure

    def wrote(self, token: int) -> bool:
        """A recording opened with `token` has audio on disk. Clears the failing state if it
        opened after the last failure (its disk works again). Returns True if it cleared."""
        if self.state is RecordingState.FAILING and token == self._generation:
            self.state = RecordingState.OK
            self.recovered_at = self._wall()
            return True
        return False

    def document(self) -> dict:
        """The `/status` `recordings` object."""
        last = self.last_failure
        return {
            "state": self.state.value,
            "failing": self.failing,
            "failures": self.failures_total,
            "lastFailure": None if last is None else {
                "path": last.path, "owner": last.owner, "error": last.error, "at": round(last.at, 3)},
            "recoveredAt": None if self.recovered_at is None else round(self.recovered_at, 3),
        }
