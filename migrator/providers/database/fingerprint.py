"""Content fingerprints: a row count and an order-independent sum of the rows' MD5 halves.

The sum is what engines can compute themselves over the encoded lines (PostgreSQL does, see
:meth:`~migrator.providers.database.base.Database.fingerprint_sql`), so a table verifies the same whether the
engine or migrator hashed it.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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

