"""The dialect interface: one connection to one database, and everything a step asks of it.

Steps never write SQL nor ask which dialect they have: they ask a :class:`Database` for a catalog, a range of
rows between two primary keys, the rows of some keys, an upsert or a delete by keys, the read-only switch, the
restore's marker fence. Each dialect writes the SQL for those; what they share is here.

The portable types, line encoding, fingerprints and schema live in their own modules
(:mod:`.portable`, :mod:`.fingerprint`, :mod:`.schema`) and are re-exported here for older import paths.
Identifiers are only ever put into SQL through :meth:`Database.quote`; a name read from a catalog is never
pasted in unquoted. Longer than the house's ~600 lines because it is one interface (the ~40 operations a step
may ask of a database, with the portable defaults every dialect shares); the parts that stand alone already
moved out.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from migrator.providers.database.fingerprint import FINGERPRINT_MODULUS, Fingerprint, row_hash
from migrator.providers.database.portable import (
    Converter,
    converter,
    encode_row,
    join_line,
    portable_row,
    row_converter,
    to_portable,
)
from migrator.providers.database.schema import (
    INTEGER_TYPES,
    LOGICAL_TYPES,
    MARKER_FENCE,
    MARKER_TABLE,
    TEMPORAL_TYPES,
    Column,
    Drift,
    ForeignKey,
    GeneratedColumn,
    LogicalType,
    Table,
    UnsupportedType,
    assemble_tables,
    case_insensitive,
    colliding_keys,
    compatible,
    drift,
    fk_order,
    same_portable_form,
    type_label,
)

__all__ = [
    "FINGERPRINT_MODULUS",
    "INTEGER_TYPES",
    "LOGICAL_TYPES",
    "MARKER_FENCE",
    "MARKER_TABLE",
    "TEMPORAL_TYPES",
    "Column",
    "Converter",
    "Database",
    "Drift",
    "Fingerprint",
    "ForeignKey",
    "GeneratedColumn",
    "LineReader",
    "LogicalType",
    "Table",
    "UnsupportedType",
    "assemble_tables",
    "compatible",
    "converter",
    "drift",
    "encode_row",
    "fk_order",
    "join_line",
    "portable_row",
    "recursive_rows_sql",
    "row_converter",
    "row_hash",
    "same_portable_form",
    "to_portable",
    "type_label",
]


@dataclass(frozen=True)
class ChangedKeys:
    """What the engine's change tracking says changed in a table since a version: the primary keys (portable
    values) of every row inserted, updated or deleted since, or None where it cannot say — with ``reason``,
    which a sync reports before it compares ranges instead."""

    keys: list[list[Any]] | None
    reason: str
    #: Rows per operation as change tracking reports them (``I``, ``U``, ``D``), for messages.
    operations: dict[str, int] = field(default_factory=dict)


class ChunkLoad(Protocol):
    """What a restore does inside one chunk's transaction (:meth:`Database.chunk_transaction`)."""

    def describe(self) -> str: ...

    def insert_lines(self, table: Table, columns: Sequence[str], lines: Sequence[bytes]) -> None: ...

    def mark_chunk(self, chunk: str, sha256: str) -> None: ...

    def check_marker_fence(self, generation: int) -> bool: ...


