"""The state store: runs, steps, items, events and run locks, in SQLite (default) or PostgreSQL.

One SQL implementation serves both backends; a backend only supplies connections, placeholders and the few DDL
words that differ. SQLite runs in WAL mode with ``synchronous=FULL``. The schema carries an explicit version;
:data:`MIGRATIONS` upgrade older stores in place, and a store written by a newer migrator is refused.

Nothing here ever holds a secret: params are stored as hashes, outputs and memos are written by steps that
are forbidden to put secrets in them, and every event message passes the redactor first.

A store can be shared across machines (PostgreSQL): the run lock records host, pid, a heartbeat and an expiry,
so a runner on another machine can tell a live holder from a lost one. Every acquisition of a run's lock gets the
next *generation* of that run (a fencing token, kept in ``fences`` for as long as the run exists). A store that
:meth:`StateStore.hold` a lock checks, inside every write transaction, that the lock is still the one it holds:
a runner that was paused past its lock's expiry and taken over finds :class:`LockLost` at its first write and
writes nothing more.

Longer than the house's ~600 lines because one module keeps every statement the store runs, for both backends,
beside the schema, its migrations and the lock and fencing checks that must share those transactions; opening
a store from a ``--state`` spec (its checks of paths and URLs) is the part that could stand alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import sqlite3
import stat
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from migrator.errors import (
    InputError,
    LockHeld,
    LockLost,
    RunExists,
    RunNotFound,
    StateError,
    StateVersionError,
    StoreNotFound,
)
from migrator.step import ItemRecord

SCHEMA_VERSION = 3
DEFAULT_STATE_DIR = ".migrator"
LOCK_TTL_SECONDS = 60.0


# ------------------------------------------------------------------------------------------------------- records


class RunStatus(StrEnum):
    """A run's status as the state store keeps it (the values are the stored text)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


class StepStatus(StrEnum):
    """A step's status as the state store keeps it (the values are the stored text)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


@dataclass
class RunRecord:
    run_id: str
    playbook_name: str
    playbook_path: str
    playbook_text: str
    environment_path: str | None
    environment_text: str | None
    status: str
    created_at: float
    updated_at: float
    finished_at: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    tenant: str | None = None


@dataclass
class StepRecord:
    run_id: str
    step_id: str
    kind: str
    status: str = StepStatus.PENDING
    params_hash: str | None = None
    attempts: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None
    applied: bool = False
    seq: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    estimate: dict[str, Any] | None = None


@dataclass
class Event:
    id: int
    run_id: str
    step_id: str | None
    ts: float
    type: str
    message: str
    data: dict[str, Any]


@dataclass
class LockInfo:
    run_id: str
    host: str
    pid: int
    token: str
    acquired_at: float
    heartbeat_at: float
    expires_at: float
    #: The run's lock generation this holder was given: the next acquisition gets a higher one.
    generation: int = 0

    def describe(self) -> str:
        return (f"host {self.host} pid {self.pid} (generation {self.generation}, heartbeat "
                f"{time.time() - self.heartbeat_at:.0f}s ago)")

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why this lock no longer protects a live runner, or None when it does."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"its process {self.pid} on {self.host} is gone"
        if self.expires_at < now:
            return f"its heartbeat expired {now - self.expires_at:.0f}s ago"
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) holds nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


# ----------------------------------------------------------------------------------------------------- schema


def _ddl_v1(serial: str, real: str) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY, playbook_name TEXT NOT NULL, playbook_path TEXT NOT NULL,
            playbook_text TEXT NOT NULL, environment_path TEXT, environment_text TEXT, status TEXT NOT NULL,
            created_at {real} NOT NULL, updated_at {real} NOT NULL, finished_at {real}, options TEXT NOT NULL,
            error TEXT, tenant TEXT)""",
        f"""CREATE TABLE IF NOT EXISTS steps (
            run_id TEXT NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
            params_hash TEXT, attempts INTEGER NOT NULL DEFAULT 0, outputs TEXT NOT NULL DEFAULT '{{}}',
            memo TEXT NOT NULL DEFAULT '{{}}', error TEXT, note TEXT, applied INTEGER NOT NULL DEFAULT 0,
            seq INTEGER, started_at {real}, finished_at {real}, PRIMARY KEY (run_id, step_id))""",
        f"""CREATE TABLE IF NOT EXISTS items (
            run_id TEXT NOT NULL, step_id TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
            bytes BIGINT NOT NULL DEFAULT 0, checksum TEXT, detail TEXT, updated_at {real} NOT NULL,
            PRIMARY KEY (run_id, step_id, key))""",
        f"""CREATE TABLE IF NOT EXISTS events (
            id {serial}, run_id TEXT NOT NULL, step_id TEXT, ts {real} NOT NULL, type TEXT NOT NULL,
            message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{{}}')""",
        "CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id)",
        f"""CREATE TABLE IF NOT EXISTS locks (
            run_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, token TEXT NOT NULL,
            acquired_at {real} NOT NULL, heartbeat_at {real} NOT NULL, expires_at {real} NOT NULL)""",
    ]


