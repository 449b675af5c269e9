"""Database step kinds: read-only switch, portable backup to blob storage, resumable restore, fingerprints.

``database.read_only`` → ``database.backup`` → ``database.restore`` → ``database.verify`` is the path that works
for every target (Azure SQL Database cannot restore a native SQL Server backup). The dialects live in
:mod:`migrator.providers.database`; the backup format in :mod:`migrator.providers.database.backup`.
No row value is ever logged or written to an output: only table names, counts and checksums.
"""

from __future__ import annotations

import functools
import hashlib
import json
import queue
import statistics
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import model_validator

from migrator.errors import InputError, LockLost, PreconditionFailed, VerificationFailed
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.providers.blob.base import BlobStore
from migrator.providers.database import (
    MARKER_TABLE,
    Column,
    Database,
    DatabaseEndpoint,
    Fingerprint,
    Table,
    drift,
    encode_row,
    fk_order,
    open_database,
)
from migrator.providers.database.backup import (
    MANIFEST,
    ChunkInfo,
    ChunkWriter,
    Manifest,
    TableBackup,
    check_chunk,
    chunk_name,
    read_chunk_lines,
    read_manifest,
)
from migrator.providers.database.base import join_line, row_converter
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext

INSERT_BATCH = 5000
INSERT_BATCH_BYTES = 32 << 20


@contextmanager
def connected(endpoint: DatabaseEndpoint, ctx: StepContext, *, must_exist: bool = True) -> Iterator[Database]:
    db = open_database(endpoint, ctx, must_exist=must_exist)
    try:
        yield db
    finally:
        db.close()


def _selected(tables: Sequence[Table], names: Sequence[str] | None, where: str) -> list[Table]:
    if names is None:
        return list(tables)
    by_name = {t.name: t for t in tables}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"table {', '.join(missing)} not found in {where}")
    return [by_name[n] for n in names]


# -- estimates ----------------------------------------------------------------------------------------------
#
# A plan measures instead of assuming: what one connection, one catalog read and one count cost on each
# database now, what one blob request costs on the backup store, and how fast the biggest table reads through
# the backup's own read path. A step's forecast is then the operations its apply and verify make (counted from
# the code: the catalog reads, counts, chunk writes) times those costs, plus rows over the measured rate. On a
# small tenant the fixed costs are most of the time; on a big one the rows are.

#: Seconds a throughput probe may read at most (the plan's own cost).
PROBE_SECONDS = 0.5
#: Rows a restore inserts per second for each row the backup reads per second: inserting and committing costs
#: more than reading (measured on the demo: PostgreSQL through psqlODBC from SQLite, about a third).
INSERT_TO_READ = 0.35
#: A DDL statement (CREATE TABLE, a primary or foreign key) in catalog reads: it changes the catalog it reads.
DDL_IN_CATALOG_READS = 1.0


@dataclass
class DbCosts:
    """What basic operations cost on one database now (seconds), measured by :func:`measure_db`."""

    connect: float
    catalog: float
    count: float
    tables: list[Table]
    rows: dict[str, int]

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the seconds it took."""
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def measure_db(endpoint: DatabaseEndpoint, ctx: StepContext, names: Sequence[str] | None = None, *,
               must_exist: bool = True) -> tuple[DbCosts, Database]:
    """Opens ``endpoint`` and measures a connection, a catalog read and a count; the caller closes the database."""
    db, connect = timed(lambda: open_database(endpoint, ctx, must_exist=must_exist))
    try:
        tables, catalog = timed(db.tables)
        tables = _selected(tables, names, db.describe()) if tables or names is None else []
        rows: dict[str, int] = {}
        counts: list[float] = []
        for table in tables:
            rows[table.name], took = timed(functools.partial(db.count, table.name))
            counts.append(took)
        if len(counts) < 3 and tables:  # a few more, for a steadier figure
            smallest = min(tables, key=lambda t: rows[t.name])
            counts += [timed(lambda: db.count(smallest.name))[1] for _ in range(3 - len(counts))]
        count = statistics.median(counts) if counts else catalog
    except BaseException:
        db.close()
        raise
    return DbCosts(connect, catalog, count, tables, rows), db


def probe_read_rate(db: Database, tables: Sequence[Table], rows: Mapping[str, int], *,
                    seconds: float = PROBE_SECONDS, chunk_bytes: int = 64 << 20) -> tuple[float, float, int]:
    """Rows per second, raw bytes per row and rows read, reading the biggest table the way a backup does.

    Reads growing pages (1,000 rows, then twice as many) for at most ``seconds``; the database is only read.
    """
    if not tables:
        return 0.0, 0.0, 0
    table = max(tables, key=lambda t: rows.get(t.name, 0))
    convert = row_converter(db.read_converters(table.columns, table.columns))
    read = raw = 0
    spent = 0.0
    last_key: list[Any] | None = None
    limit = 1000
    while spent < seconds:
        started = time.perf_counter()
        writer, key, capped = read_chunk_rows(db, table, convert, last_key, read, limit, chunk_bytes)
        spent += time.perf_counter() - started
        read += writer.rows
        raw += writer.raw_bytes
        if not capped and writer.rows < limit:
            break
        last_key = key if key is not None else last_key
        limit *= 2
    if read == 0 or spent <= 0:
        return 0.0, 0.0, 0
    return read / spent, raw / read, read


@dataclass
class SourceProfile:
    """A database as a plan measured it: its costs, and its read rate through the backup's read path."""

    costs: DbCosts
    rows_per_second: float
    bytes_per_row: float
    probed_rows: int

    def read_seconds(self, rows: int) -> float:
        return rows / self.rows_per_second if self.rows_per_second > 0 else 0.0

    def basis(self) -> str:
        c = self.costs
        return (f"measured: {len(c.tables)} tables, {c.total_rows} rows, read {self.rows_per_second:,.0f} rows/s "
                f"({self.probed_rows} rows probed), connect {c.connect * 1000:.0f} ms, catalog read "
                f"{c.catalog * 1000:.0f} ms, count {c.count * 1000:.1f} ms")


