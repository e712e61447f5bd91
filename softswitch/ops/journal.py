"""The crash journal of live calls: what the call records know of each call still up, so that
the next start can write a record for the calls a kill -9 (or a power cut) cut off.

One append-only JSON-lines file in `directories.state`. Each line is one of
  {"op": "call", "id": CALL, "at": T, "state": {...}}  the call's latest known state
  {"op": "end", "id": CALL}                            its record was written
  {"op": "alive", "at": T}                             the process was alive at T (a heartbeat)
The latest "call" line of an id without an "end" is a call cut off. Lines are flushed as they are
written (one write each, no fsync): a killed process loses nothing that was written; a power cut
can lose the lines the kernel had not written out yet. A torn last line is skipped when read.

Bounded: when no journaled call is live the file is truncated to nothing, and when it has grown
past `compact_bytes` (and four times what the live calls need) it is rewritten with only the
live calls' latest lines. Used by one thread (the UA thread, through CallRecords).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

log = logging.getLogger("softswitch.records")

JOURNAL_NAME = "call-journal.jsonl"
COMPACT_BYTES = 256 * 1024  # rewrite the journal once it is this big and mostly dead lines


class JournalOp(str, Enum):
    CALL = "call"
    END = "end"
    ALIVE = "alive"


@dataclass
class JournalContents:
    """What a journal left by an earlier process says: the calls it cut off, by id, each its
    latest state, and the last time that process was seen alive (None: an empty journal)."""

    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_seen: float | None = None
    unreadable: int = 0  # lines that were not JSON (a torn last line)


class CallJournal:
    """Append-only journal of live calls' states; see the module docstring."""

    def __init__(self, path: Path, *, compact_bytes: int = COMPACT_BYTES) -> None:
        self.path = Path(path)
        self.compact_bytes = compact_bytes
        self._live: dict[str, str] = {}  # call id -> its latest "call" line, for compaction
        self._live_chars = 0  # the length of those lines together
        self._file: Any = None
        self._size = 0  # bytes in the file (as this process wrote them)
        self._failing = False
        self.compactions = 0

    @classmethod
    def in_directory(cls, directory: Path) -> "CallJournal":
        return cls(Path(directory) / JOURNAL_NAME)

    # ---- the start: what an earlier process left --------------------------------------------
    def read(self) -> JournalContents:
        """The calls a previous process left open. A line that is not JSON (the last line torn
        by the crash) is skipped with a warning; a missing file is an empty journal."""
        contents = JournalContents()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return contents
        except OSError as exc:
            log.error("cannot read the call journal %s: %s; calls cut off by the last stop get no record",
                      self.path, exc)
            return contents
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                op, at = JournalOp(line["op"]), line.get("at")
            except (ValueError, KeyError, TypeError):
                contents.unreadable += 1
                continue
            if isinstance(at, (int, float)):
                contents.last_seen = at if contents.last_seen is None else max(contents.last_seen, at)
            if op is JournalOp.CALL and isinstance(line.get("state"), dict):
                contents.calls[str(line["id"])] = line["state"]
            elif op is JournalOp.END:
                contents.calls.pop(str(line.get("id")), None)
        if contents.unreadable:
            log.warning("call journal %s: skipped %d unreadable line(s) (torn by the crash)",
                        self.path, contents.unreadable)
        return contents

    # ---- while running ----------------------------------------------------------------------
    def note(self, call_id: str, state: dict[str, Any], at: float) -> None:
        """The call's state now (replaces what was journaled for it before)."""
        line = _line({"op": JournalOp.CALL.value, "id": call_id, "at": round(at, 3), "state": state})
        self._live_chars += len(line) - len(self._live.get(call_id, ""))
        self._live[call_id] = line
        if self._append(line) and self._size > max(self.compact_bytes, 4 * self._live_chars):
            self.compact()

    def ended(self, call_id: str) -> None:
        """The call's record is written: it is no longer cut off if the process dies now."""
        line = self._live.pop(call_id, None)
        if line is None:
            return  # never journaled (it lived within one loop turn)
        self._live_chars -= len(line)
        if self._live:
            self._append(_line({"op": JournalOp.END.value, "id": call_id}))
        else:
            self.clear()  # nothing live: an empty journal says the same, and stays small

    def alive(self, at: float) -> None:
        """A heartbeat: the process was alive at `at` (the cut-off calls' end time)."""
        if self._live:
            self._append(_line({"op": JournalOp.ALIVE.value, "at": round(at, 3)}))

    def has(self, call_id: str) -> bool:
        return call_id in self._live

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def size(self) -> int:
        return self._size

    def compact(self) -> None:
        """Rewrite the file with the live calls' latest lines only (a new file renamed over it)."""
        self._close_quietly()
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = "".join(self._live.values())
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot compact the call journal %s: %s; it keeps growing until this works", self.path, exc)
            return
        self._size = len(body.encode("utf-8"))
        self.compactions += 1

    def clear(self) -> None:
        """Empty the journal (the start once its calls are written; no live call left)."""
        try:
            if self._file is not None:
                self._file.seek(0)
                self._file.truncate()
            elif self.path.exists():
                with open(self.path, "w", encoding="utf-8"):
                    pass
        except OSError as exc:
            log.error("cannot empty the call journal %s: %s", self.path, exc)
            self._close_quietly()
            return
        self._size = 0

    def close(self) -> None:
        """A clean stop, every call's record written: no journal is left behind."""
        self._close_quietly()
        self._live.clear()
        self._live_chars = 0
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot remove the call journal %s: %s; the next start finds it empty of live calls "
                      "only if it was emptied", self.path, exc)

    # ---- the file ---------------------------------------------------------------------------
    def _append(self, line: str) -> bool:
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
                self._size = self._file.tell()
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            if not self._failing:
                log.error("cannot write the call journal %s: %s; calls cut off by a crash now may get no "
                          "record", self.path, exc)
            self._failing = True
            self._close_quietly()
            return False
        self._size += len(line.encode("utf-8"))
        if self._failing:
            self._failing = False
            log.warning("writing the call journal %s again", self.path)
        return True

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
