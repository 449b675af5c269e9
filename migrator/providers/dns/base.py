"""The narrow interface every DNS provider offers the DNS steps.

A step sees a name's *address records*: its A, AAAA and CNAME record sets, the ones a cutover switches. It can
read them, replace them all at once on condition that they are still exactly what it read, list the zone's
authoritative name servers, and ask one of those what it serves. Providers: RFC 2136 dynamic update (BIND,
Windows DNS, PowerDNS) and Azure DNS.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from migrator.errors import InputError, PermanentError

#: The record types that say where a name points; a transfer replaces all of them together.
ADDRESS_TYPES: tuple[str, ...] = ("A", "AAAA", "CNAME")


def normalize_value(rtype: str, value: str) -> str:
    """One record value in canonical text: addresses compressed, host names lower-case and absolute."""
    value = value.strip()
    try:
        if rtype == "A":
            return str(ipaddress.IPv4Address(value))
        if rtype == "AAAA":
            return str(ipaddress.IPv6Address(value))
    except ValueError as exc:
        raise InputError(f"{value!r} is not a valid {rtype} record value") from exc
    if rtype == "CNAME":
        host = value.lower().rstrip(".")
        if not host or " " in host or ".." in host:
            raise InputError(f"{value!r} is not a valid CNAME target")
        return host + "."
    raise InputError(f"record type {rtype} is not supported (use one of {', '.join(ADDRESS_TYPES)})")


@dataclass(frozen=True)
class RecordSet:
    """One record set at a name: type, TTL and values (canonical, sorted).

    ``version`` is the provider's token for "this exact state" (Azure DNS: the etag); it is not part of the
    content, so two sets with the same type, TTL and values are equal whatever their versions.
    """

    type: str
    ttl: int
    values: tuple[str, ...]
    version: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, rtype: str, ttl: int, values: Iterable[str], version: str | None = None) -> RecordSet:
        rtype = rtype.upper()
        canonical = tuple(sorted({normalize_value(rtype, v) for v in values}))
        if not canonical:
            raise InputError(f"a {rtype} record set needs at least one value")
        if rtype == "CNAME" and len(canonical) != 1:
            raise InputError("a CNAME record set holds exactly one target")
        if ttl < 0 or ttl > 2_147_483_647:
            raise InputError(f"TTL {ttl} is out of range")
        return cls(rtype, int(ttl), canonical, version)

    def with_ttl(self, ttl: int) -> RecordSet:
        return RecordSet(self.type, ttl, self.values, self.version)

    def describe(self) -> str:
        return f"{self.type} {self.ttl} {' '.join(self.values)}"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "ttl": self.ttl, "values": list(self.values), "version": self.version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordSet:
        return cls.of(data["type"], data["ttl"], data["values"], data.get("version"))


#: Every address record set at one name, sorted by type; empty when the name has none.
NameRecords = tuple[RecordSet, ...]


def name_records(sets: Iterable[RecordSet]) -> NameRecords:
    """Sorted by type, one set per type; a CNAME cannot share its name with another address set."""
    by_type: dict[str, RecordSet] = {}
    for rs in sets:
        if rs.type in by_type:
            raise InputError(f"two {rs.type} record sets for one name")
        by_type[rs.type] = rs
    if "CNAME" in by_type and len(by_type) > 1:
        raise InputError("a CNAME cannot share its name with A or AAAA records")
    return tuple(by_type[t] for t in sorted(by_type))


def describe_records(records: Sequence[RecordSet]) -> str:
    return "; ".join(rs.describe() for rs in records) if records else "(no address records)"


def records_to_json(records: Sequence[RecordSet]) -> list[dict[str, Any]]:
    return [rs.to_json() for rs in records]


def records_from_json(data: Sequence[Mapping[str, Any]]) -> NameRecords:
    return name_records(RecordSet.from_json(item) for item in data)


def same_records(a: Sequence[RecordSet], b: Sequence[RecordSet]) -> bool:
    """Same types, TTLs and values (versions ignored)."""
    return tuple(a) == tuple(b)


@dataclass(frozen=True)
class NameServer:
    """An authoritative name server of a zone: its host name and the addresses it answers on."""

    host: str
    addresses: tuple[str, ...]


class RecordChanged(PermanentError):
    """The record set is no longer what it was when it was read: someone else changed it.

    Nothing of the change was written, unless ``partial`` (a provider that changes one record set per request
    was stopped half-way).
    """

    def __init__(self, message: str, *, current: Sequence[RecordSet] | None = None, partial: bool = False) -> None:
        super().__init__(
            message,
            hint="someone else changed this DNS record since it was read; check who and why, then run plan again",
        )
        self.current = tuple(current) if current is not None else None
        self.partial = partial


class DnsProvider(ABC):
    """One DNS zone behind an API that can change it."""

    zone: str  # without the trailing dot

    @abstractmethod
    def describe(self) -> str:
        """Where the zone is served, for messages ("rfc2136 127.0.0.1:53 zone example.com"); never a secret."""

    @abstractmethod
    def read(self, name: str) -> NameRecords:
        """Every A, AAAA and CNAME record set at ``name`` (relative to the zone, ``@`` for the apex)."""

    @abstractmethod
    def replace(self, name: str, expected: Sequence[RecordSet], desired: Sequence[RecordSet]) -> NameRecords:
        """Makes the address record sets at ``name`` exactly ``desired``, on condition that they are still
        exactly ``expected``; otherwise raises :class:`RecordChanged` and writes nothing of its own."""

    @abstractmethod
    def name_servers(self) -> list[NameServer]:
        """The zone's authoritative name servers (its apex NS set) with their addresses where known."""

    def served_by(self, name: str, address: str, port: int, timeout: float) -> NameRecords:
        """What one name server (``address``:``port``) serves, authoritatively, at ``name``: asked directly, not
        through this provider's API; raises :class:`~migrator.providers.dns.query.NoAnswer` when it does not."""
        from migrator.providers.dns.query import served_records  # here: that module imports this one

        relative = relative_name(name, self.zone)
        return served_records(self.zone if relative == "@" else f"{relative}.{self.zone}", address, port, timeout)

    def close(self) -> None:
        return None


def relative_name(name: str, zone: str) -> str:
    """``name`` relative to ``zone``: ``@`` for the apex; absolute names (trailing dot) must be inside the zone."""
    zone = zone.lower().rstrip(".")
    name = name.strip().lower()
    if name in ("@", ""):
        return "@"
    if name.endswith("."):
        absolute = name.rstrip(".")
        if absolute == zone:
            return "@"
        if not absolute.endswith("." + zone):
            raise InputError(f"{name} is not inside zone {zone}")
        return absolute[: -len(zone) - 1]
    return name