def source_profile(endpoint: DatabaseEndpoint, ctx: StepContext, names: Sequence[str] | None = None) -> SourceProfile:
    """Measures ``endpoint`` once per plan (kept in ``ctx.resources``): later steps sizing from it reuse it."""
    key = f"estimate.source:{endpoint.describe()}:{','.join(names or [])}"
    found = ctx.resources.get(key)
    if isinstance(found, SourceProfile):
        return found
    costs, db = measure_db(endpoint, ctx, names)
    try:
        rate, per_row, probed = probe_read_rate(db, costs.tables, costs.rows)
    finally:
        db.close()
    profile = SourceProfile(costs, rate, per_row, probed)
    ctx.resources[key] = profile
    return profile


def _blob_request(store: BlobStore) -> float:
    """Seconds of one request to the backup store (reading the manifest, present or not)."""
    return timed(lambda: read_manifest(store))[1]


# -- database.read_only -------------------------------------------------------------------------------------


class ReadOnlyParams(Params):
    database: DatabaseEndpoint


class ReadOnly(Step[ReadOnlyParams]):
    """Switches the source database to read-only for the migration window.

    Changes: SQL Server ``ALTER DATABASE … SET READ_ONLY WITH ROLLBACK IMMEDIATE``; PostgreSQL
    ``default_transaction_read_only = on`` for the database, then ends its other sessions; SQLite aborting
    ``BEFORE INSERT/UPDATE/DELETE`` triggers on every table (it has no database-level switch).
    Done when: the switch is on and a write probe from a new session is rejected.
    Undone: switched off again, unless it was already on before this run.
    """

    kind = "database.read_only"
    Params = ReadOnlyParams
    summary = "switch a database to read-only (write probe proves it); rollback switches it back"

    def check(self, ctx: StepContext) -> CheckResult:
        with connected(self.params.database, ctx) as db:
            if not db.read_only():
                return CheckResult(False, f"{db.describe()} is writable")
            refusal = db.write_probe()
            if refusal is None:
                return CheckResult(False, f"{db.describe()} is marked read-only but a write probe was accepted")
            return CheckResult(True, f"{db.describe()} is read-only (write probe refused)")

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        return PlanResult([f"switch {self.params.database.describe()} to read-only"], state.reason,
                          Estimate(seconds=2.0, basis="one ALTER and ending open sessions"))

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        with connected(self.params.database, ctx) as db:
            if ctx.memo.get("was_read_only") is None:
                ctx.memo.set("was_read_only", db.read_only())
            db.set_read_only(True)
            ctx.event("database.read_only", f"{db.describe()} switched to read-only")
            return {"database": db.describe(), "read_only": True}

    def verify(self, ctx: StepContext) -> None:
        with connected(self.params.database, ctx) as db:
            if db.write_probe() is None:
                raise VerificationFailed(f"{db.describe()}: a write was accepted after switching to read-only",
                                         step_id=self.step_id)

    def compensate(self, ctx: StepContext) -> None:
        if ctx.memo.get("was_read_only"):
            return
        with connected(self.params.database, ctx) as db:
            db.set_read_only(False)
            ctx.event("database.read_write", f"{db.describe()} switched back to read-write")


# -- database.backup ----------------------------------------------------------------------------------------


class BackupParams(Params):
    database: DatabaseEndpoint
    to: BlobEndpoint
    #: Only these tables (default: every table of the schema).
    tables: list[str] | None = None
    chunk_rows: int = 50_000
    chunk_bytes: int = 64 << 20

    @model_validator(mode="after")
    def _sizes(self) -> BackupParams:
        if self.chunk_rows < 1 or self.chunk_bytes < 1024:
            raise ValueError("chunk_rows must be at least 1 and chunk_bytes at least 1024")
        return self


