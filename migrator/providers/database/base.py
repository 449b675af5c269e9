"""The portable side of database migration: a logical type system, catalog models, and the adapter interface.

Every dialect maps its native column types onto a small set of *logical* types and converts the values its
driver returns into one *portable* form per type (JSON-native: ``int``, ``float``, ``bool``, ``str``; see
:func:`to_portable`). Backups store that form, restores feed it back through the target dialect, and content
fingerprints hash it, so a table verifies the same whichever engine holds it.

Identifiers are only ever put into SQL through :meth:`Database.quote`; a name read from a catalog is never
pasted in unquoted.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import sys
import uuid
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Literal

from migrator.errors import InputError

LogicalType = Literal[
    "smallint", "integer", "bigint", "decimal", "real", "float", "text", "binary",
    "date", "time", "timestamp", "timestamptz", "boolean", "uuid",
]
LOGICAL_TYPES: tuple[str, ...] = LogicalType.__args__  # type: ignore[attr-defined]
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
#: Types whose widening from one to the other keeps every value (drift check of an existing target schema).
_WIDENS_TO: dict[str, frozenset[str]] = {
    "smallint": frozenset({"integer", "bigint", "decimal"}),
    "integer": frozenset({"bigint", "decimal"}),
    "bigint": frozenset({"decimal"}),
    "real": frozenset({"float"}),
}

#: The table in a restore target that records which backup chunks are committed (same transaction as the rows).
MARKER_TABLE = "_migrator_restore_chunks"
#: The marker table's row that holds the generation of the run lock allowed to commit chunks.
MARKER_FENCE = "#fence"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a LogicalType
    nullable: bool = True
    precision: int | None = None  # decimal
    scale: int | None = None  # decimal
    length: int | None = None  # text: maximum characters when bounded
    native: str = ""  # the engine's own type name, for messages

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Column:
        return cls(**data)


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "columns": list(self.columns), "ref_table": self.ref_table,
                "ref_columns": list(self.ref_columns)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForeignKey:
        return cls(data["name"], tuple(data["columns"]), data["ref_table"], tuple(data["ref_columns"]))


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "columns": [c.to_json() for c in self.columns],
                "primary_key": list(self.primary_key), "foreign_keys": [f.to_json() for f in self.foreign_keys]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        return cls(data["name"], tuple(Column.from_json(c) for c in data["columns"]), tuple(data["primary_key"]),
                   tuple(ForeignKey.from_json(f) for f in data.get("foreign_keys", ())))


# -- portable values ---------------------------------------------------------------------------------------

_MICRO = "microseconds"
# Wide enough for any DECIMAL(38, s) and for PostgreSQL's unconstrained numeric; the default context has 28 digits.
_DECIMALS = Context(prec=1000)


def _decimal_text(value: Any, scale: int | None) -> str:
    try:
        number = value if isinstance(value, Decimal) else Decimal(value if isinstance(value, str) else repr(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a decimal ({type(value).__name__})") from exc
    if scale is not None and number.is_finite():
        number = number.quantize(Decimal(1).scaleb(-scale), context=_DECIMALS)
    elif number.is_finite():
        number = number.normalize(context=_DECIMALS)
    text = format(number, "f")
    return "0" + text[2:] if text.startswith("-0") and number.is_zero() else text


def _datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.strip())
    raise ValueError(f"not a timestamp ({type(value).__name__})")


def to_portable(column: Column, value: Any) -> Any:
    """The one portable, JSON-native form of ``value`` for ``column``'s logical type (None stays None).

    Accepts what any of our drivers returns (native Python values from pyodbc, the strings SQLite keeps). A value
    that has no such form fails naming the column and the value's type, never the value (personal data).
    """
    try:
        return _to_portable(column, value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"column {column.name}: a {type(value).__name__} value that is not a valid "
                         f"{column.type} ({type(exc).__name__})") from None


def _to_portable(column: Column, value: Any) -> Any:
    if value is None:
        return None
    kind = column.type
    if kind in INTEGER_TYPES:
        return int(value)
    if kind == "decimal":
        return _decimal_text(value, column.scale)
    if kind in ("float", "real"):
        return float(value)
    if kind == "text":
        return value if isinstance(value, str) else str(value)
    if kind == "binary":
        if isinstance(value, str):  # already portable (base64)
            return value
        return base64.b64encode(bytes(value)).decode("ascii")
    if kind == "boolean":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
        return bool(value)
    if kind == "uuid":
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    if kind == "date":
        if isinstance(value, dt.datetime):
            value = value.date()
        return (value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value).strip())).isoformat()
    if kind == "time":
        if not isinstance(value, dt.time):
            value = dt.time.fromisoformat(str(value).strip())
        return value.replace(tzinfo=None).isoformat(_MICRO)
    if kind == "timestamp":
        return _datetime(value).replace(tzinfo=None).isoformat(timespec=_MICRO)
    if kind == "timestamptz":
        stamp = _datetime(value)
        # A driver that returns naive values for timestamptz does so in the session time zone, which every
        # adapter sets to UTC.
        stamp = stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
        return stamp.isoformat(timespec=_MICRO)
    raise ValueError(f"unknown logical type {kind!r}")


def portable_row(columns: Sequence[Column], row: Sequence[Any]) -> list[Any]:
    return [to_portable(c, v) for c, v in zip(columns, row, strict=True)]


def _as_is(value: Any) -> Any:
    return value


#: Per logical type, the one Python type a driver value of which is already the portable value (see converter).
_PASSES_AS_IS: dict[str, type] = {**dict.fromkeys(INTEGER_TYPES, int), "text": str, "float": float,
                                  "real": float, "boolean": bool}
#: The attribute of a converter naming the Python type it returns unchanged (see row_converter).
_PASSES = "passes_as_is"


def converter(column: Column) -> Callable[[Any], Any]:
    """:func:`to_portable` for one column, with a shortcut for the values drivers usually return.

    The backup and fingerprint loops call this once per value: skipping the type dispatch matters there.
    """
    kind = column.type
    passes = _PASSES_AS_IS.get(kind)
    if passes is not None:
        def as_is(v: Any) -> Any:
            return v if type(v) is passes else to_portable(column, v)

        setattr(as_is, _PASSES, passes)
        return as_is
    if kind == "uuid":
        return lambda v: v.lower() if type(v) is str and len(v) == 36 else to_portable(column, v)
    if kind == "binary":
        return lambda v: base64.b64encode(v).decode("ascii") if type(v) is bytes else to_portable(column, v)
    if kind == "decimal" and column.scale is not None:
        exponent = -column.scale
        return lambda v: (format(v, "f") if type(v) is Decimal and v.as_tuple().exponent == exponent and v
                          else to_portable(column, v))
    if kind == "date":
        return lambda v: v.isoformat() if type(v) is dt.date else to_portable(column, v)
    if kind == "timestamptz":
        return lambda v: (v.isoformat(timespec=_MICRO) + "+00:00" if type(v) is dt.datetime and v.tzinfo is None
                          else to_portable(column, v))
    if kind == "timestamp":
        return lambda v: (v.isoformat(timespec=_MICRO) if type(v) is dt.datetime and v.tzinfo is None
                          else to_portable(column, v))
    return lambda v: to_portable(column, v)


Converter = Callable[[Any], Any]


def row_converter(columns: Sequence[Column] | Sequence[Converter | None]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A function turning a driver row into a portable row (a list, or the row itself where nothing changes).

    Takes the columns (each converted by :func:`converter`) or one converter per column, None where the driver
    value is already portable (:meth:`Database.read_converters`): those values are not touched at all. A row
    whose every value already has its portable Python type (int for integers, str for text ..., or None) is
    recognised by the tuple of its value types and passed on whole, without a call per value.
    """
    convs = [converter(c) if isinstance(c, Column) else c for c in columns]
    active = [(i, f) for i, f in enumerate(convs) if f is not None]
    width = len(convs)
    if not active:
        return list
    # Per column the one type its values pass as they are (object: any, no converter), or None: always converted.
    as_is = [object if f is None else getattr(f, _PASSES, None) for f in convs]
    signatures: dict[tuple[type, ...], bool] = {}

    def plain(signature: tuple[type, ...]) -> bool:
        ok = len(signature) == width and all(
            t is type(None) or want is object or t is want for t, want in zip(signature, as_is, strict=True))
        signatures[signature] = ok
        return ok

    def convert(row: Sequence[Any]) -> Sequence[Any]:
        signature = tuple(map(type, row))
        known = signatures.get(signature)
        if known or (known is None and plain(signature)):
            return row if type(row) is tuple else list(row)  # a driver's row object is no JSON array
        values = list(row)
        if len(values) != width:
            raise ValueError(f"row of {len(values)} values for {width} columns")
        for i, f in active:
            value = values[i]
            if value is not None:
                values[i] = f(value)
        return values

    return convert


