"""Crash-safe WAV files: a recording stays playable if the process is killed mid-call.

`StreamingWav` writes PCM16 straight to the kernel (no user-space buffer) and rewrites the RIFF
and data sizes in the header at least every `header_interval` seconds of audio, so after a
`kill -9` the file is a valid WAV holding everything up to the last header update, and all the
audio written after it is still on disk. `repair()` (run at start-up over the recordings
directory) extends the header over that tail, so nothing written before the kill is lost.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

HEADER_BYTES = 44
_RIFF_SIZE_AT = 4
_DATA_SIZE_AT = 40


def _header(channels: int, rate: int, data_bytes: int) -> bytes:
    block = channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
            + b"data" + struct.pack("<I", data_bytes))


class StreamingWav:
    """PCM16 WAV written as it grows; `write` takes int16 arrays shaped (n,) or (n, channels)."""

    def __init__(self, path: Path, rate: int, channels: int = 1, *, header_interval: float = 0.5) -> None:
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self.data_bytes = 0
        self._header_every = max(1, int(header_interval * rate)) * channels * 2
        self._header_written_at = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, _header(channels, rate, 0))

    @property
    def seconds(self) -> float:
        return self.data_bytes / (self.rate * self.channels * 2)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, samples: np.ndarray) -> None:
        if self._fd is None or samples.size == 0:
            return
        data = np.ascontiguousarray(samples, dtype="<i2").tobytes()
        os.write(self._fd, data)
        self.data_bytes += len(data)
        if self.data_bytes - self._header_written_at >= self._header_every:
            self._update_header()

    def _update_header(self) -> None:
        assert self._fd is not None
        os.pwrite(self._fd, struct.pack("<I", 36 + self.data_bytes), _RIFF_SIZE_AT)
        os.pwrite(self._fd, struct.pack("<I", self.data_bytes), _DATA_SIZE_AT)
        self._header_written_at = self.data_bytes

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self._update_header()
        finally:
            os.close(self._fd)
            self._fd = None


def repair(path: Path) -> bool:
    """Make the header of a WAV this module wrote cover all the audio on disk (after a crash).

    Returns True if the header was changed. Files that are not our 44-byte-header PCM WAVs are
    left alone.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        return False
    with open(path, "r+b") as f:
        head = f.read(HEADER_BYTES)
        if head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt " or head[36:40] != b"data":
            return False
        channels = struct.unpack_from("<H", head, 22)[0]
        block = max(1, channels * 2)
        data_bytes = (size - HEADER_BYTES) // block * block
        if struct.unpack_from("<I", head, _DATA_SIZE_AT)[0] == data_bytes:
            return False
        f.seek(_RIFF_SIZE_AT)
        f.write(struct.pack("<I", 36 + data_bytes))
        f.seek(_DATA_SIZE_AT)
        f.write(struct.pack("<I", data_bytes))
        if size != HEADER_BYTES + data_bytes:
            f.truncate(HEADER_BYTES + data_bytes)
    return True


def repair_directory(directory: Path) -> list[Path]:
    """Repair every `*.wav` under `directory`; returns the files that were fixed."""
    fixed = []
    directory = Path(directory)
    if not directory.is_dir():
        return fixed
    for path in directory.rglob("*.wav"):
        try:
            if repair(path):
                fixed.append(path)
        except OSError:
            continue
    return fixed
