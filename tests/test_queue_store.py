"""The durable queue store: SQLite in WAL mode, entries round-trip, completions are atomic, and
an unusable state directory is a clear error."""

from __future__ import annotations

import sqlite3

import pytest

from softswitch.queue.model import DialConfig, EntryMode, EntryState, QueueEntry
from softswitch.queue.store import DB_NAME, QueueStore, QueueStoreError


def entry(entry_id: str, position: int, **kw) -> QueueEntry:
    values = dict(id=entry_id, scope="flow", ref="support", trunk_ref="trunk_main",
                  dial=DialConfig(caller_number="5551234", caller_name="Alice", custom_headers=(("X-A", "1"),)),
                  created_at=1_700_000_000.25, position=position, leg_id=f"leg_{entry_id}")
    values.update(kw)
    return QueueEntry(**values)


def test_the_database_is_in_wal_mode_in_the_state_directory(tmp_path):
    store = QueueStore.in_directory(tmp_path / "state")
    assert store.path == tmp_path / "state" / DB_NAME and store.path.exists()
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()


def test_entries_round_trip_in_queue_order(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    second = entry("b", 2, mode=EntryMode.CALLBACK, leg_id=None, callback_enabled=True, retry_count=2,
                   retry_attempts=5, retry_pause_s=1.5, retry_not_before=1_700_000_100.5, placed_published=True)
    first = entry("a", 1)
    front = entry("c", -1, scope="other", ref="sales")
    for e in (second, first, front):
        store.save(e)
    store.close()
    loaded = QueueStore(tmp_path / "q.sqlite3").load()
    assert [e.id for e in loaded] == ["c", "a", "b"]
    b = loaded[2]
    for field in ("scope", "ref", "trunk_ref", "dial", "created_at", "position", "leg_id", "retry_attempts",
                  "retry_pause_s", "mode", "callback_enabled", "retry_not_before", "retry_count", "placed_published"):
        assert getattr(b, field) == getattr(second, field), field
    assert b.state is EntryState.IDLE and b.retention is None


def test_saving_again_updates_and_delete_removes(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    e = entry("a", 1)
    store.save(e)
    e.callback_enabled = True
    store.save(e)
    assert [x.callback_enabled for x in store.load()] == [True]
    store.delete("a")
    assert store.load() == []


def test_a_completion_removes_the_entry_and_counts_the_wait_together(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    a, b = entry("a", 1), entry("b", 2)
    store.save(a)
    store.save(b)
    stats = store.complete(a, 10.0, 1_700_000_010.0)
    assert (stats.completed_count, stats.average_wait_s) == (1, 10.0)
    stats = store.complete(b, 20.0, 1_700_000_020.0)
    assert (stats.completed_count, stats.average_wait_s, stats.updated_at) == (2, 15.0, 1_700_000_020.0)
    assert store.load() == []
    reopened = QueueStore(tmp_path / "q.sqlite3")
    assert reopened.all_stats()[("flow", "support")].completed_count == 2
    assert reopened.stats("flow", "sales").completed_count == 0


def test_an_unusable_state_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(QueueStoreError) as info:
        QueueStore.in_directory(blocker)
    assert str(blocker) in str(info.value) and "directories.state" in str(info.value)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / DB_NAME
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(QueueStoreError) as info:
        QueueStore(path)
    assert str(path) in str(info.value)
