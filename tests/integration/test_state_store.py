"""The state store on both backends: schema versions and migrations, items in batches, locks."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from migrator.errors import LockHeld, StateVersionError
from migrator.state import SCHEMA_VERSION, LockInfo, RunRecord, StepRecord, _ddl_v1, open_store
from migrator.step import ItemRecord


def make_run(run_id: str = "r1") -> RunRecord:
    now = time.time()
    return RunRecord(run_id, "pb", "/pb.yaml", "name: pb", None, None, "running", now, now)


def test_items_are_upserted_in_batches_and_paged_in_key_order(state_spec: str) -> None:
    store = open_store(state_spec)
    store.create_run(make_run())
    store.write_items("r1", "s", [ItemRecord(f"k{i:05d}", "done", i, f"c{i}") for i in range(12_000)])
    store.write_items("r1", "s", [ItemRecord("k00001", "failed", 0, None, {"why": "x"})])
    assert store.count_items("r1", "s", "done") == (11_999, sum(range(12_000)) - 1)
    keys = [r.key for r in store.iter_items("r1", "s", page=5000)]
    assert keys == sorted(keys) and len(keys) == 12_000
    assert store.get_item("r1", "s", "k00001") == ItemRecord("k00001", "failed", 0, None, {"why": "x"})
    store.clear_items("r1", "s")
    assert store.count_items("r1", "s", None) == (0, 0)


def test_step_records_round_trip_with_outputs_memo_and_estimate(state_spec: str) -> None:
    store = open_store(state_spec)
    store.create_run(make_run())
    rec = StepRecord("r1", "a", "shell", status="done", params_hash="abc", attempts=2, outputs={"n": 1},
                     memo={"token": "t"}, applied=True, seq=1, started_at=1.0, finished_at=2.0,
                     estimate={"seconds": 3.0})
    store.save_step(rec)
    assert store.get_step("r1", "a") == rec


def test_a_live_lock_is_refused_and_a_dead_one_taken_over(state_spec: str) -> None:
    store = open_store(state_spec)
    lock, stale = store.acquire_lock("r1")
    assert stale is None
    with pytest.raises(LockHeld, match="pid"):
        open_store(state_spec).acquire_lock("r1")
    assert store.heartbeat(lock)
    # pretend the holder's heartbeat stopped long ago (a lost laptop on another host)
    store.break_lock("r1")
    now = time.time()
    gone = LockInfo("r1", "other-host", 1, "tok", now - 600, now - 600, now - 540)
    store._exec("INSERT INTO locks (run_id, host, pid, token, acquired_at, heartbeat_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (gone.run_id, gone.host, gone.pid, gone.token, gone.acquired_at,
                                                 gone.heartbeat_at, gone.expires_at))
    mine, stale = open_store(state_spec).acquire_lock("r1")
    assert stale is not None and "other-host" in stale and "expired" in stale
    assert not store.heartbeat(lock)  # the old token no longer holds it
    assert store.get_lock("r1").token == mine.token


def test_version_1_store_is_migrated_in_place_keeping_its_runs(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as conn:
        for stmt in _ddl_v1("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL"):
            conn.execute(stmt)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO runs VALUES ('old', 'pb', '/p', 'name: pb', NULL, NULL, 'failed', 1, 1, NULL, "
                     "'{}', 'boom', 'contoso')")
        conn.execute("INSERT INTO steps (run_id, step_id, kind, status) VALUES ('old', 'a', 'shell', 'done')")
        conn.execute("INSERT INTO locks VALUES ('old', 'gone-host', 1, 'tok', 1, 1, 2)")
    store = open_store(tmp_path)
    assert store.schema_version == SCHEMA_VERSION == 3
    assert store.get_run("old").error == "boom"
    step = store.get_step("old", "a")
    assert step.status == "done" and step.estimate is None
    # v3: a lock written before fencing has generation 0; the next holder gets generation 1
    assert store.get_lock("old").generation == 0
    mine, stale = store.acquire_lock("old")
    assert stale is not None and mine.generation == 1


def test_store_from_a_newer_migrator_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateVersionError, match="99"):
        open_store(tmp_path)


def test_sqlite_store_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
