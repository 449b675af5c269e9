"""Microsoft.Sql for the ARM emulator: servers, firewall rules, databases, BACPAC import and export.

Paths, bodies and status codes follow the published Microsoft.Sql stable 2025-01-01 specification (what
azure-mgmt-sql 4.x sends): servers and databases PUT/DELETE are long-running (202 with ``Azure-AsyncOperation``
and ``Location``); firewall rules are synchronous (201 created, 200 replaced); ``servers/{s}/import``
(ImportNewDatabase) and ``databases/{d}/import`` / ``export`` are long-running POSTs whose ``Location`` ends in
an ``ImportExportOperationResult``.

An import really reads the BACPAC: when the operation completes, the emulator downloads ``storageUri`` with the
SAS given as ``storageKey`` (from Azurite, on loopback), so an expired or wrong SAS fails the operation as it would
in Azure. What it read is kept in ``emu.sql.imports`` for tests to assert on.

Test knobs on ``emu.sql`` (a :class:`SqlState`): ``taken_server_names`` (server names owned by someone else:
creating one ends the operation Failed with ``NameAlreadyExists``, as Azure does), ``imports``.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.armemu.core import ArmEmulator, ArmError, ArmRequest, ArmResponse

SERVER = ("/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Sql/servers/"
          "{serverName}")
SERVERS = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Sql/servers"
FIREWALL_RULE = SERVER + "/firewallRules/{firewallRuleName}"
FIREWALL_RULES = SERVER + "/firewallRules"
DATABASE = SERVER + "/databases/{databaseName}"
DATABASES = SERVER + "/databases"
SERVER_IMPORT = SERVER + "/import"
DATABASE_IMPORT = DATABASE + "/import"
DATABASE_EXPORT = DATABASE + "/export"
CHECK_NAME = "/subscriptions/{subscriptionId}/providers/Microsoft.Sql/checkNameAvailability"

DEFAULT_COLLATION = "SQL_Latin1_General_CP1_CI_AS"
DEFAULT_MAX_SIZE = 34359738368  # 32 GB, Azure's default for General Purpose
_SKU_TIERS = {"Basic": "Basic", "S": "Standard", "P": "Premium", "GP": "GeneralPurpose", "BC": "BusinessCritical",
              "HS": "Hyperscale"}


@dataclass
class SqlState:
    taken_server_names: set[str] = field(default_factory=set)
    imports: list[dict[str, Any]] = field(default_factory=list)


def _rid(req: ArmRequest, *, kind: str = "server") -> str:
    p = req.params
    rid = (f"/subscriptions/{p['subscriptionId']}/resourceGroups/{p['resourceGroupName']}"
           f"/providers/Microsoft.Sql/servers/{p['serverName']}")
    if kind == "database":
        rid += f"/databases/{p['databaseName']}"
    elif kind == "firewall":
        rid += f"/firewallRules/{p['firewallRuleName']}"
    return rid


def _not_found(req: ArmRequest, type_name: str, name: str) -> ArmError:
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{type_name}/{name}' under resource group "
                    f"'{req.params['resourceGroupName']}' was not found. "
                    "For more details please go to https://aka.ms/ARMResourceNotFoundFix")


def _require_server(req: ArmRequest) -> dict[str, Any]:
    server = req.emulator.store.get(_rid(req))
    if server is None:
        raise ArmError(404, "ParentResourceNotFound",
                       f"Can not perform requested operation on nested resource. Parent resource "
                       f"'{req.params['serverName']}' not found.")
    return server


def _body(req: ArmRequest) -> dict[str, Any]:
    if not isinstance(req.body, dict):
        raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.")
    return req.body


# ---- servers -----------------------------------------------------------------------------------------------

def get_server(req: ArmRequest) -> ArmResponse:
    server = req.emulator.store.get(_rid(req))
    if server is None:
        raise _not_found(req, "Microsoft.Sql/servers", req.params["serverName"])
    return ArmResponse(200, server)


def list_servers(req: ArmRequest) -> ArmResponse:
    p = req.params
    prefix = (f"/subscriptions/{p['subscriptionId']}/resourceGroups/{p['resourceGroupName']}"
              "/providers/Microsoft.Sql/servers")
    return ArmResponse(200, {"value": req.emulator.store.children(prefix)})


def put_server(req: ArmRequest) -> ArmResponse:
    emu = req.emulator
    rid = _rid(req)
    name = req.params["serverName"]
    current = emu.store.get(rid)
    emu.check_preconditions(req, current)
    body = _body(req)
    if not body.get("location"):
        raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
    props = body.get("properties") or {}
    if current is None and not props.get("administratorLogin") and not props.get("administrators"):
        raise ArmError(400, "InvalidParameterValue",
                       "Invalid value given for parameter Login. Specify a valid parameter value.")
    taken = name.lower() in {n.lower() for n in emu.sql.taken_server_names}

    def complete() -> None:
        if current is None and taken:
            raise ArmError(409, "NameAlreadyExists", f"The name '{name}' already exists. Choose a different name.")
        merged = dict((current or {}).get("properties") or {})
        merged.update({k: v for k, v in props.items() if k != "administratorLoginPassword"})
        merged.setdefault("version", "12.0")
        merged.update({"state": "Ready", "fullyQualifiedDomainName": f"{name.lower()}.database.windows.net"})
        merged.setdefault("publicNetworkAccess", "Enabled")
        emu.store.put(rid, {"id": rid, "name": name, "type": "Microsoft.Sql/servers", "kind": "v12.0",
                            "location": body["location"], "tags": body.get("tags") or {}, "properties": merged})

    return emu.begin_operation(req, complete, initial_status=202, async_kind="serverAzureAsyncOperation",
                               location_kind="serverOperationResults", location=body["location"])


def delete_server(req: ArmRequest) -> ArmResponse:
    emu = req.emulator
    rid = _rid(req)
    if emu.store.get(rid) is None:
        return ArmResponse(204)

    def complete() -> None:
        for child in emu.store.ids():
            if child.lower().startswith(rid.lower() + "/"):
                emu.store.delete(child)
        emu.store.delete(rid)

    return emu.begin_operation(req, complete, async_kind="serverAzureAsyncOperation",
                               location_kind="serverOperationResults")


def check_name_availability(req: ArmRequest) -> ArmResponse:
    body = _body(req)
    name = str(body.get("name", ""))
    taken = name.lower() in {n.lower() for n in req.emulator.sql.taken_server_names} or any(
        i.lower().endswith(f"/microsoft.sql/servers/{name.lower()}") for i in req.emulator.store.ids())
    answer: dict[str, Any] = {"name": name, "available": not taken}
    if taken:
        answer.update(reason="AlreadyExists", message="Specified server name is already used.")
    return ArmResponse(200, answer)


# ---- firewall rules ----------------------------------------------------------------------------------------

def get_firewall_rule(req: ArmRequest) -> ArmResponse:
    _require_server(req)
    rule = req.emulator.store.get(_rid(req, kind="firewall"))
    if rule is None:
        raise _not_found(req, "Microsoft.Sql/servers/firewallRules", req.params["firewallRuleName"])
    return ArmResponse(200, rule)


def put_firewall_rule(req: ArmRequest) -> ArmResponse:
    _require_server(req)
    rid = _rid(req, kind="firewall")
    current = req.emulator.store.get(rid)
    req.emulator.check_preconditions(req, current)
    props = _body(req).get("properties") or {}
    for key in ("startIpAddress", "endIpAddress"):
        if not props.get(key):
            raise ArmError(400, "InvalidParameterValue", f"Invalid value given for parameter {key}.")
    stored = req.emulator.store.put(rid, {
        "id": rid, "name": req.params["firewallRuleName"], "type": "Microsoft.Sql/servers/firewallRules",
        "properties": {"startIpAddress": props["startIpAddress"], "endIpAddress": props["endIpAddress"]}})
    return ArmResponse(200 if current else 201, stored)


def delete_firewall_rule(req: ArmRequest) -> ArmResponse:
    _require_server(req)
    deleted = req.emulator.store.delete(_rid(req, kind="firewall"))
    return ArmResponse(200 if deleted else 204)


def list_firewall_rules(req: ArmRequest) -> ArmResponse:
    _require_server(req)
    return ArmResponse(200, {"value": req.emulator.store.children(_rid(req) + "/firewallRules")})


# ---- databases ---------------------------------------------------------------------------------------------

def _tier(sku_name: str) -> str:
    head = sku_name.split("_")[0]
    return _SKU_TIERS.get(head, _SKU_TIERS.get(head.rstrip("0123456789"), "GeneralPurpose"))


def _database_body(req: ArmRequest, rid: str, location: str, sku: dict[str, Any] | None, props: dict[str, Any],
                   tags: dict[str, str], current: dict[str, Any] | None) -> dict[str, Any]:
    old_props = dict((current or {}).get("properties") or {})
    sku = dict(sku or (current or {}).get("sku") or {"name": "GP_Gen5_2"})
    sku.setdefault("tier", _tier(sku["name"]))
    merged = old_props
    merged.update({k: v for k, v in props.items() if k not in ("createMode", "sourceDatabaseId")})
    merged.setdefault("collation", DEFAULT_COLLATION)
    merged.setdefault("maxSizeBytes", DEFAULT_MAX_SIZE)
    merged.setdefault("databaseId", str(uuid.uuid4()))
    merged.setdefault("creationDate", "2025-01-01T00:00:00Z")
    merged.update(status="Online", currentServiceObjectiveName=sku["name"],
                  requestedServiceObjectiveName=sku["name"], currentSku=sku)
    return {"id": rid, "name": req.params["databaseName"], "type": "Microsoft.Sql/servers/databases",
            "location": location, "tags": tags, "sku": sku, "kind": "v12.0,user", "properties": merged}


def get_database(req: ArmRequest) -> ArmResponse:
    _require_server(req)
    db = req.emulator.store.get(_rid(req, kind="database"))
    if db is None:
        raise _not_found(req, "Microsoft.Sql/servers/databases", req.params["databaseName"])
    return ArmResponse(200, db)


def list_databases(req: ArmRequest) -> ArmResponse:
    _require_server(req)
    return ArmResponse(200, {"value": req.emulator.store.children(_rid(req) + "/databases")})


def put_database(req: ArmRequest) -> ArmResponse:
    emu = req.emulator
    server = _require_server(req)
    rid = _rid(req, kind="database")
    current = emu.store.get(rid)
    emu.check_preconditions(req, current)
    body = _body(req)
    location = body.get("location") or server["location"]
    props = dict(body.get("properties") or {})
    if current is not None and "collation" in props and props["collation"] != current["properties"]["collation"]:
        raise ArmError(400, "InvalidParameterValue", "The collation of an existing database cannot be changed.")

    def complete() -> None:
        emu.store.put(rid, _database_body(req, rid, location, body.get("sku"), props, body.get("tags") or {},
                                          current))

    return emu.begin_operation(req, complete, async_kind="databaseAzureAsyncOperation",
                               location_kind="databaseOperationResults", location=location)


def delete_database(req: ArmRequest) -> ArmResponse:
    emu = req.emulator
    _require_server(req)
    rid = _rid(req, kind="database")
    if emu.store.get(rid) is None:
        return ArmResponse(204)
    return emu.begin_operation(req, lambda: emu.store.delete(rid), async_kind="databaseAzureAsyncOperation",
                               location_kind="databaseOperationResults")


# ---- import / export ---------------------------------------------------------------------------------------

def _read_bacpac(storage_uri: str, key_type: str, key: str) -> bytes:
    if key_type != "SharedAccessKey":
        # A storage account key signs requests (Shared Key); the emulator only follows SAS URLs.
        raise ArmError(400, "InvalidParameterValue", f"storageKeyType {key_type} is not supported by the emulator")
    url = storage_uri + ("&" if "?" in storage_uri else "?") + key.lstrip("?")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        raise ArmError(400, "ImportExportJobError",
                       f"The ImportExport operation failed because of invalid storage credentials "
                       f"(blob storage answered {exc.code}).") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ArmError(400, "ImportExportJobError", f"Could not reach the storage account: {exc}") from exc
    if not data.startswith(b"PK"):
        raise ArmError(400, "ImportExportJobError", "The file is not a valid BACPAC (not a zip package).")
    return data


def _import_result(req: ArmRequest, database: str, storage_uri: str, request_type: str) -> dict[str, Any]:
    request_id = str(uuid.uuid4())
    return {"id": f"{_rid(req)}/importExportOperationResults/{request_id}", "name": request_id,
            "type": "Microsoft.Sql/servers/importExportOperationResults",
            "properties": {"requestId": request_id, "requestType": request_type,
                           "queuedTime": "2025-01-01T00:00:00Z", "lastModifiedTime": "2025-01-01T00:00:01Z",
                           "blobUri": storage_uri, "serverName": req.params["serverName"],
                           "databaseName": database, "status": "Completed", "errorMessage": ""}}


def _import_parameters(body: dict[str, Any]) -> tuple[str, str, str]:
    missing = [k for k in ("storageKeyType", "storageKey", "storageUri", "administratorLogin",
                           "administratorLoginPassword") if not body.get(k)]
    if missing:
        raise ArmError(400, "InvalidParameterValue", f"Missing required import parameter(s): {', '.join(missing)}")
    return body["storageUri"], body["storageKeyType"], body["storageKey"]


def server_import(req: ArmRequest) -> ArmResponse:
    """ImportNewDatabase: POST servers/{s}/import creates the database from a BACPAC."""
    emu = req.emulator
    server = _require_server(req)
    body = _body(req)
    database = body.get("databaseName")
    if not database:
        raise ArmError(400, "InvalidParameterValue", "databaseName is required.")
    storage_uri, key_type, key = _import_parameters(body)
    rid = _rid(req) + f"/databases/{database}"
    if emu.store.get(rid) is not None:
        raise ArmError(409, "DatabaseAlreadyExists", f"The database '{database}' already exists on server "
                       f"'{req.params['serverName']}'.")

    def complete() -> dict[str, Any]:
        data = _read_bacpac(storage_uri, key_type, key)
        sku = {"name": body.get("serviceObjectiveName") or "GP_Gen5_2"}
        props: dict[str, Any] = {}
        if body.get("maxSizeBytes"):
            props["maxSizeBytes"] = int(body["maxSizeBytes"])
        req.params["databaseName"] = database
        emu.store.put(rid, _database_body(req, rid, server["location"], sku, props, {}, None))
        emu.sql.imports.append({"database": database, "storage_uri": storage_uri, "bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest(), "kind": "new"})
        return _import_result(req, database, storage_uri, "ImportToNewDatabase")

    return emu.begin_operation(req, complete, async_kind="importExportAzureAsyncOperation",
                               location_kind="importExportOperationResults", location=server["location"])


def database_import(req: ArmRequest) -> ArmResponse:
    """Import into an existing, empty database: POST databases/{d}/import."""
    emu = req.emulator
    _require_server(req)
    rid = _rid(req, kind="database")
    if emu.store.get(rid) is None:
        raise _not_found(req, "Microsoft.Sql/servers/databases", req.params["databaseName"])
    body = _body(req)
    storage_uri, key_type, key = _import_parameters(body)
    database = req.params["databaseName"]

    def complete() -> dict[str, Any]:
        data = _read_bacpac(storage_uri, key_type, key)
        emu.sql.imports.append({"database": database, "storage_uri": storage_uri, "bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest(), "kind": "existing"})
        return _import_result(req, database, storage_uri, "ImportToExistingDatabase")

    return emu.begin_operation(req, complete, async_kind="importExportAzureAsyncOperation",
                               location_kind="importExportOperationResults")


def database_export(req: ArmRequest) -> ArmResponse:
    """POST databases/{d}/export: answers as Azure does; the emulator writes no file."""
    emu = req.emulator
    _require_server(req)
    rid = _rid(req, kind="database")
    if emu.store.get(rid) is None:
        raise _not_found(req, "Microsoft.Sql/servers/databases", req.params["databaseName"])
    body = _body(req)
    storage_uri, _, _ = _import_parameters(body)
    database = req.params["databaseName"]
    return emu.begin_operation(req, lambda: _import_result(req, database, storage_uri, "Export"),
                               async_kind="importExportAzureAsyncOperation",
                               location_kind="importExportOperationResults")


def register(emu: ArmEmulator) -> None:
    emu.sql = SqlState()  # type: ignore[attr-defined]
    for method, template, handler in (
        ("GET", SERVER, get_server), ("PUT", SERVER, put_server), ("DELETE", SERVER, delete_server),
        ("GET", SERVERS, list_servers), ("POST", CHECK_NAME, check_name_availability),
        ("GET", FIREWALL_RULE, get_firewall_rule), ("PUT", FIREWALL_RULE, put_firewall_rule),
        ("DELETE", FIREWALL_RULE, delete_firewall_rule), ("GET", FIREWALL_RULES, list_firewall_rules),
        ("GET", DATABASE, get_database), ("PUT", DATABASE, put_database), ("DELETE", DATABASE, delete_database),
        ("GET", DATABASES, list_databases), ("POST", SERVER_IMPORT, server_import),
        ("POST", DATABASE_IMPORT, database_import), ("POST", DATABASE_EXPORT, database_export),
    ):
        emu.route(method, template, handler)
