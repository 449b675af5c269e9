"""Azure SQL's control plane through azure-mgmt-sql: logical servers, firewall rules, databases, BACPAC import.

Reads answer ``None`` for a resource that does not exist; every azure-core error leaves as a migrator error
(:mod:`migrator.providers.azure.errors`) saying whether to retry and what to do. Long-running operations are
returned as pollers for :func:`migrator.providers.azure.lro.run_lro`, which checkpoints their tokens.
"""

from __future__ import annotations

from typing import Any, cast

from azure.core.exceptions import ResourceNotFoundError
from azure.core.polling import LROPoller

from migrator.providers.azure.credentials import ArmSettings, make_credential
from migrator.providers.azure.errors import arm_errors
from migrator.resources import ResourceKey
from migrator.step import StepContext


def _as_dict(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    if hasattr(model, "as_dict"):
        return dict(model.as_dict())
    return dict(model)


class SqlControlPlane:
    """One subscription and resource group of Microsoft.Sql."""

    def __init__(self, client: Any, resource_group: str) -> None:
        self.client = client
        self.resource_group = resource_group

    @classmethod
    def open(cls, settings: ArmSettings, ctx: StepContext) -> SqlControlPlane:
        """A control plane for ``settings``, shared through ``ctx.resources`` for the run."""

        def connect() -> SqlControlPlane:
            from azure.mgmt.sql import SqlManagementClient

            credential = make_credential(settings.credential, ctx)
            client = SqlManagementClient(credential, settings.subscription_id, **settings.client_kwargs())
            return cls(client, settings.resource_group)

        key: ResourceKey[SqlControlPlane] = ResourceKey(f"azure.sql:{settings.model_dump_json()}")
        return ctx.resources.obtain(key, connect)

    # ---- reads -----------------------------------------------------------------------------------------

    def _get(self, action: str, call: Any, *args: Any) -> dict[str, Any] | None:
        with arm_errors(action):
            try:
                return _as_dict(call(self.resource_group, *args))
            except ResourceNotFoundError:
                return None

    def get_server(self, server: str) -> dict[str, Any] | None:
        return self._get(f"reading SQL server {server}", self.client.servers.get, server)

    def get_firewall_rule(self, server: str, rule: str) -> dict[str, Any] | None:
        return self._get(f"reading firewall rule {rule} of {server}", self.client.firewall_rules.get, server, rule)

    def get_database(self, server: str, database: str) -> dict[str, Any] | None:
        return self._get(f"reading database {database} on {server}", self.client.databases.get, server, database)

    # ---- writes ----------------------------------------------------------------------------------------

    def begin_server(self, server: str, body: dict[str, Any] | None, token: str | None = None) -> LROPoller[Any]:
        return cast("LROPoller[Any]", self.client.servers.begin_create_or_update(self.resource_group, server, body,
                                                          continuation_token=token))

    def put_firewall_rule(self, server: str, rule: str, start_ip: str, end_ip: str) -> dict[str, Any]:
        with arm_errors(f"setting firewall rule {rule} on {server}"):
            result = self.client.firewall_rules.create_or_update(
                self.resource_group, server, rule, {"properties": {"startIpAddress": start_ip,
                                                                   "endIpAddress": end_ip}})
        return _as_dict(result) or {}

    def delete_firewall_rule(self, server: str, rule: str) -> None:
        with arm_errors(f"deleting firewall rule {rule} of {server}"):
            self.client.firewall_rules.delete(self.resource_group, server, rule)

    def begin_database(self, server: str, database: str, body: dict[str, Any] | None,
                       token: str | None = None) -> LROPoller[Any]:
        return cast("LROPoller[Any]", self.client.databases.begin_create_or_update(
            self.resource_group, server, database, body, continuation_token=token))

    def begin_delete_database(self, server: str, database: str, token: str | None = None) -> LROPoller[Any]:
        return cast("LROPoller[Any]", self.client.databases.begin_delete(
            self.resource_group, server, database, continuation_token=token))

    def begin_delete_server(self, server: str, token: str | None = None) -> LROPoller[Any]:
        return cast("LROPoller[Any]", self.client.servers.begin_delete(
            self.resource_group, server, continuation_token=token))

    def begin_import_new_database(self, server: str, body: dict[str, Any] | None,
                                  token: str | None = None) -> LROPoller[Any]:
        """ImportNewDatabase (POST servers/{server}/import): creates the database from a BACPAC."""
        return cast("LROPoller[Any]", self.client.servers.begin_import_database(self.resource_group, server, body,
                                                         continuation_token=token))
