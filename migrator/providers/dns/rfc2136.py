"""RFC 2136 dynamic update with TSIG, through dnspython: self-hosted DNS servers (BIND, Windows DNS, PowerDNS).

A replacement is one update message: prerequisites that every address record set at the name is still exactly
what was read (value-dependent "RRset exists", or "RRset does not exist"), then the deletions and additions.
The server applies all of it or none of it, so a concurrent change by someone else is refused by the server
itself (YXRRSET/NXRRSET) and nothing is overwritten. One limit of the protocol: a prerequisite compares values,
not TTLs, so a change of TTL alone made by someone else in between is not detected.

Messages go over TCP: updates and answers are never truncated, and a lost datagram is a clear timeout.
"""

from __future__ import annotations

import binascii
import socket
from collections.abc import Callable, Sequence
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from migrator.errors import InputError, PermanentError, TransientError
from migrator.providers.dns.base import (
    ADDRESS_TYPES,
    DnsProvider,
    NameRecords,
    NameServer,
    RecordChanged,
    RecordSet,
    describe_records,
    name_records,
    relative_name,
)
from migrator.providers.dns.query import address_records, non_recursive_query, resolve_host

_PREREQUISITE_FAILED = {dns.rcode.YXDOMAIN, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.NXRRSET}
_TSIG_HINT = ("check the TSIG key name, algorithm and secret against the server's key, and that the server "
              "grants this key updates of the zone (update-policy / allow-update)")


