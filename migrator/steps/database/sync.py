"""Database delta: copy the database while the tenant is live, then move only what changed inside the window.

The presync is the ordinary pair ``database.backup`` (run while the tenant is live: one consistent snapshot
within an attempt) and ``database.restore`` into the target. Its manifest records, per table, the keyset
boundaries of every chunk (the primary key of each chunk's last row) and each chunk's content fingerprint.

``database.sync`` runs inside the read-only window. Per table with a primary key it compares the source range by
range, with the very boundaries of the presync — ``(previous last key, last key]``, and one more range beyond the
last key for rows added since — with the presync chunk, first by what the source tells by itself, reading no row
value. PostgreSQL's row versions (``Database.range_versions``): a range holding as many rows as the chunk, none
of them written (``xmin``) since the presync backup's snapshot horizon (``Manifest.change_version``), is
unchanged, at the cost of reading the keys and row versions only. Else (a backup without that horizon) the digest
the source computes itself (``Database.range_digest``: the MD5 of the range's lines in key order, which must be
the chunk's ``text_md5``; the source builds every line for it, which saves the network and the client, not the
source's work). A range either finds changed is looked at by its 16-row sub-ranges the same way (one query), and
only the sub-ranges that differ are read (in one query, ``Database.read_ranges``). Where the source cannot tell
(SQLite, in-process; SQL Server, which does not write the portable line in SQL; a PostgreSQL backup without the
horizon, of a table with a column type the server does not write as a line, or from a server older than 12), or
for the range beyond the last key, the range's rows are read and their text hashed here (or, for a backup without
``text_md5``, their fingerprint compared). Only a range that differs is looked at further: its
rows are compared, as encoded portable lines, with the presync chunk's lines (read back from the backup, which is
what the target was loaded with), giving the rows added or changed (*upserts*) and the primary keys that are gone
(*deletes*). The target is matched to the source by primary key only, so the order an engine sorts keys in
(collations differ between SQLite and PostgreSQL) never matters there.

Why row updates and not "delete the range, insert it again": the demo's 1% of changes are scattered, so nearly
every range holds one, and the target keeps its foreign keys; deleting a parent row that children reference fails
even when it is inserted again in the same transaction. So:

1. parents first (foreign-key order), one target transaction per changed range: ``UPDATE`` each upsert row by
   primary key; the ones no row matched are new and are inserted (the dialect's bulk path). A range done twice
   (a crash after the commit, before its checkpoint) updates the same rows to the same values: no duplicate.
2. children first (reverse foreign-key order): the deleted keys, ``DELETE`` by primary key, one transaction per
   range; again idempotent.

Change Tracking (a SQL Server source where it is enabled): the presync backup records the source's
change-tracking version at its first snapshot (``Manifest.change_version``); the sync asks the source for the keys
of every row changed since (``CHANGETABLE(CHANGES …)``), reads only those rows at the source and at the target,
and writes them as one delta per table (upserts, then deletes in pass 2 as above) instead of re-reading every
range. Where the source cannot answer for that version (below ``CHANGE_TRACKING_MIN_VALID_VERSION``: retention
passed, or a ``TRUNCATE``; or the table is not tracked) the sync says so (event ``database.sync.ranges``) and
compares the ranges as below. The proof is the same sum: the presync's fingerprint with the changed keys' old
lines (the target's, which the restore verified) taken out and their new lines put in.

Tables without a primary key have no keyset: when their fingerprint differs from the presync's they are copied
again whole (deleted and reloaded in one transaction). Identity columns: rows are inserted with their source
keys (the dialect turns ``IDENTITY_INSERT`` on around the insert), and after the deletes the target's counter is
moved past the largest key again and proved (the dialect's ``finish_load``, as the restore does). Sequences are not
carried: applications whose keys come from a sequence must set the target's sequence themselves.

"Back up the current database": each changed range is also written, before it is applied, to the backup location
under ``delta/`` (the delta format of :mod:`migrator.providers.database.backup`), and ``delta/manifest.json`` is
written last with the source's fingerprints as of the window. The presync backup plus that delta is the
current database — an incremental backup that costs only the changed rows. ``database.sync`` is what applies it.

No row value is logged or written to an output: only table names, counts and checksums.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from migrator.errors import PreconditionFailed, VerificationFailed
from migrator.estimator import Work, estimate, rates
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.providers.blob.base import BlobStore
from migrator.providers.database import Database, DatabaseEndpoint, Fingerprint, Table, fk_order, open_database
from migrator.providers.database.backup import (
    DELTA_FORMAT,
    DELTA_PREFIX,
    ChunkInfo,
    Manifest,
    delta_blob,
    lines_text,
    read_chunk_lines,
    read_delta_blob,
    read_delta_manifest,
    read_manifest,
    table_folder,
    write_delta_manifest,
)
from migrator.providers.database.base import LineReader
from migrator.step import CheckResult, Params, PlanResult, Step, StepContext
from migrator.steps.database.common import (
    SourceProfile,
    TargetCosts,
    chunk_count,
    connected,
    fingerprint,
    measure_target,
    measured_rates,
    request_samples,
    required_manifest,
    source_profile,
    timed,
)


def sync_seconds(source: SourceProfile, target: TargetCosts, blob: float, ranges: int, *, full: bool = False
                 ) -> float:
    """Seconds of a sync (:func:`sync_work`) at the rates measured in ``source``, ``target`` and ``blob``."""
    work = sync_work(source, target, blob, ranges, full=full)
    return measured_rates(*work.samples).seconds_of(work)


def sync_work(source: SourceProfile, target: TargetCosts, blob: float, ranges: int, *, full: bool = False
              ) -> Work:
    """The work of a sync, counted from what its check, apply and verify do (with the measurements as samples).

    check: the presync manifest and the delta manifest looked up, a target connection. apply: the manifest, a
    connection to each side, the source's catalog; every source row read once, range by range (one query per
    range); the target's catalog; per table a count of the target (``verify: changed``: the few rows written
    are read back by key) or every target row read once for its fingerprint (``verify: full``, at the target's
    fetch rate, which follows the source's read rate until measured); the delta manifest written. verify: a
    connection to each side, the manifest, a count per table on each side. Changed ranges are few inside the
    window; each adds a blob write and a target transaction.
    """
    c = source.costs
    n = len(c.tables)
    work = Work(samples=[*source.samples(), *target.samples(), *request_samples(blob)])
    work.add("backup.request", 2).add("db.target.connect", 1)  # check
    work.add("backup.request", 2).add("db.source.connect", 1).add("db.target.connect", 1)  # apply
    work.add("db.source.catalog", 1).add("db.source.count", ranges).add("db.source.read", c.total_rows)
    work.add("db.target.catalog", 1).add("db.target.lookup", n)
    if full:
        work.add("db.target.fetch", c.total_rows)
    else:
        work.add("db.target.lookup", n)
    work.add("db.source.connect", 1).add("db.target.connect", 1).add("backup.request", 1)  # verify
    return work.add("db.source.count", n).add("db.target.lookup", n)


@dataclass(frozen=True)
class KeyRange:
    """A keyset range ``(low, high]`` of a table (None: unbounded) and the presync chunk that covered it."""

    number: int
    low: list[Any] | None
    high: list[Any] | None
    chunk: ChunkInfo | None  # None for the range beyond the presync's last key


def key_ranges(chunks: Sequence[ChunkInfo]) -> list[KeyRange]:
    """The presync's chunks as ranges that cover every key: each chunk's, then the one beyond the last key."""
    ranges: list[KeyRange] = []
    low: list[Any] | None = None
    for number, chunk in enumerate(chunks):
        ranges.append(KeyRange(number, low, chunk.last_key, chunk))
        low = chunk.last_key
        if chunk.last_key is None:  # an empty table: its one chunk already covers every key
            return ranges
    ranges.append(KeyRange(len(ranges), low, None, None))
    return ranges



#: Connections that write range texts at once, each on a thread (:class:`RangeTexts`): the cores of a small
#: migration host.
RANGE_READERS = 2

#: Rows per sub-range of a changed presync chunk that the source digests one by one (in one query): scattered
#: changes (1% of rows) leave most sub-ranges of this size unchanged (0.99**16: 85%), and only the others are read.
SUB_RANGE_ROWS = 16


def changed_parts(src: Database, reader: LineReader, table: Table, key_range: KeyRange,
                  presync: Sequence[bytes], since: int | None = None) -> tuple[list[bytes], list[bytes]] | None:
    """The source's lines and the presync's lines of the sub-ranges of ``key_range`` that changed, or None where
    the source cannot tell sub-ranges apart (:meth:`Database.range_versions`, :meth:`Database.range_digests`).

    The presync chunk's lines (in key order) are cut every :data:`SUB_RANGE_ROWS` lines, each piece ending at
    its last line's key (the last at the range's end), so the sub-ranges cover every key of the range; a piece
    is unchanged when the source holds as many rows for its keys and none written since ``since`` (row
    versions), else when the piece's text MD5 is the source's digest of the same keys; the source reads only the
    runs of sub-ranges that are not."""
    if len(presync) <= SUB_RANGE_ROWS or key_range.high is None:
        return None
    at = [table.column_names.index(k) for k in table.primary_key]
    parts = [presync[i:i + SUB_RANGE_ROWS] for i in range(0, len(presync), SUB_RANGE_ROWS)]
    bounds = [[row[i] for i in at] for row in (json.loads(part[-1]) for part in parts[:-1])] + [key_range.high]
    versions = None if since is None else src.range_versions(table, key_range.low, bounds, since)
    if versions is not None:  # as many rows as the presync's piece and none written since: unchanged
        changed = [n for n, part in enumerate(parts) if versions[n] != (len(part), 0)]
    else:
        digests = src.range_digests(table, key_range.low, bounds)
        if digests is None:
            return None
        changed = [n for n, part in enumerate(parts)
                   if digests[n] != (len(part), hashlib.md5(lines_text(part), usedforsecurity=False).hexdigest())]
    lows = [key_range.low, *bounds[:-1]]
    runs = [[n for _, n in run]  # consecutive sub-ranges: one range to read
            for _, run in itertools.groupby(enumerate(changed), key=lambda pair: pair[1] - pair[0])]
    lines: list[bytes] = []
    if runs and lows[runs[0][0]] is None:  # from the table's first key: read on its own
        lines.extend(reader.range(None, bounds[runs[0][-1]]))
    rest: list[tuple[Sequence[Any], Sequence[Any]]] = [
        (low, bounds[run[-1]]) for run in runs if (low := lows[run[0]]) is not None]
    together = src.read_ranges(table, rest)  # in one query where the engine writes the lines
    if together is None:
        together = [line for low, high in rest for line in reader.range(low, high)]
    lines.extend(together)
    return lines, [line for run in runs for n in run for line in parts[n]]


@runtime_checkable
class WritesRangeText(Protocol):
    """A source that writes a key range's lines itself, in process (SQLite: ``json_array``), as one text."""

    def range_text(self, table: Table, low: Sequence[Any] | None, high: Sequence[Any] | None
                   ) -> tuple[int, bytes] | None:
        """Row count and text (each line ended by a newline, in key order) of the rows in ``(low, high]``; None
        where the engine does not write every row's portable line."""


