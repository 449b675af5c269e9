"""The portable schema: logical column types, tables with their keys, drift of an existing target, and the
order tables load in (parents before children).

Every dialect reads its catalog into these types and creates tables from them; a backup's manifest stores them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from migrator.errors import InputError

LogicalType = Literal[
    "smallint", "integer", "bigint", "decimal", "real", "float", "text", "binary",
    "date", "time", "timestamp", "timestamptz", "boolean", "uuid", "native",
]
LOGICAL_TYPES: tuple[str, ...] = LogicalType.__args__  # type: ignore[attr-defined]
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
#: Types whose ``precision`` is the digits of fractional seconds (None: 6, microseconds; SQL Server's
#: ``datetime2``/``datetimeoffset``/``time`` default to 7, 100 ns).
TEMPORAL_TYPES = frozenset({"time", "timestamp", "timestamptz"})
#: Fractional-second digits of a temporal column without a recorded precision (what every backup before
#: 100 ns precision holds).
DEFAULT_FRACTION_DIGITS = 6
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
    precision: int | None = None  # decimal: digits; time, timestamp, timestamptz: fractional-second digits
    scale: int | None = None  # decimal
    length: int | None = None  # text: maximum characters when bounded
    native: str = ""  # the engine's own type name, for messages (and the type itself for ``native`` columns)
    #: The engine numbers new rows in this column (SQL Server ``IDENTITY``): a restore loads the source's
    #: values as they are and moves the counter past them. Absent from manifests written before it existed.
    identity: bool = False

    @property
    def fraction_digits(self) -> int:
        """Digits of fractional seconds the portable value of a temporal column carries."""
        return self.precision if self.type in TEMPORAL_TYPES and self.precision is not None \
            else DEFAULT_FRACTION_DIGITS

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if v is not None and v != "" and not (k == "identity" and v is False)}

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
class GeneratedColumn:
    """A column whose values the engine makes itself, so none is copied: SQL Server's ``rowversion`` (a new value
    on every write: the target's differ from the source's) and computed columns (``definition``, the catalog's
    T-SQL expression). A SQL Server target recreates them; another target has no such column (the plan says so).
    """

    name: str
    kind: Literal["rowversion", "computed"]
    definition: str | None = None
    persisted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GeneratedColumn:
        return cls(**data)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    #: Columns the engine makes (not copied, not in ``columns``): see :class:`GeneratedColumn`.
    generated: tuple[GeneratedColumn, ...] = ()

    @property
    def identity(self) -> Column | None:
        """The identity column, if the table has one (SQL Server allows one per table)."""
        return next((c for c in self.columns if c.identity), None)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def to_json(self) -> dict[str, Any]:
        data = {"name": self.name, "columns": [c.to_json() for c in self.columns],
                "primary_key": list(self.primary_key), "foreign_keys": [f.to_json() for f in self.foreign_keys]}
        if self.generated:  # only then: a manifest without generated columns reads as before
            data["generated"] = [g.to_json() for g in self.generated]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        return cls(data["name"], tuple(Column.from_json(c) for c in data["columns"]), tuple(data["primary_key"]),
                   tuple(ForeignKey.from_json(f) for f in data.get("foreign_keys", ())),
                   tuple(GeneratedColumn.from_json(g) for g in data.get("generated", ())))



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
        if backup.type in TEMPORAL_TYPES:
            return target.fraction_digits >= backup.fraction_digits
        if backup.type == "native":
            return backup.native.lower() == target.native.lower()
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


def same_portable_form(reference: Column, target: Column) -> bool:
    """Whether values of both columns have the same portable form (and so the same encoded lines)."""
    return reference.type == target.type and (reference.type != "decimal" or reference.scale == target.scale) \
        and reference.fraction_digits == target.fraction_digits


def type_label(col: Column) -> str:
    if col.type == "decimal" and col.precision is not None:
        return f"decimal({col.precision},{col.scale or 0})"
    if col.type == "text" and col.length is not None:
        return f"text({col.length})"
    if col.type in TEMPORAL_TYPES and col.precision is not None:
        return f"{col.type}({col.precision})"
    if col.type == "native":
        return col.native
    return col.type



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


def case_insensitive(collation: str) -> bool:
    """Whether a SQL Server collation name compares text without case (``_CI``; binary ones never)."""
    name = collation.upper()
    return "_CI" in name and not name.endswith(("_BIN", "_BIN2"))


def key_digest(key: Sequence[Any]) -> str:
    """A primary key as messages may show it: the first 12 hex digits of the SHA-256 of its encoded form (the
    bytes of :func:`~.portable.encode_row`), never the value itself."""
    text = json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def colliding_keys(table: str, keys: Iterable[Sequence[Any]]) -> list[str]:
    """The keys (portable values) that two or more source rows fold to under a case-insensitive collation, each
    as ``table#<key digest>`` (:func:`key_digest` of the folded key): never the value itself."""
    seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    found: dict[str, None] = {}
    for key in keys:
        original = tuple(key)
        folded = tuple(v.casefold() if isinstance(v, str) else v for v in original)
        if seen.setdefault(folded, original) != original:
            found[f"{table}#{key_digest(folded)}"] = None
    return list(found)
