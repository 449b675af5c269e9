"""Database errors without row values: what every dialect's driver says, cut down to tables, columns and keys.

Engines quote row values in their messages: PostgreSQL's ``DETAIL: Key (email)=(jan@contoso.example) already
exists`` and ``Failing row contains (...)``, ``invalid input syntax for type integer: "..."``; SQL Server's
``The duplicate key value is (...)`` and ``Conversion failed when converting the nvarchar value '...'``; Python's
``sqlite3`` its ``Could not decode to UTF-8 column 'job_title' with text '...'``. Row values are personal data
(names, e-mail addresses, job titles, phone numbers), so a message keeps the engine's words, the identifiers it
names (constraint, relation, column, key columns), and none of the values: :func:`withhold_values` is applied at
the provider boundary, before an error becomes a :class:`~migrator.errors.MigratorError`.
"""

from __future__ import annotations

import re

#: From here on an engine quotes row values: PostgreSQL's DETAIL, HINT and CONTEXT lines (and its "Key (..)=(..)"
#: and "Failing row contains" wherever they stand), SQL Server's duplicate key and truncated value clauses,
#: sqlite3's "with text".
_ROW_DETAIL = re.compile(r"\s*(?:DETAIL:|HINT:|CONTEXT:|Key \(|Failing row contains|The duplicate key value is|"
                         r"Truncated value:|with text ').*", re.S)
#: The key columns PostgreSQL names before their values: "Key (surname, first_name)=(...)".
_KEY_COLUMNS = re.compile(r"Key \((.*?)\)=\(")
#: A value quoted in the message itself: after a colon ('... for type integer: "x"'), after "value" ('value "x" is
#: out of range', 'the nvarchar value 'x' to data type int'), or after "input"/"literal" (Python's conversions).
_QUOTED_VALUE = re.compile(r"""((?::|\bvalue|\binput|\bliteral(?: for int\(\) with base \d+)?)\s*)("[^"]*"|'[^']*')""",
                           re.I)
#: Any quoted text, for the data exceptions (SQLSTATE class 22), but for the identifiers a noun introduces.
_ANY_QUOTED = re.compile(r"""(\b(?:table|column|constraint|object|relation|index|type|schema|database)\s+)?"""
                         r"""("[^"]*"|'[^']*')""", re.I)
WITHHELD = "…"


def _withheld(quoted: str) -> str:
    return quoted[0] + WITHHELD + quoted[0]


def withhold_values(text: str, state: str = "") -> str:
    """``text`` (a driver's error message) without the row values it quotes; ``state`` is its SQLSTATE if known.

    Keeps the engine's own words and the identifiers, and says which key columns a key violation concerns.
    """
    keys = _KEY_COLUMNS.search(text)
    cut = _ROW_DETAIL.search(text)
    if cut is not None:
        text = text[:cut.start()].rstrip(" ;,.")
    if state.startswith("22"):
        text = _ANY_QUOTED.sub(lambda m: m.group(0) if m.group(1) else _withheld(m.group(2)), text)
    else:
        text = _QUOTED_VALUE.sub(lambda m: m.group(1) + _withheld(m.group(2)), text)
    text = " ".join(text.split())
    if keys is not None:
        return f"{text} (key columns: {keys.group(1)}; row values withheld)"
    if cut is not None:
        return f"{text} (row values withheld)"
    return text