class Rfc2136Provider(DnsProvider):
    """One zone on a primary server that accepts dynamic updates."""

    def __init__(self, endpoint: Any, reveal: Callable[[Any], str | None]) -> None:
        self.endpoint = endpoint
        self.zone = endpoint.zone
        self._origin = dns.name.from_text(self.zone)
        self._reveal = reveal
        self._keyring: dict[dns.name.Name, dns.tsig.Key] | None = None
        self._address: str | None = None

    def describe(self) -> str:
        return f"rfc2136 {self.endpoint.server}:{self.endpoint.port} zone {self.zone}"

    # -- plumbing ---------------------------------------------------------------------------------------
    def _server_address(self) -> str:
        if self._address is None:
            try:
                infos = socket.getaddrinfo(self.endpoint.server, self.endpoint.port, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                raise TransientError(f"cannot resolve DNS server {self.endpoint.server}: {exc}") from exc
            self._address = str(infos[0][4][0])
        return self._address

    def _key(self) -> dict[dns.name.Name, dns.tsig.Key] | None:
        if self.endpoint.tsig_key_name is None:
            return None
        if self._keyring is None:
            secret = self._reveal(self.endpoint.tsig_secret)
            if not secret:
                raise InputError(f"{self.describe()}: tsig_key_name is set but tsig_secret is not",
                                 hint="tsig_secret: ${env:DNS_TSIG_SECRET}")
            try:
                self._keyring = dns.tsigkeyring.from_text(
                    {self.endpoint.tsig_key_name: (self.endpoint.tsig_algorithm, secret)})
            except (binascii.Error, ValueError, dns.exception.DNSException) as exc:
                raise InputError(f"{self.describe()}: the TSIG secret is not valid base64 or the algorithm "
                                 f"{self.endpoint.tsig_algorithm} is unknown") from exc
        return self._keyring

    def _sign(self, message: dns.message.Message) -> None:
        keyring = self._key()
        if keyring is not None:
            message.use_tsig(keyring, keyname=self.endpoint.tsig_key_name,
                             algorithm=self.endpoint.tsig_algorithm)

    def _exchange(self, message: dns.message.Message, what: str) -> dns.message.Message:
        try:
            return dns.query.tcp(message, self._server_address(), port=self.endpoint.port,
                                 timeout=self.endpoint.timeout)
        except dns.exception.Timeout as exc:
            raise TransientError(f"{self.describe()}: no answer to {what} within {self.endpoint.timeout:g} s") from exc
        except dns.tsig.PeerError as exc:  # the server says so in its TSIG record: BADKEY, BADSIG, BADTIME
            raise PermanentError(f"{self.describe()}: the server rejected the TSIG signature of {what} "
                                 f"({type(exc).__name__})", hint=_TSIG_HINT) from exc
        except dns.message.UnknownTSIGKey as exc:
            raise PermanentError(f"{self.describe()}: the answer to {what} is signed with a key we do not know",
                                 hint=_TSIG_HINT) from exc
        except (ConnectionError, OSError, EOFError) as exc:
            raise TransientError(f"{self.describe()}: {what} failed: {exc}") from exc

    def _raise_for_rcode(self, response: dns.message.Message, what: str) -> None:
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if rcode == dns.rcode.SERVFAIL:
            raise TransientError(f"{self.describe()}: {what}: SERVFAIL")
        if rcode == dns.rcode.NOTAUTH:
            raise PermanentError(f"{self.describe()}: {what}: NOTAUTH (the server is not authoritative for the "
                                 "zone, or did not accept the TSIG key)", hint=_TSIG_HINT)
        if rcode == dns.rcode.REFUSED:
            raise PermanentError(f"{self.describe()}: {what}: REFUSED (the server's policy does not allow it, "
                                 "or it is a secondary)",
                                 hint="point server: at the zone's primary and grant the key updates there")
        if rcode == dns.rcode.NOTZONE:
            raise InputError(f"{self.describe()}: {what}: NOTZONE (the name is not inside zone {self.zone})")
        raise PermanentError(f"{self.describe()}: {what}: {text}")

    def _absolute(self, name: str) -> dns.name.Name:
        relative = relative_name(name, self.zone)
        return self._origin if relative == "@" else dns.name.from_text(relative, self._origin)

    def _query(self, qname: dns.name.Name, rtype: str) -> dns.message.Message:
        query = non_recursive_query(qname, rtype)
        self._sign(query)
        what = f"query {qname} {rtype}"
        response = self._exchange(query, what)
        if response.rcode() != dns.rcode.NXDOMAIN:
            self._raise_for_rcode(response, what)
        if not response.flags & dns.flags.AA:
            raise PermanentError(f"{self.describe()}: the server is not authoritative for zone {self.zone}",
                                 hint="point server: at the zone's primary name server")
        return response

    # -- the interface ----------------------------------------------------------------------------------
    def read(self, name: str) -> NameRecords:
        return address_records(self._absolute(name), self._query)

    def replace(self, name: str, expected: Sequence[RecordSet], desired: Sequence[RecordSet]) -> NameRecords:
        qname = self._absolute(name)
        expected_by_type = {rs.type: rs for rs in name_records(expected)}
        desired_by_type = {rs.type: rs for rs in name_records(desired)}
        keyring = self._key()
        update = dns.update.UpdateMessage(self._origin, keyring=keyring, keyname=self.endpoint.tsig_key_name,
                                          keyalgorithm=self.endpoint.tsig_algorithm)
        for rtype in ADDRESS_TYPES:
            old = expected_by_type.get(rtype)
            if old is None:
                update.absent(qname, rtype)
            else:
                # A prerequisite's TTL must be zero (RFC 2136 §2.4.2): the server compares values only.
                update.present(qname, _rdataset(old.with_ttl(0)))
        changed = [t for t in ADDRESS_TYPES if expected_by_type.get(t) != desired_by_type.get(t)]
        # Deletions first: a server silently ignores an A or AAAA added where a CNAME still stands.
        for rtype in changed:
            if rtype in expected_by_type:
                update.delete(qname, rtype)
        for rtype in changed:
            if rtype in desired_by_type:
                update.add(qname, _rdataset(desired_by_type[rtype]))
        what = f"update of {qname}"
        response = self._exchange(update, what)
        if response.rcode() in _PREREQUISITE_FAILED:
            current = self.read(name)
            raise RecordChanged(
                f"{self.describe()}: {qname} changed since it was read: expected "
                f"{describe_records(tuple(expected_by_type.values()))}, found {describe_records(current)}; "
                "the server refused the update and nothing was written", current=current)
        self._raise_for_rcode(response, what)
        return self.read(name)

    def name_servers(self) -> list[NameServer]:
        response = self._query(self._origin, "NS")
        rrset = response.get_rrset(response.answer, self._origin, dns.rdataclass.IN, dns.rdatatype.NS)
        if rrset is None:
            raise PermanentError(f"{self.describe()}: the zone has no NS record set at its apex")
        servers = []
        for rdata in sorted(rrset, key=lambda r: r.to_text()):
            host: dns.name.Name = rdata.target
            servers.append(NameServer(host.to_text(omit_final_dot=True).lower(), self._addresses_of(host)))
        return servers

    def _addresses_of(self, host: dns.name.Name) -> tuple[str, ...]:
        # A name server inside its own zone is resolved by the zone's server (its glue); others by the system.
        if host.is_subdomain(self._origin):
            addresses: list[str] = []
            for rtype in ("A", "AAAA"):
                response = self._query(host, rtype)
                rrset = response.get_rrset(response.answer, host, dns.rdataclass.IN,
                                           dns.rdatatype.from_text(rtype))
                addresses.extend(r.to_text() for r in rrset or ())
            return tuple(addresses)
        return resolve_host(host.to_text(omit_final_dot=True))


def _rdataset(rs: RecordSet) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text_list(dns.rdataclass.IN, dns.rdatatype.from_text(rs.type), rs.ttl, rs.values)
