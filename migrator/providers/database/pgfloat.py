"""A double as Python's ``json`` writes it (``repr``, ``NaN``, ``Infinity``), written by PostgreSQL itself.

Backups store floats as Python writes them, so fingerprints and chunk digests hash that text. PostgreSQL 12 and
later write a double's shortest round-trip digits (Ryu, with ``extra_float_digits`` above 0, which every
session of this dialect sets), and so does Python (David Gay's ``dtoa``, mode 0); they differ in three ways,
each put right in SQL here:

- Python writes ``1.0`` and ``-0.0`` where PostgreSQL writes ``1`` and ``-0``: ``.0`` is added to a text with
  no point, no exponent and no letter.
- Python writes fixed-point up to 16 integer digits (``1234567890123456.0``), PostgreSQL switches to an
  exponent at 15 (``1.234567890123456e+15``): a text ending ``e+15`` is written out.
- Python accepts a shortest candidate that lies exactly on the boundary of the double's rounding interval
  when the double's mantissa is even (the parse rounds half to even, back to the same double); PostgreSQL's
  Ryu does not, and writes a longer, inside candidate: ``2.9388404737557112e+16`` where Python writes
  ``2.938840473755711e+16``, ``9.999999999999999e+22`` where Python writes ``1e+23``. Only a text of 16 or
  more significant digits (or a subnormal) can be one of those — two candidates of fewer digits never fit in
  one rounding interval — so only those texts are checked: if either neighbour one digit shorter (truncated,
  and one unit away from zero) parses back to the same double, that neighbour is the interval's boundary and
  Python's text (see :func:`_boundary`). Everything else costs a ``float8out`` and a few string functions.

What it costs the server, measured on a 2-core machine: under 1 µs a value for short values (prices), about
4 µs for a full-precision double (the two neighbours' texts built and parsed). A 500,000-row table fingerprinted
by the server against through the client: 1.4 s against 2.3 s with a price column, 3.1 s against 2.4 s with a
column of full-precision doubles (where the client, on its own core, converts faster — once every row has
crossed the network).

The proof is the integration test over special values (±0, NaN, ±inf, subnormals, the largest double, powers
of two and ten, integers above 2**53) and many random bit patterns, against ``repr``.
"""

from __future__ import annotations

#: The smallest positive normal double: below it (subnormals) rounding intervals are relatively wide.
_MIN_NORMAL = "2.2250738585072014e-308"
#: Half a unit beyond the largest double: a decimal at or above it overflows (float8in refuses it).
_OVERFLOW = "1.7976931348623158079372897140530341507993e308"


def _python_text(sign: str, digits: str, exponent: str) -> str:
    """SQL of ``repr`` of a finite non-zero double from SQL expressions for its sign prefix ('' or '-'), its
    significant digits (no leading or trailing zero) and its decimal exponent (the first digit's power of ten):
    fixed-point for exponents -4 to 15, else ``d.ddde±XX``."""
    d, e = digits, exponent
    fixed = (f"CASE WHEN {e} < 0 THEN '0.' || repeat('0', -{e} - 1) || {d} "
             f"WHEN {e} + 1 >= length({d}) THEN {d} || repeat('0', {e} + 1 - length({d})) || '.0' "
             f"ELSE left({d}, {e} + 1) || '.' || substr({d}, {e} + 2) END")
    scientific = (f"left({d}, 1) || CASE WHEN length({d}) > 1 THEN '.' || substr({d}, 2) ELSE '' END || 'e' || "
                  f"{_exponent_text(e)}")
    return f"{sign} || CASE WHEN {e} BETWEEN -4 AND 15 THEN {fixed} ELSE {scientific} END"


def _exponent_text(exponent: str) -> str:
    """SQL: Python's exponent after the ``e`` of the integer ``exponent``: a sign and at least two digits."""
    magnitude = f"CAST(abs({exponent}) AS text)"
    return (f"CASE WHEN {exponent} < 0 THEN '-' ELSE '+' END || "
            f"CASE WHEN abs({exponent}) < 10 THEN '0' || {magnitude} ELSE {magnitude} END")


def _parses_back(decimal: str, value: str) -> str:
    """SQL: whether the decimal text ``decimal`` (finite, non-zero, not below the smallest subnormal) parses to
    the double ``value``; False where it would overflow (float8in refuses it)."""
    return (f"CASE WHEN abs(CAST({decimal} AS numeric)) >= {_OVERFLOW} THEN false "
            f"ELSE CAST({decimal} AS float8) = {value} END")


def _python_from_pg(text: str, value: str) -> str:
    """SQL: Python's text of the finite non-zero ``value`` from a text in PostgreSQL's layout of it (``text``:
    fixed-point for exponents -4 to 14, else ``d.ddde±XX``; shortest digits): ``.0`` added to a text with no
    point, no exponent and no letter; a text ending ``e+15`` written out (Python keeps 16 integer digits)."""
    sign = f"CASE WHEN {value} < 0 THEN '-' ELSE '' END"
    digits_15 = f"replace(replace(split_part({text}, 'e', 1), '-', ''), '.', '')"
    return (f"CASE WHEN right({text}, 4) = 'e+15' THEN {_python_text(sign, digits_15, '15')} "
            f"WHEN translate({text}, '-0123456789', '') = '' THEN {text} || '.0' ELSE {text} END")


def _trim_zeros(decimal: str) -> str:
    """SQL: a decimal's text without the zeros after its last significant fraction digit (and without a point
    left last); a text without a point as it is."""
    return f"CASE WHEN strpos({decimal}, '.') > 0 THEN rtrim(rtrim({decimal}, '0'), '.') ELSE {decimal} END"


