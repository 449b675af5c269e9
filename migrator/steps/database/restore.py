"""``database.restore``: loads a portable backup into a database, idempotently per chunk and fenced by the run
lock's generation (see README, "Fencing").
"""

from __future__ import annotations

import hashlib
import json
import queue
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, Literal

from migrator.errors import InputError, LockLost, PreconditionFailed, VerificationFailed
from migrator.estimator import Work, estimate, rates
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.providers.blob.base import BlobStore
from migrator.providers.database import (
    MARKER_TABLE,
    Database,
    DatabaseEndpoint,
    Table,
    drift,
    fk_order,
)
from migrator.providers.database.backup import (
    ChunkInfo,
    Manifest,
    TableBackup,
    read_chunk_lines,
    read_manifest,
)
from migrator.providers.database.targets import path_note
from migrator.step import CheckResult, Params, PlanResult, Step, StepContext
from migrator.steps.database.common import (
    DDL_IN_CATALOG_READS,
    INSERT_TO_READ,
    SourceProfile,
    TargetCosts,
    chunk_count,
    connected,
    fingerprint,
    measure_target,
    request_samples,
    required_manifest,
    selected_tables,
    source_profile,
    timed,
)

INSERT_BATCH = 5000
INSERT_BATCH_BYTES = 32 << 20


class RestoreParams(Params):
    backup: BlobEndpoint
    database: DatabaseEndpoint
    #: create: make every table; existing: every table must exist (drift is reported); auto: create the missing.
    schema_mode: Literal["auto", "create", "existing"] = "auto"
    tables: list[str] | None = None
    #: For the plan only: the database the backup is made from. While the backup does not exist yet (a dry-run
    #: before the migration) the restore is sized from it — tables, rows, keys — instead of from the manifest.
    size_from: DatabaseEndpoint | None = None
    #: The collation text keys compare with on the target, where it is to be declared rather than read from it
    #: (a SQL Server collation name: ``SQL_Latin1_General_CP1_CI_AS``, the Azure SQL Database default). A
    #: case-insensitive one holds two keys that differ only in case as one: plan and apply refuse such keys.
    target_collation: str | None = None


