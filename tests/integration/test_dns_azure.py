"""DNS steps against Azure DNS: the real azure-mgmt-dns client talking HTTPS to the ARM emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.dns import DnsManagementClient
from azure.mgmt.dns.models import AaaaRecord, ARecord, CnameRecord, Zone
from azure.mgmt.dns.models import RecordSet as AzureRecordSet

from migrator.errors import CompensationError, PermanentError, PreconditionFailed
from migrator.providers.dns import RecordChanged, RecordSet, open_dns_provider
from migrator.steps.dns import DnsLowerTtl, DnsTransfer, provider_key
from migrator.testing import MemoryContext, run_step
from tests.armemu.core import ArmEmulator

pytestmark = pytest.mark.integration

ZONE = "contoso-workspace.com"
RG = "rg-dns"
NEW_CNAME = {"CNAME": ["tenant-contoso.cloud.example.net"]}


@pytest.fixture
def someone(arm: ArmEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[DnsManagementClient]:
    """Another administrator's client, and the zone they own; they write without preconditions."""
    monkeypatch.setenv("ARM_TEST_TOKEN", arm.credential.token)
    client = DnsManagementClient(arm.credential, arm.subscription_id, **arm.client_kwargs())
    client.zones.create_or_update(RG, ZONE, Zone(location="global"))
    yield client
    client.close()


