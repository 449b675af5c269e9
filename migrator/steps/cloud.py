"""Cloud step kinds: provision the tenant's Azure resources, and import a BACPAC into Azure SQL Database.

Both talk to Azure Resource Manager through azure-mgmt-sql (:mod:`migrator.providers.azure`) and keep each
long-running operation's continuation token in the step's memo before waiting on it, so a resumed run
re-attaches to the pending operation instead of issuing it again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from migrator.errors import InputError, PreconditionFailed, VerificationFailed
from migrator.providers.azure import ArmSettings, SqlControlPlane, pending, run_lro
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.secrets import Secret
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext

#: Tag (and container metadata key) naming the run that created a resource: compensation deletes only those.
RUN_TAG = "migrator-run"
RUN_METADATA = "migrator_run"
DEFAULT_COLLATION = "SQL_Latin1_General_CP1_CI_AS"


def _deletion_allowed(ctx: StepContext, param: bool) -> bool:
    return bool(param or ctx.options.get("allow_delete"))


def _desired_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k != RUN_TAG}


def _created_by(resource: dict[str, Any] | None, run_id: str) -> bool:
    return bool(resource) and (resource.get("tags") or {}).get(RUN_TAG) == run_id  # type: ignore[union-attr]


# ---- cloud.provision -----------------------------------------------------------------------------------------

class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSpec(_Spec):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$")
    location: str
    administrator_login: str
    #: Used only when the server is created (Azure never returns it, so it is never compared).
    administrator_password: Secret | None = None
    version: str = "12.0"
    minimal_tls_version: str = "1.2"
    public_network_access: str = "Enabled"
    tags: dict[str, str] = {}


class FirewallRuleSpec(_Spec):
    name: str = "migrator-runner"
    start_ip: str
    end_ip: str | None = None


class DatabaseSpec(_Spec):
    name: str
    sku: str = "GP_Gen5_2"
    max_size_bytes: int | None = None
    collation: str = DEFAULT_COLLATION
    tags: dict[str, str] = {}


class ProvisionParams(Params):
    arm: ArmSettings
    server: ServerSpec
    firewall: FirewallRuleSpec | None = None
    database: DatabaseSpec
    #: Storage containers by role (``live``, ``backup``): each an Azure blob endpoint whose container must exist.
    containers: dict[str, BlobEndpoint] = {}
    #: Lets compensation delete what this run created (also ``--allow-delete`` on the command line).
    allow_delete: bool = False


def _tags(wanted: Mapping[str, str], ctx: StepContext, current: dict[str, Any] | None) -> dict[str, str]:
    """The tags to send: the spec's, plus the run tag — this run's id on a resource it creates, the creating
    run's id kept on one that exists (so compensation only ever deletes what its own run made)."""
    tags = dict(wanted)
    old_tag = ((current or {}).get("tags") or {}).get(RUN_TAG)
    if current is None:
        tags[RUN_TAG] = ctx.run_id
    elif old_tag:
        tags[RUN_TAG] = old_tag
    return tags


def _server_body(spec: ServerSpec, ctx: StepContext, current: dict[str, Any] | None) -> dict[str, Any]:
    tags = _tags(spec.tags, ctx, current)
    props: dict[str, Any] = {"administratorLogin": spec.administrator_login, "version": spec.version,
                             "minimalTlsVersion": spec.minimal_tls_version,
                             "publicNetworkAccess": spec.public_network_access}
    if current is None:
        if spec.administrator_password is None:
            raise InputError(f"server {spec.name} does not exist and no administrator_password is given",
                             hint="set server.administrator_password: ${env:SQL_ADMIN_PASSWORD}")
        props["administratorLoginPassword"] = ctx.reveal(spec.administrator_password)
    return {"location": spec.location, "tags": tags, "properties": props}


