"""``database.backup``: a consistent, portable, chunked backup of a database to blob storage (resumable).

The format is :mod:`migrator.providers.database.backup`; no row value is logged or written to an output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pydantic import model_validator

from migrator.errors import PreconditionFailed, VerificationFailed
from migrator.estimator import Work, estimate, rates
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.providers.blob.base import BlobStore
from migrator.providers.database import (
    Database,
    DatabaseEndpoint,
    Fingerprint,
    Table,
)
from migrator.providers.database.backup import (
    MANIFEST,
    ChunkInfo,
    ChunkWriter,
    Manifest,
    TableBackup,
    check_chunk,
    chunk_name,
    chunked_lines,
    read_manifest,
)
from migrator.providers.database.base import row_converter
from migrator.step import CheckResult, Params, PlanResult, Step, StepContext
from migrator.steps.database.common import (
    SourceProfile,
    blob_request,
    chunk_count,
    connected,
    read_chunk_rows,
    request_samples,
    selected_tables,
    source_profile,
)


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
            tables = selected_tables(db.tables(), self.params.tables, db.describe())
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
        blob = blob_request(self._store(ctx))
        tables, rows = profile.costs.tables, profile.costs.total_rows
        work, chunks = backup_work(profile, blob, self.params.chunk_rows, self.params.chunk_bytes)
        work.note = f"{profile.basis()}; blob request {blob * 1000:.0f} ms"
        raw = round(rows * profile.bytes_per_row)
        generated = [f"note: table {t.name}, column {g.name} ({g.kind}): not copied, the target generates its own"
                     for t in tables for g in t.generated]
        return PlanResult([f"back up {len(tables)} tables ({rows} rows) of {self.params.database.describe()} "
                           f"to {self.params.to.describe()}", *generated], state.reason,
                          estimate(work, rates(ctx), items=chunks, bytes=raw),
                          {"tables": len(tables), "rows": rows, "rows_per_table": dict(profile.costs.rows),
                           "raw_bytes": raw, "rows_per_second": round(profile.rows_per_second)})

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        store = self._store(ctx)
        with connected(self.params.database, ctx) as db, db.snapshot():
            tables = selected_tables(db.tables(), self.params.tables, db.describe())
            schema = [t.to_json() for t in tables]
            started = ctx.memo.get("schema")
            if started is None:
                ctx.memo.set("schema", schema)
                ctx.memo.set("created_at", ctx.clock.now().isoformat(timespec="seconds"))
                # Read inside the snapshot, on the first attempt only: a resumed backup reads later rows, whose
                # changes are after this version too (a change seen twice is applied twice, to the same value).
                ctx.memo.set("change_version", db.change_version())
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
        manifest = Manifest(db.dialect, str(ctx.memo.get("created_at")), backups,
                            change_version=ctx.memo.get("change_version"))
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

        # A writer thread compresses, hashes and stores chunk N while chunk N + 1 is read (gzip, hashlib over the
        # whole text and file writes release the GIL; the per-line hashes are done here, see ChunkWriter.seal); at
        # most one chunk waits for it, so memory stays at two chunks.
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
                writer.seal()
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
        stream = db.stream_lines(table, last_key, offset)
        if stream is not None:  # the engine's bulk export (PostgreSQL's COPY): one read, cut into chunks here
            try:
                for chunk in chunked_lines(stream, table, self.params.chunk_rows, self.params.chunk_bytes):
                    ctx.raise_if_cancelled()
                    yield chunk
            finally:
                if hasattr(stream, "close"):
                    stream.close()
            return
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



def backup_work(profile: SourceProfile, blob: float, chunk_rows: int = 50_000,
                chunk_bytes: int = 64 << 20) -> tuple[Work, int]:
    """The work and chunks of a backup: the check (the manifest read), the apply (a connection, the catalog, per
    table its chunks read and written and a count, the manifest written) and the verify (manifest and chunks
    read back); rows at the source's read rate. The measurements of ``profile`` and ``blob`` are its samples."""
    c = profile.costs
    chunks = sum(chunk_count(n, profile.bytes_per_row, chunk_rows, chunk_bytes) for n in c.rows.values()) or 1
    work = Work(samples=[*profile.samples(), *request_samples(blob)])
    work.add("backup.request", 1 + chunks + 2 + chunks).add("db.source.connect", 1).add("db.source.catalog", 1)
    work.add("db.source.count", 2 + len(c.tables)).add("db.source.read", c.total_rows)
    return work, chunks


def _backup_outputs(manifest: Manifest, to: BlobEndpoint) -> dict[str, Any]:
    return {
        "location": to.describe(),
        "tables": len(manifest.tables),
        "rows": sum(t.row_count for t in manifest.tables),
        "chunks": sum(len(t.chunks) for t in manifest.tables),
        "bytes": sum(c.bytes for t in manifest.tables for c in t.chunks),
        "fingerprints": {t.table.name: t.fingerprint.as_dict() for t in manifest.tables},
        # rowversion and computed columns: the engine writes them, so none of their values is in the backup
        "not_copied": [f"{t.table.name}.{g.name} ({g.kind})" for t in manifest.tables for g in t.table.generated],
    }

