"""Cloud step kinds: provision the tenant's Azure resources (``database.import_bacpac`` lives with the database
kinds, :mod:`migrator.steps.database.bacpac`).

They talk to Azure Resource Manager through azure-mgmt-sql (:mod:`migrator.providers.azure`) and keep each
long-running operation's continuation token in the step's memo before waiting on it, so a resumed run
re-attaches to the pending operation instead of issuing it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from migrator.errors import InputError
from migrator.estimator import Work, estimate, rates
from migrator.providers.azure import ArmSettings, SqlControlPlane, pending, run_lro
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.secrets import Secret
from migrator.step import CheckResult, Params, PlanResult, Step, StepContext

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
        creates = sum(1 for c in changes if c.startswith("create SQL server") or c.startswith("create database"))
        work = Work(note=f"{creates} resource(s) to create, {len(changes) - creates} other change(s)")
        work.add("azure.create", creates).add("azure.update", len(changes) - creates)
        return PlanResult(changes=changes, reason="differences found",
                          estimate=estimate(work, rates(ctx), items=len(changes)))

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