def _database_body(spec: DatabaseSpec, location: str, ctx: StepContext,
                   current: dict[str, Any] | None) -> dict[str, Any]:
    tags = _tags(spec.tags, ctx, current)
    props: dict[str, Any] = {"collation": spec.collation}
    if spec.max_size_bytes is not None:
        props["maxSizeBytes"] = spec.max_size_bytes
    return {"location": location, "sku": {"name": spec.sku}, "tags": tags, "properties": props}


def server_differences(spec: ServerSpec, current: dict[str, Any] | None) -> list[str]:
    """What differs between the wanted server and the one Azure has ("create" when there is none)."""
    if current is None:
        return [f"create SQL server {spec.name} in {spec.location}"]
    props = current.get("properties") or {}
    if str(current.get("location", "")).replace(" ", "").lower() != spec.location.replace(" ", "").lower():
        raise InputError(f"SQL server {spec.name} exists in {current.get('location')}, not {spec.location}",
                         hint="a server cannot move: fix server.location or choose another server name")
    if props.get("administratorLogin") not in (None, spec.administrator_login):
        raise InputError(f"SQL server {spec.name} has administrator login {props.get('administratorLogin')!r}",
                         hint="the administrator login cannot change: use the existing one in the environment file")
    changes = []
    for key, wanted in (("version", spec.version), ("minimalTlsVersion", spec.minimal_tls_version),
                        ("publicNetworkAccess", spec.public_network_access)):
        if props.get(key) != wanted:
            changes.append(f"server {spec.name}: {key} {props.get(key)!r} -> {wanted!r}")
    have = _desired_tags(current.get("tags") or {})
    if have != _desired_tags(spec.tags):
        changes.append(f"server {spec.name}: tags {sorted(have.items())} -> {sorted(spec.tags.items())}")
    return changes


def database_differences(spec: DatabaseSpec, current: dict[str, Any] | None) -> list[str]:
    if current is None:
        return [f"create database {spec.name} ({spec.sku}, {spec.collation})"]
    props = current.get("properties") or {}
    if props.get("collation") not in (None, spec.collation):
        raise InputError(f"database {spec.name} exists with collation {props.get('collation')}, not "
                         f"{spec.collation}", hint="a collation cannot change: fix database.collation or drop the "
                                                   "database first")
    changes = []
    sku = (current.get("sku") or {}).get("name")
    if sku != spec.sku:
        changes.append(f"database {spec.name}: sku {sku!r} -> {spec.sku!r}")
    if spec.max_size_bytes is not None and props.get("maxSizeBytes") != spec.max_size_bytes:
        changes.append(f"database {spec.name}: maxSizeBytes {props.get('maxSizeBytes')} -> {spec.max_size_bytes}")
    have = _desired_tags(current.get("tags") or {})
    if have != _desired_tags(spec.tags):
        changes.append(f"database {spec.name}: tags {sorted(have.items())} -> {sorted(spec.tags.items())}")
    return changes


def firewall_differences(server: str, spec: FirewallRuleSpec | None, current: dict[str, Any] | None) -> list[str]:
    if spec is None:
        return []
    end = spec.end_ip or spec.start_ip
    if current is None:
        return [f"add firewall rule {spec.name} on {server} for {spec.start_ip}-{end}"]
    props = current.get("properties") or {}
    if (props.get("startIpAddress"), props.get("endIpAddress")) != (spec.start_ip, end):
        return [f"firewall rule {spec.name}: {props.get('startIpAddress')}-{props.get('endIpAddress')} -> "
                f"{spec.start_ip}-{end}"]
    return []