@runtime_checkable
class SnapshotTwins(Protocol):
    """A source that opens a second connection reading the very state of its current snapshot."""

    def snapshot_twin(self) -> Database | None:
        """That connection (the caller closes it), or None where the source cannot tell it reads the same."""


def changed_rows(reader: LineReader, table: Table, current: bytes, presync: Sequence[bytes]
                 ) -> tuple[list[bytes], list[bytes]] | None:
    """The source's lines (read by key through ``reader``) of the rows of a range whose line, as the source wrote
    it in ``current`` (:class:`WritesRangeText`), is none of the presync's, and the presync's lines that are not
    in ``current``; None when every line of ``current`` is one of the presync's and as many (unchanged).

    Exact: a line the source wrote is exact JSON of the row's values, and it holds the primary key, so a line
    equal to a presync line is that row unchanged; any other line is a row added or changed — or one written
    with other escapes than the backup's, which the read by key gives as the portable line again (then equal to
    the presync's, and no upsert: :func:`diff_lines`). A presync line not in ``current`` is a row changed or
    deleted (or escaped otherwise)."""
    lines = current[:-1].split(b"\n") if current else []
    before = set(presync)
    new = [line for line in lines if line not in before]
    if not new and len(lines) == len(presync):
        return None
    at = [table.column_names.index(k) for k in table.primary_key]
    keys = [[row[i] for i in at] for row in map(json.loads, new)]
    now = set(lines)
    return (reader.keys(keys) if keys else []), [line for line in presync if line not in now]