def _migrate_v1_to_v2(exec_: Callable[[str], None]) -> None:
    """v2 keeps each step's forecast beside its actual timings, for forecast-against-actual reports."""
    exec_("ALTER TABLE steps ADD COLUMN estimate TEXT")


def _migrate_v2_to_v3(exec_: Callable[[str], None]) -> None:
    """v3 fences run locks: each lock carries its generation, and ``fences`` keeps a run's last generation after
    the lock is released, so generations only ever grow."""
    exec_("ALTER TABLE locks ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
    exec_("CREATE TABLE IF NOT EXISTS fences (run_id TEXT PRIMARY KEY, generation INTEGER NOT NULL)")


#: from-version → migration. Each runs in one transaction and bumps the version by one.
MIGRATIONS: dict[int, Callable[[Callable[[str], None]], None]] = {1: _migrate_v1_to_v2, 2: _migrate_v2_to_v3}


# ---------------------------------------------------------------------------------------------------- backends


class _Backend(ABC):
    serial: str
    real: str
    placeholder: str
    begin_write: str
    share_clause: str

    @abstractmethod
    def connect(self, create: bool = True) -> Any:
        """A connection; with ``create=False`` nothing is made: no file, no directory."""

    @abstractmethod
    def begin_exclusive(self, conn: Any) -> None:
        """Starts a transaction that serializes writers (for the lock)."""

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    @abstractmethod
    def describe(self) -> str: ...

    def on_hold(self, conn: Any, lock: LockInfo | None) -> None:
        """Called when the store starts (or stops) holding ``lock``."""
        return None

    def session_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the store ended this connection (so what it was writing did not commit)."""
        return False

    @abstractmethod
    def has_table(self, conn: Any, name: str) -> bool: ...


class _SqliteBackend(_Backend):
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "REAL"
    placeholder = "?"
    # A write transaction takes SQLite's write lock at once, so what it reads (the fence) is what it writes on.
    begin_write = "BEGIN IMMEDIATE"
    share_clause = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self, create: bool = True) -> sqlite3.Connection:
        if create:
            made = _make_dirs(self.path.parent)
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            except BaseException:
                _remove_dirs(made)
                raise
        else:
            if not self.path.is_file():
                raise StoreNotFound(f"there is no state store at {self.path}")
            # mode=rw never creates the file, not even when it vanished a moment ago
            conn = sqlite3.connect(self.path.absolute().as_uri() + "?mode=rw", uri=True, timeout=30.0,
                                   isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
        except BaseException:
            conn.close()
            raise
        return conn

    def begin_exclusive(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def describe(self) -> str:
        return str(self.path)

    def has_table(self, conn: Any, name: str) -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None


class _PostgresBackend(_Backend):
    serial = "BIGSERIAL PRIMARY KEY"
    real = "DOUBLE PRECISION"
    placeholder = "%s"
    begin_write = "BEGIN"
    # The fence row stays key-share-locked until the write commits: a take-over (which deletes the row) waits for
    # it and never slips between; the holder's own heartbeat (a non-key update) does not.
    share_clause = " FOR KEY SHARE"

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self, create: bool = True) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            why = _mask_password(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise StateError(f"cannot open the state store {self.describe()}: {why}",
                             hint="check the --state URL and that PostgreSQL answers") from exc
        return conn

    def begin_exclusive(self, conn: Any) -> None:
        conn.execute("BEGIN")
        # One advisory lock for all lock-table writers of this database: simple, and locks are rare.
        conn.execute("SELECT pg_advisory_xact_lock(727271)")

    def has_table(self, conn: Any, name: str) -> bool:
        return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None

    def on_hold(self, conn: Any, lock: LockInfo | None) -> None:
        # A holder frozen inside a write (a paused process keeps its transaction, and the lock row's lock, open)
        # would block its successor's take-over for ever: the server ends such a transaction once it has idled
        # for the lock's time to live, when the lease is gone anyway.
        if lock is None:
            conn.execute("RESET idle_in_transaction_session_timeout")
        else:
            ttl_ms = max(1000, round((lock.expires_at - lock.heartbeat_at) * 1000))
            conn.execute(f"SET idle_in_transaction_session_timeout = {int(ttl_ms)}")

    def session_lost(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.OperationalError)

    def describe(self) -> str:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ------------------------------------------------------------------------------------------------------- store


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class StateStore:
    """Runs, steps, items, events and locks. Thread-safe: one connection, one lock, short transactions."""

    def __init__(self, backend: _Backend, *, create: bool = True) -> None:
        """Opens the store; ``create=False`` (commands that only read) makes nothing and raises
        :class:`StoreNotFound` where there is no store yet."""
        self.backend = backend
        self._lock = threading.RLock()
        self._fence: LockInfo | None = None
        self._conn = backend.connect(create=create)
        try:
            self._migrate(create=create)
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.close()
            raise

    # -------------------------------------------------------------------------------------------- plumbing

    def describe(self) -> str:
        return self.backend.describe()

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):  # closing twice or a dead connection: nothing lost
            self._conn.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self.backend.sql(sql), tuple(params))

    def _tx(self, *, fenced: bool = True, lost_is_fenced: bool = False) -> _Tx:
        return _Tx(self, fenced=fenced, lost_is_fenced=lost_is_fenced)

    def hold(self, lock: LockInfo | None) -> None:
        """Fences every later write of this store on ``lock`` (None: no fence): a write made after the lock was
        taken over or broken raises :class:`LockLost` and changes nothing."""
        with self._lock:
            self._fence = lock
            try:
                self.backend.on_hold(self._conn, lock)
            except Exception as exc:
                if lock is not None or not self.backend.session_lost(exc):
                    raise

    @property
    def fence(self) -> LockInfo | None:
        return self._fence

    def _check_fence(self) -> None:
        """Inside a write transaction: is the held lock still this store's? (Raises :class:`LockLost`.)"""
        fence = self._fence
        if fence is None:
            return
        row = self._exec(f"SELECT generation FROM locks WHERE run_id = ? AND token = ?{self.backend.share_clause}",
                         (fence.run_id, fence.token)).fetchone()
        if row is None:
            raise LockLost(f"run {fence.run_id}: this runner's lock (generation {fence.generation}) was taken over "
                           "or broken; it does nothing more", hint=f"see who holds it: migrator status {fence.run_id}")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._exec(sql, params).fetchall())
            except Exception as exc:
                if not self.backend.session_lost(exc):
                    raise
                fence = self._fence
                if fence is not None:
                    raise LockLost(f"run {fence.run_id}: the state store ended this runner's session (it was paused "
                                   "past the lock's time to live); it does nothing more",
                                   hint=f"see who holds it: migrator status {fence.run_id}") from exc
                raise StateError(f"the state store {self.describe()} closed the connection",
                                 hint="check that PostgreSQL answers, then run the command again") from exc

    def _schema_version(self) -> int | None:
        if not self.backend.has_table(self._conn, "meta"):
            return None
        rows = self._exec("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        return int(rows[0][0]) if rows else None

    def _migrate(self, *, create: bool = True) -> None:
        """Creates (unless ``create=False``) or upgrades the schema, one exclusive transaction, so concurrent
        openers agree."""
        with self._lock:
            self.backend.begin_exclusive(self._conn)
            try:
                version = self._schema_version()
                if version is None and not create:
                    raise StoreNotFound(f"there is no state store at {self.describe()}")
                if version is None:
                    for stmt in _ddl_v1(self.backend.serial, self.backend.real):
                        self._exec(stmt)
                    self._exec("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
                    version = 1
                if version > SCHEMA_VERSION:
                    raise StateVersionError(
                        f"the state store {self.describe()} has schema version {version}; this migrator knows "
                        f"up to {SCHEMA_VERSION}", hint="upgrade migrator to read it")
                while version < SCHEMA_VERSION:
                    MIGRATIONS[version](lambda stmt: self._exec(stmt))
                    version += 1
                    self._exec("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
                self._exec("COMMIT")
            except BaseException:
                self._exec("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._schema_version() or 0

    # -------------------------------------------------------------------------------------------------- runs

    def create_run(self, run: RunRecord) -> None:
        with self._tx():
            if self._exec("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                raise RunExists(f"run {run.run_id} exists already", hint=f"use: migrator resume {run.run_id}")
            self._exec(
                "INSERT INTO runs (run_id, playbook_name, playbook_path, playbook_text, environment_path, "
                "environment_text, status, created_at, updated_at, finished_at, options, error, tenant) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, run.playbook_name, run.playbook_path, run.playbook_text, run.environment_path,
                 run.environment_text, run.status, run.created_at, run.updated_at, run.finished_at,
                 _dumps(run.options), run.error, run.tenant))

    _RUN_COLS = ("run_id, playbook_name, playbook_path, playbook_text, environment_path, environment_text, status, "
                 "created_at, updated_at, finished_at, options, error, tenant")

    def _run_from_row(self, row: tuple[Any, ...]) -> RunRecord:
        return RunRecord(run_id=row[0], playbook_name=row[1], playbook_path=row[2], playbook_text=row[3],
                         environment_path=row[4], environment_text=row[5], status=row[6], created_at=row[7],
                         updated_at=row[8], finished_at=row[9], options=json.loads(row[10] or "{}"),
                         error=row[11], tenant=row[12])

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query(f"SELECT {self._RUN_COLS} FROM runs WHERE run_id = ?", (run_id,))
        return self._run_from_row(rows[0]) if rows else None

    def require_run(self, run_id: str) -> RunRecord:
        run = self.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} in the state store {self.describe()}",
                              hint="list them with: migrator runs")
        return run

    def list_runs(self) -> list[RunRecord]:
        rows = self._query(f"SELECT {self._RUN_COLS} FROM runs ORDER BY created_at DESC")
        return [self._run_from_row(r) for r in rows]

    def update_run(self, run_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        if "options" in fields:
            fields["options"] = _dumps(fields["options"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx():
            self._exec(f"UPDATE runs SET {cols} WHERE run_id = ?", (*fields.values(), run_id))

    # ------------------------------------------------------------------------------------------------- steps

    _STEP_COLS = ("run_id, step_id, kind, status, params_hash, attempts, outputs, memo, error, note, applied, seq, "
                  "started_at, finished_at, estimate")

    def _step_from_row(self, row: tuple[Any, ...]) -> StepRecord:
        return StepRecord(run_id=row[0], step_id=row[1], kind=row[2], status=row[3], params_hash=row[4],
                          attempts=row[5], outputs=json.loads(row[6] or "{}"), memo=json.loads(row[7] or "{}"),
                          error=row[8], note=row[9], applied=bool(row[10]), seq=row[11], started_at=row[12],
                          finished_at=row[13], estimate=json.loads(row[14]) if row[14] else None)

    def get_steps(self, run_id: str) -> dict[str, StepRecord]:
        rows = self._query(f"SELECT {self._STEP_COLS} FROM steps WHERE run_id = ?", (run_id,))
        return {r[1]: self._step_from_row(r) for r in rows}

    def get_step(self, run_id: str, step_id: str) -> StepRecord | None:
        rows = self._query(f"SELECT {self._STEP_COLS} FROM steps WHERE run_id = ? AND step_id = ?",
                           (run_id, step_id))
        return self._step_from_row(rows[0]) if rows else None

    def save_step(self, record: StepRecord, event: tuple[str, str, dict[str, Any]] | None = None) -> None:
        """Saves the step; with ``event`` (type, message, data), adds that event in the same transaction (one
        commit, one fsync, instead of two)."""
        values = (record.run_id, record.step_id, record.kind, record.status, record.params_hash, record.attempts,
                  _dumps(record.outputs), _dumps(record.memo), record.error, record.note, int(record.applied),
                  record.seq, record.started_at, record.finished_at,
                  _dumps(record.estimate) if record.estimate is not None else None)
        cols = self._STEP_COLS.split(", ")
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols[2:])
        with self._tx():
            self._exec(f"INSERT INTO steps ({self._STEP_COLS}) VALUES ({', '.join('?' * len(cols))}) "
                       f"ON CONFLICT (run_id, step_id) DO UPDATE SET {updates}", values)
            if event is not None:
                self._insert_event(record.run_id, record.step_id, *event)

    def _insert_event(self, run_id: str, step_id: str | None, type: str, message: str, data: dict[str, Any],
                      ts: float | None = None) -> None:
        self._exec("INSERT INTO events (run_id, step_id, ts, type, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                   (run_id, step_id, ts if ts is not None else time.time(), type, message, _dumps(data)))

    def set_memo(self, run_id: str, step_id: str, memo: dict[str, Any]) -> None:
        with self._tx():
            self._exec("UPDATE steps SET memo = ? WHERE run_id = ? AND step_id = ?", (_dumps(memo), run_id, step_id))

    def next_seq(self, run_id: str) -> int:
        rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM steps WHERE run_id = ?", (run_id,))
        return int(rows[0][0]) + 1

    # ------------------------------------------------------------------------------------------------- items

    def write_items(self, run_id: str, step_id: str, records: Iterable[ItemRecord]) -> None:
        now = time.time()
        rows = [(run_id, step_id, r.key, r.status, r.bytes, r.checksum,
                 _dumps(r.detail) if r.detail is not None else None, now) for r in records]
        if not rows:
            return
        sql = self.backend.sql(
            "INSERT INTO items (run_id, step_id, key, status, bytes, checksum, detail, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, step_id, key) DO UPDATE SET "
            "status = excluded.status, bytes = excluded.bytes, checksum = excluded.checksum, "
            "detail = excluded.detail, updated_at = excluded.updated_at")
        with self._tx():
            if isinstance(self.backend, _PostgresBackend):
                # COPY into a session-private staging table, then one upsert: a statement per row would cap
                # PostgreSQL at a few thousand checkpoints a second
                self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS items_in (LIKE items) ON COMMIT DELETE ROWS")
                with self._conn.cursor().copy(
                        "COPY items_in (run_id, step_id, key, status, bytes, checksum, detail, updated_at) "
                        "FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                self._conn.execute(
                    "INSERT INTO items SELECT * FROM items_in "
                    "ON CONFLICT (run_id, step_id, key) DO UPDATE SET status = excluded.status, "
                    "bytes = excluded.bytes, checksum = excluded.checksum, detail = excluded.detail, "
                    "updated_at = excluded.updated_at")
            else:
                self._conn.executemany(sql, rows)

    @staticmethod
    def _item(row: tuple[Any, ...]) -> ItemRecord:
        return ItemRecord(key=row[0], status=row[1], bytes=row[2], checksum=row[3],
                          detail=json.loads(row[4]) if row[4] is not None else None)

    def get_item(self, run_id: str, step_id: str, key: str) -> ItemRecord | None:
        rows = self._query("SELECT key, status, bytes, checksum, detail FROM items "
                           "WHERE run_id = ? AND step_id = ? AND key = ?", (run_id, step_id, key))
        return self._item(rows[0]) if rows else None

    def iter_items(self, run_id: str, step_id: str, status: str | None = None,
                   page: int = 5000) -> Iterator[ItemRecord]:
        """Items in key order, a page at a time (an inventory may hold hundreds of thousands)."""
        last = ""
        while True:
            sql = ("SELECT key, status, bytes, checksum, detail FROM items WHERE run_id = ? AND step_id = ? "
                   "AND key > ?")
            params: list[Any] = [run_id, step_id, last]
            if status is not None:
                sql += " AND status = ?"
                params.append(status)
            sql += f" ORDER BY key LIMIT {int(page)}"
            rows = self._query(sql, params)
            for row in rows:
                yield self._item(row)
            if len(rows) < page:
                return
            last = rows[-1][0]

    def item_keys(self, run_id: str, step_id: str, status: str | None = "done") -> set[str]:
        sql = "SELECT key FROM items WHERE run_id = ? AND step_id = ?"
        params: list[Any] = [run_id, step_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        return {r[0] for r in self._query(sql, params)}

    def count_items(self, run_id: str, step_id: str, status: str | None = "done") -> tuple[int, int]:
        """How many items, and their bytes."""
        sql = "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM items WHERE run_id = ? AND step_id = ?"
        params: list[Any] = [run_id, step_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        row = self._query(sql, params)[0]
        return int(row[0]), int(row[1])

    def clear_items(self, run_id: str, step_id: str) -> None:
        with self._tx():
            self._exec("DELETE FROM items WHERE run_id = ? AND step_id = ?", (run_id, step_id))

    # ------------------------------------------------------------------------------------------------ events

    def add_event(self, run_id: str, step_id: str | None, type: str, message: str,
                  data: dict[str, Any] | None = None, ts: float | None = None) -> None:
        with self._tx():
            self._insert_event(run_id, step_id, type, message, data or {}, ts)

    def events(self, run_id: str, after_id: int = 0) -> list[Event]:
        rows = self._query("SELECT id, run_id, step_id, ts, type, message, data FROM events "
                           "WHERE run_id = ? AND id > ? ORDER BY id", (run_id, after_id))
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "{}")) for r in rows]

    # ------------------------------------------------------------------------------------------------- locks

    def acquire_lock(self, run_id: str, *, ttl: float = LOCK_TTL_SECONDS) -> tuple[LockInfo, str | None]:
        """Takes the run's lock; returns it and, when a stale lock was taken over, why it was stale.

        Raises :class:`LockHeld` naming the holder when a live runner has it.
        """
        now = time.time()
        mine = LockInfo(run_id, socket.gethostname(), os.getpid(), uuid.uuid4().hex, now, now, now + ttl)
        with self._lock:
            self.backend.begin_exclusive(self._conn)
            try:
                row = self._exec("SELECT generation FROM fences WHERE run_id = ?", (run_id,)).fetchone()
                mine.generation = (int(row[0]) if row else 0) + 1
                current = self._get_lock_unlocked(run_id)
                stale = None
                if current is not None:
                    stale = current.stale_reason(now)
                    if stale is None:
                        raise LockHeld(f"run {run_id} is locked by {current.describe()}",
                                       hint=f"wait for it, or if that runner is gone: migrator unlock {run_id}")
                    stale = f"took over a stale lock of {current.host} pid {current.pid}: {stale}"
                    self._exec("DELETE FROM locks WHERE run_id = ?", (run_id,))
                self._exec("INSERT INTO locks (run_id, host, pid, token, acquired_at, heartbeat_at, expires_at, "
                           "generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (mine.run_id, mine.host, mine.pid, mine.token, mine.acquired_at, mine.heartbeat_at,
                            mine.expires_at, mine.generation))
                self._exec("INSERT INTO fences (run_id, generation) VALUES (?, ?) ON CONFLICT (run_id) "
                           "DO UPDATE SET generation = excluded.generation", (run_id, mine.generation))
                self._exec("COMMIT")
            except BaseException:
                self._exec("ROLLBACK")
                raise
        return mine, stale

    def _get_lock_unlocked(self, run_id: str) -> LockInfo | None:
        row = self._exec("SELECT run_id, host, pid, token, acquired_at, heartbeat_at, expires_at, generation "
                         "FROM locks WHERE run_id = ?", (run_id,)).fetchone()
        return LockInfo(*row) if row else None

    def get_lock(self, run_id: str) -> LockInfo | None:
        with self._lock:
            return self._get_lock_unlocked(run_id)

    def heartbeat(self, lock: LockInfo, ttl: float = LOCK_TTL_SECONDS) -> bool:
        """Extends the lock; False when it is no longer ours (broken or taken over)."""
        now = time.time()
        with self._tx(fenced=False):
            cur = self._exec("UPDATE locks SET heartbeat_at = ?, expires_at = ? WHERE run_id = ? AND token = ?",
                             (now, now + ttl, lock.run_id, lock.token))
            return bool(cur.rowcount)

    def release_lock(self, lock: LockInfo) -> None:
        with contextlib.suppress(LockLost), self._tx(fenced=False, lost_is_fenced=True):
            self._exec("DELETE FROM locks WHERE run_id = ? AND token = ?", (lock.run_id, lock.token))

    def break_lock(self, run_id: str) -> LockInfo | None:
        with self._tx(fenced=False):
            current = self._get_lock_unlocked(run_id)
            self._exec("DELETE FROM locks WHERE run_id = ?", (run_id,))
        return current


class _Tx:
    """A write transaction on the store's connection, serialized by the store's lock."""

    def __init__(self, store: StateStore, *, fenced: bool = True, lost_is_fenced: bool = False) -> None:
        self.store = store
        self.fenced = fenced
        #: A session ended by the server counts as a lost lock even for an unfenced write (the release).
        self.lost_is_fenced = lost_is_fenced or fenced

    def __enter__(self) -> _Tx:
        self.store._lock.acquire()
        try:
            self.store._conn.execute(self.store.backend.begin_write)
        except BaseException as exc:
            self.store._lock.release()
            self._lost(exc)
            raise
        if self.fenced:
            try:
                self.store._check_fence()
            except BaseException:
                try:
                    self.store._conn.execute("ROLLBACK")
                finally:
                    self.store._lock.release()
                raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.store._conn.execute("ROLLBACK" if exc_type else "COMMIT")
        except BaseException as failed:
            self._lost(failed if exc is None else exc)
            raise
        finally:
            self.store._lock.release()
        if exc is not None:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        """A fenced store whose session the server ended (it idled in a transaction past the lock's time to
        live: the process was paused) has lost its lock: say so, rather than fail as a store fault."""
        fence = self.store._fence
        if fence is not None and self.lost_is_fenced and self.store.backend.session_lost(exc):
            raise LockLost(f"run {fence.run_id}: the state store ended this runner's session (it was paused inside "
                           f"a write past the lock's time to live); it does nothing more",
                           hint=f"see who holds it: migrator status {fence.run_id}") from exc


def open_store(spec: str | os.PathLike[str] | None = None, *, create: bool = True) -> StateStore:
    """Opens the state store named by ``--state`` / ``MIGRATOR_STATE``: a directory, a ``.db`` file, or a
    postgresql:// URL.

    Only ``run`` creates a store: with ``create=False`` nothing is made (no directory, no file, no table) and a
    missing store raises :class:`StoreNotFound`. A spec that can never name a store raises :class:`InputError`
    before anything happens; a store that cannot be reached or read raises :class:`StateError` saying what to do.
    """
    spec = os.fspath(spec) if spec is not None else os.environ.get("MIGRATOR_STATE") or DEFAULT_STATE_DIR
    if not spec.strip():
        raise InputError("--state is empty", hint="give a directory or a postgresql:// URL")
    url = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(//)?", spec)  # a scheme, and whether "//" follows it
    postgres = url is not None and url[1].lower() in ("postgres", "postgresql")
    if url is not None and (url[2] or postgres):
        if not (postgres and url[2]):
            raise InputError(f"--state {_mask_password(spec)}: not a directory and not a postgresql:// URL",
                             hint="give a directory, a .db file or postgresql://USER@HOST:PORT/DATABASE")
        return _open_postgres(_checked_postgres_url(spec), create)
    path = Path(spec)
    db = path if path.suffix.lower() in (".db", ".sqlite", ".sqlite3") else path / "state.db"
    _check_sqlite_path(spec, db)
    try:
        return StateStore(_SqliteBackend(db), create=create)
    except sqlite3.DatabaseError as exc:
        damaged = any(w in str(exc) for w in ("not a database", "malformed", "corrupt"))
        raise StateError(f"cannot open the state store {db}: {exc}",
                         hint="it is damaged: move it aside (keep it for support) and restore it from a backup"
                         if damaged else "check that the state directory and its files can be read and written"
                         ) from exc


def _open_postgres(url: str, create: bool) -> StateStore:
    import psycopg

    backend = _PostgresBackend(url)
    try:
        return StateStore(backend, create=create)
    except psycopg.Error as exc:
        why = _mask_password(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise StateError(f"cannot use the state store {backend.describe()}: {why}",
                         hint="check the --state URL's user can create and write tables in that database") from exc


def _mask_password(text: str) -> str:
    """``text`` (a URL, or a message quoting one) with the password of any URL in it masked."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password=)[^&\s]*", r"\1***", text, flags=re.IGNORECASE)


def _checked_postgres_url(url: str) -> str:
    """The URL, once libpq can parse it, every port is a port and it names a database (libpq would otherwise
    quietly use a default one)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    shown = _mask_password(url)
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        why = _mask_password(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise InputError(f"--state {shown}: not a valid PostgreSQL URL: {why}",
                         hint="the form is postgresql://USER@HOST:PORT/DATABASE") from exc
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise InputError(f"--state {shown}: port {port!r} is not a number from 1 to 65535")
    if not params.get("dbname"):
        raise InputError(f"--state {shown}: the URL names no database",
                         hint="add it: postgresql://USER@HOST:PORT/DATABASE")
    return url


def _check_sqlite_path(spec: str, db: Path) -> None:
    """Refuses (exit 2) a ``--state`` path that can never hold the store ``db``, before anything is made: a file
    where a directory must be, a directory where the file must be, a name too long, a symlink loop."""
    for part in db.parts:
        if len(os.fsencode(part)) > 255:
            raise InputError(f"--state: the name {part[:24]}… is longer than 255 bytes")
    current = db
    while True:
        try:
            mode = os.stat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if current.parent == current:
                return
            current = current.parent
            continue
        except PermissionError as exc:
            raise StateError(f"cannot reach the state store {db}: {current}: {exc.strerror}",
                             hint="choose a --state you can read and write, or fix its permissions") from exc
        except OSError as exc:  # a symlink loop, a path too long
            raise InputError(f"--state {spec}: {current}: {exc.strerror}") from exc
        if current == db and stat.S_ISDIR(mode):
            raise InputError(f"--state {spec}: {db} is a directory, not a database file",
                             hint="give a directory (its state.db is the store) or the path of a .db file")
        if current != db and not stat.S_ISDIR(mode):
            raise InputError(f"--state {spec}: {current} is a file, not a directory",
                             hint="give a directory (its state.db is the store) or the path of a .db file")
        return


def _make_dirs(directory: Path) -> list[Path]:
    """Makes ``directory`` and its missing parents; returns what it made, so a failure can take it back."""
    missing: list[Path] = []
    current = directory
    while not current.is_dir() and current.parent != current:
        missing.append(current)
        current = current.parent
    made: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            made.append(path)
    except OSError as exc:
        _remove_dirs(made)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            raise InputError(f"--state: cannot make the directory {directory}: {exc.strerror}") from exc
        raise StateError(f"cannot make the state directory {directory}: {exc.strerror}",
                         hint="choose a --state directory you can write, or fix its permissions") from exc
    return made


def _remove_dirs(made: list[Path]) -> None:
    for path in reversed(made):
        with contextlib.suppress(OSError):
            path.rmdir()