class Provision(Step[ProvisionParams]):
    """Ensures the tenant's Azure resources: the logical SQL server, a firewall rule for the runner, the tenant
    database (SKU, max size, collation, tags) and the storage containers (live, backup).

    Changes: creates what is missing and updates what differs, one long-running operation at a time, each
    operation's continuation token checkpointed before the wait. Knows it is done by reading every resource and
    finding it present and equal (a no-op with its reason; ``plan`` lists the differences). Undone by deleting
    only what this run created — resources tagged ``migrator-run: <run id>``, containers with that metadata, the
    firewall rule it added — and servers, databases and containers only when deletion is allowed
    (``allow_delete`` param or command option).
    """

    kind = "cloud.provision"
    Params = ProvisionParams
    summary = "ensure the Azure SQL server, firewall rule, tenant database and storage containers"

    def _plane(self, ctx: StepContext) -> SqlControlPlane:
        return SqlControlPlane.open(self.params.arm, ctx)

    def _stores(self, ctx: StepContext) -> dict[str, Any]:
        stores = {}
        for role, endpoint in self.params.containers.items():
            if endpoint.kind != "azure":
                raise InputError(f"containers.{role} must be an Azure blob endpoint (kind: azure)")
            stores[role] = open_blob_store(endpoint, ctx)
        return stores

    def _differences(self, ctx: StepContext) -> list[str]:
        p = self.params
        plane = self._plane(ctx)
        server = plane.get_server(p.server.name)
        changes = server_differences(p.server, server)
        rule = plane.get_firewall_rule(p.server.name, p.firewall.name) if server and p.firewall else None
        changes += firewall_differences(p.server.name, p.firewall, rule)
        database = plane.get_database(p.server.name, p.database.name) if server else None
        changes += database_differences(p.database, database)
        for role, store in self._stores(ctx).items():
            if not store.exists():
                changes.append(f"create {role} container {store.describe()}")
        return changes

    def check(self, ctx: StepContext) -> CheckResult:
        changes = self._differences(ctx)
        if changes:
            return CheckResult(False, f"{len(changes)} difference(s): " + "; ".join(changes))
        return CheckResult(True, f"server {self.params.server.name}, database {self.params.database.name} and "
                                 f"{len(self.params.containers)} container(s) present and as specified",
                           outputs=self._outputs(ctx))

    def plan(self, ctx: StepContext) -> PlanResult:
        changes = self._differences(ctx)
        if not changes:
            return PlanResult.nothing("all resources present and as specified")
        # Creating a server or database takes minutes in Azure; updates about one.
        seconds = sum(300.0 if c.startswith("create SQL server") or c.startswith("create database") else 60.0
                      for c in changes)
        return PlanResult(changes=changes, reason="differences found",
                          estimate=Estimate(seconds=seconds, items=len(changes),
                                            basis="typical Azure provisioning times"))

    def _outputs(self, ctx: StepContext) -> dict[str, Any]:
        p = self.params
        plane = self._plane(ctx)
        server = plane.get_server(p.server.name) or {}
        database = plane.get_database(p.server.name, p.database.name) or {}
        return {"server": p.server.name,
                "server_fqdn": (server.get("properties") or {}).get("fullyQualifiedDomainName"),
                "database": p.database.name, "database_id": (database.get("properties") or {}).get("databaseId"),
                "containers": {role: e.container for role, e in p.containers.items()}}

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        p = self.params
        plane = self._plane(ctx)
        name = p.server.name
        server = plane.get_server(name)
        if server_differences(p.server, server) or pending(ctx, "server"):
            body = _server_body(p.server, ctx, server) if not pending(ctx, "server") else None
            run_lro(ctx, "server", lambda token: plane.begin_server(name, body, token),
                    action=f"{'creating' if server is None else 'updating'} SQL server {name}")
            ctx.items.record(f"server/{name}", "done")
        if p.firewall is not None:
            rule = plane.get_firewall_rule(name, p.firewall.name)
            if firewall_differences(name, p.firewall, rule):
                if rule is None:
                    ctx.memo.set("created_firewall_rule", p.firewall.name)
                plane.put_firewall_rule(name, p.firewall.name, p.firewall.start_ip,
                                        p.firewall.end_ip or p.firewall.start_ip)
                ctx.items.record(f"firewall/{p.firewall.name}", "done")
        database = plane.get_database(name, p.database.name)
        if database_differences(p.database, database) or pending(ctx, "database"):
            body = None if pending(ctx, "database") else _database_body(p.database, p.server.location, ctx,
                                                                         database)
            run_lro(ctx, "database", lambda token: plane.begin_database(name, p.database.name, body, token),
                    action=f"{'creating' if database is None else 'updating'} database {p.database.name}")
            ctx.items.record(f"database/{p.database.name}", "done")
        for role, store in self._stores(ctx).items():
            if not store.exists():
                self._create_container(store, ctx)
                ctx.items.record(f"container/{role}", "done")
        return self._outputs(ctx)

    @staticmethod
    def _create_container(store: Any, ctx: StepContext) -> None:
        from azure.core.exceptions import ResourceExistsError

        from migrator.providers.blob import azure_errors

        # Created meanwhile (by us before a crash, or by someone else): either way it is there.
        with azure_errors(store.describe(), "creating the container"), contextlib.suppress(ResourceExistsError):
            store.container.create_container(metadata={RUN_METADATA: ctx.run_id})

    def compensate(self, ctx: StepContext) -> None:
        p = self.params
        plane = self._plane(ctx)
        name = p.server.name
        allowed = _deletion_allowed(ctx, p.allow_delete)
        rule_name = ctx.memo.get("created_firewall_rule")
        if rule_name and plane.get_server(name) is not None:
            # A rule this run added opens the server to the runner; removing it loses no data.
            plane.delete_firewall_rule(name, rule_name)
            ctx.memo.delete("created_firewall_rule")
        kept: list[str] = []
        for role, store in self._stores(ctx).items():
            props = _container_metadata(store)
            if props is not None and props.get(RUN_METADATA) == ctx.run_id:
                if allowed:
                    store.container.delete_container()
                else:
                    kept.append(f"{role} container {store.describe()}")
        database = plane.get_database(name, p.database.name) if plane.get_server(name) else None
        if _created_by(database, ctx.run_id):
            if allowed:
                run_lro(ctx, "delete-database", lambda t: plane.begin_delete_database(name, p.database.name, t),
                        action=f"deleting database {p.database.name}")
            else:
                kept.append(f"database {p.database.name}")
        server = plane.get_server(name)
        if _created_by(server, ctx.run_id):
            if allowed:
                run_lro(ctx, "delete-server", lambda t: plane.begin_delete_server(name, t),
                        action=f"deleting SQL server {name}")
            else:
                kept.append(f"SQL server {name}")
        if kept:
            ctx.event("compensation.kept", "created by this run but left in place (deletion not allowed): "
                      + ", ".join(kept), kept=kept)