try:  # the C encoder json.dumps uses, built once instead of per call (same bytes, less overhead per row)
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring as _encode_basestring
except ImportError:  # pragma: no cover - CPython always has it
    _c_make_encoder = None


def _fallback_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


if _c_make_encoder is not None:
    _ROW_ENCODER = _c_make_encoder(None, _fallback_default, _encode_basestring, None, ":", ",", False, False, True)

    def encode_row(values: Sequence[Any]) -> bytes:
        """The canonical bytes of a portable row: what backups store (one line each) and fingerprints hash.

        Byte for byte ``json.dumps(values, ensure_ascii=False, separators=(",", ":"))``.
        """
        return "".join(_ROW_ENCODER(values, 0)).encode("utf-8")
else:  # pragma: no cover
    def encode_row(values: Sequence[Any]) -> bytes:
        """The canonical bytes of a portable row: what backups store (one line each) and fingerprints hash."""
        return json.dumps(values, ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode("utf-8")


_INFINITY = float("inf")


def _float_json(value: float | None) -> str:
    if value is None:
        return "null"
    if value != value:
        return "NaN"
    if value in (_INFINITY, -_INFINITY):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def join_line(row: Sequence[Any]) -> bytes:
    """The encoded line of a row read with ``lines=True`` (:meth:`Database.line_select`)."""
    if len(row) == 1:
        return row[0].encode("utf-8")
    parts = [row[0]]
    for i in range(1, len(row), 2):
        parts.append(_float_json(row[i]))
        parts.append(row[i + 1])
    return "".join(parts).encode("utf-8")


FINGERPRINT_MODULUS = 1 << 128


def row_hash(line: bytes) -> int:
    """A row's contribution to a :class:`Fingerprint`: ``hi * 2**64 + lo``, where ``hi`` and ``lo`` are the two
    halves of the MD5 of its encoded line read as signed big-endian 64-bit integers.

    MD5 (a content checksum, not for security) and signed 64-bit halves because that is what engines compute
    and sum natively — PostgreSQL's ``md5()`` and ``('x' || hex)::bit(64)::bigint`` — so a server can fingerprint
    a table itself (:meth:`Database.server_fingerprint`) to the very same value, sending one row instead of all.
    """
    high, low = _half_sums([line])
    return (high << 64) + low


def _half_sums(lines: Iterable[bytes]) -> tuple[int, int]:
    """The sums, over ``lines``, of the signed high and low halves of each line's MD5 (see :func:`row_hash`)."""
    md5 = hashlib.md5
    halves = array("q", b"".join(md5(line, usedforsecurity=False).digest() for line in lines))
    if sys.byteorder == "little":
        halves.byteswap()
    return sum(halves[0::2]), sum(halves[1::2])


@dataclass
class Fingerprint:
    """Row count and an order-independent content checksum: the sum of :func:`row_hash` over the rows, modulo
    2**128.

    A sum rather than XOR so that two identical rows do not cancel out (tables without a primary key); MD5
    halves (see :func:`row_hash`) so that an engine can compute the same sum itself.
    """

    rows: int = 0
    total: int = 0

    def add_line(self, line: bytes) -> None:
        self.rows += 1
        self.total = (self.total + row_hash(line)) % FINGERPRINT_MODULUS

    def add_lines(self, lines: Sequence[bytes]) -> None:
        """:meth:`add_line` for many lines (the hashing loop in C, one modulo for all of them)."""
        high, low = _half_sums(lines)
        self.total = (self.total + (high << 64) + low) % FINGERPRINT_MODULUS
        self.rows += len(lines)

    @classmethod
    def from_half_sums(cls, rows: Any, high: Any, low: Any) -> Fingerprint:
        """The fingerprint of ``rows`` rows from the sums of the signed halves of their hashes (None for no
        rows): what an engine's aggregate query returns (:meth:`Database.fingerprint_sql`)."""
        return cls(int(rows), ((int(high or 0) << 64) + int(low or 0)) % FINGERPRINT_MODULUS)

    def merge(self, other: Fingerprint) -> None:
        self.rows += other.rows
        self.total = (self.total + other.total) % FINGERPRINT_MODULUS

    def remove(self, other: Fingerprint) -> None:
        """Takes ``other``'s rows out again (the sum is a group: what :meth:`merge` adds, this subtracts)."""
        self.rows -= other.rows
        self.total = (self.total - other.total) % FINGERPRINT_MODULUS

    @property
    def checksum(self) -> str:
        return f"{self.total:032x}"

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "checksum": self.checksum}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(int(data["rows"]), int(data["checksum"], 16))