def endpoint(arm: ArmEmulator) -> dict[str, Any]:
    return {"provider": "azure", "zone": ZONE, "resource_group": RG,
            "arm": {"subscription_id": arm.subscription_id, "resource_group": "rg-tenant",
                    "endpoint": arm.base_url, "ca_file": arm.ca_file,
                    "credential": {"type": "access_token", "token": "${env:ARM_TEST_TOKEN}"},
                    "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}}


def set_records(client: DnsManagementClient, name: str, records: dict[str, tuple[int, list[str]]]) -> None:
    for rtype in ("A", "AAAA", "CNAME"):
        if rtype not in records:
            client.record_sets.delete(RG, ZONE, name, rtype)
    for rtype, (ttl, values) in records.items():
        if rtype == "A":
            body = AzureRecordSet(ttl=ttl, a_records=[ARecord(ipv4_address=v) for v in values])
        elif rtype == "AAAA":
            body = AzureRecordSet(ttl=ttl, aaaa_records=[AaaaRecord(ipv6_address=v) for v in values])
        else:
            body = AzureRecordSet(ttl=ttl, cname_record=CnameRecord(cname=values[0]))
        client.record_sets.create_or_update(RG, ZONE, name, rtype, body)


def records_of(client: DnsManagementClient, name: str) -> dict[str, tuple[int, set[str]]]:
    found = {}
    for rtype in ("A", "AAAA", "CNAME"):
        try:
            rs = client.record_sets.get(RG, ZONE, name, rtype)
        except ResourceNotFoundError:
            continue
        values = ({r.ipv4_address for r in rs.a_records or ()} | {r.ipv6_address for r in rs.aaaa_records or ()}
                  | ({rs.cname_record.cname} if rs.cname_record else set()))
        found[rtype] = (rs.ttl, values)
    return found


def transfer(arm: ArmEmulator, name: str, to: dict[str, list[str]], **extra: Any) -> DnsTransfer:
    return DnsTransfer("transfer", DnsTransfer.Params.model_validate(
        {"dns": endpoint(arm), "name": name, "to": to, **extra}))


def lower_ttl(arm: ArmEmulator, name: str, ttl: int = 60) -> DnsLowerTtl:
    return DnsLowerTtl("lower-ttl", DnsLowerTtl.Params.model_validate(
        {"dns": endpoint(arm), "name": name, "ttl": ttl}))


ROLLBACK_CASES = [
    pytest.param({"A": (3600, ["192.0.2.10"])}, NEW_CNAME, id="A-to-CNAME"),
    pytest.param({"A": (7200, ["192.0.2.10", "192.0.2.11"]), "AAAA": (1800, ["2001:db8::10"])}, NEW_CNAME,
                 id="A+AAAA-to-CNAME"),
    pytest.param({"CNAME": (900, ["old-host.example.org"])}, {"A": ["198.51.100.20"]}, id="CNAME-to-A"),
]


@pytest.mark.parametrize(("before", "to"), ROLLBACK_CASES)
def test_transfer_then_rollback_restores_the_azure_record_sets_exactly(
        arm: ArmEmulator, someone: DnsManagementClient, before: dict[str, Any], to: dict[str, list[str]]) -> None:
    set_records(someone, "portal", before)
    original = records_of(someone, "portal")
    steps = [lower_ttl(arm, "portal"), transfer(arm, "portal", to)]
    contexts = [MemoryContext(), MemoryContext()]

    for step, ctx in zip(steps, contexts, strict=True):
        run_step(step, ctx)
    changed = records_of(someone, "portal")
    for step, ctx in reversed(list(zip(steps, contexts, strict=True))):
        step.compensate(ctx)

    expected_type = next(iter(to))
    assert set(changed) == {expected_type}
    assert changed[expected_type][0] == 60
    assert records_of(someone, "portal") == original


def test_transfer_sends_if_match_with_the_etag_saved_before_the_change(
        arm: ArmEmulator, someone: DnsManagementClient) -> None:
    set_records(someone, "portal", {"A": (300, ["192.0.2.10"])})
    etag = someone.record_sets.get(RG, ZONE, "portal", "A").etag
    ctx = MemoryContext()

    run_step(transfer(arm, "portal", NEW_CNAME), ctx)

    assert ctx.memo.get("previous") == [{"type": "A", "ttl": 300, "values": ["192.0.2.10"], "version": etag}]
    deletes = arm.log.matching("DELETE", r"/A/portal$")
    puts = arm.log.matching("PUT", r"/CNAME/portal$")
    assert [d.status for d in deletes[-1:]] == [200]
    assert [p.status for p in puts[-1:]] == [201]


def test_a_change_by_someone_else_after_the_read_is_detected_and_nothing_is_written(
        arm: ArmEmulator, someone: DnsManagementClient) -> None:
    set_records(someone, "portal", {"A": (300, ["192.0.2.10"])})
    step, ctx = transfer(arm, "portal", NEW_CNAME), MemoryContext()
    real = open_dns_provider(step.params.dns, ctx)

    class SomeoneChangesAfterRead:
        zone = real.zone
        changed = False
        writes_after_change = -1

        def read(self, name: str) -> Any:
            records = real.read(name)
            if not self.changed:
                self.changed = True
                set_records(someone, "portal", {"A": (300, ["203.0.113.99"])})
                self.writes_after_change = len(arm.log.writes())
            return records

        def __getattr__(self, attr: str) -> Any:
            return getattr(real, attr)

    wrapper = SomeoneChangesAfterRead()
    ctx.resources.put(provider_key(step.params.dns), wrapper)

    with pytest.raises(RecordChanged, match="changed since it was read"):
        step.apply(ctx)
    step.compensate(ctx)

    assert records_of(someone, "portal") == {"A": (300, {"203.0.113.99"})}
    assert len(arm.log.writes()) == wrapper.writes_after_change  # not one write of ours reached Azure


def test_azure_answers_412_to_a_stale_etag_and_it_becomes_record_changed(
        arm: ArmEmulator, someone: DnsManagementClient) -> None:
    set_records(someone, "portal", {"A": (300, ["192.0.2.10"])})
    provider = open_dns_provider(DnsTransfer.Params.model_validate(
        {"dns": endpoint(arm), "name": "portal", "to": NEW_CNAME}).dns, MemoryContext())
    seen = provider.read("portal")
    # Same values, new etag: only the precondition can tell that the record set was rewritten meanwhile.
    set_records(someone, "portal", {"A": (300, ["192.0.2.10"])})
    stale_view = iter([seen])
    real_read = provider.read
    provider.read = lambda name: next(stale_view, None) or real_read(name)  # type: ignore[method-assign]

    with pytest.raises(RecordChanged) as refused:
        provider.replace("portal", seen, (RecordSet.of("CNAME", 60, NEW_CNAME["CNAME"]),))

    assert arm.log.matching("DELETE", r"/A/portal$")[-1].status == 412
    assert not refused.value.partial
    assert records_of(someone, "portal") == {"A": (300, {"192.0.2.10"})}


def test_rollback_refuses_to_overwrite_a_change_made_after_the_transfer(
        arm: ArmEmulator, someone: DnsManagementClient) -> None:
    set_records(someone, "portal", {"A": (300, ["192.0.2.10"])})
    step, ctx = transfer(arm, "portal", NEW_CNAME), MemoryContext()
    run_step(step, ctx)
    someone.record_sets.create_or_update(RG, ZONE, "portal", "CNAME",
                                         AzureRecordSet(ttl=300, cname_record=CnameRecord(cname="elsewhere.example")))

    with pytest.raises(CompensationError, match="someone else changed it"):
        step.compensate(ctx)

    assert records_of(someone, "portal") == {"CNAME": (300, {"elsewhere.example"})}


def test_transfer_refuses_when_the_record_is_not_what_the_plan_expected(
        arm: ArmEmulator, someone: DnsManagementClient) -> None:
    set_records(someone, "portal", {"A": (300, ["203.0.113.99"])})
    writes_before = len(arm.log.writes())

    with pytest.raises(PreconditionFailed):
        run_step(transfer(arm, "portal", NEW_CNAME, expect={"A": ["192.0.2.10"]}), MemoryContext())

    assert len(arm.log.writes()) == writes_before


def test_throttling_is_ridden_out_by_the_client_and_the_transfer_completes(
        arm: ArmEmulator, someone: DnsManagementClient) -> None:
    set_records(someone, "portal", {"A": (300, ["192.0.2.10"])})
    arm.faults.add("PUT", r"/CNAME/portal$", status=429, retry_after=0, times=2)
    arm.faults.add("DELETE", r"/A/portal$", status=503, times=1)

    _, outputs = run_step(transfer(arm, "portal", NEW_CNAME), MemoryContext())

    assert outputs["records"] == {"CNAME": ["tenant-contoso.cloud.example.net."]}
    assert arm.log.count("PUT", r"/CNAME/portal$") == 3
    assert arm.faults.pending() == 0


FAIL_FAST = [
    pytest.param(403, "AuthorizationFailed", "lacks permission", id="forbidden"),
    pytest.param(401, "AuthenticationFailed", "credential was refused", id="unauthenticated"),
]


@pytest.mark.parametrize(("status", "code", "says"), FAIL_FAST)
def test_permanent_errors_fail_fast_with_what_to_do(arm: ArmEmulator, someone: DnsManagementClient, status: int,
                                                    code: str, says: str) -> None:
    set_records(someone, "portal", {"A": (300, ["192.0.2.10"])})
    arm.faults.add("DELETE", r"/A/portal$", status=status, code=code, times=1)

    with pytest.raises(PermanentError) as failure:
        run_step(transfer(arm, "portal", NEW_CNAME), MemoryContext())

    assert says in failure.value.one_line()
    assert not failure.value.retryable
    assert arm.log.count("DELETE", r"/A/portal$") == 1  # no retry of a permanent error
    assert records_of(someone, "portal") == {"A": (300, {"192.0.2.10"})}


def test_a_missing_zone_is_reported_as_such(arm: ArmEmulator, someone: DnsManagementClient) -> None:
    step = DnsTransfer("transfer", DnsTransfer.Params.model_validate(
        {"dns": {**endpoint(arm), "zone": "nowhere.example"}, "name": "portal", "to": NEW_CNAME}))

    with pytest.raises(PermanentError, match="the zone does not exist"):
        run_step(step, MemoryContext())


def test_name_servers_come_from_the_zone_resource(arm: ArmEmulator, someone: DnsManagementClient) -> None:
    provider = open_dns_provider(DnsTransfer.Params.model_validate(
        {"dns": endpoint(arm), "name": "portal", "to": NEW_CNAME}).dns, MemoryContext())

    hosts = [ns.host for ns in provider.name_servers()]

    assert hosts == ["ns1-01.azure-dns.com", "ns2-01.azure-dns.net", "ns3-01.azure-dns.org", "ns4-01.azure-dns.info"]