class Database(ABC):
    """One connection to one database, through its dialect."""

    dialect: str
    #: The marker placeholder of the driver's parameter style.
    placeholder = "?"

    # -- identity and lifetime ---------------------------------------------------------------------------

    @abstractmethod
    def describe(self) -> str:
        """Which database this is, for messages; never a credential."""

    @abstractmethod
    def close(self) -> None: ...

    # -- SQL text ----------------------------------------------------------------------------------------

    @abstractmethod
    def quote(self, name: str) -> str:
        """``name`` as a quoted identifier of this dialect."""

    def table_ref(self, name: str) -> str:
        return self.quote(name)

    def column_list(self, names: Sequence[str]) -> str:
        return ", ".join(self.quote(n) for n in names)

    @abstractmethod
    def column_ddl(self, column: Column) -> str:
        """The native type of a logical column, with NOT NULL when it applies."""

    def column_definition(self, column: Column) -> str:
        """A column of ``CREATE TABLE``: its name and :meth:`column_ddl` (and whatever else the dialect adds)."""
        return f"{self.quote(column.name)} {self.column_ddl(column)}"

    def create_table_sql(self, table: Table) -> str:
        cols = [self.column_definition(c) for c in table.columns]
        if table.primary_key:
            cols.append(f"PRIMARY KEY ({self.column_list(table.primary_key)})")
        return f"CREATE TABLE {self.table_ref(table.name)} (" + ", ".join(cols) + ")"

    def primary_key_sql(self, table: Table) -> str:
        return f"ALTER TABLE {self.table_ref(table.name)} ADD PRIMARY KEY ({self.column_list(table.primary_key)})"

    def foreign_key_sql(self, table: Table, fk: ForeignKey) -> str:
        return (f"ALTER TABLE {self.table_ref(table.name)} ADD CONSTRAINT {self.quote(fk.name)} "
                f"FOREIGN KEY ({self.column_list(fk.columns)}) "
                f"REFERENCES {self.table_ref(fk.ref_table)} ({self.column_list(fk.ref_columns)})")

    def create_table(self, table: Table) -> None:
        """Creates ``table`` (committed on its own)."""
        with self.transaction():
            self.execute(self.create_table_sql(table))

    def add_primary_key(self, table: Table) -> None:
        with self.transaction():
            self.execute(self.primary_key_sql(table))

    def add_foreign_key(self, table: Table, fk: ForeignKey) -> None:
        with self.transaction():
            self.execute(self.foreign_key_sql(table, fk))

    #: Whether the engine compares row values, ``(a, b) > (?, ?)``, and uses an index for it.
    row_values = True

    def marker(self, column: Column) -> str:
        """The parameter marker for a value of ``column``, cast where the driver cannot say the type."""
        return self.placeholder

    @abstractmethod
    def limit_query(self, select: str, rest: str, order: str, *, limit: int, offset: int = 0) -> str:
        """``SELECT <select> <rest> ORDER BY <order>`` cut to ``limit`` rows after ``offset``."""

    def keyset_sql(self, table: Table, op: str) -> str:
        """The keyset predicate ``primary key > key`` (``op`` ``>``) or ``<= key`` (``<=``), its markers bound by
        :meth:`keyset_params`: row values where the engine has them, else the expanded comparisons; both
        bounds can use the primary key's index."""
        keys = [self.quote(n) for n in table.primary_key]
        markers = [self.marker(table.column(n)) for n in table.primary_key]
        if self.row_values:
            return f"({', '.join(keys)}) {op} ({', '.join(markers)})"
        strict = ">" if op == ">" else "<"
        terms = []
        for i, key in enumerate(keys):
            equal = [f"{k} = {m}" for k, m in zip(keys[:i], markers[:i], strict=True)]
            terms.append("(" + " AND ".join([*equal, f"{key} {strict} {markers[i]}"]) + ")")
        if op == "<=":
            terms.append("(" + " AND ".join(f"{k} = {m}" for k, m in zip(keys, markers, strict=True)) + ")")
        return " OR ".join(terms)

    def keyset_params(self, table: Table, key: Sequence[Any], op: str) -> list[Any]:
        """The parameters of :meth:`keyset_sql` for a portable key."""
        cols = [table.column(n) for n in table.primary_key]
        native = [self.param_value(c, v) for c, v in zip(cols, key, strict=True)]
        if self.row_values:
            return native
        params: list[Any] = []
        for i in range(len(native)):
            params.extend(native[: i + 1])
        return params + native if op == "<=" else params

    def page_sql(self, table: Table, columns: Sequence[str], *, after: bool, limit: int,
                 lines: bool = False) -> str:
        """Keyset page ordered by the primary key: the first ``limit`` rows after the key given as parameters."""
        rest = f"FROM {self.table_ref(table.name)}"
        if after:
            rest += " WHERE " + self.keyset_sql(table, ">")
        return self.limit_query(self._select(table, columns, lines), rest, self.column_list(table.primary_key),
                                limit=limit)

    def offset_sql(self, table: Table, columns: Sequence[str], *, offset: int, limit: int,
                   lines: bool = False) -> str:
        """For tables without a primary key: rows ``offset``..``offset + limit`` ordered by every column."""
        order = ", ".join(self.quote(c.name) for c in table.columns)
        return self.limit_query(self._select(table, columns, lines), f"FROM {self.table_ref(table.name)}",
                                order, limit=limit, offset=offset)

    def select_expr(self, column: Column) -> str:
        """How a column is read so the driver returns an exact value (dialects cast where drivers lose)."""
        return self.quote(column.name)

    def select_list(self, table: Table, columns: Sequence[str]) -> str:
        return ", ".join(self.select_expr(table.column(n)) for n in columns)

    def line_select(self, table: Table, columns: Sequence[str]) -> str | None:
        """A select list the engine writes each row as its encoded portable line with (:func:`encode_row`), or
        None where it cannot for some column type. Reads with ``lines=True`` then give text pieces with float
        values between them (``(text,)``, ``(text, float, text)``, ...) for :func:`join_line`: a few values per
        row for the driver to fetch instead of one per column, and nothing to convert.
        """
        return None

    def _select(self, table: Table, columns: Sequence[str], lines: bool) -> str:
        if not lines:
            return self.select_list(table, columns)
        select = self.line_select(table, columns)
        if select is None:
            raise ValueError(f"{self.dialect} cannot read table {table.name} as lines")
        return select

    def read_converters(self, read: Sequence[Column], portable: Sequence[Column]) -> list[Converter | None]:
        """Per column, how a value read through :meth:`select_expr` of ``read[i]`` becomes the portable value of
        ``portable[i]`` (the backup's, or the reference's, column); None where the driver value is already it.
        """
        return [converter(p) for p in portable]

    #: Connections a restore loads chunks of one table through at the same time (each chunk its own transaction).
    load_workers = 1

    # -- catalog -----------------------------------------------------------------------------------------

    @abstractmethod
    def tables(self) -> list[Table]:
        """Every user table of the database (the marker table excluded), in name order."""

    def table(self, name: str) -> Table | None:
        for t in self.tables():
            if t.name == name:
                return t
        return None

    @abstractmethod
    def count(self, table: str) -> int: ...

    # -- reading -----------------------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside share one consistent view of the database, as far as the engine offers one."""
        yield

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = (), *, batch: int = 1000) -> Iterator[Sequence[Any]]:
        """Rows of a query, fetched ``batch`` at a time."""

    def read_page(self, table: Table, columns: Sequence[str], after: Sequence[Any] | None,
                  limit: int, *, lines: bool = False) -> Iterator[Sequence[Any]]:
        if not table.primary_key:
            raise ValueError("keyset paging needs a primary key")
        sql = self.page_sql(table, columns, after=after is not None, limit=limit, lines=lines)
        params = self.key_params(table, after) if after is not None else []
        return self.query(sql, params, batch=min(limit, 1000))

    def key_params(self, table: Table, key: Sequence[Any]) -> list[Any]:
        """Parameters for the keyset predicate of :meth:`page_sql`, from a portable key."""
        return self.keyset_params(table, key, ">")

    def read_range(self, table: Table, columns: Sequence[str], low: Sequence[Any] | None,
                   high: Sequence[Any] | None, *, lines: bool = False, present: Table | None = None
                   ) -> Iterator[Sequence[Any]]:
        """The rows whose primary key is in ``(low, high]`` (None: unbounded), in key order. ``table`` gives the
        keys' types (portable values); ``present``, the table as this database has it, what is read."""
        where, params = self.range_where(table, low, high)
        sql = f"SELECT {self._select(present or table, columns, lines)} FROM {self.table_ref(table.name)}{where}"
        # In key order, as the backup read it: the same engine gives the same lines in the same order.
        return self.query(sql + " ORDER BY " + self.column_list(table.primary_key), params, batch=2000)

    def range_where(self, table: Table, low: Sequence[Any] | None, high: Sequence[Any] | None
                    ) -> tuple[str, list[Any]]:
        """`` WHERE`` and the keyset predicates of the primary keys in ``(low, high]`` (None: unbounded; both:
        an empty string), with their parameters."""
        conditions: list[str] = []
        params: list[Any] = []
        for bound, op in ((low, ">"), (high, "<=")):
            if bound is not None:
                conditions.append(self.keyset_sql(table, op))
                params.extend(self.keyset_params(table, bound, op))
        return (" WHERE " + " AND ".join(f"({c})" for c in conditions) if conditions else ""), params

    def range_digest_sql(self, table: Table, where: str) -> str | None:
        """A query the engine answers with one row — the row count and the MD5 (hex) of the text of the rows
        that ``where`` (:meth:`range_where`) keeps, their encoded lines in primary-key order each ended by a
        newline (a backup chunk's ``text_md5``) — or None where it cannot write every line in SQL.

        PostgreSQL does (12 and later, every type it writes as a line, floats included); SQLite answers
        :meth:`range_digest` in-process instead (its ``json_array`` writes the lines of integer and text
        columns); SQL Server does not (T-SQL does not write the portable
        line — a float as Python writes it, text escaped as JSON — so its digest could never equal the chunk's)."""
        return None

    def range_digest(self, table: Table, low: Sequence[Any] | None, high: Sequence[Any] | None
                     ) -> tuple[int, str] | None:
        """Row count and MD5 of the text of the rows with a primary key in ``(low, high]``, computed by the
        engine (:meth:`range_digest_sql`), so that no row crosses the network; None where it cannot (the
        caller reads the range, :meth:`read_range`, and hashes it itself)."""
        where, params = self.range_where(table, low, high)
        sql = self.range_digest_sql(table, where)
        if sql is None:
            return None
        rows, digest = next(iter(self.query(sql, params)))
        return int(rows), str(digest)

    def range_digests_sql(self, table: Table) -> str | None:
        """A query the engine answers with one row per range of a list given as its one parameter, a JSON array
        of ``[low key, high key]`` pairs (portable values; each range ``(low, high]``): the range's number
        (from 1), row count and text MD5, as :meth:`range_digest_sql` gives them; None where it cannot."""
        return None

    def range_digests(self, table: Table, low: Sequence[Any] | None, bounds: Sequence[Sequence[Any]]
                      ) -> list[tuple[int, str]] | None:
        """Row count and text MD5 (:meth:`range_digest`) of each of the consecutive ranges ``(low, bounds[0]]``,
        ``(bounds[0], bounds[1]]`` ..., computed by the engine in one query (one more for a first range without
        a lower bound); None where it cannot."""
        sql = self.range_digests_sql(table)
        if sql is None or not bounds:
            return None
        pairs = [[a, b] for a, b in zip([low, *bounds[:-1]], bounds, strict=True)]
        found: list[tuple[int, str]] = []
        if low is None:
            first = self.range_digest(table, None, bounds[0])
            if first is None:
                return None
            found, pairs = [first], pairs[1:]
        if pairs:
            rows = {int(n): (int(count), str(digest)) for n, count, digest in
                    self.query(sql, [json.dumps(pairs, ensure_ascii=False)])}
            found.extend(rows[i + 1] for i in range(len(pairs)))
        return found

    def range_versions(self, table: Table, low: Sequence[Any] | None, bounds: Sequence[Sequence[Any]],
                       since: int) -> list[tuple[int, int]] | None:
        """Per consecutive range ``(low, bounds[0]]``, ``(bounds[0], bounds[1]]`` ...: its row count and how many
        of its rows were inserted or updated since the change version ``since`` (:meth:`change_version`, as a
        backup recorded it), told by the engine's row versions without reading any value; None where it cannot
        say. A range with as many rows as the backup's chunk and none written since is unchanged."""
        return None

    def read_ranges_sql(self, table: Table) -> str | None:
        """A query the engine answers with the encoded line (one text value) of every row in the ranges of a
        JSON list given as its one parameter (as :meth:`range_digests_sql`), range after range, each in key
        order; None where it cannot write every line in SQL."""
        return None

    def read_ranges(self, table: Table, ranges: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[bytes] | None:
        """The encoded lines of the rows in the ranges ``(low, high]`` (both bounds given), range after range, in
        key order, in one query; None where the engine cannot write the lines (read each range then)."""
        sql = self.read_ranges_sql(table)
        if sql is None:
            return None
        if not ranges:
            return []
        pairs = [[list(low), list(high)] for low, high in ranges]
        return [str(row[0]).encode("utf-8") for row in self.query(sql, [json.dumps(pairs, ensure_ascii=False)])]

    #: Primary keys per key lookup (one parameter each, per key column: well under every driver's limit).
    keys_per_query = 500

    def read_keys(self, table: Table, columns: Sequence[str], keys: Sequence[Sequence[Any]], *,
                  lines: bool = False, present: Table | None = None) -> Iterator[Sequence[Any]]:
        """The rows whose primary key is one of ``keys`` (portable values), those that exist, in no order."""
        cols = [table.column(n) for n in table.primary_key]
        select = self._select(present or table, columns, lines)
        for start in range(0, len(keys), self.keys_per_query):
            part = keys[start:start + self.keys_per_query]
            params: list[Any] = []
            if len(cols) == 1:
                marker = self.marker(cols[0])
                condition = f"{self.quote(cols[0].name)} IN ({', '.join(marker for _ in part)})"
                params = [self.param_value(cols[0], key[0]) for key in part]
            else:
                condition = " OR ".join(f"({self.key_sql(table)})" for _ in part)
                for key in part:
                    params.extend(self.param_value(c, v) for c, v in zip(cols, key, strict=True))
            yield from self.query(f"SELECT {select} FROM {self.table_ref(table.name)} WHERE {condition}", params,
                                  batch=2000)

    def key_sql(self, table: Table) -> str:
        """``key1 = ? AND key2 = ?``: one row by its primary key."""
        return " AND ".join(f"{self.quote(n)} = {self.marker(table.column(n))}" for n in table.primary_key)

    def read_offset(self, table: Table, columns: Sequence[str], offset: int,
                    limit: int, *, lines: bool = False) -> Iterator[Sequence[Any]]:
        return self.query(self.offset_sql(table, columns, offset=offset, limit=limit, lines=lines), [],
                          batch=min(limit, 1000))

    def stream_lines(self, table: Table, after: Sequence[Any] | None, offset: int) -> Iterator[bytes] | None:
        """Every row of ``table`` after the primary key ``after`` (portable values; None: from the first), in key
        order — or, without a primary key, ordered by every column from row ``offset`` on — as its encoded line
        (:func:`encode_row`), streamed by the engine's bulk export in one read; None where the dialect has none
        (a backup then reads page by page)."""
        return None

    def read_all(self, table: Table, columns: Sequence[str], *, lines: bool = False) -> Iterator[Sequence[Any]]:
        sql = f"SELECT {self._select(table, columns, lines)} FROM {self.table_ref(table.name)}"
        return self.query(sql, [], batch=2000)

    def fingerprint_sql(self, table: Table, columns: Sequence[str]) -> str | None:
        """A query the engine answers with one row — the row count, then the sums of the signed high and low
        64-bit halves of every row's MD5 (:func:`row_hash`) — so that it fingerprints the table itself and only
        that row crosses the network; None where this dialect cannot write every row's encoded line in SQL (see
        :meth:`line_select`) or has no MD5 over UTF-8 text."""
        return None

    def change_token(self, table: str) -> str | None:
        """A value of the table that changes whenever a row is inserted, updated or deleted, and that the engine
        gives without reading the rows' contents; None where it has none (compare content fingerprints then)."""
        return None

    def server_fingerprint(self, table: Table, columns: Sequence[str]) -> Fingerprint | None:
        """The table's :class:`Fingerprint` over ``columns``, computed by the engine (:meth:`fingerprint_sql`),
        or None where it cannot: the caller then reads the rows and hashes them itself, to the same value."""
        sql = self.fingerprint_sql(table, columns)
        if sql is None:
            return None
        rows, high, low = next(iter(self.query(sql, [])))
        return Fingerprint.from_half_sums(rows, high, low)

    # -- writing -----------------------------------------------------------------------------------------

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement in the current transaction; returns the row count it reports."""

    def execute_many(self, sql: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        """Runs one statement once per row of parameters (``param_value``s of ``columns``, in order) in the
        current transaction, through the driver's bulk path where it has one."""
        for params in rows:
            self.execute(sql, params)

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """Commits on success, rolls back on error."""

    @contextmanager
    def chunk_transaction(self) -> Iterator[ChunkLoad]:
        """One transaction of a restore's load: rows inserted, the chunk marked and the fence checked through
        what it yields commit together (a dialect may load through its bulk path there); this connection's
        :meth:`transaction` by default."""
        with self.transaction():
            yield self

    @abstractmethod
    def param_value(self, column: Column, value: Any) -> Any:
        """A portable value as this dialect's insert parameter."""

    @abstractmethod
    def insert_rows(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Inserts portable rows inside the current transaction, through the driver's fast bulk path."""

    def insert_lines(self, table: Table, columns: Sequence[str], lines: Sequence[bytes]) -> None:
        """Inserts rows given as encoded portable lines (:func:`encode_row`), as a backup chunk holds them."""
        self.insert_rows(table, columns, [json.loads(line) for line in lines])

    #: Rows per insert statement of :meth:`upsert_lines` and :meth:`replace_lines`.
    insert_batch = 5000

    def update_sql(self, table: Table) -> tuple[str, list[str]] | None:
        """``UPDATE`` of one row by primary key, setting every other column, and the columns its parameters
        bind in order; None for a table that has no other column."""
        keys = set(table.primary_key)
        others = [c for c in table.column_names if c not in keys]
        if not others:
            return None
        sets = ", ".join(f"{self.quote(n)} = {self.marker(table.column(n))}" for n in others)
        return (f"UPDATE {self.table_ref(table.name)} SET {sets} WHERE {self.key_sql(table)}",
                [*others, *table.primary_key])

    def delete_sql(self, table: Table) -> str:
        """``DELETE`` of one row by primary key."""
        return f"DELETE FROM {self.table_ref(table.name)} WHERE {self.key_sql(table)}"

    def existing_keys(self, table: Table, keys: Sequence[Sequence[Any]], present: Table | None = None
                      ) -> set[tuple[Any, ...]]:
        """Which of these primary keys (portable values) the table holds, as tuples of portable values."""
        key_table = Table(table.name, tuple(table.column(n) for n in table.primary_key), table.primary_key)
        present = present or self.table(table.name)
        key_present = Table(table.name, tuple(present.column(n) for n in table.primary_key),
                            table.primary_key) if present is not None else None
        return {tuple(json.loads(line)) for line in LineReader(self, key_table, key_present).keys(keys)}

    def upsert_lines(self, table: Table, lines: Sequence[bytes], present: Table | None = None) -> tuple[int, int]:
        """Makes each row of ``lines`` (encoded portable rows) present with these values, matched by primary
        key, inside the current transaction: one lookup of which keys the table holds, then an ``UPDATE`` of
        those rows (the driver's bulk path) and an insert of the others. ``present``: the table as this
        database has it (else looked up). Returns (updated, inserted)."""
        names = table.column_names
        positions = [names.index(k) for k in table.primary_key]
        rows = [json.loads(line) for line in lines]
        keys = [[row[i] for i in positions] for row in rows]
        found = self.existing_keys(table, keys, present)
        update = self.update_sql(table)
        updates = [row for row, key in zip(rows, keys, strict=True) if tuple(key) in found]
        if update is not None and updates:
            sql, order = update
            columns = [table.column(n) for n in order]
            at = [names.index(n) for n in order]
            self.execute_many(sql, columns, [[self.param_value(c, row[i]) for c, i in zip(columns, at, strict=True)]
                                             for row in updates])
        fresh = [line for line, key in zip(lines, keys, strict=True) if tuple(key) not in found]
        for start in range(0, len(fresh), self.insert_batch):
            self.insert_lines(table, names, fresh[start:start + self.insert_batch])
        return len(updates), len(fresh)

    def delete_keys(self, table: Table, keys: Sequence[Sequence[Any]]) -> int:
        """Deletes the rows with these primary keys (portable values) in the current transaction; how many."""
        sql = self.delete_sql(table)
        cols = [table.column(n) for n in table.primary_key]
        return sum(max(self.execute(sql, [self.param_value(c, v) for c, v in zip(cols, key, strict=True)]), 0)
                   for key in keys)

    def replace_lines(self, table: Table, lines: Sequence[bytes]) -> None:
        """Replaces every row of the table by ``lines``, in one transaction."""
        with self.transaction():
            self.execute(f"DELETE FROM {self.table_ref(table.name)}")
            for start in range(0, len(lines), self.insert_batch):
                self.insert_lines(table, table.column_names, lines[start:start + self.insert_batch])

    def generated_rows_sql(self, rows: int, width: int) -> str | None:
        """A query the engine answers with ``rows`` made-up rows of one text value about ``width`` characters
        wide, reading no table (to measure how fast it hands rows over); None where its SQL cannot."""
        return None

    def generated_rows(self, rows: int, width: int) -> Iterator[Sequence[Any]] | None:
        sql = self.generated_rows_sql(rows, width)
        return None if sql is None else self.query(sql, [], batch=2000)

    #: Whether a restore adds primary and foreign keys after the load (built once over the loaded rows, as
    #: pg_restore does), or declares them in ``CREATE TABLE`` (SQLite cannot add them later).
    keys_after_load = True

    def load_shape(self, table: Table) -> Table:
        """The table as a restore creates it before the load: without its keys where they come after it."""
        return Table(table.name, table.columns, (), ()) if self.keys_after_load else table

    # -- restore bookkeeping -----------------------------------------------------------------------------

    def ensure_marker_table(self) -> None:
        if self.table_exists(MARKER_TABLE):
            return
        text = Column("x", "text", length=400)
        with self.transaction():
            self.execute(f"CREATE TABLE {self.table_ref(MARKER_TABLE)} ("
                         f"{self.quote('chunk')} {self.column_ddl(text)} NOT NULL PRIMARY KEY, "
                         f"{self.quote('sha256')} {self.column_ddl(Column('x', 'text', length=64))})")

    def marker_chunks(self) -> set[str]:
        if not self.table_exists(MARKER_TABLE):
            return set()
        return {r[0] for r in self.query(f"SELECT {self.quote('chunk')} FROM {self.table_ref(MARKER_TABLE)}")
                if r[0] != MARKER_FENCE}

    def claim_marker_fence(self, generation: int) -> None:
        """Makes ``generation`` (the run lock's) the only one whose chunks may commit from now on.

        A restore claims it before its first write; every chunk then commits only while the fence still holds
        the generation it claimed (:meth:`check_marker_fence`, last in the chunk's transaction). A runner that
        was paused mid-chunk and taken over by a runner of a later generation cannot commit that chunk: the
        row the check updates either says another generation (the chunk rolls back) or is locked by the
        successor's claim, which then waits for the chunk to commit and finds it marked.
        """
        with self.transaction():
            table, chunk, mark = self.table_ref(MARKER_TABLE), self.quote("chunk"), self.quote("sha256")
            if not self.execute(f"UPDATE {table} SET {mark} = {self.placeholder} WHERE {chunk} = {self.placeholder}",
                                [str(generation), MARKER_FENCE]):
                self.execute(f"INSERT INTO {table} ({chunk}, {mark}) VALUES ({self.placeholder}, "
                             f"{self.placeholder})", [MARKER_FENCE, str(generation)])

    def fence_sessions(self, label: str, generation: int) -> None:
        """Tags this session as ``label`` of ``generation``, and ends the sessions of earlier generations of the
        same label that this server can see (a paused runner's open transaction would otherwise hold locks the
        successor needs). A no-op where the dialect cannot do it."""
        return None

    def check_marker_fence(self, generation: int) -> bool:
        """Inside a chunk's transaction: True while ``generation`` still holds the fence (the row stays locked
        by this transaction until it commits)."""
        table, chunk, mark = self.table_ref(MARKER_TABLE), self.quote("chunk"), self.quote("sha256")
        return bool(self.execute(
            f"UPDATE {table} SET {mark} = {mark} WHERE {chunk} = {self.placeholder} AND {mark} = {self.placeholder}",
            [MARKER_FENCE, str(generation)]))

    def mark_chunk(self, chunk: str, sha256: str) -> None:
        self.execute(f"INSERT INTO {self.table_ref(MARKER_TABLE)} ({self.quote('chunk')}, {self.quote('sha256')}) "
                     f"VALUES ({self.placeholder}, {self.placeholder})", [chunk, sha256])

    def drop_table(self, name: str) -> None:
        with self.transaction():
            self.execute(f"DROP TABLE {self.table_ref(name)}")

    @abstractmethod
    def table_exists(self, name: str) -> bool: ...

    def delete_all(self, name: str) -> None:
        with self.transaction():
            self.execute(f"DELETE FROM {self.table_ref(name)}")

    # -- read-only switch --------------------------------------------------------------------------------

    @abstractmethod
    def read_only(self) -> bool:
        """Whether the database-level read-only switch is on."""

    @abstractmethod
    def set_read_only(self, on: bool, *, grace_seconds: int | None = None) -> None:
        """Switches the database-level read-only switch; ``grace_seconds``: how long open transactions get
        before they are rolled back, where the engine's switch waits for them (SQL Server)."""

    def sessions_cut(self) -> int | None:
        """How many other sessions the read-only switch would cut or roll back; None where it cuts none or the
        engine cannot say."""
        return None

    def key_folding(self, declared: str | None = None) -> bool:
        """Whether this database compares text keys without case (a case-insensitive collation): keys that
        differ only in case then collide. ``declared``: the collation it is said to have (a SQL Server
        collation name, ``SQL_Latin1_General_CP1_CI_AS``), which decides instead of the database's own."""
        return case_insensitive(declared) if declared else False

    def key_collisions(self, table: Table, keys: Iterable[Sequence[Any]], declared: str | None = None) -> list[str]:
        """The primary keys (portable values) that this database would hold as one, two source rows in one
        target row, each named ``table#<key digest>``, never by value; empty where its keys compare as the
        source's do (no text key column, or a collation that keeps case)."""
        texts = [table.column(n).type == "text" for n in table.primary_key]
        if not any(texts) or not self.key_folding(declared):
            return []
        return colliding_keys(table.name, keys)

    # -- what this dialect holds -------------------------------------------------------------------------

    #: Fractional-second digits its time and timestamp columns keep (PostgreSQL: microseconds).
    max_fraction_digits = 6
    #: Engine-specific types (the logical type ``native``) it holds as they are: SQL Server's own.
    native_types: frozenset[str] = frozenset()
    #: Whether it recreates a table's generated columns (:class:`GeneratedColumn`: rowversion, computed).
    recreates_generated = False

    def cannot_hold(self, table: Table) -> list[str]:
        """Why this dialect cannot hold ``table``'s values exactly, one message per column naming the table and
        the column (empty: it can): types of another engine, fractions of seconds finer than it keeps."""
        problems = []
        for c in table.columns:
            if c.type == "native" and c.native.lower() not in self.native_types:
                problems.append(f"table {table.name}, column {c.name}: {self.dialect} cannot hold {c.native} "
                                "values (only a SQL Server target can)")
            elif c.type in TEMPORAL_TYPES and c.fraction_digits > self.max_fraction_digits:
                problems.append(f"table {table.name}, column {c.name}: {type_label(c)} keeps "
                                f"{c.fraction_digits} fractional digits, {self.dialect} only "
                                f"{self.max_fraction_digits}")
        return problems

    def not_recreated(self, table: Table) -> list[str]:
        """The generated columns of ``table`` a restore into this dialect leaves out, as messages."""
        if self.recreates_generated:
            return []
        return [f"table {table.name}, column {g.name} ({g.kind}): not copied and not recreated on {self.dialect}"
                for g in table.generated]

    # -- change tracking -------------------------------------------------------------------------------

    def change_version(self) -> int | None:
        """The engine's change-tracking version now (inside :meth:`snapshot`: the snapshot's), or None where
        changes are not tracked. A backup records it; a sync asks :meth:`changed_keys` since then, and
        :meth:`range_versions` (PostgreSQL: the snapshot's transaction horizon, which row versions are compared
        with)."""
        return None

    def changed_keys(self, table: Table, since: int) -> ChangedKeys:
        """The primary keys of the rows of ``table`` changed since version ``since`` (:meth:`change_version`)."""
        return ChangedKeys(None, f"{self.dialect} has no change tracking")

    def finish_load(self, table: Table) -> None:
        """After every chunk of ``table`` is loaded: what the engine needs to go on from the loaded rows (SQL
        Server: its identity counter moved past the largest key, and proved). Nothing by default."""
        return None

    @abstractmethod
    def write_probe(self) -> str | None:
        """Tries a write that leaves nothing behind; the engine's refusal message, or None if it was accepted."""


def recursive_rows_sql(rows: int, width: int) -> str:
    """:meth:`Database.generated_rows_sql` where SQL has ``WITH RECURSIVE`` and ``||`` (SQLite, PostgreSQL)."""
    text = "x" * max(1, min(width, 4096))
    return (f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {int(rows)}) "
            f"SELECT CAST(n AS TEXT) || '{text}' FROM r")


class LineReader:
    """Reads rows of a table as the encoded portable lines a backup writes for them (same bytes, same hash).

    ``table`` is the portable table (the backup's); ``present`` the table as this database has it, when its
    column types may differ (a target created by a restore): values are read as ``present`` holds them and
    encoded as ``table``'s portable values. Where the engine can write the lines itself (and both tables have
    the same portable form) it does.
    """

    def __init__(self, db: Database, table: Table, present: Table | None = None) -> None:
        self.db, self.table = db, table
        self.present = present or table
        names = table.column_names
        self.lines = db.line_select(self.present, names) is not None and all(
            same_portable_form(table.column(n), self.present.column(n)) for n in names)
        self.convert = row_converter(db.read_converters([self.present.column(n) for n in names], table.columns))

    def _encoded(self, rows: Iterator[Sequence[Any]]) -> Iterator[bytes]:
        if self.lines:
            return (join_line(row) for row in rows)
        return (encode_row(self.convert(row)) for row in rows)

    def range(self, low: Sequence[Any] | None, high: Sequence[Any] | None) -> list[bytes]:
        """The lines of the rows with a primary key in ``(low, high]``, in key order."""
        return list(self._encoded(self.db.read_range(self.table, self.table.column_names, low, high,
                                                     lines=self.lines, present=self.present)))

    def all(self) -> Iterator[bytes]:
        return self._encoded(self.db.read_all(self.present, self.table.column_names, lines=self.lines))

    def keys(self, keys: Sequence[Sequence[Any]]) -> list[bytes]:
        """The lines of the rows with these primary keys (portable values), those that exist."""
        return list(self._encoded(self.db.read_keys(self.table, self.table.column_names, keys, lines=self.lines,
                                                    present=self.present)))