# -- connection strings ------------------------------------------------------------------------------------

_PAIR = re.compile(r"\s*([^=;{}]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|(?!\{)[^;]*)\s*(?:;|$)")


def parse_odbc(text: str) -> dict[str, str]:
    """``key=value;`` pairs of an ODBC connection string (keys lower-cased, braces removed).

    Raises :class:`InputError` for text that is not such a list; the message never repeats the text itself
    (it may hold a password).
    """
    pairs: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if not match or match.end() == pos:
            raise InputError(f"malformed ODBC connection string (at character {pos + 1})",
                             hint="write it as Key=Value;Key=Value, with {braces} around values containing ;")
        value = match.group(2).strip()
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1].replace("}}", "}")
        pairs[match.group(1).strip().lower()] = value
        pos = match.end()
    return pairs


# -- the adapter interface ---------------------------------------------------------------------------------


class UnsupportedType(InputError):
    """A column whose type has no portable form."""


@dataclass
class Drift:
    """How an existing target table differs from the backed-up one."""

    table: str
    missing_columns: list[str] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)  # "col: backup decimal(38,10), target integer"
    extra_required: list[str] = field(default_factory=list)  # NOT NULL target columns the backup lacks

    @property
    def blocking(self) -> bool:
        return bool(self.missing_columns or self.incompatible or self.extra_required)

    def describe(self) -> str:
        parts = []
        if self.missing_columns:
            parts.append("missing columns " + ", ".join(self.missing_columns))
        if self.incompatible:
            parts.append("incompatible columns " + "; ".join(self.incompatible))
        if self.extra_required:
            parts.append("NOT NULL columns absent from the backup " + ", ".join(self.extra_required))
        return f"table {self.table}: " + ("; ".join(parts) or "no drift")