class Restore(Step[RestoreParams]):
    """Loads a portable backup into the target database.

    Changes: creates the missing tables (type mapping per dialect; primary and foreign keys after the load),
    or checks the existing ones for drift; then loads every chunk in foreign-key order. Each chunk commits
    together with its row in the target's ``_migrator_restore_chunks`` table, so a chunk half-loaded by a
    killed run is rolled back by the engine and loaded again whole: never a duplicate row.
    Done when: every table of the backup holds its row count and no load is in progress (no marker table).
    Refused before anything changes (plan and apply): a value the target cannot hold (another engine's type,
    finer fractions of seconds), and primary keys that differ only in case when the target compares them
    without (its collation, or ``target_collation``), named by table and key hash. Identity columns keep the
    source's values and their counter is moved past them (the dialect's ``finish_load``).
    Verified when: every table's content fingerprint equals the backup's (computed by the engine where it can).
    Undone: drops the tables this run created; empties existing tables it loaded (they were empty before).
    """

    kind = "database.restore"
    Params = RestoreParams
    summary = "load a portable backup into a database, idempotently per chunk (resumable)"

    def _manifest(self, ctx: StepContext) -> Manifest:
        return required_manifest(open_blob_store(self.params.backup, ctx), self.step_id, what="complete backup",
                                 hint="run database.backup first")

    def _tables(self, manifest: Manifest) -> list[TableBackup]:
        names = [t.table.name for t in manifest.tables]
        picked = selected_tables([t.table for t in manifest.tables], self.params.tables, "the backup")
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
            creates, problems = self._schema_changes(db, store, tables)
            notes = [n for t in creates for n in db.not_recreated(t.table)]
        if problems:
            return PlanResult([f"cannot restore: {p}" for p in problems], state.reason)
        rows = sum(t.row_count for t in tables)
        chunks = sum(len(t.chunks) for t in tables)
        changes = [f"create table {t.table.name}" for t in creates] + [f"note: {n}" for n in notes]
        changes.append(f"note: {path_note(self.params.database)}")
        changes.append(f"load {rows} rows into {len(tables)} tables of {self.params.database.describe()}")
        profile = (source_profile(self.params.size_from, ctx, self.params.tables)
                   if self.params.size_from is not None else None)
        work = restore_work(target, [t.table for t in tables], rows, chunks, blob, profile)
        work.note = f"backup manifest; {target.basis()}; blob request {blob * 1000:.0f} ms"
        return PlanResult(changes, state.reason,
                          estimate(work, rates(ctx), items=chunks,
                                   bytes=sum(c.bytes for t in tables for c in t.chunks)))

    def _plan_before_backup(self, ctx: StepContext, blob: float) -> PlanResult:
        """No backup yet: sized from the database it will be made from (``size_from``)."""
        assert self.params.size_from is not None
        profile = source_profile(self.params.size_from, ctx, self.params.tables)
        tables, rows = profile.costs.tables, profile.costs.total_rows
        target = measure_target(self.params.database, ctx)
        chunks = sum(chunk_count(n, profile.bytes_per_row) for n in profile.costs.rows.values())
        work = restore_work(target, tables, rows, chunks, blob, profile)
        work.note = (f"sized from the source: {profile.basis()}; {target.basis()}; insert at {INSERT_TO_READ:g} x "
                     "the read rate until measured")
        return PlanResult(
            [f"load about {rows} rows into {len(tables)} tables of {self.params.database.describe()}, from the "
             f"backup an earlier step makes of {self.params.size_from.describe()}"],
            f"no backup in {self.params.backup.describe()} yet: sized from {self.params.size_from.describe()}",
            estimate(work, rates(ctx), items=chunks, bytes=round(rows * profile.bytes_per_row)),
            {"tables": len(tables), "rows": rows})

    def _schema_changes(self, db: Database, store: BlobStore, tables: Sequence[TableBackup],
                        created: Collection[str] = ()) -> tuple[list[TableBackup], list[str]]:
        """Tables to create, and what stops the restore; tables in ``created`` (made by this run) are neither."""
        existing = {t.name: t for t in db.tables()}
        creates: list[TableBackup] = []
        problems: list[str] = []
        for backed in tables:
            problems.extend(db.cannot_hold(backed.table))
            problems.extend(self._collisions(db, store, backed))
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

    def _collisions(self, db: Database, store: BlobStore, backed: TableBackup) -> list[str]:
        """Primary keys of the backup the target would hold as one (case-insensitive collation), as a problem."""
        table = backed.table
        at = [table.column_names.index(n) for n in table.primary_key]

        def keys() -> Iterator[list[Any]]:  # read only if the target folds case and a key column is text
            for chunk in backed.chunks:
                for line in read_chunk_lines(store, chunk):
                    row = json.loads(line)
                    yield [row[i] for i in at]

        found = db.key_collisions(table, keys(), self.params.target_collation)
        if not found:
            return []
        shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        return [f"table {table.name}: {len(found)} primary keys differ only in case, which the target's "
                f"case-insensitive collation holds as one: {shown}"]

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        manifest = self._manifest(ctx)
        store = open_blob_store(self.params.backup, ctx)
        tables = self._tables(manifest)
        with connected(self.params.database, ctx, must_exist=False) as db:
            created = self._created_earlier(ctx, db)
            creates, problems = self._schema_changes(db, store, tables, created)
            if problems:
                # Before anything is changed: bad input, not a half-done restore.
                raise InputError(f"{db.describe()}: " + "; ".join(problems),
                                 hint="fix the target schema, or choose another schema_mode")
            self._require_empty(ctx, db, tables, created, creates)
            # The first write: from here on only this lock generation's chunks can commit.
            fence_label = f"migrator-restore:{hashlib.sha256(ctx.run_id.encode()).hexdigest()[:12]}"
            db.fence_sessions(fence_label, ctx.lock_generation)
            db.ensure_marker_table()
            db.claim_marker_fence(ctx.lock_generation)
            self._create_tables(ctx, db, creates, created)
            loaded = self._load_tables(ctx, db, store, tables, fence_label)
            ctx.raise_if_cancelled()
            self._finish_tables(db, tables, created)
            db.drop_table(MARKER_TABLE)
            return {"database": db.describe(), "tables": len(tables), "created": sorted(created),
                    "rows": sum(t.row_count for t in tables), "rows_loaded_now": loaded}

    @staticmethod
    def _created_earlier(ctx: StepContext, db: Database) -> set[str]:
        """What this run created, as the catalog has it: a table is memoed only once its CREATE committed, and
        the one being created when a run was killed counts if its CREATE committed."""
        created = {name for name in ctx.memo.get("created", []) if db.table_exists(name)}
        creating = ctx.memo.get("creating")
        if creating and db.table_exists(creating):
            created.add(creating)
        return created

    def _require_empty(self, ctx: StepContext, db: Database, tables: Sequence[TableBackup], created: set[str],
                       creates: Sequence[TableBackup]) -> None:
        """Refuses an existing table that holds rows this restore did not load; memoes the ones found empty."""
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

    @staticmethod
    def _create_tables(ctx: StepContext, db: Database, creates: Sequence[TableBackup], created: set[str]) -> None:
        """Creates the missing tables (in their load shape), memoing each once its CREATE committed."""
        for backed in creates:
            ctx.raise_if_cancelled()
            ctx.memo.set("creating", backed.table.name)
            db.create_table(db.load_shape(backed.table))
            created.add(backed.table.name)
            ctx.memo.set("created", sorted(created))
        ctx.memo.delete("creating")

    def _load_tables(self, ctx: StepContext, db: Database, store: BlobStore, tables: Sequence[TableBackup],
                     fence_label: str) -> int:
        """Loads every chunk not committed yet, in foreign-key order, through up to ``db.load_workers`` fenced
        sessions; records each chunk as it commits. Returns the rows loaded."""
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
        return loaded

    def _finish_tables(self, db: Database, tables: Sequence[TableBackup], created: set[str]) -> None:
        """Moves identity counters past the loaded keys; adds the keys of the tables this run created, where the
        dialect adds them after the load."""
        for table in fk_order([t.table for t in tables]):
            db.finish_load(table)
        if db.keys_after_load:
            order = [t for t in fk_order([t.table for t in tables]) if t.name in created]
            for table in order:
                self._add_primary_key(db, table)
            for table in order:
                self._add_foreign_keys(db, table)

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
        # The dialect's load transaction (PostgreSQL: COPY on its COPY session, the marker and fence there too).
        with db.chunk_transaction() as load:
            start = 0
            while start < len(lines):
                # Up to INSERT_BATCH rows, and fewer when they are big: one batch is one statement parameter.
                end, size = start, 0
                while end < len(lines) and end - start < INSERT_BATCH and (size < INSERT_BATCH_BYTES or end == start):
                    size += len(lines[end])
                    end += 1
                load.insert_lines(table, names, lines[start:end])
                start = end
            load.mark_chunk(chunk.name, chunk.sha256)
            # Last, so the fence row is locked only from here to the commit: a successor's claim waits for at
            # most that (and then finds the chunk marked), or this chunk finds the fence moved on and rolls back.
            if not load.check_marker_fence(generation):
                raise LockLost(f"restore into {db.describe()}: a runner with a later lock generation took over; "
                               f"chunk {chunk.name} was rolled back")

    @staticmethod
    def _add_primary_key(db: Database, table: Table) -> None:
        # Built once over the loaded rows, as pg_restore does, instead of maintained row by row during the load.
        present = db.table(table.name)
        if table.primary_key and present is not None and not present.primary_key:
            db.add_primary_key(table)

    @staticmethod
    def _add_foreign_keys(db: Database, table: Table) -> None:
        present = db.table(table.name)
        have = {fk.name for fk in present.foreign_keys} if present else set()
        for fk in table.foreign_keys:
            if fk.name not in have:
                db.add_foreign_key(table, fk)

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