def _neighbours(text: str, value: str) -> tuple[str, str, str, str]:
    """SQL pieces about the neighbours of PostgreSQL's ``text`` of ``value`` one significant digit shorter
    (``text`` has a point): whether the truncated one parses back to ``value``, whether the one a unit away from
    zero does, and Python's text of each (meaningful where it parses back)."""
    mantissa, power = f"split_part({text}, 'e', 1)", f"split_part({text}, 'e', 2)"
    cut = f"rtrim(left({mantissa}, -1), '.')"  # one digit fewer, truncated; a point left last dropped
    suffix = f"CASE WHEN {power} = '' THEN '' ELSE 'e' || {power} END"
    short = f"CAST({cut} AS numeric)"
    away = f"({short} + CAST(sign({value}) AS numeric) * CAST('1e' || -scale({short}) AS numeric))"
    # The truncated neighbour is nearer zero than the text: it never overflows, nor falls below 1e-323.
    short_parses = f"CAST({cut} || {suffix} AS float8) = {value}"
    # The neighbour away from zero by text where its last digit is no 9 (no carry) and it cannot overflow.
    plain_bump = f"right({cut}, 1) <> '9' AND {power} <> '+308'"
    bumped = f"left({cut}, -1) || chr(ascii(right({cut}, 1)) + 1)"
    away_text = f"CAST({away} AS text)"
    away_parses = (f"CASE WHEN {plain_bump} THEN CAST({bumped} || {suffix} AS float8) = {value} "
                   f"ELSE {_parses_back(f'{away_text} || {suffix}', value)} END")
    short_python = _python_from_pg(f"({_trim_zeros(cut)} || {suffix})", value)
    # A carry that turns the mantissa of an exponent text into 10 moves the exponent up one (9.99e+22 -> 1e+23,
    # 9.99e-05 -> 0.0001); otherwise the sum's text keeps the layout of PostgreSQL's.
    carried = _trim_zeros(away_text)
    new_power = f"(CAST({power} AS integer) + 1)"
    sign = f"CASE WHEN {value} < 0 THEN '-' ELSE '' END"
    ten = (f"{sign} || CASE WHEN {new_power} = -4 THEN '0.0001' "
           f"ELSE '1e' || {_exponent_text(new_power)} END")
    away_python = (f"CASE WHEN {plain_bump} THEN {_python_from_pg(f'({bumped} || {suffix})', value)} "
                   f"WHEN {power} <> '' AND ltrim({carried}, '-') = '10' THEN {ten} "
                   f"ELSE {_python_from_pg(f'({carried} || {suffix})', value)} END")
    return short_parses, away_parses, short_python, away_python


def _fixed_range(value: str, general: str) -> str:
    """SQL of Python's text of ``value`` where ``1e-3 <= |value| < 1e14`` (most measured values), else
    ``general``.

    There both write fixed-point, and PostgreSQL's digits are always Python's: a shorter boundary text (the third
    difference above) would be a decimal of at most 16 significant digits equal to the midpoint between the double
    and a neighbour, and there is no such midpoint there. A midpoint is an odd multiple of ``2**(E - 53)``
    (``2**E <= |value| < 2**(E + 1)``), whose decimal text has exactly ``53 - E`` fractional digits. With ``E``
    from 0 to 46 that is ``53 - E`` digits after ``0.3 E + 1`` before the point: at least 21 significant
    digits; below 1 (``E`` from -10 to -1), ``53 - E`` digits after the point of which fewer than ``0.31 |E|``
    are leading zeros: more than 53. So only ``.0`` is added where the text has no point: a fraction of the work
    of ``general`` for a full-precision double. The integration test proves it on random bit patterns of this
    range as well as on its edges and the rest.
    """
    text = f"CAST({value} AS text)"
    python = f"CASE WHEN strpos({text}, '.') = 0 THEN {text} || '.0' ELSE {text} END"
    return f"CASE WHEN abs({value}) >= 0.001 AND abs({value}) < 1e14 THEN {python} ELSE {general} END"


def float_json_sql(value: str) -> str:
    """SQL of the text Python's ``json`` writes for the ``float8`` expression ``value`` — ``repr`` for a
    finite double, ``NaN``, ``Infinity``, ``-Infinity`` — or NULL for NULL. Needs ``extra_float_digits`` above
    0 in the session (shortest round-trip digits).

    Most values take a few string functions on PostgreSQL's text; a text that may not be the shortest (16
    digits or more, a subnormal) is checked by parsing its two shorter neighbours, and where one parses back,
    that neighbour is the answer: it lies on the boundary of the double's rounding interval (any shorter
    decimal in the interval is also a decimal of that length, on that side), so it is Python's text. Values
    between 1e-3 and 1e14 take a shorter way to the same text (:func:`_fixed_range`).

    One expression without a subquery: a scalar subquery would make every query holding it parallel-restricted,
    and the fingerprint of a large table is work PostgreSQL spreads over its parallel workers.
    """
    text = f"CAST({value} AS text)"
    short_parses, away_parses, short_python, away_python = _neighbours(text, value)
    suspect = (f"length({text}) >= 17 "
               f"OR ({value} <> 0 AND abs({value}) < {_MIN_NORMAL} AND strpos({text}, '.') > 0)")
    # Nested CASEs, not AND: the neighbours exist only for a suspect text, and CASE is what fixes the order.
    common = _python_from_pg(text, value)
    general = (f"CASE WHEN {suspect} THEN CASE WHEN {short_parses} THEN {short_python} "
               f"WHEN {away_parses} THEN {away_python} ELSE {common} END "
               f"ELSE {common} END")
    return _fixed_range(value, general)