def compatible(backup: Column, target: Column) -> bool:
    """Whether every value of ``backup``'s type fits ``target``'s without loss."""
    if backup.type == target.type:
        if backup.type == "decimal" and None not in (backup.scale, target.scale):
            assert backup.scale is not None and target.scale is not None
            int_digits = (backup.precision or 38) - backup.scale
            return target.scale >= backup.scale and (target.precision or 38) - target.scale >= int_digits
        if backup.type == "text" and target.length is not None:
            return backup.length is not None and backup.length <= target.length
        return True
    return target.type in _WIDENS_TO.get(backup.type, frozenset())


def drift(backup: Table, target: Table) -> Drift:
    result = Drift(backup.name)
    by_name = {c.name: c for c in target.columns}
    for col in backup.columns:
        other = by_name.get(col.name)
        if other is None:
            result.missing_columns.append(col.name)
        elif not compatible(col, other):
            result.incompatible.append(f"{col.name}: backup {type_label(col)}, target {type_label(other)}")
    names = set(backup.column_names)
    result.extra_required = [c.name for c in target.columns if c.name not in names and not c.nullable]
    return result


def type_label(col: Column) -> str:
    if col.type == "decimal" and col.precision is not None:
        return f"decimal({col.precision},{col.scale or 0})"
    if col.type == "text" and col.length is not None:
        return f"text({col.length})"
    return col.type


