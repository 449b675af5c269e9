"""Asking name servers directly, through dnspython: what a server serves at a name, and what a name resolves to.

The steps never speak DNS themselves. ``dns.verify`` asks each authoritative server of a zone what it serves
(:meth:`~migrator.providers.dns.DnsProvider.served_by`, which reads the answer as the RFC 2136 provider reads its
primary's: :func:`address_records`); ``smoke.test`` asks a server to resolve a name (:func:`resolve`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from migrator.providers.dns.base import NameRecords, RecordSet, name_records


class NoAnswer(Exception):
    """A name server gave no usable answer; ``problem`` says why in a few words ("REFUSED", "no answer (Timeout)")."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


#: Sends one non-recursive question (name, type) to a server and returns its checked answer, or raises.
Ask = Callable[[dns.name.Name, str], dns.message.Message]


def address_records(qname: dns.name.Name, ask: Ask) -> NameRecords:
    """The A, AAAA and CNAME record sets a server holds at ``qname``, one question a type."""
    found = []
    for rtype in ("CNAME", "A", "AAAA"):  # CNAME first: it stands alone at its name, so nothing else is asked
        response = ask(qname, rtype)
        rrset = response.get_rrset(response.answer, qname, dns.rdataclass.IN, dns.rdatatype.from_text(rtype))
        if rrset is not None:
            found.append(RecordSet.of(rtype, rrset.ttl, [rdata.to_text() for rdata in rrset]))
            if rtype == "CNAME":
                break
    return name_records(found)


def non_recursive_query(qname: dns.name.Name, rtype: str) -> dns.message.Message:
    """A question for an authoritative server: recursion not desired."""
    query = dns.message.make_query(qname, rtype)
    query.flags &= ~dns.flags.RD
    return query


def served_records(fqdn: str, address: str, port: int, timeout: float) -> NameRecords:
    """What the name server at ``address``:``port`` serves, authoritatively, as ``fqdn``'s address records.

    Raises :class:`NoAnswer` when it does not answer, answers with an error, or is not authoritative.
    """

    def ask(qname: dns.name.Name, rtype: str) -> dns.message.Message:
        try:
            response, _ = dns.query.udp_with_fallback(non_recursive_query(qname, rtype), address, timeout=timeout,
                                                      port=port)
        except (dns.exception.DNSException, OSError) as exc:
            raise NoAnswer(f"no answer ({type(exc).__name__})") from exc
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise NoAnswer(dns.rcode.to_text(rcode))
        if not response.flags & dns.flags.AA:
            raise NoAnswer("not authoritative for the zone")
        return response

    return address_records(dns.name.from_text(fqdn), ask)


def answer_text(rtype: str, value: str) -> str:
    """A value as :func:`resolve` gives it: a CNAME target lower-case without the final dot, TXT unquoted."""
    value = value.strip()
    if rtype == "CNAME":
        return value.rstrip(".").lower()
    if rtype == "TXT":
        return value.strip('"')
    return value


def resolve(name: str, rtype: str, nameserver: str, *, port: int = 53, timeout: float = 5.0) -> list[str]:
    """The values ``name`` resolves to (as :func:`answer_text`) at ``nameserver``; empty when it does not exist.

    Asked afresh every time (no cache). Raises :class:`NoAnswer` when the server gives no answer.
    """
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [nameserver]
    resolver.port = port
    resolver.lifetime = resolver.timeout = timeout
    resolver.cache = None
    try:
        answer = resolver.resolve(name, rtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.DNSException as exc:
        raise NoAnswer(f"no answer: {type(exc).__name__}") from exc
    return [answer_text(rtype, rdata.to_text()) for rdata in answer]


def resolve_host(host: str) -> tuple[str, ...]:
    """Addresses of ``host`` through the system resolver; empty when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, 53, proto=socket.IPPROTO_UDP)
    except OSError:
        return ()
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))
