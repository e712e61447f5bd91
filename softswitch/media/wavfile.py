"""Crash-safe WAV files: a recording stays playable if the process is killed mid-call.

`StreamingWav` writes PCM16 straight to the kernel (no user-space buffer) and rewrites the RIFF
and data sizes in the header at least every `header_interval` seconds of audio, so after a
`kill -9` the file is a valid WAV holding everything up to the last header update, and all the
audio written after it is still on disk. `repair()` (run at start-up over the recordings
directory) extends the header over that tail, so nothing written before the kill is lost.

A write that fails (a full disk: `ENOSPC` after a short write) raises `OSError` with the bytes that
did reach the disk counted; `close()` then cuts the file back to whole frames and finalizes the
header over them, so the file stays a valid WAV of what was written.
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
        self.block = channels * 2
        self.written_bytes = 0  # audio bytes that reached the file (a short write may split a frame)
        self.removed = False  # close(remove_empty=True) deleted a file that held no audio
        self._header_every = max(1, int(header_interval * rate)) * self.block
        self._header_written_at = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(self._fd, _header(channels, rate, 0))
        except OSError:
            # Created but not even a header fits (a full disk): leave no empty file behind.
            os.close(self._fd)
            self._fd = None
            _unlink_quietly(self.path)
            raise

    @property
    def data_bytes(self) -> int:
        """Audio bytes in whole frames: what the finalized header covers."""
        return self.written_bytes // self.block * self.block

    @property
    def seconds(self) -> float:
        return self.data_bytes / (self.rate * self.block)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, samples: np.ndarray) -> None:
        if self._fd is None or samples.size == 0:
            return
        data = np.ascontiguousarray(samples, dtype="<i2").tobytes()
        view = memoryview(data)
        while view:  # a full disk first writes short, then raises ENOSPC: count what got there
            n = os.write(self._fd, view)
            self.written_bytes += n
            view = view[n:]
        if self.data_bytes - self._header_written_at >= self._header_every:
            self._update_header()

    @property
    def header_updated(self) -> bool:
        """Whether a header covering some audio has reached the file (writing works)."""
        return self._header_written_at > 0

    def _update_header(self) -> None:
        assert self._fd is not None
        data_bytes = self.data_bytes
        os.pwrite(self._fd, struct.pack("<I", 36 + data_bytes), _RIFF_SIZE_AT)
        os.pwrite(self._fd, struct.pack("<I", data_bytes), _DATA_SIZE_AT)
        self._header_written_at = data_bytes

    def close(self, *, remove_empty: bool = False) -> None:
        """Finalize the header over the whole frames written (cutting a frame a failed write
        split) and close. `remove_empty`: a file that holds no audio is deleted instead (a
        recording that failed before writing anything leaves no file). Raises OSError if the
        header could not be written (the file is then fixed by `repair` at the next start)."""
        if self._fd is None:
            return
        try:
            if remove_empty and self.data_bytes == 0:
                self.removed = True
                _unlink_quietly(self.path)
                return
            if self.written_bytes != self.data_bytes:
                os.ftruncate(self._fd, HEADER_BYTES + self.data_bytes)  # shrinking needs no free space
                self.written_bytes = self.data_bytes
            self._update_header()
        finally:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
