"""Azure DNS through azure-mgmt-dns: record sets changed with ``If-Match`` on the etag that was read.

Azure DNS changes one record set per request, so a replacement is a short sequence: deletions first (a CNAME
cannot be created beside an A, nor an A beside a CNAME), then creations and updates. Each request carries the
precondition for its own record set: ``If-Match: <etag read before the change>`` for one that existed, and
``If-None-Match: *`` for one that did not. A change made by someone else in between answers 412 (or 409 for a
conflicting CNAME), which becomes :class:`~migrator.providers.dns.RecordChanged`. If that happens after an
earlier request of the same sequence went through, the error says so (``partial``): the name then needs a look.

azure-mgmt-dns raises a plain ``HttpResponseError`` for 412 unless told otherwise, hence
``error_map={412: ResourceModifiedError}`` on every conditional request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from migrator.errors import PermanentError
from migrator.providers.azure.credentials import make_credential
from migrator.providers.azure.errors import translate
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
    same_records,
)

_CONDITIONAL = {412: ResourceModifiedError, 409: ResourceExistsError}
_AZURE_ERRORS = (HttpResponseError, ServiceRequestError, ServiceResponseError)


def _to_azure(rs: RecordSet) -> Any:
    from azure.mgmt.dns.models import AaaaRecord, ARecord, CnameRecord
    from azure.mgmt.dns.models import RecordSet as AzureRecordSet

    if rs.type == "A":
        return AzureRecordSet(ttl=rs.ttl, a_records=[ARecord(ipv4_address=v) for v in rs.values])
    if rs.type == "AAAA":
        return AzureRecordSet(ttl=rs.ttl, aaaa_records=[AaaaRecord(ipv6_address=v) for v in rs.values])
    return AzureRecordSet(ttl=rs.ttl, cname_record=CnameRecord(cname=rs.values[0].rstrip(".")))


def _from_azure(rtype: str, found: Any, where: str) -> RecordSet:
    if getattr(found, "target_resource", None) is not None and getattr(found.target_resource, "id", None):
        raise PermanentError(f"{where}: the {rtype} record set is an alias of an Azure resource",
                             hint="alias record sets are not switched by migrator: change it in the portal")
    if rtype == "A":
        values = [r.ipv4_address for r in found.a_records or ()]
    elif rtype == "AAAA":
        values = [r.ipv6_address for r in found.aaaa_records or ()]
    else:
        values = [found.cname_record.cname] if found.cname_record and found.cname_record.cname else []
    if not values:
        raise PermanentError(f"{where}: the {rtype} record set exists but holds no records",
                             hint="delete the empty record set in the portal, then run again")
    return RecordSet.of(rtype, found.ttl, values, version=found.etag)


class AzureDnsProvider(DnsProvider):
    """An Azure DNS zone through Azure Resource Manager."""

    def __init__(self, endpoint: Any, ctx: Any) -> None:
        self.endpoint = endpoint
        self.zone = endpoint.zone
        self.resource_group = endpoint.resource_group or endpoint.arm.resource_group
        self._ctx = ctx
        self._client: Any = None

    def describe(self) -> str:
        return f"azure dns zone {self.zone} (resource group {self.resource_group})"

    def _dns(self) -> Any:
        if self._client is None:
            from azure.mgmt.dns import DnsManagementClient

            arm = self.endpoint.arm
            self._client = DnsManagementClient(make_credential(arm.credential, self._ctx), arm.subscription_id,
                                               **arm.client_kwargs())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _get(self, name: str, rtype: str) -> RecordSet | None:
        where = f"{self.describe()}: {name}"
        try:
            found = self._dns().record_sets.get(self.resource_group, self.zone, name, rtype)
        except ResourceNotFoundError as exc:
            if "ParentResourceNotFound" in str(exc) or getattr(getattr(exc, "error", None), "code", "") == \
                    "ParentResourceNotFound":
                raise PermanentError(f"{self.describe()}: the zone does not exist",
                                     hint="check dns.zone, the subscription and the resource group") from exc
            return None
        except _AZURE_ERRORS as exc:
            raise translate(exc, f"reading {rtype} {name} in {self.describe()}") from exc
        return _from_azure(rtype, found, where)

    def read(self, name: str) -> NameRecords:
        relative = relative_name(name, self.zone)
        return name_records(rs for rs in (self._get(relative, t) for t in ADDRESS_TYPES) if rs is not None)

    def replace(self, name: str, expected: Sequence[RecordSet], desired: Sequence[RecordSet]) -> NameRecords:
        relative = relative_name(name, self.zone)
        expected_by_type = {rs.type: rs for rs in name_records(expected)}
        desired_by_type = {rs.type: rs for rs in name_records(desired)}
        current = self.read(relative)
        versions = {rs.type: rs.version for rs in current}
        if not same_records(current, tuple(expected_by_type.values())) or any(
                old.version and versions.get(rtype) != old.version for rtype, old in expected_by_type.items()):
            raise RecordChanged(self._changed_message(relative, tuple(expected_by_type.values()), current),
                                current=current)
        changed = [t for t in ADDRESS_TYPES if expected_by_type.get(t) != desired_by_type.get(t)]
        done: list[str] = []
        result = {t: rs for t, rs in ((rs.type, rs) for rs in current) if t not in changed}
        operations = self._dns().record_sets
        try:
            for rtype in changed:  # deletions first: a CNAME cannot be created beside an A, nor the reverse
                if rtype in expected_by_type and rtype not in desired_by_type:
                    operations.delete(self.resource_group, self.zone, relative, rtype,
                                      if_match=expected_by_type[rtype].version or versions[rtype],
                                      error_map=_CONDITIONAL)
                    done.append(f"deleted {rtype}")
            for rtype in changed:
                if rtype in desired_by_type:
                    if rtype in expected_by_type:
                        condition = {"if_match": expected_by_type[rtype].version or versions[rtype]}
                    else:
                        condition = {"if_none_match": "*"}
                    written = operations.create_or_update(self.resource_group, self.zone, relative, rtype,
                                                          _to_azure(desired_by_type[rtype]),
                                                          error_map=_CONDITIONAL, **condition)
                    result[rtype] = _from_azure(rtype, written, f"{self.describe()}: {relative}")
                    done.append(f"wrote {rtype}")
        except (ResourceModifiedError, ResourceExistsError) as exc:
            now = self.read(relative)
            message = self._changed_message(relative, tuple(expected_by_type.values()), now)
            if done:
                message += f" (this change was partly made: {', '.join(done)})"
            error = RecordChanged(message, current=now, partial=bool(done))
            raise error from exc
        except _AZURE_ERRORS as exc:
            raise translate(exc, f"changing {relative} in {self.describe()}") from exc
        return name_records(result.values())

    def _changed_message(self, name: str, expected: NameRecords, current: NameRecords) -> str:
        return (f"{self.describe()}: {name} changed since it was read: expected {describe_records(expected)}, "
                f"found {describe_records(current)}; Azure refused the conditional request, nothing of ours "
                "was overwritten")

    def name_servers(self) -> list[NameServer]:
        try:
            zone = self._dns().zones.get(self.resource_group, self.zone)
        except _AZURE_ERRORS as exc:
            raise translate(exc, f"reading {self.describe()}") from exc
        # Azure's name servers are public hosts: their addresses are looked up when they are queried.
        return [NameServer(host.rstrip(".").lower(), ()) for host in zone.name_servers or ()]