@dataclass(frozen=True)
class Written:
    """A key range as the source writes it (:func:`written_text`)."""

    rows: int
    text: bytes
    md5: str
    #: The presync chunk's lines, where they were read with it (:class:`RangeTexts`: the range differs).
    presync: list[bytes] | None = None

    def same_as(self, chunk: ChunkInfo | None) -> bool:
        """The presync chunk's rows, as they were: the same text (``text_md5``), or no row where none was."""
        return not self.rows if chunk is None else (self.rows, self.md5) == (chunk.rows, chunk.text_md5)


def written_text(src: WritesRangeText, table: Table, key_range: KeyRange) -> Written | None:
    """Row count, text and text MD5 (hex) of ``key_range`` as ``src`` writes it (:class:`WritesRangeText`), or
    None where it does not."""
    found = src.range_text(table, key_range.low, key_range.high)
    if found is None:
        return None
    rows, text = found
    return Written(rows, text, hashlib.md5(text, usedforsecurity=False).hexdigest())


class RangeTexts:
    """The texts of key ranges (:func:`written_text`), asked of the source ahead of the sync on threads of their
    own: while the sync compares and applies one range (reads from the backup, writes to the target), the source
    writes and hashes the next ones. Each thread has a reader of its own (``readers``: connections that read
    the same state, :meth:`SqliteDatabase.snapshot_twin`) and takes the next range as soon as it is free. At most
    ``ahead`` texts wait at once (each is a presync chunk's size). A range asked for out of the order given is
    written then and there, by the caller's source; those skipped are dropped. ``owned`` readers are closed at
    the end. Where a range's text is not its chunk's, ``presync`` reads the chunk's lines on the same thread."""

    def __init__(self, readers: Sequence[WritesRangeText], wanted: Sequence[tuple[Table, KeyRange]],
                 ahead: int = 3, owned: Sequence[Database] = (),
                 presync: Callable[[ChunkInfo], list[bytes]] | None = None) -> None:
        self._order = {(table.name, kr.number): n for n, (table, kr) in enumerate(wanted)}
        self._waiting = list(enumerate(wanted))
        self._asked: dict[tuple[str, int], Future[Written | None]] = {}
        self._presync = presync
        self._ahead = max(ahead, len(readers))
        self._free: queue.SimpleQueue[WritesRangeText] = queue.SimpleQueue()
        for reader in readers:
            self._free.put(reader)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(len(readers), thread_name_prefix="range-text", initializer=self._bind) \
            if readers and wanted else None
        self._owned = list(owned)
        self._ask()

    def _bind(self) -> None:
        """A new thread of the pool takes a reader of its own."""
        self._local.reader = self._free.get()

    def _write(self, table: Table, key_range: KeyRange) -> Written | None:
        """The range's text; where it is not the presync chunk's, the chunk's lines with it (``presync``: read
        from the backup here, while the sync is busy with the ranges before)."""
        found = written_text(self._local.reader, table, key_range)
        chunk = key_range.chunk
        if found is None or chunk is None or self._presync is None or found.same_as(chunk):
            return found
        return Written(found.rows, found.text, found.md5, self._presync(chunk))

    def _ask(self) -> None:
        while self._pool is not None and self._waiting and len(self._asked) < self._ahead:
            _, (table, key_range) = self._waiting.pop(0)
            self._asked[(table.name, key_range.number)] = self._pool.submit(self._write, table, key_range)

    def text(self, src: WritesRangeText, table: Table, key_range: KeyRange) -> Written | None:
        """What :func:`written_text` gives for ``key_range``: the text asked ahead, else written now."""
        key = (table.name, key_range.number)
        asked = self._asked.pop(key, None)
        at = self._order.get(key)
        if at is not None:  # the ranges before this one are not asked for any more
            for skipped in [k for k in self._asked if self._order[k] < at]:
                self._asked.pop(skipped).cancel()
            self._waiting = [(n, w) for n, w in self._waiting if n > at]
        found = asked.result() if asked is not None else written_text(src, table, key_range)
        self._ask()
        return found

    def __enter__(self) -> RangeTexts:
        return self

    def __exit__(self, *exc: object) -> None:
        """Waits for the texts being written (the source's snapshot ends after), drops the others, closes the
        readers it owns."""
        self._waiting.clear()
        for asked in self._asked.values():
            asked.cancel()
        self._asked.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for db in self._owned:
            db.close()


class TargetOpening:
    """The target database connected and its catalog read (its tables as it has them) on a thread of its own,
    so that the sync starts on the source meanwhile; :meth:`get` waits for both. The connection is closed at
    the end (after the opening, whatever became of it)."""

    def __init__(self, endpoint: DatabaseEndpoint, ctx: StepContext) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="target-open")
        self._opened = self._pool.submit(self._open, endpoint, ctx)

    @staticmethod
    def _open(endpoint: DatabaseEndpoint, ctx: StepContext) -> tuple[Database, dict[str, Table]]:
        db = open_database(endpoint, ctx)
        try:
            return db, {t.name: t for t in db.tables()}
        except BaseException:
            db.close()
            raise

    def get(self) -> tuple[Database, dict[str, Table]]:
        """The connected target and its tables by name (raises what opening it raised)."""
        return self._opened.result()

    def __enter__(self) -> TargetOpening:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
        if self._opened.exception() is None:
            self._opened.result()[0].close()


def fingerprint_of(lines: Sequence[bytes]) -> Fingerprint:
    result = Fingerprint()
    result.add_lines(lines)
    return result


