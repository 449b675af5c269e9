"""DNS steps against a real BIND 9 (primary + secondary) through RFC 2136 dynamic update with TSIG."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from fixtures.services.bind import BindServer
from migrator.clock import FakeClock
from migrator.errors import CompensationError, PermanentError, PreconditionFailed, VerificationFailed
from migrator.providers.dns import DnsProvider, RecordChanged, RecordSet
from migrator.steps.dns import DnsLowerTtl, DnsTransfer, DnsVerify, provider_key
from migrator.testing import MemoryContext, MemoryMemo, plan_step, run_step

pytestmark = pytest.mark.integration

OLD = {"A": (3600, ["192.0.2.10"])}
NEW_CNAME = {"CNAME": ["tenant-contoso.cloud.example.net"]}


def transfer(bind: BindServer, name: str, to: dict[str, list[str]], zone: str | None = None,
             **extra: Any) -> DnsTransfer:
    return DnsTransfer("transfer", DnsTransfer.Params.model_validate(
        {"dns": bind.endpoint(zone), "name": name, "to": to, **extra}))


def lower_ttl(bind: BindServer, name: str, ttl: int = 60) -> DnsLowerTtl:
    return DnsLowerTtl("lower-ttl", DnsLowerTtl.Params.model_validate(
        {"dns": bind.endpoint(), "name": name, "ttl": ttl}))


def verify(bind: BindServer, name: str, expect: dict[str, list[str]], zone: str | None = None,
           **extra: Any) -> DnsVerify:
    return DnsVerify("verify", DnsVerify.Params.model_validate(
        {"dns": bind.endpoint(zone), "name": name, "expect": expect, "timeout": 30, "interval": 1, **extra}))


class SomeoneChangesAfterRead:
    """The real provider, except that right after its first read another administrator changes the record."""

    def __init__(self, real: DnsProvider, change: Any) -> None:
        self._real, self._change, self.zone = real, change, real.zone

    def read(self, name: str) -> Any:
        records = self._real.read(name)
        if self._change is not None:
            self._change()
            self._change = None
        return records

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real, attr)


def test_transfer_then_verify_sees_the_cname_on_primary_and_secondary(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, OLD)
    ctx = MemoryContext()

    run_step(lower_ttl(bind_server, name), ctx)
    state, outputs = run_step(transfer(bind_server, name, NEW_CNAME), MemoryContext())
    _, verified = run_step(verify(bind_server, name, NEW_CNAME,
                                  nameserver_addresses=bind_server.nameserver_addresses()), MemoryContext())

    assert not state.done
    assert outputs["records"] == {"CNAME": ["tenant-contoso.cloud.example.net."]}
    assert outputs["ttl"] == 60  # the lowered TTL carries over to the new record
    assert bind_server.served(bind_server.zone, name, secondary=True) == \
        {"CNAME": (60, {"tenant-contoso.cloud.example.net."})}
    assert sorted(verified["nameservers"]) == [
        f"ns1.{bind_server.zone} (127.0.0.1:{bind_server.port})",
        f"ns2.{bind_server.zone} (127.0.0.1:{bind_server.secondary_port})"]


def test_verify_finds_the_name_servers_from_the_zone_ns_records_on_the_given_port(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, {"A": (300, ["198.51.100.7"])})

    _, outputs = run_step(verify(bind_server, name, {"A": ["198.51.100.7"]}, port=bind_server.port),
                          MemoryContext())

    assert outputs["nameservers"] == [f"ns1.{bind_server.zone} (127.0.0.1:{bind_server.port})",
                                      f"ns2.{bind_server.zone} (127.0.0.1:{bind_server.port})"]


def test_verify_times_out_naming_the_secondary_that_still_serves_the_old_record(bind_server: BindServer) -> None:
    zone, name = bind_server.stale_zone, bind_server.fresh_name()
    bind_server.someone_sets(zone, name, {"A": (300, ["192.0.2.10"])})
    run_step(transfer(bind_server, name, {"A": ["198.51.100.20"]}, zone=zone), MemoryContext())
    clock = FakeClock()
    step = verify(bind_server, name, {"A": ["198.51.100.20"]}, zone=zone,
                  nameserver_addresses=bind_server.nameserver_addresses(zone))

    with pytest.raises(VerificationFailed) as failure:
        run_step(step, MemoryContext(clock=clock))

    message = str(failure.value)
    assert f"ns2.{zone} (127.0.0.1:{bind_server.secondary_port}): (no address records)" in message
    assert f"ns1.{zone}" not in message
    assert clock.monotonic() >= 30  # it waited the whole timeout (on the fake clock) before giving up


def test_verify_timeout_names_the_old_value_a_stale_server_still_serves(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, {"A": (300, ["192.0.2.10"])})

    with pytest.raises(VerificationFailed, match=r"A 300 192\.0\.2\.10"):
        run_step(verify(bind_server, name, NEW_CNAME, port=bind_server.port), MemoryContext(clock=FakeClock()))


def test_concurrent_change_between_read_and_update_is_refused_and_not_overwritten(
        bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, OLD)
    step = transfer(bind_server, name, NEW_CNAME)
    ctx = MemoryContext()
    key = provider_key(step.params.dns)
    from migrator.providers.dns import open_dns_provider

    ctx.resources.put(key, SomeoneChangesAfterRead(
        open_dns_provider(step.params.dns, ctx),
        lambda: bind_server.someone_sets(bind_server.zone, name, {"A": (3600, ["203.0.113.99"])})))

    with pytest.raises(RecordChanged, match="nothing was written"):
        step.apply(ctx)
    step.compensate(ctx)  # a rollback after the refusal must not touch the other administrator's record

    assert bind_server.served(bind_server.zone, name) == {"A": (3600, {"203.0.113.99"})}
    assert ctx.memo.get("phase") == "refused"


def test_transfer_refuses_when_the_record_is_not_what_the_plan_expected(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, {"A": (300, ["203.0.113.99"])})
    step = transfer(bind_server, name, NEW_CNAME, expect={"A": ["192.0.2.10"]})
    serial = bind_server.soa_serial(bind_server.zone)

    plan = plan_step(step, MemoryContext())
    with pytest.raises(PreconditionFailed, match=r"not the expected A 192\.0\.2\.10"):
        run_step(step, MemoryContext())

    assert any(change.startswith("will refuse") for change in plan.changes)
    assert bind_server.soa_serial(bind_server.zone) == serial


ROLLBACK_CASES = [
    pytest.param({"A": (3600, ["192.0.2.10"])}, NEW_CNAME, id="A-to-CNAME"),
    pytest.param({"A": (7200, ["192.0.2.10", "192.0.2.11"]), "AAAA": (1800, ["2001:db8::10"])}, NEW_CNAME,
                 id="A+AAAA-to-CNAME"),
    pytest.param({"CNAME": (900, ["old-host.example.org."])}, {"A": ["198.51.100.20"]}, id="CNAME-to-A"),
    pytest.param({}, NEW_CNAME, id="nothing-to-CNAME"),
]


@pytest.mark.parametrize(("before", "to"), ROLLBACK_CASES)
def test_rollback_restores_the_previous_record_sets_exactly(bind_server: BindServer, before: dict[str, Any],
                                                            to: dict[str, list[str]]) -> None:
    zone, name = bind_server.zone, bind_server.fresh_name()
    if before:
        bind_server.someone_sets(zone, name, before)
    original = bind_server.served(zone, name)
    lower_ctx, transfer_ctx = MemoryContext(), MemoryContext()
    steps = [transfer(bind_server, name, to)]
    contexts = [transfer_ctx]
    if before:
        steps.insert(0, lower_ttl(bind_server, name))
        contexts.insert(0, lower_ctx)

    for step, ctx in zip(steps, contexts, strict=True):
        run_step(step, ctx)
    changed = bind_server.served(zone, name)
    for step, ctx in reversed(list(zip(steps, contexts, strict=True))):
        step.compensate(ctx)

    assert changed != original
    assert bind_server.served(zone, name) == original


def test_rollback_refuses_to_overwrite_a_change_made_after_the_transfer(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, OLD)
    step, ctx = transfer(bind_server, name, NEW_CNAME), MemoryContext()
    run_step(step, ctx)
    bind_server.someone_sets(bind_server.zone, name, {"A": (60, ["203.0.113.99"])})

    with pytest.raises(CompensationError, match="someone else changed it"):
        step.compensate(ctx)

    assert bind_server.served(bind_server.zone, name) == {"A": (60, {"203.0.113.99"})}


def test_transfer_resumed_after_a_crash_before_the_update_uses_the_saved_record(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, OLD)
    memo = MemoryMemo()
    step = transfer(bind_server, name, NEW_CNAME)
    first = MemoryContext(memo=memo)

    class CrashBeforeUpdate(SomeoneChangesAfterRead):
        def replace(self, name: str, expected: Sequence[RecordSet], desired: Sequence[RecordSet]) -> Any:
            raise KeyboardInterrupt  # the process dies between saving the memo and the update

    from migrator.providers.dns import open_dns_provider

    first.resources.put(provider_key(step.params.dns), CrashBeforeUpdate(open_dns_provider(step.params.dns, first),
                                                                         None))
    with pytest.raises(KeyboardInterrupt):
        step.apply(first)
    saved = memo.get("previous")

    state, _ = run_step(step, MemoryContext(memo=memo))
    after_transfer = bind_server.served(bind_server.zone, name)
    step.compensate(MemoryContext(memo=memo))

    assert saved == [{"type": "A", "ttl": 3600, "values": ["192.0.2.10"], "version": None}]
    assert not state.done
    assert after_transfer == {"CNAME": (3600, {"tenant-contoso.cloud.example.net."})}
    assert bind_server.served(bind_server.zone, name) == {"A": (3600, {"192.0.2.10"})}


def test_lower_ttl_twice_writes_once_and_reports_when_caches_let_go(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, OLD)
    clock = FakeClock()

    first, outputs = run_step(lower_ttl(bind_server, name, 120), MemoryContext(clock=clock))
    serial = bind_server.soa_serial(bind_server.zone)
    second, _ = run_step(lower_ttl(bind_server, name, 120), MemoryContext(clock=clock))

    assert (first.done, second.done) == (False, True)
    assert bind_server.soa_serial(bind_server.zone) == serial
    assert outputs["previous_ttl"] == 3600
    assert outputs["caches_expire_at"] == "2026-01-01T01:00:00+00:00"
    assert bind_server.served(bind_server.zone, name) == {"A": (120, {"192.0.2.10"})}


def test_lower_ttl_fails_before_changing_anything_when_the_name_has_no_record(bind_server: BindServer) -> None:
    with pytest.raises(PreconditionFailed, match="no A, AAAA or CNAME record"):
        run_step(lower_ttl(bind_server, bind_server.fresh_name()), MemoryContext())


TSIG_FAULTS = [
    pytest.param({"tsig_key_name": "someone-else."}, "TSIG", id="unknown-key-name"),
    pytest.param({"tsig_secret": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}, "TSIG", id="wrong-secret"),
    pytest.param({"tsig_key_name": None}, "REFUSED", id="unsigned"),
]


@pytest.mark.parametrize(("override", "says"), TSIG_FAULTS)
def test_update_with_a_bad_or_missing_tsig_key_fails_fast_and_writes_nothing(
        bind_server: BindServer, override: dict[str, Any], says: str) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, OLD)
    step = DnsTransfer("transfer", DnsTransfer.Params.model_validate(
        {"dns": bind_server.endpoint(**override), "name": name, "to": NEW_CNAME}))

    with pytest.raises(PermanentError, match=says) as failure:
        run_step(step, MemoryContext())

    assert not failure.value.retryable
    assert bind_server.served(bind_server.zone, name) == {"A": (3600, {"192.0.2.10"})}


def test_the_tsig_secret_never_reaches_outputs_memo_or_events(bind_server: BindServer) -> None:
    name = bind_server.fresh_name()
    bind_server.someone_sets(bind_server.zone, name, OLD)
    ctx = MemoryContext()

    _, outputs = run_step(transfer(bind_server, name, NEW_CNAME), ctx)

    everything = repr((outputs, ctx.memo.as_dict(), ctx.events, ctx.resources.names()))
    assert bind_server.key_secret not in everything
    assert "${env:" in repr(ctx.resources.names())  # the provider is keyed by the reference, not the value
