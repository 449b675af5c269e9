"""Portable values and their line encoding: one JSON-native form per logical type, and a row's canonical line.

Every dialect converts the values its driver returns into one *portable* form per logical type (``int``,
``float``, ``bool``, ``str``; see :func:`to_portable`). Backups store that form, one encoded line per row
(:func:`encode_row`), restores feed it back through the target dialect, and fingerprints hash the lines, so a
table verifies the same whichever engine holds it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from migrator.providers.database.schema import DEFAULT_FRACTION_DIGITS, INTEGER_TYPES, TEMPORAL_TYPES, Column

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


#: A date and/or time as text with any number of fractional digits and an optional offset: what SQL Server's
#: ``CAST(… AS nvarchar)`` gives for ``datetime2(7)``/``datetimeoffset(7)``/``time(7)`` (``2024-05-08
#: 12:35:29.1234567 +12:15``), what a portable value with 100 ns precision is (``2024-05-08T12:35:29.1234567``),
#: and what SQLite keeps as text.
_STAMP = re.compile(r"\s*(?:(?P<date>\d{4}-\d{2}-\d{2})[T ])?(?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
                    r"\s*(?P<offset>Z|[+-]\d{2}:?\d{2})?\s*")


def _fine_temporal(kind: str, value: Any, digits: int) -> str:
    """The portable value of a time, timestamp or timestamptz kept to ``digits`` fractional digits (7: 100 ns,
    beyond a Python datetime's microseconds): the fraction is carried as text, never through a float or a
    datetime, so no digit is lost or rounded."""
    if isinstance(value, (dt.datetime, dt.time)):
        fraction = f"{value.microsecond:06d}"
        value = value.replace(microsecond=0).isoformat()
    else:
        match = _STAMP.fullmatch(str(value))
        if match is None:
            raise ValueError(f"not a {kind}")
        fraction = match["fraction"] or ""
        value = (f"{match['date']}T" if match["date"] else "") + match["time"] + (match["offset"] or "")
    if len(fraction.rstrip("0")) > digits:
        raise ValueError(f"more than {digits} fractional digits")
    fraction = fraction.ljust(digits, "0")[:digits]
    if kind == "time":
        return dt.time.fromisoformat(value).replace(tzinfo=None).isoformat("seconds") + "." + fraction
    stamp = dt.datetime.fromisoformat(value)
    if kind == "timestamp":
        return stamp.replace(tzinfo=None).isoformat(timespec="seconds") + "." + fraction
    stamp = stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
    return stamp.replace(tzinfo=None).isoformat(timespec="seconds") + "." + fraction + "+00:00"


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


def _base64_unless_text(value: Any) -> Any:
    """Bytes as base64; a string is already that portable form (binary) or the value's own text (xml)."""
    if isinstance(value, str):
        return value
    return base64.b64encode(bytes(value)).decode("ascii")


def _boolean(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
    return bool(value)


def _date(value: Any) -> str:
    if isinstance(value, dt.datetime):
        value = value.date()
    return (value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value).strip())).isoformat()


def _time(value: Any) -> str:
    moment = value if isinstance(value, dt.time) else dt.time.fromisoformat(str(value).strip())
    return moment.replace(tzinfo=None).isoformat(_MICRO)


def _timestamptz(value: Any) -> str:
    stamp = _datetime(value)
    # A driver that returns naive values for timestamptz does so in the session time zone, which every
    # adapter sets to UTC.
    stamp = stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
    return stamp.isoformat(timespec=_MICRO)


#: Per logical type, the portable value of a driver value (decimal and fine temporal types need the column).
_PORTABLE: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(INTEGER_TYPES, int),
    "float": float,
    "real": float,
    "text": lambda value: value if isinstance(value, str) else str(value),
    "binary": _base64_unless_text,
    "boolean": _boolean,
    "uuid": lambda value: str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))),
    # SQL Server's own types: xml as its text, the others as their binary form (base64)
    "native": _base64_unless_text,
    "date": _date,
    "time": _time,
    "timestamp": lambda value: _datetime(value).replace(tzinfo=None).isoformat(timespec=_MICRO),
    "timestamptz": _timestamptz,
}


def _to_portable(column: Column, value: Any) -> Any:
    if value is None:
        return None
    kind = column.type
    if kind in TEMPORAL_TYPES and column.fraction_digits != DEFAULT_FRACTION_DIGITS:
        return _fine_temporal(kind, value, column.fraction_digits)
    if kind == "decimal":
        return _decimal_text(value, column.scale)
    convert = _PORTABLE.get(kind)
    if convert is None:
        raise ValueError(f"unknown logical type {kind!r}")
    return convert(value)


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
    if kind in TEMPORAL_TYPES and column.fraction_digits != DEFAULT_FRACTION_DIGITS:
        return lambda v: to_portable(column, v)
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
        whole: str = row[0]
        return whole.encode("utf-8")
    parts = [row[0]]
    for i in range(1, len(row), 2):
        parts.append(_float_json(row[i]))
        parts.append(row[i + 1])
    return "".join(parts).encode("utf-8")