@dataclass
class RangeDiff:
    upserts: list[bytes]
    deletes: list[list[Any]]
    #: The presync's lines that are no longer in the source: old versions of changed rows, and deleted rows.
    gone: list[bytes] = field(default_factory=list)
    #: The primary key of each upsert row, in the same order.
    upsert_keys: list[list[Any]] = field(default_factory=list)


def diff_lines(table: Table, source: Sequence[bytes], presync: Sequence[bytes]) -> RangeDiff:
    """Rows added or changed in ``source`` (as lines) and primary keys gone from it, against ``presync``."""
    source_set, presync_set = set(source), set(presync)
    upserts = [line for line in source if line not in presync_set]
    positions = [table.column_names.index(k) for k in table.primary_key]

    def key(line: bytes) -> tuple[Any, ...]:
        row = json.loads(line)
        return tuple(row[i] for i in positions)

    upsert_keys = [key(line) for line in upserts]
    upserted = set(upsert_keys)
    gone = [line for line in presync if line not in source_set]
    deletes = [list(k) for k in map(key, gone) if k not in upserted]
    return RangeDiff(upserts, deletes, gone, [list(k) for k in upsert_keys])



# -- database.sync ------------------------------------------------------------------------------------------


class SyncParams(Params):
    #: The source database (read-only by now).
    source: DatabaseEndpoint
    #: The target, loaded from the presync backup by database.restore.
    database: DatabaseEndpoint
    #: The presync backup (its manifest gives the boundaries and fingerprints); the delta is written beside it.
    backup: BlobEndpoint
    tables: list[str] | None = None
    #: How the target is proved equal to the source. ``changed``: the rows this sync wrote are read back from
    #: the target and the rows it deleted are looked up (gone); every other row is as ``database.restore``
    #: loaded and verified it (its content fingerprint against the backup's) while the tenant was live — the
    #: target is not reachable by users before the cutover. ``full``: every target row is read and hashed again
    #: (inside the window: it costs a read of the whole target database).
    verify: Literal["changed", "full"] = "changed"


