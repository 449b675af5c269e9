"""Microsoft.Network DNS zones and record sets for the ARM emulator (api-version 2018-05-01, azure-mgmt-dns 9).

Paths, bodies and status codes follow the published ``dns.json`` of 2018-05-01:

* ``.../providers/Microsoft.Network/dnsZones/{zoneName}``: GET (200, 404), PUT (201 created, 200 replaced:
  synchronous in this version; creates the apex SOA and NS record sets as Azure does), DELETE (200, 204).
* ``.../dnsZones/{zoneName}/{recordType}/{relativeRecordSetName}``: GET (200, 404), PUT (201/200), DELETE
  (200 deleted, 204 absent). PUT honours ``If-Match`` (the etag last seen) and ``If-None-Match: *`` (create only)
  with 412 ``PreconditionFailed``; DELETE honours ``If-Match``.
* Record set bodies: ``{"id", "name", "type": "Microsoft.Network/dnszones/A", "etag", "properties": {"TTL",
  "fqdn", "provisioningState", "metadata", "ARecords" | "AAAARecords" | "CNAMERecord" | ...}}``.
* A CNAME cannot share its name with another record set: 409 ``Conflict``, with the messages Azure DNS gives.
* ``.../dnsZones/{zoneName}/recordsets``: GET, every record set of the zone (``{"value": [...]}``).

Test knob: ``emu.dns.name_servers``, the ``nameServers`` a new zone gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.armemu.core import ArmEmulator, ArmError, ArmRequest, ArmResponse

ZONE = ("/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Network/dnsZones/"
        "{zoneName}")
RECORD_SETS = ZONE + "/recordsets"
RECORD_SET = ZONE + "/{recordType}/{relativeRecordSetName}"

RECORD_TYPES = ("A", "AAAA", "CAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT")
#: The property that holds a record type's records in a record set's ``properties``.
RECORDS_PROPERTY = {"A": "ARecords", "AAAA": "AAAARecords", "CAA": "caaRecords", "CNAME": "CNAMERecord",
                    "MX": "MXRecords", "NS": "NSRecords", "PTR": "PTRRecords", "SOA": "SOARecord",
                    "SRV": "SRVRecords", "TXT": "TXTRecords"}
DEFAULT_NAME_SERVERS = ("ns1-01.azure-dns.com.", "ns2-01.azure-dns.net.", "ns3-01.azure-dns.org.",
                        "ns4-01.azure-dns.info.")


@dataclass
class DnsState:
    name_servers: list[str] = field(default_factory=lambda: list(DEFAULT_NAME_SERVERS))


def _zone_id(req: ArmRequest) -> str:
    p = req.params
    return (f"/subscriptions/{p['subscriptionId']}/resourceGroups/{p['resourceGroupName']}"
            f"/providers/Microsoft.Network/dnsZones/{p['zoneName'].lower()}")


def _record_type(req: ArmRequest) -> str:
    rtype = req.params["recordType"].upper()
    if rtype not in RECORD_TYPES:
        raise ArmError(400, "BadRequest", f"The record type '{req.params['recordType']}' is not supported.")
    return rtype


def _record_id(req: ArmRequest) -> tuple[str, str, str]:
    rtype, name = _record_type(req), req.params["relativeRecordSetName"]
    return f"{_zone_id(req)}/{rtype}/{name.lower()}", rtype, name


def _require_zone(req: ArmRequest) -> dict[str, Any]:
    zone = req.emulator.store.get(_zone_id(req))
    if zone is None:
        raise ArmError(404, "ParentResourceNotFound",
                       f"Can not perform requested operation on nested resource. Parent resource "
                       f"'{req.params['zoneName']}' not found.")
    return zone


def _fqdn(name: str, zone: str) -> str:
    return f"{zone}." if name == "@" else f"{name}.{zone}."


def _record_set_body(zone_id: str, zone: str, rtype: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {"metadata": properties.get("metadata") or None, "TTL": properties["TTL"],
                             "fqdn": _fqdn(name, zone), "provisioningState": "Succeeded",
                             "targetResource": properties.get("targetResource") or {}}
    key = RECORDS_PROPERTY[rtype]
    if key in properties:
        props[key] = properties[key]
    return {"id": f"{zone_id}/{rtype}/{name}", "name": name, "type": f"Microsoft.Network/dnszones/{rtype}",
            "properties": props}


# ---- zones -------------------------------------------------------------------------------------------------

def get_zone(req: ArmRequest) -> ArmResponse:
    zone = req.emulator.store.get(_zone_id(req))
    if zone is None:
        raise ArmError(404, "ResourceNotFound",
                       f"The Resource 'Microsoft.Network/dnszones/{req.params['zoneName']}' under resource group "
                       f"'{req.params['resourceGroupName']}' was not found.")
    zone["properties"]["numberOfRecordSets"] = sum(len(req.emulator.store.children(f"{_zone_id(req)}/{t}"))
                                                   for t in RECORD_TYPES)
    return ArmResponse(200, zone)


def put_zone(req: ArmRequest) -> ArmResponse:
    store, zone_id, name = req.emulator.store, _zone_id(req), req.params["zoneName"].lower()
    current = store.get(zone_id)
    req.emulator.check_preconditions(req, current)
    body = req.body or {}
    state: DnsState = req.emulator.dns  # type: ignore[attr-defined]
    zone = store.put(zone_id, {
        "id": zone_id, "name": name, "type": "Microsoft.Network/dnszones",
        "location": body.get("location", "global"), "tags": body.get("tags") or {},
        "properties": {"maxNumberOfRecordSets": 10000, "numberOfRecordSets": 2,
                       "nameServers": list(state.name_servers), "zoneType": "Public"}})
    if current is None:  # Azure gives a new zone its apex SOA and NS record sets
        store.put(f"{zone_id}/ns/@", _record_set_body(zone_id, name, "NS", "@", {
            "TTL": 172800, "NSRecords": [{"nsdname": ns} for ns in state.name_servers]}))
        store.put(f"{zone_id}/soa/@", _record_set_body(zone_id, name, "SOA", "@", {
            "TTL": 3600, "SOARecord": {"host": state.name_servers[0], "email": "azuredns-hostmaster.microsoft.com",
                                       "serialNumber": 1, "refreshTime": 3600, "retryTime": 300,
                                       "expireTime": 2419200, "minimumTTL": 300}}))
    return ArmResponse(201 if current is None else 200, zone)


def delete_zone(req: ArmRequest) -> ArmResponse:
    store, zone_id = req.emulator.store, _zone_id(req)
    current = store.get(zone_id)
    req.emulator.check_preconditions(req, current)
    if current is None:
        return ArmResponse(204, None)
    for rtype in RECORD_TYPES:
        for child in store.children(f"{zone_id}/{rtype}"):
            store.delete(f"{zone_id}/{rtype}/{child['name']}")
    store.delete(zone_id)
    return ArmResponse(200, None)


# ---- record sets -------------------------------------------------------------------------------------------

def get_record_set(req: ArmRequest) -> ArmResponse:
    _require_zone(req)
    rid, _rtype, name = _record_id(req)
    current = req.emulator.store.get(rid)
    if current is None:
        raise ArmError(404, "NotFound", f"The resource record '{name}' does not exist in resource group "
                       f"'{req.params['resourceGroupName']}' of subscription '{req.params['subscriptionId']}'.")
    return ArmResponse(200, current)


def put_record_set(req: ArmRequest) -> ArmResponse:
    zone = _require_zone(req)
    rid, rtype, name = _record_id(req)
    store, zone_id = req.emulator.store, _zone_id(req)
    current = store.get(rid)
    req.emulator.check_preconditions(req, current)
    properties = (req.body or {}).get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("TTL"), int):
        raise ArmError(400, "BadRequest", "The record set must have properties with a TTL.")
    for other in RECORD_TYPES:
        if other != rtype and store.get(f"{zone_id}/{other}/{name.lower()}") is not None:
            if rtype == "CNAME":
                raise ArmError(409, "Conflict", "The CNAME record could not be created because another record "
                                                "with the same name already exists in this zone.")
            if other == "CNAME":
                raise ArmError(409, "Conflict", f"The {rtype} record could not be created because a CNAME record "
                                                "with the same name already exists in this zone.")
    if rtype == "CNAME" and not (properties.get("CNAMERecord") or {}).get("cname"):
        raise ArmError(400, "BadRequest", "The CNAME record set must have a CNAMERecord with a cname.")
    stored = store.put(rid, _record_set_body(zone_id, zone["name"], rtype, name, properties))
    return ArmResponse(201 if current is None else 200, stored)


def delete_record_set(req: ArmRequest) -> ArmResponse:
    _require_zone(req)
    rid, rtype, name = _record_id(req)
    if rtype in ("SOA",) or (rtype == "NS" and name == "@"):
        raise ArmError(400, "BadRequest", f"The {rtype} record set at the zone apex cannot be deleted.")
    current = req.emulator.store.get(rid)
    req.emulator.check_preconditions(req, current)
    if current is None:
        return ArmResponse(204, None)
    req.emulator.store.delete(rid)
    return ArmResponse(200, None)


def list_record_sets(req: ArmRequest) -> ArmResponse:
    _require_zone(req)
    zone_id = _zone_id(req)
    found = [rs for t in RECORD_TYPES for rs in req.emulator.store.children(f"{zone_id}/{t}")]
    return ArmResponse(200, {"value": found})


def register(emu: ArmEmulator) -> None:
    emu.dns = DnsState()  # type: ignore[attr-defined]
    emu.route("GET", ZONE, get_zone)
    emu.route("PUT", ZONE, put_zone)
    emu.route("DELETE", ZONE, delete_zone)
    emu.route("GET", RECORD_SETS, list_record_sets)
    emu.route("GET", RECORD_SET, get_record_set)
    emu.route("PUT", RECORD_SET, put_record_set)
    emu.route("DELETE", RECORD_SET, delete_record_set)