def _container_metadata(store: Any) -> dict[str, str] | None:
    from azure.core.exceptions import ResourceNotFoundError

    from migrator.providers.blob import azure_errors

    with azure_errors(store.describe(), "reading the container"):
        try:
            return dict(store.container.get_container_properties().metadata or {})
        except ResourceNotFoundError:
            return None


# ---- database.import_bacpac ----------------------------------------------------------------------------------

class ImportBacpacParams(Params):
    arm: ArmSettings
    server: str
    database: str
    #: Where the .bacpac lives: an Azure blob endpoint (container) and the blob's name in it.
    storage: BlobEndpoint
    blob: str
    #: A local .bacpac uploaded to ``storage``/``blob`` when the blob is not there yet.
    upload_from: str | None = None
    service_objective: str = "GP_Gen5_2"
    edition: str | None = None
    max_size_bytes: int | None = None
    administrator_login: str
    administrator_password: Secret
    #: Throughput assumed for the forecast (Azure imports run at a few MB/s); the SAS outlives 3x the forecast.
    assumed_mb_per_second: float = 2.0
    min_sas_hours: float = 2.0
    allow_delete: bool = False


class ImportBacpac(Step[ImportBacpacParams]):
    """Imports a BACPAC into a new Azure SQL database (``servers.begin_import_database``, ImportNewDatabase).

    Changes: uploads the .bacpac to blob storage when it is not there, mints a read-only SAS for that one blob
    just in time (expiry past three times the forecast), and starts the import; its continuation token is kept
    in the memo before waiting, so a resumed run re-attaches. Knows it is done when the database exists and no
    import is pending. Verified by the database being Online and the BACPAC unchanged since the import began.
    Undone by deleting the database, only when this run created it and deletion is allowed.
    """

    kind = "database.import_bacpac"
    Params = ImportBacpacParams
    summary = "import a .bacpac from blob storage into a new Azure SQL database"

    def _plane(self, ctx: StepContext) -> SqlControlPlane:
        return SqlControlPlane.open(self.params.arm, ctx)

    def _store(self, ctx: StepContext) -> Any:
        if self.params.storage.kind != "azure":
            raise InputError("storage must be an Azure blob endpoint (kind: azure): Azure SQL reads the BACPAC "
                             "from blob storage")
        return open_blob_store(self.params.storage, ctx)

    def check(self, ctx: StepContext) -> CheckResult:
        p = self.params
        if pending(ctx, "import"):
            return CheckResult(False, f"an import into {p.database} is pending: re-attaching")
        database = self._plane(ctx).get_database(p.server, p.database)
        if database is None:
            return CheckResult(False, f"database {p.database} does not exist on {p.server}")
        return CheckResult(True, f"database {p.database} exists on {p.server}",
                           outputs={"database": p.database, "status": (database.get("properties") or {})
                                    .get("status")})

    def _forecast(self, size: int) -> float:
        return size / (self.params.assumed_mb_per_second * 1024 * 1024) + 300.0

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        p = self.params
        info = self._store(ctx).info(p.blob)
        size = info.size if info else (os.path.getsize(p.upload_from) if p.upload_from and
                                       os.path.exists(p.upload_from) else None)
        changes = []
        if info is None:
            if not p.upload_from:
                raise PreconditionFailed(f"{p.blob} is not in {p.storage.describe()} and no upload_from is given",
                                         step_id=self.step_id)
            changes.append(f"upload {p.upload_from} to {p.storage.describe()} as {p.blob}")
        changes.append(f"import {p.blob} into new database {p.database} on {p.server} ({p.service_objective})")
        return PlanResult(changes=changes, reason=state.reason,
                          estimate=Estimate(seconds=self._forecast(size) if size else None, bytes=size,
                                            basis=f"assumed {p.assumed_mb_per_second:g} MB/s"))

    def _locate(self, ctx: StepContext, store: Any) -> Any:
        p = self.params
        info = store.info(p.blob)
        if info is not None:
            return info
        if not p.upload_from:
            raise PreconditionFailed(f"{p.blob} is not in {p.storage.describe()} and no upload_from is given",
                                     step_id=self.step_id, hint="export the BACPAC first, or set upload_from")
        if not os.path.exists(p.upload_from):
            raise InputError(f"upload_from {p.upload_from} does not exist")
        with open(p.upload_from, "rb") as stream:
            store.write(p.blob, stream, length=os.path.getsize(p.upload_from),
                        content_type="application/octet-stream")
        ctx.event("bacpac.uploaded", f"uploaded {p.blob} to {p.storage.describe()}")
        return store.info(p.blob)

    def _mint_sas(self, ctx: StepContext, store: Any, size: int) -> tuple[str, str]:
        """The blob's URL and a read-only SAS for it alone, valid well past the forecast."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        p = self.params
        endpoint = p.storage
        full = f"{endpoint.prefix.strip('/')}/{p.blob}" if endpoint.prefix.strip("/") else p.blob
        url = store.container.get_blob_client(full).url
        if endpoint.sas is not None:
            sas = (ctx.reveal(endpoint.sas) or "").lstrip("?")
            return url, sas
        now = datetime.now(UTC)
        lifetime = max(timedelta(hours=p.min_sas_hours), timedelta(seconds=3 * self._forecast(size)))
        start, expiry = now - timedelta(minutes=5), now + lifetime
        permission = BlobSasPermissions(read=True)
        key = _account_key(endpoint, ctx)
        if key:
            sas = generate_blob_sas(store.account, store.container_name, full, account_key=key,
                                    permission=permission, start=start, expiry=expiry, protocol=None)
        else:
            delegation = store.service.get_user_delegation_key(start, expiry)
            sas = generate_blob_sas(store.account, store.container_name, full, user_delegation_key=delegation,
                                    permission=permission, start=start, expiry=expiry)
        ctx.redactor.add(sas)
        ctx.memo.set("sas_expiry", expiry.isoformat())
        return url, sas

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        p = self.params
        plane = self._plane(ctx)
        store = self._store(ctx)
        info = self._locate(ctx, store)

        def begin(token: str | None) -> Any:
            if token:
                return plane.begin_import_new_database(p.server, None, token)
            url, sas = self._mint_sas(ctx, store, info.size)
            body: dict[str, Any] = {
                "databaseName": p.database, "serviceObjectiveName": p.service_objective,
                "storageKeyType": "SharedAccessKey", "storageKey": "?" + sas, "storageUri": url,
                "administratorLogin": p.administrator_login,
                "administratorLoginPassword": ctx.reveal(p.administrator_password), "authenticationType": "Sql"}
            if p.edition:
                body["edition"] = p.edition
            if p.max_size_bytes:
                body["maxSizeBytes"] = str(p.max_size_bytes)
            ctx.memo.set("bacpac", {"etag": info.etag, "size": info.size})
            ctx.memo.set("created_database", p.database)
            return plane.begin_import_new_database(p.server, body)

        if not pending(ctx, "import") and plane.get_database(p.server, p.database) is not None:
            raise PreconditionFailed(f"database {p.database} already exists on {p.server}", step_id=self.step_id,
                                     hint="ImportNewDatabase creates the database: drop it or choose another name")
        result = run_lro(ctx, "import", begin, action=f"importing {p.blob} into {p.database}",
                         timeout=None)
        props = (result.as_dict() if hasattr(result, "as_dict") else dict(result or {})).get("properties") or {}
        ctx.items.record(f"bacpac/{p.blob}", "done", bytes=info.size)
        ctx.memo.set("import_status", props.get("status"))
        return {"database": p.database, "server": p.server, "status": props.get("status"),
                "request_id": props.get("requestId"), "bacpac_bytes": info.size}

    def verify(self, ctx: StepContext) -> None:
        p = self.params
        database = self._plane(ctx).get_database(p.server, p.database)
        if database is None:
            raise VerificationFailed(f"database {p.database} is missing after the import", step_id=self.step_id)
        status = (database.get("properties") or {}).get("status")
        if status != "Online":
            raise VerificationFailed(f"database {p.database} is {status}, not Online", step_id=self.step_id)
        before = ctx.memo.get("bacpac")
        if before:
            info = self._store(ctx).info(p.blob)
            if info is None or (before.get("etag") and info.etag != before["etag"]):
                raise VerificationFailed(f"{p.blob} changed or vanished while it was imported",
                                         step_id=self.step_id, hint="import again from an unchanged BACPAC")

    def compensate(self, ctx: StepContext) -> None:
        p = self.params
        if ctx.memo.get("created_database") != p.database:
            return
        plane = self._plane(ctx)
        if plane.get_database(p.server, p.database) is None:
            return
        if not _deletion_allowed(ctx, p.allow_delete):
            ctx.event("compensation.kept", f"database {p.database} imported by this run left in place "
                      "(deletion not allowed)")
            return
        run_lro(ctx, "delete-database", lambda t: plane.begin_delete_database(p.server, p.database, t),
                action=f"deleting database {p.database}")
        ctx.memo.delete("created_database")


def _account_key(endpoint: BlobEndpoint, ctx: StepContext) -> str | None:
    if endpoint.account_key is not None:
        return ctx.reveal(endpoint.account_key)
    if endpoint.connection_string is not None:
        text = ctx.reveal(endpoint.connection_string) or ""
        for piece in text.split(";"):
            if piece.strip().lower().startswith("accountkey="):
                return piece.split("=", 1)[1].strip()
    return None