class Sync(Step[SyncParams]):
    """Brings a target loaded from a presync backup up to date with the (read-only) source: only what changed.

    Changes: in the target, the rows added, changed or deleted at the source since the presync backup (ranges
    whose fingerprint still matches the presync are not touched), and tables without a primary key whose
    content changed (copied again whole); in the backup location, ``delta/``: the changed rows, as an
    incremental backup, and ``delta/manifest.json`` last.
    Done when: ``delta/manifest.json`` of this run exists for this presync backup, recording no mismatch, and every
    table holds the synced row count in the target.
    Verified when: every table's fingerprint in the target equals the source's, computed (as ``database.verify``
    does) over the rows this sync read from the read-only source. The target's side (``verify: changed``, the
    default): the rows this sync wrote, read back by primary key, the rows it deleted looked up and found gone,
    and every other row as ``database.restore`` loaded and verified it; per table the row count besides. With
    ``verify: full`` every target row is read again instead. The outputs have ``database.verify``'s shape
    (``tables.NAME.expected/actual``, ``mismatches``), so a separate ``database.verify`` need not read the source
    again. Resumes per range (``ctx.items``); a range done twice changes nothing.
    Undone: not by itself; the presync's ``database.restore`` compensation drops or empties the tables it loaded.
    """

    kind = "database.sync"
    Params = SyncParams
    summary = "inside the window: apply only the rows changed since a presync backup+restore (resumable)"

    def _store(self, ctx: StepContext) -> BlobStore:
        return open_blob_store(self.params.backup, ctx)

    #: The presync backup's manifest as ``check`` read it (see :meth:`_manifest`).
    _kept_manifest: Manifest | None = None
    #: The range texts asked ahead during ``apply`` (:meth:`_ranges_ahead`); none outside it.
    _texts: RangeTexts | None = None
    #: The target being connected to during ``apply`` (:meth:`_target`), and its tables as it has them.
    _opening: TargetOpening | None = None
    _there: dict[str, Table]

    def _manifest(self, store: BlobStore, *, again: bool = False) -> Manifest:
        """The presync backup's manifest. ``check``, which begins every attempt, reads it (``again``); that
        attempt's ``apply`` and ``verify`` take the one it read, one blob read each less inside the window: the
        presync backup is done and nothing writes its manifest any more (the sync writes only ``delta/``)."""
        if self._kept_manifest is None or again:
            self._kept_manifest = required_manifest(store, self.step_id, what="presync backup",
                                                    hint="run database.backup and database.restore first")
        return self._kept_manifest

    def _tables(self, manifest: Manifest) -> list[Table]:
        tables = [t.table for t in manifest.tables]
        if self.params.tables is None:
            return tables
        missing = sorted(set(self.params.tables) - {t.name for t in tables})
        if missing:
            raise PreconditionFailed(f"table {', '.join(missing)} is not in the presync backup",
                                     step_id=self.step_id)
        return [t for t in tables if t.name in self.params.tables]

    def check(self, ctx: StepContext) -> CheckResult:
        store = self._store(ctx)
        # A dry-run before the presync exists: not done, and the plan sizes the sync from the source.
        if ctx.dry_run and read_manifest(store) is None:
            return CheckResult(False, f"no presync backup in {store.describe()} yet")
        with ThreadPoolExecutor(1, thread_name_prefix="delta-manifest") as pool:  # both blobs read at once
            delta_read = pool.submit(read_delta_manifest, store)
            manifest = self._manifest(store, again=True)
            delta = delta_read.result()
        if delta is None or delta.get("run_id") != ctx.run_id or delta.get("base_created_at") != manifest.created_at:
            return CheckResult(False, f"no delta of this run in {store.describe()}")
        if delta.get("outputs", {}).get("mismatches") != []:
            return CheckResult(False, "the target did not match the source after the last sync attempt")
        with connected(self.params.database, ctx) as db:
            for name, info in delta["tables"].items():
                if not db.table_exists(name) or db.count(name) != info["rows"]:
                    return CheckResult(False, f"table {name} in {db.describe()} does not hold the synced rows")
        return CheckResult(True, "the target holds the delta of this run", delta.get("outputs", {}))

    def plan(self, ctx: StepContext) -> PlanResult:
        store = self._store(ctx)
        manifest, blob = timed(lambda: read_manifest(store))
        state = self.check(ctx) if manifest is not None else None
        if state is not None and state.done:
            return PlanResult.nothing(state.reason)
        # Sized from the source whether or not the presync exists yet: the sync re-reads every source row,
        # whatever changed; the few changed rows add little (see sync_seconds).
        profile = source_profile(self.params.source, ctx, self.params.tables)
        target = measure_target(self.params.database, ctx,
                                fetch_width=round(profile.bytes_per_row) if self.params.verify == "full" else 0)
        tables, rows = profile.costs.tables, profile.costs.total_rows
        ranges = len(manifest.tables) + sum(len(t.chunks) for t in manifest.tables) if manifest is not None \
            else sum(chunk_count(n, profile.bytes_per_row) + 1 for n in profile.costs.rows.values())
        full = self.params.verify == "full"
        work = sync_work(profile, target, blob, ranges, full=full)
        work.note = (f"re-reads every source row{' and the whole target' if full else ''} once: {profile.basis()}; "
                     f"{target.basis()}; blob request {blob * 1000:.0f} ms; {ranges} key ranges")
        return PlanResult(
            [f"compare {len(tables)} tables ({rows} rows) of {self.params.source.describe()} with the presync "
             f"backup range by range; apply only the changed rows to {self.params.database.describe()}"],
            state.reason if state is not None else f"no presync backup in {store.describe()} yet: sized from "
                                                   f"{self.params.source.describe()}",
            estimate(work, rates(ctx), items=ranges, bytes=round(rows * profile.bytes_per_row)),
            {"tables": len(tables), "rows": rows, "ranges": ranges})

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        store = self._store(ctx)
        manifest = self._manifest(store)
        tables = self._tables(manifest)
        index_of = {t.table.name: i for i, t in enumerate(manifest.tables)}
        totals = {"ranges": 0, "changed_ranges": 0, "rows_read": 0, "rows_updated": 0, "rows_inserted": 0,
                  "rows_deleted": 0}
        recopied: list[str] = []
        tracked: list[str] = []  # tables whose changes change tracking gave
        fingerprints: dict[str, Fingerprint] = {}  # the source's, per table
        targets: dict[str, Fingerprint] = {}  # the target's, as verified (see SyncParams.verify)
        ordered = fk_order(tables)
        # One snapshot of the source for every read; the texts of its ranges are asked ahead (_ranges_ahead)
        # while the target is connected to and its catalog read.
        with connected(self.params.source, ctx) as src, src.snapshot(), \
                self._ranges_ahead(ctx, src, store, manifest, ordered, index_of) as self._texts, \
                TargetOpening(self.params.database, ctx) as self._opening:
            self._require_same_schema(src, tables)
            # Pass 1, parents first: changed and new rows. The target is waited for where a range changed.
            for table in ordered:
                backed = manifest.tables[index_of[table.name]]
                changes = self._changes(ctx, src, table, manifest.change_version)
                if changes is not None:
                    fingerprints[table.name], targets[table.name] = self._sync_changed(
                        ctx, store, src, self._target(), index_of[table.name], table, backed.fingerprint, changes,
                        totals)
                    tracked.append(table.name)
                elif table.primary_key:
                    fingerprints[table.name], targets[table.name] = self._sync_ranges(
                        ctx, store, src, index_of[table.name], table, backed.chunks, totals,
                        since=manifest.change_version)
                else:
                    fingerprints[table.name], targets[table.name], copied = self._sync_whole(
                        ctx, store, src, self._target(), index_of[table.name], table, backed.fingerprint, totals)
                    if copied:
                        recopied.append(table.name)
            dst = self._target()
            # Pass 2, children first: deleted rows.
            for table in reversed(ordered):
                if table.primary_key:
                    self._apply_deletes(ctx, store, dst, index_of[table.name], table, totals)
            for table in ordered:  # identity counters past the keys the sync inserted
                dst.finish_load(self._there.get(table.name, table))
            # The proof, as database.verify gives it: the target's fingerprints against the source's, which this
            # sync has just read whole (the source being read-only, reading it a second time would add nothing).
            compared: dict[str, dict[str, Any]] = {}
            for table in tables:
                ctx.raise_if_cancelled()
                actual = self._target_fingerprint(dst, table, targets)
                compared[table.name] = {"expected": fingerprints[table.name].as_dict(), "actual": actual}
            mismatches = sorted(n for n, c in compared.items() if c["expected"] != c["actual"])
            ctx.memo.set("mismatches", mismatches)
            outputs = {"database": dst.describe(), **totals, "tables_recopied": recopied,
                       "tables_by_change_tracking": tracked, "tables": compared, "mismatches": mismatches,
                       "delta": f"{store.describe()} {DELTA_PREFIX}"}
            delta = {"format": DELTA_FORMAT, "run_id": ctx.run_id, "base_created_at": manifest.created_at,
                     "created_at": ctx.clock.now().isoformat(timespec="seconds"),
                     "tables": {n: {"rows": f.rows, "fingerprint": f.as_dict(), "chunks": self._delta_chunks(ctx, n)}
                                for n, f in fingerprints.items()},
                     "outputs": outputs}
            write_delta_manifest(store, delta)
        ctx.event("database.sync", f"{totals['changed_ranges']} of {totals['ranges']} ranges changed since the "
                  f"presync; {totals['rows_updated']} rows updated, {totals['rows_inserted']} inserted, "
                  f"{totals['rows_deleted']} deleted", **{k: v for k, v in totals.items()})
        return outputs

    def _ranges_ahead(self, ctx: StepContext, src: Database, store: BlobStore, manifest: Manifest,
                      ordered: Sequence[Table], index_of: Mapping[str, int]) -> RangeTexts:
        """The texts of the key ranges pass 1 will compare, in its order, asked of a source that writes them
        itself (:class:`WritesRangeText`) ahead of the sync: every range of a table with a primary key not done
        yet (a resumed sync) whose chunk has a text digest. Nothing is asked of other sources, or where change
        tracking may give the changed keys instead."""
        if not isinstance(src, WritesRangeText) or manifest.change_version is not None:
            return RangeTexts([], [])
        wanted: list[tuple[Table, KeyRange]] = []
        for table in ordered:
            if not table.primary_key:
                continue
            for key_range in key_ranges(manifest.tables[index_of[table.name]].chunks):
                record = ctx.items.get(f"{table_folder(index_of[table.name], table.name)}/{key_range.number:06d}")
                chunk = key_range.chunk
                if (record is None or record.status != "done") and (chunk is None or chunk.text_md5 is not None):
                    wanted.append((table, key_range))
        # Readers of the same snapshot of their own where the source has them (SQLite in a rollback-journal
        # mode): the ranges are written on as many cores at once, and the source's own connection stays free for
        # the sync's reads by key.
        twins: list[Database] = []
        while wanted and isinstance(src, SnapshotTwins) and len(twins) < RANGE_READERS:
            twin = src.snapshot_twin()
            if twin is None:
                break
            twins.append(twin)
        readers = [t for t in twins if isinstance(t, WritesRangeText)]
        return RangeTexts(readers if len(readers) == len(twins) and readers else [src], wanted, owned=twins,
                          presync=lambda chunk: read_chunk_lines(store, chunk))

    def _target(self) -> Database:
        """The target, connected (waited for the first time: :class:`TargetOpening`); sets :attr:`_there`, its
        tables as it has them, read once: the sync changes rows, never the schema."""
        assert self._opening is not None
        dst, self._there = self._opening.get()
        return dst

    def _require_same_schema(self, src: Database, tables: Sequence[Table]) -> None:
        """Refuses a table whose schema at the source is not the presync backup's (or that is gone)."""
        present = {t.name: t for t in src.tables()}
        for table in tables:
            if present.get(table.name) != table:
                raise PreconditionFailed(
                    f"table {table.name} of {src.describe()} changed its schema (or is gone) since the presync "
                    "backup", step_id=self.step_id, hint="roll back, then run the presync again")

    def _target_fingerprint(self, dst: Database, table: Table, targets: Mapping[str, Fingerprint]) -> dict[str, Any]:
        """The target's side of the proof for ``table`` (see ``SyncParams.verify``): its fingerprint in
        ``targets``, as this sync wrote and read it back, unless its row count says otherwise; or, with ``verify:
        full``, every target row read again."""
        there = self._there.get(table.name)
        if there is None:
            return {"rows": None, "checksum": None}
        if self.params.verify == "full":
            return fingerprint(dst, table, there).as_dict()
        actual = targets[table.name].as_dict()
        rows = dst.count(table.name)
        if rows != targets[table.name].rows:  # a row no range accounts for
            actual = {"rows": rows, "checksum": None}
        return actual

    @staticmethod
    def _delta_chunks(ctx: StepContext, table: str) -> list[dict[str, Any]]:
        return [{"name": r.detail["delta"], "sha256": r.checksum, "bytes": r.bytes}
                for r in ctx.items.iter("done")
                if isinstance(r.detail, dict) and r.detail.get("table") == table and r.detail.get("delta")]

    def _changes(self, ctx: StepContext, src: Database, table: Table, version: int | None) -> list[list[Any]] | None:
        """The keys change tracking gives for ``table`` since the presync's version, or None: then the ranges
        are compared (said so where the source tracks changes but cannot answer for that version)."""
        if version is None or not table.primary_key:
            return None
        record = ctx.items.get(f"{table.name}#changes")
        if record is not None and record.status == "done":  # a resumed sync: the keys as first read
            return list(record.detail)
        changed = src.changed_keys(table, version)
        if changed.keys is None:
            ctx.event("database.sync.ranges", f"{changed.reason}: comparing the presync's key ranges instead",
                      table=table.name)
            return None
        ctx.items.record(f"{table.name}#changes", "done", detail=changed.keys)
        ctx.progress(f"{table.name}: {len(changed.keys)} rows changed ({changed.reason})")
        return changed.keys

    def _sync_changed(self, ctx: StepContext, store: BlobStore, src: Database, dst: Database, index: int,
                      table: Table, presync: Fingerprint, keys: Sequence[Sequence[Any]], totals: dict[str, int]
                      ) -> tuple[Fingerprint, Fingerprint]:
        """Pass 1 for a table whose changed keys change tracking gave: only those rows are read, at the source
        and at the target (which holds them as the presync read them), as one delta. Returns the source's and
        the target's fingerprints, each the presync's with the changed keys' old lines taken out and their new
        ones put in (the target's as read back after the write)."""
        key = f"{table_folder(index, table.name)}/changes"
        totals["ranges"] += 1
        record = ctx.items.get(key)
        if record is not None and record.status == "done":
            totals["changed_ranges"] += bool(record.detail.get("delta"))
            return Fingerprint.from_dict(record.detail["fingerprint"]), Fingerprint.from_dict(record.detail["target"])
        there = self._there.get(table.name)
        target_reader = LineReader(dst, table, there)
        current = LineReader(src, table).keys(keys)
        totals["rows_read"] += len(current)
        before = target_reader.keys(keys)
        positions = [table.column_names.index(k) for k in table.primary_key]
        present = {tuple(row[i] for i in positions) for row in map(json.loads, current)}
        deletes = [list(k) for k in keys if tuple(k) not in present]
        found = Fingerprint(presync.rows, presync.total)
        found.remove(fingerprint_of(before))
        after = Fingerprint(found.rows, found.total)
        found.merge(fingerprint_of(current))
        detail: dict[str, Any] = {"table": table.name, "fingerprint": found.as_dict(), "delta": None,
                                  "target": found.as_dict()}
        if not keys:
            ctx.items.record(key, "done", detail=detail)
            return found, found
        blob_name = f"{DELTA_PREFIX}{key}.jsonl.gz"
        data = delta_blob(current, deletes)
        store.write(blob_name, data, content_type="application/gzip")
        with dst.transaction():
            updated, inserted = dst.upsert_lines(table, current, there)
        after.merge(fingerprint_of(target_reader.keys([list(k) for k in present])))
        totals["changed_ranges"] += 1
        totals["rows_updated"] += updated
        totals["rows_inserted"] += inserted
        detail.update(delta=blob_name, deletes=len(deletes), upserts=len(current), target=after.as_dict())
        ctx.items.record(key, "done", bytes=len(data), checksum=hashlib.sha256(data).hexdigest(), detail=detail)
        ctx.items.flush()
        ctx.progress(f"{table.name}: {len(current)} rows upserted, {len(deletes)} to delete")
        return found, after

    def _sync_ranges(self, ctx: StepContext, store: BlobStore, src: Database, index: int,
                     table: Table, chunks: Sequence[ChunkInfo], totals: dict[str, int], since: int | None = None
                     ) -> tuple[Fingerprint, Fingerprint]:
        """Pass 1 for a table with a primary key. Returns the source's fingerprint and the target's, the latter
        as verified: per range, the presync chunk's (which the restore loaded and verified) with the lines that
        went away taken out and the lines read back from the target for the rows written put in.

        A range the source proves unchanged by itself (``since``, the presync backup's change version: by its row
        versions; else by its digest of the range's text; PostgreSQL) is unchanged without a row read; of a range
        it finds changed only the changed 16-row sub-ranges are read. A source that writes the range's text
        itself (SQLite) gives it whole; of a changed range only the rows whose line is not the presync's are
        read. Any other range is read and compared here (a row written again with the same values, or a digest
        that differs for any reason, only costs a read). The target is asked for only where a range changed.
        Every range is recorded in ``ctx.items`` as it is done, unchanged or applied, so a resumed sync starts
        after it."""
        reader = LineReader(src, table)
        target_reader: LineReader | None = None
        total, target_total = Fingerprint(), Fingerprint()
        for key_range in key_ranges(chunks):
            ctx.raise_if_cancelled()
            totals["ranges"] += 1
            key = f"{table_folder(index, table.name)}/{key_range.number:06d}"
            record = ctx.items.get(key)
            if record is not None and record.status == "done":
                total.merge(Fingerprint.from_dict(record.detail["fingerprint"]))
                target_total.merge(Fingerprint.from_dict(record.detail["target"]))
                totals["changed_ranges"] += bool(record.detail.get("delta"))
                continue
            chunk = key_range.chunk
            presync_print = Fingerprint(chunk.rows, int(chunk.fingerprint, 16)) if chunk is not None else Fingerprint()
            changed = self._changed_lines(store, src, reader, table, key_range, since, totals)
            if changed is None:  # the presync's rows, as they were: the chunk's fingerprint is the range's
                total.merge(presync_print)
                target_total.merge(presync_print)
                ctx.items.record(key, "done", detail={"table": table.name, "fingerprint": presync_print.as_dict(),
                                                      "delta": None, "target": presync_print.as_dict()})
                continue
            lines, presync = changed
            diff = diff_lines(table, lines, presync)
            # The source range's fingerprint from the presync's and the difference: only changed rows hashed.
            kept = Fingerprint(presync_print.rows, presync_print.total)  # the presync's rows still there
            kept.remove(fingerprint_of(diff.gone))
            found = Fingerprint(kept.rows, kept.total)
            found.merge(fingerprint_of(diff.upserts))
            total.merge(found)
            detail: dict[str, Any] = {"table": table.name, "fingerprint": found.as_dict(), "delta": None}
            blob_name = f"{DELTA_PREFIX}{key}.jsonl.gz"
            data = delta_blob(diff.upserts, diff.deletes)
            store.write(blob_name, data, content_type="application/gzip")
            dst = self._target()
            with dst.transaction():
                updated, inserted = dst.upsert_lines(table, diff.upserts, self._there.get(table.name))
            # What the target holds for this range now, from what it was loaded with and what was just written.
            there = Fingerprint(kept.rows, kept.total)
            target_reader = target_reader or LineReader(dst, table, self._there.get(table.name))
            there.merge(fingerprint_of(target_reader.keys(diff.upsert_keys)))
            target_total.merge(there)
            totals["changed_ranges"] += 1
            totals["rows_updated"] += updated
            totals["rows_inserted"] += inserted
            detail.update(delta=blob_name, deletes=len(diff.deletes), upserts=len(diff.upserts),
                          target=there.as_dict())
            ctx.items.record(key, "done", bytes=len(data), checksum=hashlib.sha256(data).hexdigest(), detail=detail)
            ctx.items.flush()  # the target committed: keep the checkpoint as close behind as we can
            ctx.progress(f"{table.name}: range {key_range.number}: {len(diff.upserts)} rows upserted")
        return total, target_total

    @staticmethod
    def _source_says(src: Database, table: Table, key_range: KeyRange, since: int | None) -> bool | None:
        """Whether the source tells by itself, reading no row, that ``key_range`` is unchanged since the presync
        (True) or changed (False), or cannot tell (None): by its row versions since the presync backup's change
        version (:meth:`Database.range_versions`), else by its digest of the range's text
        (:meth:`Database.range_digest`) against the chunk's ``text_md5``."""
        chunk = key_range.chunk
        if chunk is None or key_range.high is None:
            return None
        if since is not None:
            versions = src.range_versions(table, key_range.low, [key_range.high], since)
            if versions is not None:
                return versions[0] == (chunk.rows, 0)
        if chunk.text_md5 is not None:
            digest = src.range_digest(table, key_range.low, key_range.high)
            if digest is not None:
                return digest == (chunk.rows, chunk.text_md5)
        return None

    def _changed_lines(self, store: BlobStore, src: Database, reader: LineReader, table: Table,
                       key_range: KeyRange, since: int | None, totals: dict[str, int]
                       ) -> tuple[list[bytes], list[bytes]] | None:
        """What may have changed in ``key_range``: the source's lines and the presync chunk's lines of the same
        keys (the whole range's, or only its changed sub-ranges' or rows'), or None where the range is unchanged.

        A source that writes the range's text itself in process (:class:`WritesRangeText`, SQLite) gives it in
        one value: the same text as the chunk's (``text_md5``) is the same rows; else its lines are compared
        with the chunk's and only the rows whose line is not the chunk's are read (:func:`changed_rows`). Where
        the source tells (:meth:`_source_says`) no row is read for an unchanged range, and only the changed
        sub-ranges of a changed one (:func:`changed_parts`); otherwise the range is read and its text hashed
        here (its fingerprint, for a backup without ``text_md5``)."""
        chunk = key_range.chunk
        if isinstance(src, WritesRangeText) and (chunk is None or chunk.text_md5 is not None):
            written = self._texts.text(src, table, key_range) if self._texts is not None \
                else written_text(src, table, key_range)
            if written is not None:
                if written.same_as(chunk):
                    return None  # the same text as the presync chunk (or no row beyond it): none read
                presync = written.presync if written.presync is not None \
                    else read_chunk_lines(store, chunk) if chunk else []
                try:
                    diff = changed_rows(reader, table, written.text, presync)
                except ValueError:  # a line that is not UTF-8 JSON (legacy text): read the range as values
                    diff = (reader.range(key_range.low, key_range.high), presync)
                totals["rows_read"] += len(diff[0]) if diff is not None else 0
                return diff
        said = self._source_says(src, table, key_range, since)
        if said:
            return None
        if said is False and chunk is not None:
            presync = read_chunk_lines(store, chunk)
            parts = changed_parts(src, reader, table, key_range, presync, since)
            changed = parts if parts is not None else (reader.range(key_range.low, key_range.high), presync)
            totals["rows_read"] += len(changed[0])
            return changed
        lines = reader.range(key_range.low, key_range.high)
        totals["rows_read"] += len(lines)
        if chunk is None:
            return (lines, []) if lines else None
        if chunk.text_md5 is not None:
            # The same text as the presync chunk, in the same order: the same rows, no row hashed.
            same = len(lines) == chunk.rows and \
                hashlib.md5(lines_text(lines), usedforsecurity=False).hexdigest() == chunk.text_md5
        else:  # a backup without the chunk's text digest: compare content fingerprints
            found = fingerprint_of(lines)
            same = found.rows == chunk.rows and found.checksum == chunk.fingerprint
        return None if same else (lines, read_chunk_lines(store, chunk))

    def _apply_deletes(self, ctx: StepContext, store: BlobStore, dst: Database, index: int, table: Table,
                       totals: dict[str, int]) -> None:
        folder = table_folder(index, table.name)
        for record in sorted(ctx.items.iter("done"), key=lambda r: r.key):
            detail = record.detail if isinstance(record.detail, dict) else {}
            if not record.key.startswith(folder + "/") or not detail.get("deletes"):
                continue
            done_key = f"{record.key}/deleted"
            done = ctx.items.get(done_key)
            if done is not None and done.status == "done":
                totals["rows_deleted"] += int(done.detail or 0)
                continue
            ctx.raise_if_cancelled()
            header, _ = read_delta_blob(store, detail["delta"], str(record.checksum))
            with dst.transaction():
                deleted = dst.delete_keys(table, header["deletes"])
            left = LineReader(dst, table, self._there.get(table.name)).keys(header["deletes"])
            if left:
                raise VerificationFailed(f"table {table.name}: {len(left)} rows deleted at the source are still in "
                                         f"{dst.describe()} after the sync deleted them", step_id=self.step_id)
            totals["rows_deleted"] += deleted
            ctx.items.record(done_key, "done", detail=deleted)
            ctx.items.flush()

    def _sync_whole(self, ctx: StepContext, store: BlobStore, src: Database, dst: Database, index: int,
                    table: Table, presync: Fingerprint, totals: dict[str, int]
                    ) -> tuple[Fingerprint, Fingerprint, bool]:
        """A table without a primary key: copied again whole when its fingerprint changed since the presync.

        Returns the source's fingerprint, the target's as verified (read again whole after a copy; else the
        presync's, which the restore verified) and whether it was copied."""
        key = f"{table_folder(index, table.name)}/whole"
        totals["ranges"] += 1
        record = ctx.items.get(key)
        if record is not None and record.status == "done":
            totals["changed_ranges"] += bool(record.detail.get("delta"))
            return (Fingerprint.from_dict(record.detail["fingerprint"]), Fingerprint.from_dict(record.detail["target"]),
                    bool(record.detail.get("delta")))
        reader = LineReader(src, table)
        lines = list(reader.all())
        totals["rows_read"] += len(lines)
        found = fingerprint_of(lines)
        detail: dict[str, Any] = {"table": table.name, "fingerprint": found.as_dict(), "delta": None,
                                  "target": found.as_dict()}
        if found.as_dict() == presync.as_dict():
            ctx.items.record(key, "done", detail=detail)
            return found, found, False
        blob_name = f"{DELTA_PREFIX}{key}.jsonl.gz"
        data = delta_blob(lines, [], replace=True)
        store.write(blob_name, data, content_type="application/gzip")
        dst.replace_lines(table, lines)
        there = fingerprint(dst, table, self._there.get(table.name))
        totals["changed_ranges"] += 1
        totals["rows_inserted"] += len(lines)
        detail.update(delta=blob_name, target=there.as_dict())
        ctx.items.record(key, "done", bytes=len(data), checksum=hashlib.sha256(data).hexdigest(), detail=detail)
        ctx.items.flush()
        return found, there, True

    def verify(self, ctx: StepContext) -> None:
        mismatches = ctx.memo.get("mismatches")
        if mismatches:
            raise VerificationFailed(f"{self.params.database.describe()}: content differs from the source in table "
                                     f"{', '.join(mismatches)} after the sync", step_id=self.step_id)
        with connected(self.params.source, ctx) as src, connected(self.params.database, ctx) as dst:
            manifest = self._manifest(self._store(ctx))
            for table in self._tables(manifest):
                expected, actual = src.count(table.name), dst.count(table.name)
                if expected != actual:
                    raise VerificationFailed(f"table {table.name}: {actual} rows in {dst.describe()} after the "
                                             f"sync, {expected} in the source", step_id=self.step_id)
