"""What the database step kinds share: a connection per endpoint, the measured costs plans size from, chunked
reads and content fingerprints.

A plan measures instead of assuming: what one connection, one catalog read and one count cost on each database
now, what one blob request costs on the backup store, and how fast the biggest table reads through the backup's
own read path. Each measurement is a sample of a named rate of the estimator (``db.source.connect``,
``db.target.lookup``, ``db.source.read``, ``backup.request``...: :mod:`migrator.estimator`). A step's plan then
counts the operations its apply and verify make (from the code: the catalog reads, counts, chunk writes) and
the rows, and the estimator prices them with the rates measured on this machine. On a small tenant the fixed
costs are most of the time; on a big one the rows are.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from migrator.errors import InputError, PreconditionFailed
from migrator.estimator import Rates, Sample
from migrator.providers.blob.base import BlobStore
from migrator.providers.database import (
    MARKER_TABLE,
    Database,
    DatabaseEndpoint,
    Fingerprint,
    Table,
    encode_row,
    open_database,
)
from migrator.providers.database.backup import ChunkWriter, Manifest, read_manifest
from migrator.providers.database.base import join_line, row_converter
from migrator.providers.database.schema import same_portable_form
from migrator.resources import ResourceKey
from migrator.step import StepContext


@contextmanager
def connected(endpoint: DatabaseEndpoint, ctx: StepContext, *, must_exist: bool = True) -> Iterator[Database]:
    db = open_database(endpoint, ctx, must_exist=must_exist)
    try:
        yield db
    finally:
        db.close()


def selected_tables(tables: Sequence[Table], names: Sequence[str] | None, where: str) -> list[Table]:
    if names is None:
        return list(tables)
    by_name = {t.name: t for t in tables}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"table {', '.join(missing)} not found in {where}")
    return [by_name[n] for n in names]



#: Seconds a throughput probe may read at most (the plan's own cost).
PROBE_SECONDS = 0.5
#: Rows a restore inserts per second for each row the backup reads per second: inserting and committing costs
#: more than reading (measured on the demo: PostgreSQL through psqlODBC from SQLite, about a third). The
#: estimator's ``db.rows.insert`` is derived from ``db.source.read`` by this factor until it is measured.
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
        tables = selected_tables(tables, names, db.describe()) if tables or names is None else []
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
    #: When it was measured.
    at: float = field(default_factory=time.time)

    def read_seconds(self, rows: int) -> float:
        return rows / self.rows_per_second if self.rows_per_second > 0 else 0.0

    def samples(self) -> list[Sample]:
        """What the plan measured, as samples of the source's rates (the read rate where rows were read)."""
        c = self.costs
        found = [Sample("db.source.connect", 1, c.connect, self.at), Sample("db.source.catalog", 1, c.catalog, self.at),
                 Sample("db.source.count", 1, c.count, self.at)]
        if self.rows_per_second > 0 and self.probed_rows > 0:
            found.append(Sample("db.source.read", self.probed_rows, self.probed_rows / self.rows_per_second,
                                self.at))
        return found

    def basis(self) -> str:
        c = self.costs
        return (f"measured: {len(c.tables)} tables, {c.total_rows} rows, read {self.rows_per_second:,.0f} rows/s "
                f"({self.probed_rows} rows probed), connect {c.connect * 1000:.0f} ms, catalog read "
                f"{c.catalog * 1000:.0f} ms, count {c.count * 1000:.1f} ms")


def source_profile(endpoint: DatabaseEndpoint, ctx: StepContext, names: Sequence[str] | None = None) -> SourceProfile:
    """Measures ``endpoint`` once per run's plan (a run resource): later steps sizing from it reuse it."""
    key = ResourceKey[SourceProfile](f"estimate.source:{endpoint.describe()}:{','.join(names or [])}")

    def measure() -> SourceProfile:
        costs, db = measure_db(endpoint, ctx, names)
        try:
            rate, per_row, probed = probe_read_rate(db, costs.tables, costs.rows)
        finally:
            db.close()
        return SourceProfile(costs, rate, per_row, probed)

    return ctx.resources.obtain(key, measure)


def blob_request(store: BlobStore) -> float:
    """Seconds of one request to the backup store (reading the manifest, present or not)."""
    return timed(lambda: read_manifest(store))[1]


def request_samples(blob: float) -> list[Sample]:
    """A timed request to the backup store as a sample of ``backup.request``."""
    return [Sample("backup.request", 1, blob, time.time())] if blob >= 0 else []


def measured_rates(*samples: Sample, rates: Rates | None = None) -> Rates:
    """``rates`` (assumed ones when None) with ``samples`` in them: what the estimate helpers price with."""
    book = rates if rates is not None else Rates()
    book.absorb(samples)
    return book



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
    #: Whether a restore adds the keys after the load (:attr:`Database.keys_after_load`): more DDL to count.
    keys_after_load: bool = True
    #: When it was measured.
    at: float = field(default_factory=time.time)

    def samples(self) -> list[Sample]:
        """What the plan measured, as samples of the target's rates (the fetch rate where it was probed)."""
        found = [Sample("db.target.connect", 1, self.connect, self.at),
                 Sample("db.target.catalog", 1, self.catalog, self.at),
                 Sample("db.target.lookup", 1, self.lookup, self.at)]
        if self.fetch_rows_per_second > 0:
            found.append(Sample("db.target.fetch", 1, 1 / self.fetch_rows_per_second, self.at))
        return found

    def basis(self) -> str:
        fetch = f", fetch {self.fetch_rows_per_second:,.0f} rows/s" if self.fetch_rows_per_second else ""
        return (f"target: connect {self.connect * 1000:.0f} ms, catalog read {self.catalog * 1000:.0f} ms, "
                f"table lookup {self.lookup * 1000:.1f} ms{fetch}")


#: Rows of the fetch probe (at most; it stops after PROBE_SECONDS).
FETCH_PROBE_ROWS = 20_000
def probe_fetch_rate(db: Database, width: int, *, rows: int = FETCH_PROBE_ROWS,
                     seconds: float = PROBE_SECONDS) -> float:
    """Rows per second ``db`` hands over one text value of ``width`` characters a row (the shape of the lines a
    fingerprint reads), each hashed as a fingerprint does; 0.0 where the engine's SQL cannot make the rows up.

    An empty target (before the restore) has no table to read: the rows are made by a recursive query, so the
    probe reads nothing of the tenant and writes nothing.
    """
    made_up = db.generated_rows(rows, width) if rows >= 1 else None
    if made_up is None:
        return 0.0
    read = 0
    fp = Fingerprint()
    batch: list[bytes] = []
    started = time.perf_counter()
    for row in made_up:
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
        return TargetCosts(db.dialect, costs.connect, costs.catalog, lookup, db.load_workers, fetch,
                           db.keys_after_load)
    finally:
        db.close()



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


def required_manifest(store: BlobStore, step_id: str, *, what: str, hint: str) -> Manifest:
    """The backup manifest in ``store``; its absence stops the step (``what``: which backup it should be)."""
    manifest = read_manifest(store)
    if manifest is None:
        raise PreconditionFailed(f"no {what} (manifest.json) in {store.describe()}", step_id=step_id, hint=hint)
    return manifest
