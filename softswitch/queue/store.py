"""Durable queue state: an embedded SQLite database (WAL) in `directories.state`.

Callers who asked to be called back must still be queued after a crash or a restart, at their
position, with their original enqueue time and retry state; completion statistics survive too.
Every change is one short transaction written before the queue acknowledges it. WAL with
`synchronous=NORMAL` makes a commit an append to the log without an fsync: a killed process
loses nothing; only a power cut can lose the last commits.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .model import DialConfig, EntryMode, EntryState, QueueEntry

SCHEMA_VERSION = 1
DB_NAME = "queues.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_entries (
    id               TEXT PRIMARY KEY,
    scope            TEXT NOT NULL,
    ref              TEXT NOT NULL,
    position         INTEGER NOT NULL,
    leg_id           TEXT,
    trunk_ref        TEXT NOT NULL,
    mode             TEXT NOT NULL,
    callback_enabled INTEGER NOT NULL,
    retry_count      INTEGER NOT NULL,
    retry_attempts   INTEGER NOT NULL,
    retry_pause_s    REAL NOT NULL,
    retry_not_before REAL NOT NULL,
    placed_published INTEGER NOT NULL,
    created_at       REAL NOT NULL,
    dial_config      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_entries_order ON queue_entries (scope, ref, position);
CREATE TABLE IF NOT EXISTS queue_stats (
    scope           TEXT NOT NULL,
    ref             TEXT NOT NULL,
    completed_count INTEGER NOT NULL,
    total_wait_s    REAL NOT NULL,
    updated_at      REAL NOT NULL,
    PRIMARY KEY (scope, ref)
);
"""

_COLUMNS = ("id", "scope", "ref", "position", "leg_id", "trunk_ref", "mode", "callback_enabled", "retry_count",
            "retry_attempts", "retry_pause_s", "retry_not_before", "placed_published", "created_at", "dial_config")


class QueueStoreError(RuntimeError):
    """The state database cannot be used; the message names the file and what to check."""


@dataclass
class CompletionStats:
    """Completed waits of one queue: count and total, so the average survives restarts."""

    completed_count: int = 0
    total_wait_s: float = 0.0
    updated_at: float = 0.0

    @property
    def average_wait_s(self) -> float:
        return self.total_wait_s / self.completed_count if self.completed_count else 0.0


class QueueStore:
    """The queue database; used by the thread that created it (the UA thread) only."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: each change below is one explicit BEGIN … COMMIT.
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"the file system does not support WAL (journal mode {mode})")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=2000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this softswitch ({SCHEMA_VERSION})")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise QueueStoreError(f"cannot use the queue state database {self.path}: {exc} "
                                  f"(check that directories.state is a writable directory)") from exc

    @classmethod
    def in_directory(cls, directory: Path | str) -> "QueueStore":
        return cls(Path(directory) / DB_NAME)

    # ---- writes: one short transaction each -------------------------------------------------
    def save(self, entry: QueueEntry) -> None:
        """Insert or update an entry (placement, rejoin, callback, retry state)."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self._write([(f"INSERT OR REPLACE INTO queue_entries ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                      _row(entry))])

    def delete(self, entry_id: str) -> None:
        self._write([("DELETE FROM queue_entries WHERE id = ?", (entry_id,))])

    def complete(self, entry: QueueEntry, wait_s: float, at: float) -> CompletionStats:
        """The entry was taken by an operator: remove it and count its wait, atomically."""
        self._write([
            ("DELETE FROM queue_entries WHERE id = ?", (entry.id,)),
            ("INSERT INTO queue_stats (scope, ref, completed_count, total_wait_s, updated_at) VALUES (?, ?, 1, ?, ?) "
             "ON CONFLICT (scope, ref) DO UPDATE SET completed_count = completed_count + 1, "
             "total_wait_s = total_wait_s + excluded.total_wait_s, updated_at = excluded.updated_at",
             (entry.scope, entry.ref, max(0.0, wait_s), at)),
        ])
        return self.stats(entry.scope, entry.ref)

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise QueueStoreError(f"queue state database {self.path}: write failed: {exc}") from exc

    # ---- reads ------------------------------------------------------------------------------
    def load(self) -> list[QueueEntry]:
        """Every stored entry, in queue order (position, then enqueue time)."""
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM queue_entries ORDER BY position, created_at")
        return [_entry(dict(zip(_COLUMNS, row))) for row in rows]

    def stats(self, scope: str, ref: str) -> CompletionStats:
        row = self._db.execute("SELECT completed_count, total_wait_s, updated_at FROM queue_stats "
                               "WHERE scope = ? AND ref = ?", (scope, ref)).fetchone()
        return CompletionStats(*row) if row else CompletionStats()

    def all_stats(self) -> dict[tuple[str, str], CompletionStats]:
        rows = self._db.execute("SELECT scope, ref, completed_count, total_wait_s, updated_at FROM queue_stats")
        return {(scope, ref): CompletionStats(count, total, at) for scope, ref, count, total, at in rows}

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass


def _row(entry: QueueEntry) -> tuple:
    return (entry.id, entry.scope, entry.ref, entry.position, entry.leg_id, entry.trunk_ref, entry.mode.value,
            int(entry.callback_enabled), entry.retry_count, entry.retry_attempts, entry.retry_pause_s,
            entry.retry_not_before, int(entry.placed_published), entry.created_at, json.dumps(entry.dial.to_json()))


def _entry(row: dict) -> QueueEntry:
    # A stored entry is never dispatching: its operator dial died with the process.
    return QueueEntry(
        id=row["id"], scope=row["scope"], ref=row["ref"], trunk_ref=row["trunk_ref"],
        dial=DialConfig.from_json(json.loads(row["dial_config"])), created_at=float(row["created_at"]),
        position=int(row["position"]), leg_id=row["leg_id"], retry_attempts=int(row["retry_attempts"]),
        retry_pause_s=float(row["retry_pause_s"]), mode=EntryMode(row["mode"]), state=EntryState.IDLE,
        callback_enabled=bool(row["callback_enabled"]), retry_not_before=float(row["retry_not_before"]),
        retry_count=int(row["retry_count"]), placed_published=bool(row["placed_published"]))