class Backup(Step[BackupParams]):
    """Writes a consistent, portable backup of the database to a blob store (folder or Azure container).

    Changes: writes chunk blobs and, last, ``manifest.json`` under the backup location; the database is only read.
    Done when: the manifest exists and its tables and row counts match the database now.
    Undone: nothing to undo in the database; the backup blobs are left in place.
    Resumes per chunk: chunks recorded done are not read again (consistency across a restart relies on the
    source being read-only, as ``database.read_only`` makes it; within one attempt reads share a snapshot).
    """

    kind = "database.backup"
    Params = BackupParams
    summary = "portable, chunked, checksummed backup of a database to blob storage (resumable)"

    def _store(self, ctx: StepContext) -> BlobStore:
        return open_blob_store(self.params.to, ctx, create=True)

    def check(self, ctx: StepContext) -> CheckResult:
        manifest = read_manifest(self._store(ctx))
        if manifest is None:
            return CheckResult(False, f"no backup manifest in {self.params.to.describe()}")
        with connected(self.params.database, ctx) as db:
            tables = _selected(db.tables(), self.params.tables, db.describe())
            for table in tables:
                backed = manifest.table(table.name)
                if backed is None:
                    return CheckResult(False, f"the backup lacks table {table.name}")
                if backed.table != table or backed.row_count != db.count(table.name):
                    return CheckResult(False, f"table {table.name} changed since the backup")
            return CheckResult(True, f"backup of {len(tables)} tables is complete in {self.params.to.describe()}",
                               _backup_outputs(manifest, self.params.to))

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        profile = source_profile(self.params.database, ctx, self.params.tables)
        blob = _blob_request(self._store(ctx))
        tables, rows = profile.costs.tables, profile.costs.total_rows
        seconds, chunks = backup_seconds(profile, blob, self.params.chunk_rows, self.params.chunk_bytes)
        raw = round(rows * profile.bytes_per_row)
        return PlanResult([f"back up {len(tables)} tables ({rows} rows) of {self.params.database.describe()} "
                           f"to {self.params.to.describe()}"], state.reason,
                          Estimate(seconds=seconds, items=chunks, bytes=raw,
                                   basis=f"{profile.basis()}; blob request {blob * 1000:.0f} ms"),
                          {"tables": len(tables), "rows": rows, "rows_per_table": dict(profile.costs.rows),
                           "raw_bytes": raw, "rows_per_second": round(profile.rows_per_second)})

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        store = self._store(ctx)
        with connected(self.params.database, ctx) as db, db.snapshot():
            tables = _selected(db.tables(), self.params.tables, db.describe())
            schema = [t.to_json() for t in tables]
            started = ctx.memo.get("schema")
            if started is None:
                ctx.memo.set("schema", schema)
                ctx.memo.set("created_at", ctx.clock.now().isoformat(timespec="seconds"))
            elif started != schema:
                raise PreconditionFailed(f"{db.describe()}: the schema changed since this backup began",
                                         step_id=self.step_id, hint="roll back and start the backup again")
            live = not db.read_only()
            if live:
                ctx.event("database.backup.live", f"{db.describe()} is not read-only: a presync backup; rows written "
                          "meanwhile are for the delta sync inside the read-only window to move")
            backups = []
            for index, table in enumerate(tables):
                ctx.raise_if_cancelled()
                backups.append(self._backup_table(ctx, store, db, index, table, live=live))
        manifest = Manifest(db.dialect, str(ctx.memo.get("created_at")), backups)
        store.write(MANIFEST, manifest.to_bytes(), content_type="application/json")
        return _backup_outputs(manifest, self.params.to)

    def _backup_table(self, ctx: StepContext, store: BlobStore, db: Database, index: int,
                      table: Table, *, live: bool = False) -> TableBackup:
        chunks: list[ChunkInfo] = []
        number = 0
        while (record := ctx.items.get(chunk_name(index, table.name, number))) is not None \
                and record.status == "done":
            chunks.append(ChunkInfo.from_json(record.detail))
            number += 1
        last_key = chunks[-1].last_key if chunks else None
        offset = (chunks[-1].end_offset or 0) if chunks else 0
        reads = self._chunk_reads(ctx, db, table, last_key, offset)

        def stored(done: Future[ChunkInfo]) -> None:
            chunk = done.result()
            chunks.append(chunk)
            ctx.progress(f"{table.name}: chunk {len(chunks) - 1} ({chunk.rows} rows)")

        # A writer thread compresses, hashes and stores chunk N while chunk N + 1 is read (zlib, hashlib and file
        # writes release the GIL); at most one chunk waits for it, so memory stays at two chunks.
        with ThreadPoolExecutor(1, thread_name_prefix="backup-writer") as writer_thread:
            pending: Future[ChunkInfo] | None = None
            for writer, key in reads:
                if writer.rows == 0 and (chunks or pending is not None):
                    continue
                ctx.raise_if_cancelled()
                offset += writer.rows
                if key is not None:
                    last_key = key
                chunk = ChunkInfo(chunk_name(index, table.name, number), writer.rows, 0, "", "",
                                  last_key if table.primary_key else None, None if table.primary_key else offset)
                if pending is not None:
                    stored(pending)
                pending = writer_thread.submit(self._store_chunk, ctx, store, writer, chunk)
                number += 1
            if pending is not None:
                stored(pending)
        total = Fingerprint()
        for chunk in chunks:
            total.merge(Fingerprint(chunk.rows, int(chunk.fingerprint, 16)))
        count = db.count(table.name)
        if total.rows != count and live:
            # While the tenant is live (a presync, resumed perhaps) the table moves under the backup: the backup
            # holds what its chunks hold, and database.sync moves the difference once the source is read-only.
            ctx.event("database.backup.moved", f"table {table.name}: {total.rows} rows backed up, {count} now "
                      "(the source is live)")
            count = total.rows
        elif total.rows != count:
            raise VerificationFailed(f"table {table.name}: {total.rows} rows backed up but the table holds {count}",
                                     step_id=self.step_id, retryable=False,
                                     hint="the source changed during the backup: switch it to read-only first")
        return TableBackup(table, count, total, chunks)

    def _chunk_reads(self, ctx: StepContext, db: Database, table: Table, last_key: list[Any] | None,
                      offset: int) -> Iterator[tuple[ChunkWriter, list[Any] | None]]:
        """Chunks read one after the other in this process: each starts where the one before ended."""
        convert = row_converter(db.read_converters(table.columns, table.columns))
        while True:
            ctx.raise_if_cancelled()
            writer, key, capped = read_chunk_rows(db, table, convert, last_key, offset, self.params.chunk_rows,
                                                  self.params.chunk_bytes)
            yield writer, key
            if not capped and writer.rows < self.params.chunk_rows:
                return
            last_key = key if key is not None else last_key
            offset += writer.rows

    @staticmethod
    def _store_chunk(ctx: StepContext, store: BlobStore, writer: ChunkWriter, chunk: ChunkInfo) -> ChunkInfo:
        data = writer.finish()
        chunk.bytes = len(data)
        chunk.sha256 = hashlib.sha256(data).hexdigest()
        chunk.fingerprint = writer.fingerprint.checksum
        chunk.text_md5 = writer.text_md5
        store.write(chunk.name, data, content_type="application/gzip")
        ctx.items.record(chunk.name, "done", bytes=chunk.bytes, checksum=chunk.sha256, detail=chunk.to_json())
        return chunk

    def verify(self, ctx: StepContext) -> None:
        store = self._store(ctx)
        manifest = read_manifest(store)
        if manifest is None:
            raise VerificationFailed(f"no manifest in {store.describe()}", step_id=self.step_id)
        for backed in manifest.tables:
            if sum(c.rows for c in backed.chunks) != backed.row_count:
                raise VerificationFailed(f"table {backed.table.name}: chunk rows do not add up to the row count",
                                         step_id=self.step_id)
            for chunk in backed.chunks:
                problem = check_chunk(store, chunk)
                if problem:
                    raise VerificationFailed(f"table {backed.table.name}: {problem}", step_id=self.step_id)


