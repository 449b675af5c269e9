"""DNS cutover: lower the TTL ahead of time, switch the tenant's record to the new instance, prove it is served.

The three kinds work on a name's address records (its A, AAAA and CNAME record sets) through a
:class:`~migrator.providers.dns.DnsProvider` (RFC 2136 or Azure DNS, chosen by the ``dns:`` endpoint).

Both kinds that write follow one discipline: the record sets as they were are saved in the step's memo *before*
the change (with the provider's version of them: Azure's etag), and the change is made on condition that the
record is still exactly that, so a change made by someone else in between is detected and never overwritten.
Compensation puts the saved record sets back exactly (type, values, TTL), again only if the record is still
what this run made it.

``dns.verify`` asks every authoritative name server of the zone directly. In production those are reached on
port 53; ``port`` and ``nameserver_addresses`` exist for servers elsewhere (a test's BIND on a free port).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator

from migrator.errors import CompensationError, InputError, PreconditionFailed, VerificationFailed
from migrator.estimator import Sample, Work, estimate, rates
from migrator.providers.dns import DnsEndpoint, DnsProvider, NoAnswer, open_dns_provider, resolve_host
from migrator.providers.dns.base import (
    ADDRESS_TYPES,
    NameRecords,
    RecordChanged,
    RecordSet,
    describe_records,
    name_records,
    records_from_json,
    records_to_json,
    relative_name,
    same_records,
)
from migrator.resources import ResourceKey
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext

AddressType = Literal["A", "AAAA", "CNAME"]
#: Target records as a playbook writes them: ``{CNAME: [tenant.cloud.example.com]}`` or ``{A: [...], AAAA: [...]}``.
Records = dict[AddressType, list[str]]

# Memo keys: what a writing step keeps across restarts.
_PREVIOUS = "previous"  # the record sets before this run's change, with their versions
_DESIRED = "desired"  # what this run set
_PHASE = "phase"  # "writing" → "written" (or "refused": someone else's change stopped us) → "restored"


def _to_records(spec: Mapping[AddressType, Sequence[str]], ttl: int) -> NameRecords:
    return name_records(RecordSet.of(rtype, ttl, values) for rtype, values in spec.items())


def _describe_target(spec: Mapping[AddressType, Sequence[str]]) -> str:
    return "; ".join(f"{rs.type} {' '.join(rs.values)}" for rs in _to_records(spec, 0))


def _validate_records(spec: Records) -> Records:
    if not spec:
        raise ValueError("at least one record type, e.g. {CNAME: [tenant.cloud.example.com]}")
    try:
        _to_records(spec, 300)
    except InputError as exc:  # a bad address, a second CNAME target, a CNAME beside A/AAAA
        raise ValueError(exc.message) from exc
    return spec


def _provider(ctx: StepContext, endpoint: Any) -> DnsProvider:
    """One provider per endpoint per run, shared by the DNS steps through ``ctx.resources``."""
    return ctx.resources.obtain(provider_key(endpoint), lambda: open_dns_provider(endpoint, ctx))


def provider_key(endpoint: Any) -> ResourceKey[DnsProvider]:
    """The ``ctx.resources`` key of the provider for ``endpoint`` (secrets appear only as references)."""
    return ResourceKey("dns:" + json.dumps(endpoint.model_dump(mode="json"), sort_keys=True))


def _fqdn(name: str, zone: str) -> str:
    relative = relative_name(name, zone)
    return zone if relative == "@" else f"{relative}.{zone}"


def _change(ctx: StepContext, provider: DnsProvider, name: str, desired: NameRecords,
            expected: NameRecords) -> NameRecords:
    """Replaces ``expected`` by ``desired``, the memo saying at every moment what to undo."""
    ctx.memo.set(_DESIRED, records_to_json(desired))
    ctx.memo.set(_PHASE, "writing")
    try:
        result = provider.replace(name, expected, desired)
    except RecordChanged as exc:
        # Refused outright: nothing of ours to undo. Stopped half-way: stay "writing", so that compensation
        # looks at the name and asks for attention rather than assume either way.
        if not exc.partial:
            ctx.memo.set(_PHASE, "refused")
        raise
    ctx.memo.set(_PHASE, "written")
    return result


def _previous(ctx: StepContext, provider: DnsProvider, name: str,
              check: Callable[[NameRecords], None] | None = None) -> NameRecords:
    """The record sets before this run's change: from the memo on a resume, else read (and passed through
    ``check``) and saved now, before anything is changed."""
    saved = ctx.memo.get(_PREVIOUS)
    if saved is not None:
        return records_from_json(saved)
    current = provider.read(name)
    if check is not None:
        check(current)
    ctx.memo.set(_PREVIOUS, records_to_json(current))
    return current


def _restore(ctx: StepContext, provider: DnsProvider, name: str, step_id: str) -> None:
    """Puts back the saved record sets, if this run changed them and nobody has changed them since."""
    saved, phase = ctx.memo.get(_PREVIOUS), ctx.memo.get(_PHASE)
    where = f"{step_id}: {_fqdn(name, provider.zone)}"
    if saved is None or phase in (None, "refused", "restored"):
        ctx.log.info("%s: nothing of this run to undo (%s)", where, phase or "never changed")
        return
    previous = records_from_json(saved)
    desired = records_from_json(ctx.memo.get(_DESIRED) or [])
    current = provider.read(name)
    if same_records(current, previous):
        ctx.memo.set(_PHASE, "restored")
        return
    if not same_records(current, desired):
        raise CompensationError(
            f"{where}: not restored, because someone else changed it after this run did: it is now "
            f"{describe_records(current)}; this run set {describe_records(desired)}; before it was "
            f"{describe_records(previous)}",
            hint="decide which record is right and set it by hand; migrator does not overwrite others' changes")
    try:
        provider.replace(name, current, previous)
    except RecordChanged as exc:
        raise CompensationError(f"{where}: not restored: {exc.message}", hint=exc.hint) from exc
    ctx.memo.set(_PHASE, "restored")
    ctx.event("dns.restored", f"{where} restored to {describe_records(previous)}")


# ---------------------------------------------------------------------------------------------------------
class _NameParams(Params):
    dns: DnsEndpoint
    #: The tenant's name, relative to the zone ("portal", "@") or absolute ("portal.contoso.com.").
    name: str


N = TypeVar("N", bound=_NameParams)


class _NameStep(Step[N]):
    """A DNS kind that works on one name of a zone."""

    def _fqdn(self) -> str:
        return _fqdn(self.params.name, self.params.dns.zone)


class DnsLowerTtlParams(_NameParams):
    #: The TTL to lower to (seconds); record sets already at or below it are left alone.
    ttl: int = Field(default=60, ge=1, le=86400)


class DnsLowerTtl(_NameStep[DnsLowerTtlParams]):
    """Lowers the TTL of the tenant's A/AAAA/CNAME record sets ahead of the cutover, values unchanged.

    Changes: the TTL of each address record set at ``name`` that is above ``ttl``. Done when every one of them
    is at or below ``ttl``. Undone by restoring the saved TTLs exactly, if the record is still what this step
    left. Output ``caches_expire_at``: when every resolver has let go of the answer with the old TTL.
    """

    kind = "dns.lower_ttl"
    Params = DnsLowerTtlParams
    summary = "lower the TTL of the tenant's DNS record ahead of the cutover"

    def check(self, ctx: StepContext) -> CheckResult:
        current = _provider(ctx, self.params.dns).read(self.params.name)
        if not current:
            return CheckResult(False, f"{self._fqdn()} has no A, AAAA or CNAME record")
        high = [rs for rs in current if rs.ttl > self.params.ttl]
        if high:
            return CheckResult(False, f"{self._fqdn()}: TTL {max(rs.ttl for rs in high)} > {self.params.ttl}")
        return CheckResult(True, f"{self._fqdn()}: TTL already at most {self.params.ttl}",
                           outputs={"name": self._fqdn(), "ttl": max(rs.ttl for rs in current)})

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        started = time.perf_counter()
        current = _provider(ctx, self.params.dns).read(self.params.name)
        read = time.perf_counter() - started
        if not current:
            return PlanResult(changes=[f"fail: {state.reason}"], reason=state.reason)
        desired = self._lowered(current)
        return PlanResult(
            changes=[f"{self._fqdn()}: {describe_records(current)} → {describe_records(desired)}"],
            reason=state.reason,
            estimate=estimate(_update_work(read, "one DNS update"), rates(ctx), items=1),
            details={"current": records_to_json(current)})

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        provider = _provider(ctx, self.params.dns)
        previous = _previous(ctx, provider, self.params.name)
        if not previous:
            raise PreconditionFailed(f"{self._fqdn()} has no A, AAAA or CNAME record: nothing to lower",
                                     step_id=self.step_id, hint="check name: and the zone in the dns: endpoint")
        _change(ctx, provider, self.params.name, self._lowered(previous), previous)
        previous_ttl = max(rs.ttl for rs in previous)
        expire = ctx.clock.now() + timedelta(seconds=previous_ttl)
        return {"name": self._fqdn(), "ttl": self.params.ttl, "previous_ttl": previous_ttl,
                "caches_expire_at": expire.isoformat(timespec="seconds")}

    def compensate(self, ctx: StepContext) -> None:
        _restore(ctx, _provider(ctx, self.params.dns), self.params.name, self.step_id)

    def _lowered(self, current: NameRecords) -> NameRecords:
        return tuple(rs.with_ttl(min(rs.ttl, self.params.ttl)) for rs in current)


# ---------------------------------------------------------------------------------------------------------
class DnsTransferParams(_NameParams):
    #: The new target: ``{CNAME: [tenant.cloud.example.com]}`` or ``{A: [...], AAAA: [...]}``.
    to: Records
    #: TTL of the new record sets; default: the TTL the name has now (lowered by ``dns.lower_ttl``), else 300.
    ttl: int | None = Field(default=None, ge=1, le=86400)
    #: The old target as reviewed in the plan; when given, the transfer refuses to run if the name holds
    #: anything else (neither this nor the new target).
    expect: Records | None = None

    @field_validator("to", "expect")
    @classmethod
    def _records(cls, value: Records | None) -> Records | None:
        return None if value is None else _validate_records(value)


class DnsTransfer(_NameStep[DnsTransferParams]):
    """Switches the tenant's DNS name from the old instance to the new one.

    Changes: every A, AAAA and CNAME record set at ``name`` is replaced by ``to`` in one conditional update
    (the previous sets are saved in the memo first). Done when the name holds exactly ``to`` (and ``ttl`` when
    given). Undone by putting the saved record sets back exactly, if the name still holds what this step set;
    a record someone else changed since is reported, never overwritten.
    """

    kind = "dns.transfer"
    Params = DnsTransferParams
    summary = "switch the tenant's DNS record (CNAME or A/AAAA) to the new instance"

    def check(self, ctx: StepContext) -> CheckResult:
        current = _provider(ctx, self.params.dns).read(self.params.name)
        if self._is_target(current):
            return CheckResult(True, f"{self._fqdn()} already points at {describe_records(current)}",
                               outputs=self._outputs(current))
        return CheckResult(False, f"{self._fqdn()} is {describe_records(current)}")

    def plan(self, ctx: StepContext) -> PlanResult:
        started = time.perf_counter()
        current = _provider(ctx, self.params.dns).read(self.params.name)
        read = time.perf_counter() - started
        if self._is_target(current):
            return PlanResult.nothing(f"{self._fqdn()} already points at {describe_records(current)}")
        target = describe_records(self._desired(current))
        if self.params.ttl is None:  # earlier steps (dns.lower_ttl) may still change the TTL that is kept
            kept = max((rs.ttl for rs in current), default=300)
            target = f"{_describe_target(self.params.to)} (TTL kept, {kept} now)"
        changes = [f"{self._fqdn()}: {describe_records(current)} → {target}"]
        problem = self._unexpected(current)
        if problem:
            changes.append(f"will refuse: {problem}")
        return PlanResult(changes=changes, reason=f"{self._fqdn()} is {describe_records(current)}",
                          estimate=estimate(_update_work(read, "one conditional DNS update: the step reads, "
                                                                     "updates and reads back"), rates(ctx), items=1),
                          details={"current": records_to_json(current)})

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        provider = _provider(ctx, self.params.dns)

        def as_reviewed(current: NameRecords) -> None:
            problem = self._unexpected(current)
            if problem:
                raise PreconditionFailed(f"{self.step_id}: {problem}", step_id=self.step_id,
                                         hint="someone changed the record since the plan was reviewed: check it, "
                                              "then update expect: or run plan again")

        previous = _previous(ctx, provider, self.params.name, as_reviewed)
        desired = self._desired(previous)
        result = _change(ctx, provider, self.params.name, desired, previous)
        ctx.event("dns.transferred", f"{self._fqdn()}: {describe_records(previous)} → {describe_records(result)}")
        return {**self._outputs(result), "previous": describe_records(previous)}

    def verify(self, ctx: StepContext) -> None:
        current = _provider(ctx, self.params.dns).read(self.params.name)
        if not self._is_target(current):
            raise VerificationFailed(f"{self._fqdn()} is {describe_records(current)} after the transfer, not "
                                     f"{_describe_target(self.params.to)}",
                                     step_id=self.step_id)

    def compensate(self, ctx: StepContext) -> None:
        _restore(ctx, _provider(ctx, self.params.dns), self.params.name, self.step_id)

    def _desired(self, current: NameRecords) -> NameRecords:
        ttl = self.params.ttl or (max(rs.ttl for rs in current) if current else 300)
        return _to_records(self.params.to, ttl)

    def _is_target(self, current: NameRecords) -> bool:
        target = _to_records(self.params.to, 0)
        if tuple((rs.type, rs.values) for rs in current) != tuple((rs.type, rs.values) for rs in target):
            return False
        return self.params.ttl is None or all(rs.ttl == self.params.ttl for rs in current)

    def _unexpected(self, current: NameRecords) -> str | None:
        if self.params.expect is None:
            return None
        expected = _to_records(self.params.expect, 0)
        if tuple((rs.type, rs.values) for rs in current) == tuple((rs.type, rs.values) for rs in expected):
            return None
        return f"{self._fqdn()} is {describe_records(current)}, not the expected {_describe_target(self.params.expect)}"

    def _outputs(self, current: NameRecords) -> dict[str, Any]:
        return {"name": self._fqdn(), "records": {rs.type: list(rs.values) for rs in current},
                "ttl": max((rs.ttl for rs in current), default=0)}


# ---------------------------------------------------------------------------------------------------------
class DnsVerifyParams(_NameParams):
    #: What every name server must answer: ``{CNAME: [...]}`` or ``{A: [...], AAAA: [...]}`` (TTL not compared).
    expect: Records
    #: Seconds to keep asking before giving up.
    timeout: float = Field(default=600.0, gt=0)
    #: Seconds between rounds of questions.
    interval: float = Field(default=5.0, gt=0)
    #: Port the name servers answer on: 53 in production.
    port: int = Field(default=53, ge=1, le=65535)
    #: Where to reach a name server, by NS host name: ``"address"`` or ``"address:port"``; names not listed are
    #: resolved (in-zone ones through the zone's own server, others through the system resolver).
    nameserver_addresses: dict[str, str] = Field(default_factory=dict)
    #: Seconds to wait for one answer.
    query_timeout: float = Field(default=3.0, gt=0)

    @field_validator("expect")
    @classmethod
    def _records(cls, value: Records) -> Records:
        return _validate_records(value)


#: An update in DNS reads: a step reads the record, sends the (conditional) update and reads it back.
_UPDATE_IN_READS = 3.0
#: Rounds of asking every name server a dns.verify makes when secondaries follow the NOTIFY at once.
_VERIFY_ROUNDS = 3.0


def _update_work(read: float, note: str) -> Work:
    """An update counted in reads (:data:`_UPDATE_IN_READS`), the read the plan timed as a sample."""
    return Work(samples=[Sample("dns.read", 1, read, time.time())], note=note).add("dns.read", _UPDATE_IN_READS)

@dataclass(frozen=True)
class _Answer:
    server: str  # "ns1.example.com (192.0.2.53:53)"
    records: NameRecords | None  # None: no authoritative answer
    problem: str = ""

    def describe(self) -> str:
        return f"{self.server}: {self.problem or describe_records(self.records or ())}"


class DnsVerify(_NameStep[DnsVerifyParams]):
    """Proves that every authoritative name server of the zone serves the new target.

    Changes nothing. Done when each address of each NS of the zone answers, authoritatively, exactly the
    ``expect`` record sets. ``apply`` asks again every ``interval`` seconds until they all do, or fails after
    ``timeout`` naming the servers that still answer something else. Nothing to undo.
    """

    kind = "dns.verify"
    Params = DnsVerifyParams
    summary = "wait until every authoritative name server serves the new DNS record"

    def check(self, ctx: StepContext) -> CheckResult:
        answers = self._ask_all(ctx)
        stale = [a for a in answers if not self._serves_target(a)]
        if stale:
            return CheckResult(False, "not yet served by " + "; ".join(a.describe() for a in stale))
        return CheckResult(True, f"{len(answers)} name server address(es) serve {self._fqdn()}",
                           outputs={"name": self._fqdn(), "nameservers": [a.server for a in answers]})

    def plan(self, ctx: StepContext) -> PlanResult:
        started = time.perf_counter()
        state = self.check(ctx)
        asked = time.perf_counter() - started
        if state.done:
            return PlanResult.nothing(state.reason)
        return PlanResult(changes=[f"wait up to {self.params.timeout:g} s until every name server of "
                                   f"{self.params.dns.zone} serves {self._fqdn()}"], reason=state.reason,
                          # Secondaries follow a NOTIFY within seconds; the timeout is only the bound.
                          # the check, then the apply's rounds (the first usually enough), then the verify.
                          estimate=self._estimate(ctx, asked))

    def _estimate(self, ctx: StepContext, asked: float) -> Estimate:
        """The check, the apply's rounds and the verify: rounds of asking every name server (one timed now),
        bounded by the timeout."""
        book = rates(ctx)
        note = f"NOTIFY propagates within the first rounds (at most {self.params.timeout:g} s)"
        work = Work(samples=[Sample("dns.round", 1, asked, time.time())], note=note).add("dns.round", _VERIFY_ROUNDS)
        if book.seconds_of(work) > self.params.timeout:
            work = Work(fixed={"the timeout": self.params.timeout}, samples=work.samples, note=note)
        return estimate(work, book)

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        started = ctx.clock.monotonic()
        deadline = started + self.params.timeout
        rounds = 0
        while True:
            rounds += 1
            answers = self._ask_all(ctx)
            stale = [a for a in answers if not self._serves_target(a)]
            if not stale:
                return {"name": self._fqdn(), "nameservers": [a.server for a in answers], "rounds": rounds,
                        "seconds": round(ctx.clock.monotonic() - started, 3)}
            remaining = deadline - ctx.clock.monotonic()
            if remaining <= 0:
                raise VerificationFailed(
                    f"{self.step_id}: after {self.params.timeout:g} s, {len(stale)} of {len(answers)} name server "
                    f"address(es) still do not serve {self._fqdn()} as "
                    f"{_describe_target(self.params.expect)}: "
                    + "; ".join(a.describe() for a in stale),
                    step_id=self.step_id,
                    hint="a secondary that does not follow its primary (NOTIFY, zone transfer, serial) or a "
                         "provider that is slow to publish; resume to wait again")
            ctx.progress(f"{len(stale)} name server address(es) not serving {self._fqdn()} yet")
            ctx.raise_if_cancelled()
            ctx.clock.sleep(min(self.params.interval, remaining))

    def _serves_target(self, answer: _Answer) -> bool:
        if answer.records is None:
            return False
        target = _to_records(self.params.expect, 0)
        return tuple((rs.type, rs.values) for rs in answer.records) == \
            tuple((rs.type, rs.values) for rs in target)

    def _servers(self, ctx: StepContext) -> list[tuple[str, str, int]]:
        """(label, address, port) for every address of every authoritative name server."""
        overrides = {host.lower().rstrip("."): where for host, where in self.params.nameserver_addresses.items()}
        found: list[tuple[str, str, int]] = []
        for ns in _provider(ctx, self.params.dns).name_servers():
            if ns.host in overrides:
                address, _, port = overrides[ns.host].rpartition(":") if ":" in overrides[ns.host] \
                    else (overrides[ns.host], "", "")
                endpoints = [(address, int(port) if port else self.params.port)]
            else:
                addresses = ns.addresses or resolve_host(ns.host)
                endpoints = [(a, self.params.port) for a in addresses]
            if not endpoints:
                found.append((f"{ns.host} (does not resolve)", "", 0))
            found.extend((f"{ns.host} ({a}:{p})", a, p) for a, p in endpoints)
        return found

    def _ask_all(self, ctx: StepContext) -> list[_Answer]:
        servers = self._servers(ctx)
        if not servers:
            raise VerificationFailed(f"{self.step_id}: zone {self.params.dns.zone} lists no name servers",
                                     step_id=self.step_id)
        provider = _provider(ctx, self.params.dns)
        return [self._ask(provider, label, address, port) if address else _Answer(label, None, "does not resolve")
                for label, address, port in servers]

    def _ask(self, provider: DnsProvider, label: str, address: str, port: int) -> _Answer:
        try:
            return _Answer(label, provider.served_by(self.params.name, address, port, self.params.query_timeout))
        except NoAnswer as exc:
            return _Answer(label, None, exc.problem)


__all__ = ["ADDRESS_TYPES", "DnsLowerTtl", "DnsTransfer", "DnsVerify", "provider_key"]