def keyset_params(key: Sequence[Any]) -> list[Any]:
    params: list[Any] = []
    for i in range(len(key)):
        params.extend(key[: i + 1])
    return params


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

    def create_table_sql(self, table: Table) -> str:
        cols = [f"{self.quote(c.name)} {self.column_ddl(c)}" for c in table.columns]
        if table.primary_key:
            cols.append(f"PRIMARY KEY ({self.column_list(table.primary_key)})")
        return f"CREATE TABLE {self.table_ref(table.name)} (" + ", ".join(cols) + ")"

    def primary_key_sql(self, table: Table) -> str:
        return f"ALTER TABLE {self.table_ref(table.name)} ADD PRIMARY KEY ({self.column_list(table.primary_key)})"

    def foreign_key_sql(self, table: Table, fk: ForeignKey) -> str:
        return (f"ALTER TABLE {self.table_ref(table.name)} ADD CONSTRAINT {self.quote(fk.name)} "
                f"FOREIGN KEY ({self.column_list(fk.columns)}) "
                f"REFERENCES {self.table_ref(fk.ref_table)} ({self.column_list(fk.ref_columns)})")

    #: Whether the engine compares row values, ``(a, b) > (?, ?)``, and uses an index for it.
    row_values = True

    def marker(self, column: Column) -> str:
        """The parameter marker for a value of ``column``, cast where the driver cannot say the type."""
        return self.placeholder

    @abstractmethod
    def limit_query(self, select: str, rest: str, order: str, *, limit: int, offset: int = 0) -> str:
        """``SELECT <select> <rest> ORDER BY <order>`` cut to ``limit`` rows after ``offset``."""

    def page_sql(self, table: Table, columns: Sequence[str], *, after: bool, limit: int,
                 lines: bool = False) -> str:
        """Keyset page ordered by the primary key: the first ``limit`` rows after the key given as parameters."""
        keys = [self.quote(n) for n in table.primary_key]
        rest = f"FROM {self.table_ref(table.name)}"
        if after:
            markers = [self.marker(table.column(n)) for n in table.primary_key]
            if self.row_values:
                rest += f" WHERE ({', '.join(keys)}) > ({', '.join(markers)})"
            else:
                terms = []
                for i, key in enumerate(keys):
                    equal = [f"{k} = {m}" for k, m in zip(keys[:i], markers[:i], strict=True)]
                    terms.append("(" + " AND ".join([*equal, f"{key} > {markers[i]}"]) + ")")
                rest += " WHERE " + " OR ".join(terms)
        return self.limit_query(self._select(table, columns, lines), rest, ", ".join(keys), limit=limit)

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
        cols = [table.column(n) for n in table.primary_key]
        native = [self.param_value(c, v) for c, v in zip(cols, key, strict=True)]
        return native if self.row_values else keyset_params(native)

    def read_offset(self, table: Table, columns: Sequence[str], offset: int,
                    limit: int, *, lines: bool = False) -> Iterator[Sequence[Any]]:
        return self.query(self.offset_sql(table, columns, offset=offset, limit=limit, lines=lines), [],
                          batch=min(limit, 1000))

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

    @abstractmethod
    def param_value(self, column: Column, value: Any) -> Any:
        """A portable value as this dialect's insert parameter."""

    @abstractmethod
    def insert_rows(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Inserts portable rows inside the current transaction, through the driver's fast bulk path."""

    def insert_lines(self, table: Table, columns: Sequence[str], lines: Sequence[bytes]) -> None:
        """Inserts rows given as encoded portable lines (:func:`encode_row`), as a backup chunk holds them."""
        self.insert_rows(table, columns, [json.loads(line) for line in lines])

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
    def set_read_only(self, on: bool) -> None: ...

    @abstractmethod
    def write_probe(self) -> str | None:
        """Tries a write that leaves nothing behind; the engine's refusal message, or None if it was accepted."""


def fk_order(tables: Sequence[Table]) -> list[Table]:
    """Parents before children (Kahn's algorithm); tables in a cycle keep name order at the end."""
    by_name = {t.name: t for t in tables}
    deps = {t.name: {fk.ref_table for fk in t.foreign_keys if fk.ref_table in by_name and fk.ref_table != t.name}
            for t in tables}
    ordered: list[Table] = []
    ready = sorted(n for n, d in deps.items() if not d)
    done: set[str] = set()
    while ready:
        name = ready.pop(0)
        ordered.append(by_name[name])
        done.add(name)
        for other, d in sorted(deps.items()):
            if other not in done and other not in ready and d <= done:
                ready.append(other)
        ready.sort()
    ordered.extend(by_name[n] for n in sorted(by_name) if n not in done)
    return ordered


def assemble_tables(columns: Mapping[str, Sequence[Column]], keys: Mapping[str, tuple[str, ...]],
                    fks: Mapping[tuple[str, str], tuple[Sequence[str], str, Sequence[str]]]) -> list[Table]:
    """Tables from catalog rows: columns by table, primary-key columns by table, and foreign keys by
    (table, constraint) as (columns, referenced table, referenced columns)."""
    return [
        Table(name, tuple(cols), keys.get(name, ()),
              tuple(ForeignKey(fk, tuple(c), ref, tuple(r)) for (t, fk), (c, ref, r) in sorted(fks.items())
                    if t == name))
        for name, cols in sorted(columns.items())
    ]
