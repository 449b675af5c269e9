"""Pure logic of the DNS steps: record normalization, names relative to a zone, params validation, registration."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from migrator.errors import InputError
from migrator.providers.dns import AzureDnsEndpoint, DnsEndpoint, RecordSet, Rfc2136Endpoint
from migrator.providers.dns.base import name_records, records_from_json, records_to_json, relative_name
from migrator.registry import load_registry
from migrator.steps.dns import DnsTransfer, DnsVerify, provider_key

RFC2136 = {"provider": "rfc2136", "server": "192.0.2.53", "zone": "Example.COM.",
           "tsig_key_name": "migrator.", "tsig_secret": "${env:DNS_TSIG_SECRET}"}


@pytest.mark.parametrize(("rtype", "given", "canonical"), [
    ("A", " 192.0.2.1 ", "192.0.2.1"),
    ("AAAA", "2001:0db8:0000:0000:0000:0000:0000:0010", "2001:db8::10"),
    ("CNAME", "Tenant.Cloud.Example.NET", "tenant.cloud.example.net."),
    ("CNAME", "tenant.cloud.example.net.", "tenant.cloud.example.net."),
])
def test_record_values_are_compared_in_canonical_form(rtype: str, given: str, canonical: str) -> None:
    assert RecordSet.of(rtype, 60, [given]).values == (canonical,)


@pytest.mark.parametrize(("rtype", "values", "says"), [
    ("A", ["300.1.1.1"], "not a valid A"),
    ("AAAA", ["192.0.2.1"], "not a valid AAAA"),
    ("CNAME", ["a.example.", "b.example."], "exactly one target"),
    ("MX", ["10 mail.example."], "not supported"),
    ("A", [], "at least one value"),
])
def test_bad_record_values_are_refused(rtype: str, values: list[str], says: str) -> None:
    with pytest.raises(InputError, match=says):
        RecordSet.of(rtype, 60, values)


def test_record_sets_equal_by_content_not_by_version() -> None:
    assert RecordSet.of("A", 60, ["192.0.2.1"], version="etag-1") == RecordSet.of("A", 60, ["192.0.2.1"], "etag-2")
    assert RecordSet.of("A", 60, ["192.0.2.1"]) != RecordSet.of("A", 61, ["192.0.2.1"])


def test_saved_record_sets_round_trip_through_json_with_their_version() -> None:
    records = name_records([RecordSet.of("AAAA", 300, ["2001:db8::1"], "e2"),
                            RecordSet.of("A", 300, ["192.0.2.2", "192.0.2.1"], "e1")])

    restored = records_from_json(records_to_json(records))

    assert restored == records
    assert [rs.version for rs in restored] == ["e1", "e2"]


def test_a_cname_beside_an_address_record_is_refused() -> None:
    with pytest.raises(InputError, match="CNAME cannot share"):
        name_records([RecordSet.of("CNAME", 60, ["x.example."]), RecordSet.of("A", 60, ["192.0.2.1"])])


@pytest.mark.parametrize(("name", "relative"), [
    ("portal", "portal"),
    ("@", "@"),
    ("example.com.", "@"),
    ("Portal.Example.COM.", "portal"),
    ("a.b.example.com.", "a.b"),
])
def test_names_are_made_relative_to_the_zone(name: str, relative: str) -> None:
    assert relative_name(name, "example.com") == relative


def test_an_absolute_name_outside_the_zone_is_refused() -> None:
    with pytest.raises(InputError, match="not inside zone"):
        relative_name("portal.example.org.", "example.com")


def test_the_endpoint_provider_key_selects_the_model_and_the_zone_is_normalized() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(DnsEndpoint)
    rfc = adapter.validate_python(RFC2136)
    azure = adapter.validate_python({"provider": "azure", "zone": "contoso.com",
                                     "arm": {"subscription_id": "s", "resource_group": "rg"}})

    assert isinstance(rfc, Rfc2136Endpoint) and rfc.zone == "example.com" and rfc.port == 53
    assert isinstance(azure, AzureDnsEndpoint) and azure.arm.endpoint == "https://management.azure.com"


def test_the_tsig_secret_stays_a_reference_in_the_params_and_the_provider_key() -> None:
    step = DnsTransfer("t", DnsTransfer.Params.model_validate(
        {"dns": RFC2136, "name": "portal", "to": {"CNAME": ["x.example."]}}))

    assert "${env:DNS_TSIG_SECRET}" in provider_key(step.params.dns).name
    assert step.params.model_dump(mode="json")["dns"]["tsig_secret"] == "${env:DNS_TSIG_SECRET}"


@pytest.mark.parametrize(("to", "says"), [
    ({}, "at least one record type"),
    ({"CNAME": ["a.example."], "A": ["192.0.2.1"]}, "CNAME cannot share"),
    ({"A": ["not-an-address"]}, "not a valid A"),
    ({"TXT": ["hello"]}, "CNAME"),  # only address types are accepted
])
def test_transfer_targets_are_validated_when_the_playbook_loads(to: dict[str, list[str]], says: str) -> None:
    with pytest.raises(PydanticValidationError, match=says):
        DnsTransfer.Params.model_validate({"dns": RFC2136, "name": "portal", "to": to})


def test_unknown_params_are_rejected() -> None:
    with pytest.raises(PydanticValidationError, match="extra"):
        DnsVerify.Params.model_validate({"dns": RFC2136, "name": "portal", "expect": {"A": ["192.0.2.1"]},
                                         "nameservers": ["192.0.2.53"]})


def test_the_three_kinds_are_registered_by_name() -> None:
    registry = load_registry(third_party=False)

    assert {"dns.lower_ttl", "dns.transfer", "dns.verify"} <= set(registry.names())
    assert registry.get("dns.transfer") is DnsTransfer