def read_chunk_rows(db: Database, table: Table, convert: Callable[[Sequence[Any]], Sequence[Any]],
                    after: list[Any] | None, offset: int, limit: int,
                    cap: int) -> tuple[ChunkWriter, list[Any] | None, bool]:
    """One chunk: up to ``limit`` rows after the key ``after`` (or ``offset`` rows in, without a primary key),
    fewer when ``cap`` raw bytes are reached; the writer, the portable key of its last row, and whether it was cut.
    """
    names = table.column_names
    lines = db.line_select(table, names) is not None
    if table.primary_key:
        rows = db.read_page(table, names, after, limit, lines=lines)
    else:
        rows = db.read_offset(table, names, offset, limit, lines=lines)
    writer = ChunkWriter()
    last_row: Sequence[Any] | None = None
    last_line = b""
    capped = False
    if lines:  # the engine wrote each row's line: nothing to convert or encode here
        for row in rows:
            last_line = join_line(row)
            writer.add(last_line)
            if writer.raw_bytes >= cap:
                capped = True
                break
    else:
        for row in rows:
            last_row = convert(row)
            writer.add(encode_row(last_row))
            if writer.raw_bytes >= cap:
                capped = True
                break
    if hasattr(rows, "close"):
        rows.close()
    if last_line:
        last_row = json.loads(last_line)
    key = None
    if table.primary_key and last_row is not None:
        key = [last_row[names.index(k)] for k in table.primary_key]
    return writer, key, capped