def restore_work(target: TargetCosts, tables: Sequence[Table], rows: int, chunks: int, blob: float,
                 source: SourceProfile | None = None) -> Work:
    """The work of a restore, counted from what its check, apply and verify do on the target (the measurements of
    ``target``, ``blob`` and the ``source`` it is sized from as samples).

    check: a connection, the marker and the first table looked up. apply: the manifest, a connection, the
    catalog, per table a CREATE, the marker table, per chunk a download and a transaction; then (not SQLite) per
    table its primary key and each foreign key, each after a catalog read of the table; the marker dropped.
    verify: the check again, through every table (lookup and count), then every table's content fingerprint.
    A DDL statement counts as :data:`DDL_IN_CATALOG_READS` lookups. Rows at the insert rate
    (``db.rows.insert``: a share of the source's read rate until measured), and once more at the rate the target
    hands rows over for the fingerprints (``db.target.fetch``, by the engine where it can).
    """
    n = len(tables)
    ddl = DDL_IN_CATALOG_READS
    work = Work(samples=[*target.samples(), *request_samples(blob), *(source.samples() if source else [])])
    work.add("db.target.connect", 1).add("db.target.lookup", 2).add("backup.request", 1)  # check
    work.add("backup.request", 1 + chunks).add("db.target.connect", 1).add("db.target.catalog", 1)  # apply
    work.add("db.target.lookup", n * ddl + 3 + ddl + chunks * 2 + ddl)
    if chunks > n and target.load_workers > 1:
        work.add("db.target.connect", target.load_workers - 1)
    if target.keys_after_load:
        fks = sum(len(t.foreign_keys) for t in tables)
        work.add("db.target.catalog", 2 * n).add("db.target.lookup", (n + fks) * ddl)
    work.add("backup.request", 1).add("db.target.connect", 1).add("db.target.lookup", 1 + 2 * n)  # verify
    work.add("db.target.catalog", n)
    return work.add("db.rows.insert", rows).add("db.target.fetch", rows)