def chunk_count(rows: int, per_row: float, chunk_rows: int = 50_000, chunk_bytes: int = 64 << 20) -> int:
    """Chunks a backup makes of a table of ``rows`` rows of ``per_row`` raw bytes (the backup's defaults)."""
    by_rows = -(-rows // chunk_rows)
    by_bytes = int(rows * per_row // chunk_bytes) + 1
    return max(by_rows, by_bytes, 1)


def backup_seconds(profile: SourceProfile, blob: float, chunk_rows: int = 50_000,
                   chunk_bytes: int = 64 << 20) -> tuple[float, int]:
    """Seconds and chunks of a backup: the check (the manifest read), the apply (a connection, the catalog, per
    table its chunks read and written and a count, the manifest written) and the verify (manifest and chunks
    read back); rows at the probed rate."""
    c = profile.costs
    chunks = sum(chunk_count(n, profile.bytes_per_row, chunk_rows, chunk_bytes) for n in c.rows.values()) or 1
    seconds = (blob + c.connect + c.catalog + 2 * c.count + len(c.tables) * c.count + chunks * blob
               + profile.read_seconds(c.total_rows) + blob + blob + chunks * blob)
    return seconds, chunks


def _backup_outputs(manifest: Manifest, to: BlobEndpoint) -> dict[str, Any]:
    return {
        "location": to.describe(),
        "tables": len(manifest.tables),
        "rows": sum(t.row_count for t in manifest.tables),
        "chunks": sum(len(t.chunks) for t in manifest.tables),
        "bytes": sum(c.bytes for t in manifest.tables for c in t.chunks),
        "fingerprints": {t.table.name: t.fingerprint.as_dict() for t in manifest.tables},
    }


# -- database.restore ---------------------------------------------------------------------------------------


class RestoreParams(Params):
    backup: BlobEndpoint
    database: DatabaseEndpoint
    #: create: make every table; existing: every table must exist (drift is reported); auto: create the missing.
    schema_mode: Literal["auto", "create", "existing"] = "auto"
    tables: list[str] | None = None
    #: For the plan only: the database the backup is made from. While the backup does not exist yet (a dry-run
    #: before the migration) the restore is sized from it — tables, rows, keys — instead of from the manifest.
    size_from: DatabaseEndpoint | None = None


class Restore(Step[RestoreParams]):
    """Loads a portable backup into the target database.

    Changes: creates the missing tables (type mapping per dialect; primary and foreign keys after the load),
    or checks the existing ones for drift; then loads every chunk in foreign-key order. Each chunk commits
    together with its row in the target's ``_migrator_restore_chunks`` table, so a chunk half-loaded by a
    killed run is rolled back by the engine and loaded again whole: never a duplicate row.
    Done when: every table of the backup holds its row count and no load is in progress (no marker table).
    Verified when: every table's content fingerprint equals the backup's (computed by the engine where it can).
    Undone: drops the tables this run created; empties existing tables it loaded (they were empty before).
    """

    kind = "database.restore"
    Params = RestoreParams
    summary = "load a portable backup into a database, idempotently per chunk (resumable)"

    def _manifest(self, ctx: StepContext) -> Manifest:
        store = open_blob_store(self.params.backup, ctx)
        manifest = read_manifest(store)
        if manifest is None:
            raise PreconditionFailed(f"no complete backup (manifest.json) in {store.describe()}",
                                     step_id=self.step_id, hint="run database.backup first")
        return manifest

    def _tables(self, manifest: Manifest) -> list[TableBackup]:
        names = [t.table.name for t in manifest.tables]
        picked = _selected([t.table for t in manifest.tables], self.params.tables, "the backup")
        return [manifest.tables[names.index(t.name)] for t in picked]

    def check(self, ctx: StepContext) -> CheckResult:
        # A dry-run before the backup exists: not done, and the plan sizes the restore from the source.
        if ctx.dry_run and self.params.size_from is not None \
                and read_manifest(open_blob_store(self.params.backup, ctx)) is None:
            return CheckResult(False, f"no backup in {self.params.backup.describe()} yet")
        manifest = self._manifest(ctx)
        with connected(self.params.database, ctx, must_exist=False) as db:
            if db.table_exists(MARKER_TABLE):
                return CheckResult(False, "a restore into this database is in progress")
            for backed in self._tables(manifest):
                if not db.table_exists(backed.table.name):
                    return CheckResult(False, f"table {backed.table.name} does not exist in {db.describe()}")
                count = db.count(backed.table.name)
                if count != backed.row_count:
                    return CheckResult(False, f"table {backed.table.name} holds {count} of {backed.row_count} rows")
            return CheckResult(True, f"every table of the backup is loaded in {db.describe()}")

    def plan(self, ctx: StepContext) -> PlanResult:
        store = open_blob_store(self.params.backup, ctx)
        manifest, blob = timed(lambda: read_manifest(store))
        if manifest is None and self.params.size_from is not None:
            return self._plan_before_backup(ctx, blob)
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        manifest = self._manifest(ctx)
        tables = self._tables(manifest)
        target = measure_target(self.params.database, ctx)
        with connected(self.params.database, ctx, must_exist=False) as db:
            creates, problems = self._schema_changes(db, tables)
        if problems:
            return PlanResult([f"cannot restore: {p}" for p in problems], state.reason)
        rows = sum(t.row_count for t in tables)
        chunks = sum(len(t.chunks) for t in tables)
        changes = [f"create table {t.table.name}" for t in creates]
        changes.append(f"load {rows} rows into {len(tables)} tables of {self.params.database.describe()}")
        rate = (source_profile(self.params.size_from, ctx, self.params.tables).rows_per_second
                if self.params.size_from is not None else 0.0)
        seconds = restore_seconds(target, [t.table for t in tables], rows, chunks, blob, rate)
        return PlanResult(changes, state.reason,
                          Estimate(seconds=seconds, items=chunks,
                                   bytes=sum(c.bytes for t in tables for c in t.chunks),
                                   basis=f"backup manifest; {target.basis()}; blob request {blob * 1000:.0f} ms"))

    def _plan_before_backup(self, ctx: StepContext, blob: float) -> PlanResult:
        """No backup yet: sized from the database it will be made from (``size_from``)."""
        assert self.params.size_from is not None
        profile = source_profile(self.params.size_from, ctx, self.params.tables)
        tables, rows = profile.costs.tables, profile.costs.total_rows
        target = measure_target(self.params.database, ctx)
        chunks = sum(chunk_count(n, profile.bytes_per_row) for n in profile.costs.rows.values())
        seconds = restore_seconds(target, tables, rows, chunks, blob, profile.rows_per_second)
        return PlanResult(
            [f"load about {rows} rows into {len(tables)} tables of {self.params.database.describe()}, from the "
             f"backup an earlier step makes of {self.params.size_from.describe()}"],
            f"no backup in {self.params.backup.describe()} yet: sized from {self.params.size_from.describe()}",
            Estimate(seconds=seconds, items=chunks, bytes=round(rows * profile.bytes_per_row),
                     basis=f"sized from the source: {profile.basis()}; {target.basis()}; insert at "
                           f"{INSERT_TO_READ:g} x the read rate"),
            {"tables": len(tables), "rows": rows})

    def _schema_changes(self, db: Database, tables: Sequence[TableBackup],
                        created: Collection[str] = ()) -> tuple[list[TableBackup], list[str]]:
        """Tables to create, and what stops the restore; tables in ``created`` (made by this run) are neither."""
        existing = {t.name: t for t in db.tables()}
        creates: list[TableBackup] = []
        problems: list[str] = []
        for backed in tables:
            if backed.table.name in created:
                continue
            target = existing.get(backed.table.name)
            if target is None:
                if self.params.schema_mode == "existing":
                    problems.append(f"table {backed.table.name} is missing from the target schema")
                else:
                    creates.append(backed)
            elif self.params.schema_mode == "create":
                problems.append(f"table {backed.table.name} already exists in the target")
            else:
                found = drift(backed.table, target)
                if found.blocking:
                    problems.append(found.describe())
        return creates, problems

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        manifest = self._manifest(ctx)
        store = open_blob_store(self.params.backup, ctx)
        tables = self._tables(manifest)
        with connected(self.params.database, ctx, must_exist=False) as db:
            # What this run created, as the catalog has it: a table is memoed only once its CREATE committed,
            # and the one being created when a run was killed counts if its CREATE committed.
            created = {name for name in ctx.memo.get("created", []) if db.table_exists(name)}
            creating = ctx.memo.get("creating")
            if creating and db.table_exists(creating):
                created.add(creating)
            creates, problems = self._schema_changes(db, tables, created)
            if problems:
                # Before anything is changed: bad input, not a half-done restore.
                raise InputError(f"{db.describe()}: " + "; ".join(problems),
                                 hint="fix the target schema, or choose another schema_mode")
            committed = db.marker_chunks()
            loaded_tables = {c.split("/")[1] for c in committed}
            emptied = set(ctx.memo.get("filled", []))
            for backed in tables:
                name = backed.table.name
                if name in created or any(t.table.name == name for t in creates):
                    continue
                folder = backed.chunks[0].name.split("/")[1] if backed.chunks else None
                if folder in loaded_tables or name in emptied:
                    continue
                rows = db.count(name)
                if rows:
                    raise PreconditionFailed(f"table {name} in {db.describe()} already holds {rows} rows that "
                                             "this restore did not load", step_id=self.step_id,
                                             hint="empty it, or restore into an empty database")
                emptied.add(name)
            ctx.memo.set("filled", sorted(emptied))
            # The first write: from here on only this lock generation's chunks can commit.
            fence_label = f"migrator-restore:{hashlib.sha256(ctx.run_id.encode()).hexdigest()[:12]}"
            db.fence_sessions(fence_label, ctx.lock_generation)
            db.ensure_marker_table()
            db.claim_marker_fence(ctx.lock_generation)
            for backed in creates:
                ctx.raise_if_cancelled()
                ctx.memo.set("creating", backed.table.name)
                with db.transaction():
                    db.execute(db.create_table_sql(_load_shape(backed.table, db)))
                created.add(backed.table.name)
                ctx.memo.set("created", sorted(created))
            ctx.memo.delete("creating")
            committed = db.marker_chunks()
            ctx.items.set_total(items=sum(len(t.chunks) for t in tables),
                                bytes=sum(c.bytes for t in tables for c in t.chunks))
            loaded = 0
            with ExitStack() as sessions:
                loaders = [db]
                for table in fk_order([t.table for t in tables]):
                    table_backup = next(t for t in tables if t.table.name == table.name)
                    todo = [c for c in table_backup.chunks if c.name not in committed
                            and ((r := ctx.items.get(c.name)) is None or r.status != "done")]
                    while len(todo) > len(loaders) < db.load_workers:
                        loader = sessions.enter_context(connected(self.params.database, ctx, must_exist=False))
                        loader.fence_sessions(fence_label, ctx.lock_generation)
                        loaders.append(loader)
                    for chunk in self._load_chunks(ctx, loaders, store, table, todo):
                        ctx.items.record(chunk.name, "done", bytes=chunk.bytes, checksum=chunk.sha256)
                        loaded += chunk.rows
                        ctx.progress(f"{table.name}: {chunk.name.rsplit('/', 1)[1]} loaded")
            ctx.raise_if_cancelled()
            if db.dialect != "sqlite":
                order = [t for t in fk_order([t.table for t in tables]) if t.name in created]
                for table in order:
                    self._add_primary_key(db, table)
                for table in order:
                    self._add_foreign_keys(db, table)
            db.drop_table(MARKER_TABLE)
            return {"database": db.describe(), "tables": len(tables), "created": sorted(created),
                    "rows": sum(t.row_count for t in tables), "rows_loaded_now": loaded}

    def _load_chunks(self, ctx: StepContext, loaders: Sequence[Database], store: BlobStore, table: Table,
                     chunks: Sequence[ChunkInfo]) -> Iterator[ChunkInfo]:
        """Loads chunks of one table through every session in ``loaders`` at once; yields each as it commits.

        Each chunk is its own transaction on one session, so the order they commit in does not matter; a
        session holds one chunk at a time, which bounds memory.
        """
        if len(loaders) == 1 or len(chunks) < 2:
            for chunk in chunks:
                ctx.raise_if_cancelled()
                self._load_chunk(loaders[0], store, table, chunk, ctx.lock_generation)
                yield chunk
            return
        idle: queue.SimpleQueue[Database] = queue.SimpleQueue()
        for loader in loaders:
            idle.put(loader)

        def load(chunk: ChunkInfo) -> ChunkInfo:
            ctx.raise_if_cancelled()
            session = idle.get()
            try:
                self._load_chunk(session, store, table, chunk, ctx.lock_generation)
            finally:
                idle.put(session)
            return chunk

        with ThreadPoolExecutor(len(loaders), thread_name_prefix="restore-loader") as pool:
            futures = [pool.submit(load, chunk) for chunk in chunks]
            try:
                for future in futures:
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    @staticmethod
    def _load_chunk(db: Database, store: BlobStore, table: Table, chunk: ChunkInfo, generation: int) -> None:
        names = table.column_names
        lines = read_chunk_lines(store, chunk)
        with db.transaction():
            start = 0
            while start < len(lines):
                # Up to INSERT_BATCH rows, and fewer when they are big: one batch is one statement parameter.
                end, size = start, 0
                while end < len(lines) and end - start < INSERT_BATCH and (size < INSERT_BATCH_BYTES or end == start):
                    size += len(lines[end])
                    end += 1
                db.insert_lines(table, names, lines[start:end])
                start = end
            db.mark_chunk(chunk.name, chunk.sha256)
            # Last, so the fence row is locked only from here to the commit: a successor's claim waits for at
            # most that (and then finds the chunk marked), or this chunk finds the fence moved on and rolls back.
            if not db.check_marker_fence(generation):
                raise LockLost(f"restore into {db.describe()}: a runner with a later lock generation took over; "
                               f"chunk {chunk.name} was rolled back")

    @staticmethod
    def _add_primary_key(db: Database, table: Table) -> None:
        # Built once over the loaded rows, as pg_restore does, instead of maintained row by row during the load.
        present = db.table(table.name)
        if table.primary_key and present is not None and not present.primary_key:
            with db.transaction():
                db.execute(db.primary_key_sql(table))

    @staticmethod
    def _add_foreign_keys(db: Database, table: Table) -> None:
        present = db.table(table.name)
        have = {fk.name for fk in present.foreign_keys} if present else set()
        for fk in table.foreign_keys:
            if fk.name not in have:
                with db.transaction():
                    db.execute(db.foreign_key_sql(table, fk))

    def verify(self, ctx: StepContext) -> None:
        state = self.check(ctx)
        if not state.done:
            raise VerificationFailed(f"restore not complete: {state.reason}", step_id=self.step_id)
        # The content, not only the counts: every table's fingerprint in the database against the backup's. A
        # database.sync that follows relies on it for the rows it does not touch.
        with connected(self.params.database, ctx) as db:
            for backed in self._tables(self._manifest(ctx)):
                ctx.raise_if_cancelled()
                actual = fingerprint(db, backed.table, db.table(backed.table.name))
                if actual.as_dict() != backed.fingerprint.as_dict():
                    raise VerificationFailed(
                        f"table {backed.table.name} in {db.describe()}: content differs from the backup "
                        f"({actual.rows} rows, checksum {actual.checksum[:12]}… against {backed.fingerprint.rows} "
                        f"rows, {backed.fingerprint.checksum[:12]}…)", step_id=self.step_id,
                        hint="roll back and restore again")

    def compensate(self, ctx: StepContext) -> None:
        manifest = self._manifest(ctx)
        order = [t.table.name for t in manifest.tables]
        created = set(ctx.memo.get("created", []))
        filled = set(ctx.memo.get("filled", []))
        by_name = {t.table.name: t.table for t in manifest.tables}
        with connected(self.params.database, ctx, must_exist=False) as db:
            for table in reversed(fk_order([by_name[n] for n in order if n in created | filled])):
                if table.name in created and db.table_exists(table.name):
                    db.drop_table(table.name)
                elif table.name in filled and db.table_exists(table.name):
                    db.delete_all(table.name)
            if db.table_exists(MARKER_TABLE):
                db.drop_table(MARKER_TABLE)


def _load_shape(table: Table, db: Database) -> Table:
    # SQLite can only declare keys in CREATE TABLE; elsewhere primary and foreign keys are added after the load.
    if db.dialect == "sqlite":
        return table
    return Table(table.name, table.columns, (), ())


@dataclass
class TargetCosts:
    """What a restore's basic operations cost on the target now: a connection, a catalog read, a table lookup."""

    dialect: str
    connect: float
    catalog: float
    lookup: float
    load_workers: int
    #: Rows per second the target hands over (and the reader hashes), measured on rows the engine makes up; 0
    #: where it was not measured (see :func:`probe_fetch_rate`).
    fetch_rows_per_second: float = 0.0

    def basis(self) -> str:
        fetch = f", fetch {self.fetch_rows_per_second:,.0f} rows/s" if self.fetch_rows_per_second else ""
        return (f"target: connect {self.connect * 1000:.0f} ms, catalog read {self.catalog * 1000:.0f} ms, "
                f"table lookup {self.lookup * 1000:.1f} ms{fetch}")


#: Rows of the fetch probe (at most; it stops after PROBE_SECONDS).
FETCH_PROBE_ROWS = 20_000
#: Engines whose SQL has ``WITH RECURSIVE`` and a ``||`` that concatenates text (the probe's made-up rows).
_RECURSIVE_CTE = ("sqlite", "postgresql")


def probe_fetch_rate(db: Database, width: int, *, rows: int = FETCH_PROBE_ROWS,
                     seconds: float = PROBE_SECONDS) -> float:
    """Rows per second ``db`` hands over one text value of ``width`` characters a row (the shape of the lines a
    fingerprint reads), each hashed as a fingerprint does; 0.0 where the engine's SQL cannot make the rows up.

    An empty target (before the restore) has no table to read: the rows are made by a recursive query, so the
    probe reads nothing of the tenant and writes nothing.
    """
    if db.dialect not in _RECURSIVE_CTE or rows < 1:
        return 0.0
    text = "x" * max(1, min(width, 4096))
    sql = (f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {int(rows)}) "
           f"SELECT CAST(n AS TEXT) || '{text}' FROM r")
    read = 0
    fp = Fingerprint()
    batch: list[bytes] = []
    started = time.perf_counter()
    for row in db.query(sql, [], batch=2000):
        batch.append(str(row[0]).encode("utf-8"))
        read += 1
        if len(batch) >= 2000:
            fp.add_lines(batch)
            batch = []
            if time.perf_counter() - started >= seconds:
                break
    fp.add_lines(batch)
    spent = time.perf_counter() - started
    return read / spent if read and spent > 0 else 0.0


def measure_target(endpoint: DatabaseEndpoint, ctx: StepContext, *, fetch_width: int = 0) -> TargetCosts:
    """Measures the target database (read only: a connection, its catalog, three lookups of a table name; with
    ``fetch_width``, how fast it hands over rows that wide: :func:`probe_fetch_rate`)."""
    costs, db = measure_db(endpoint, ctx, must_exist=False)
    try:
        lookup = statistics.median(timed(lambda: db.table_exists(MARKER_TABLE))[1] for _ in range(3))
        fetch = probe_fetch_rate(db, fetch_width) if fetch_width > 0 else 0.0
        return TargetCosts(db.dialect, costs.connect, costs.catalog, lookup, db.load_workers, fetch)
    finally:
        db.close()


#: Rows per second a restore is assumed to insert when nothing was measured to size it from.
ASSUMED_INSERT_ROWS_PER_S = 20_000.0


def restore_seconds(target: TargetCosts, tables: Sequence[Table], rows: int, chunks: int, blob: float,
                    read_rate: float) -> float:
    """Seconds of a restore, counted from what its check, apply and verify do on the target.

    check: a connection, the marker and the first table looked up. apply: the manifest, a connection, the
    catalog, per table a CREATE, the marker table, per chunk a download and a transaction; then (not SQLite) per
    table its primary key and each foreign key, each after a catalog read of the table; the marker dropped.
    verify: the check again, through every table (lookup and count), then every table's content fingerprint.
    Rows at the insert rate, and once more at the read rate for the fingerprints.
    """
    n = len(tables)
    ddl = target.lookup * DDL_IN_CATALOG_READS
    check = target.connect + 2 * target.lookup + blob
    apply = (blob + target.connect + target.catalog + n * ddl + 3 * target.lookup + ddl
             + chunks * (blob + 2 * target.lookup) + ddl)
    if chunks > n and target.load_workers > 1:
        apply += (target.load_workers - 1) * target.connect
    if target.dialect != "sqlite":
        fks = sum(len(t.foreign_keys) for t in tables)
        apply += 2 * n * target.catalog + (n + fks) * ddl
    verify = blob + target.connect + target.lookup + n * 2 * target.lookup + n * target.catalog
    insert_rate = read_rate * INSERT_TO_READ if read_rate > 0 else ASSUMED_INSERT_ROWS_PER_S
    # verify also fingerprints every row of the target once (by the engine where it can), counted at the rate
    # rows are read.
    return check + apply + verify + rows / insert_rate + rows / (insert_rate / INSERT_TO_READ)


# -- database.verify ----------------------------------------------------------------------------------------


class VerifyParams(Params):
    database: DatabaseEndpoint
    #: The reference: another database (compared live), or a backup (its manifest's fingerprints).
    source: DatabaseEndpoint | None = None
    backup: BlobEndpoint | None = None
    tables: list[str] | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> VerifyParams:
        if (self.source is None) == (self.backup is None):
            raise ValueError("give exactly one of `source` (a database) and `backup` (a backup location)")
        return self


def same_portable_form(reference: Column, target: Column) -> bool:
    return reference.type == target.type and (reference.type != "decimal" or reference.scale == target.scale)


def fingerprint(db: Database, reference: Table, target: Table | None = None) -> Fingerprint:
    """Row count and content checksum of a table, values normalized by ``reference``'s column types."""
    target = target or reference
    names = reference.column_names
    convert = row_converter(db.read_converters([target.column(n) for n in names],
                                               [reference.column(n) for n in names]))
    # The engine's lines are the reference's only when every column has the same portable form on both.
    lines = db.line_select(target, names) is not None and all(
        same_portable_form(reference.column(n), target.column(n)) for n in names)
    if lines:  # the engine can hash the very lines itself: only the sums cross the network
        computed = db.server_fingerprint(target, names)
        if computed is not None:
            return computed
    result = Fingerprint()
    batch: list[bytes] = []
    for row in db.read_all(target, names, lines=lines):
        batch.append(join_line(row) if lines else encode_row(convert(row)))
        if len(batch) >= 5000:
            result.add_lines(batch)
            batch = []
    result.add_lines(batch)
    return result


class Verify(Step[VerifyParams]):
    """Compares every table of a database with its reference: row count and order-independent content checksum.

    Changes: nothing (reads only). Done when: always runs; its outputs are the fingerprints.
    Verified when: every table's fingerprint equals the reference's; a mismatch fails naming the tables.
    """

    kind = "database.verify"
    Params = VerifyParams
    summary = "row counts and content checksums of every table against a source database or backup"

    def plan(self, ctx: StepContext) -> PlanResult:
        # It changes nothing, yet it is work the run will do (both sides are read whole): never a no-op, which
        # the plan would show as "done" before anything ran.
        reason = f"reads {self.params.database.describe()} only; compares fingerprints"
        reference = self.params.source or self.params.backup
        assert reference is not None
        work = [f"compare every table of {self.params.database.describe()} with {reference.describe()} "
                "(reads only)"]
        target = measure_target(self.params.database, ctx)
        if self.params.source is None:
            return PlanResult(work, reason, Estimate(seconds=0.0))
        profile = source_profile(self.params.source, ctx, self.params.tables)
        c = profile.costs
        # Source: a connection, the catalog, every table read whole. Target: the same, rows at the source's rate
        # (before the restore the target holds nothing to measure).
        source_side = c.connect + c.catalog + len(c.tables) * c.count + profile.read_seconds(c.total_rows)
        target_side = target.connect + 3 * target.catalog + len(c.tables) * target.lookup \
            + profile.read_seconds(c.total_rows)
        return PlanResult(work, reason, Estimate(seconds=source_side + target_side, items=len(c.tables),
                                                 basis=f"reads both sides whole: {profile.basis()}; {target.basis()}"))

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        expected: dict[str, dict[str, Any]] = {}
        references: list[Table] = []
        if self.params.backup is not None:
            manifest = read_manifest(open_blob_store(self.params.backup, ctx))
            if manifest is None:
                raise PreconditionFailed(f"no backup manifest in {self.params.backup.describe()}",
                                         step_id=self.step_id)
            references = _selected([t.table for t in manifest.tables], self.params.tables, "the backup")
            for t in manifest.tables:
                expected[t.table.name] = t.fingerprint.as_dict()
        else:
            assert self.params.source is not None
            with connected(self.params.source, ctx) as src:
                references = _selected(src.tables(), self.params.tables, src.describe())
                for table in references:
                    ctx.raise_if_cancelled()
                    expected[table.name] = fingerprint(src, table).as_dict()
        actual: dict[str, dict[str, Any]] = {}
        with connected(self.params.database, ctx) as db:
            present = {t.name: t for t in db.tables()}
            for table in references:
                ctx.raise_if_cancelled()
                target = present.get(table.name)
                if target is None:
                    actual[table.name] = {"rows": None, "checksum": None}
                    continue
                missing = [n for n in table.column_names if n not in target.column_names]
                if missing:
                    actual[table.name] = {"rows": None, "checksum": None, "missing_columns": missing}
                    continue
                actual[table.name] = fingerprint(db, table, target).as_dict()
        mismatches = sorted(n for n in actual if actual[n] != expected[n])
        ctx.memo.set("mismatches", mismatches)
        return {"tables": {n: {"expected": expected[n], "actual": actual[n]} for n in actual},
                "mismatches": mismatches}

    def verify(self, ctx: StepContext) -> None:
        mismatches = ctx.memo.get("mismatches")
        if mismatches is None:
            raise VerificationFailed("no fingerprints were computed", step_id=self.step_id)
        if mismatches:
            raise VerificationFailed(f"{self.params.database.describe()}: content differs from the reference in "
                                     f"table {', '.join(mismatches)}", step_id=self.step_id)
