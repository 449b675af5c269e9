"""Where a DNS zone lives and how to change it: the ``dns:`` endpoint of the DNS steps, and its providers.

Two providers, chosen by ``provider:``

``rfc2136``
    a self-hosted server (BIND, Windows DNS, PowerDNS) changed by RFC 2136 dynamic update signed with TSIG.
    The TSIG secret is a :class:`~migrator.secrets.Secret` (``${env:NAME}``), read at the moment of use.
``azure``
    an Azure DNS zone changed through Azure Resource Manager (azure-mgmt-dns), with the ``arm:`` settings of
    :class:`~migrator.providers.azure.ArmSettings` (subscription, credential, endpoint).

Whichever changes the zone, the questions asked of name servers directly (what each authoritative server
serves, what a name resolves to) are the same: :mod:`migrator.providers.dns.query`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from migrator.providers.azure.credentials import ArmSettings
from migrator.providers.dns.base import (
    ADDRESS_TYPES,
    DnsProvider,
    NameRecords,
    NameServer,
    RecordChanged,
    RecordSet,
)
from migrator.providers.dns.query import NoAnswer, answer_text, resolve, resolve_host
from migrator.secrets import Secret

__all__ = [
    "ADDRESS_TYPES",
    "AzureDnsEndpoint",
    "DnsEndpoint",
    "DnsProvider",
    "NameRecords",
    "NameServer",
    "NoAnswer",
    "RecordChanged",
    "RecordSet",
    "Rfc2136Endpoint",
    "answer_text",
    "open_dns_provider",
    "resolve",
    "resolve_host",
]


class _Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The zone, without the trailing dot ("example.com").
    zone: str

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone = value.strip().lower().rstrip(".")
        if not zone or " " in zone:
            raise ValueError("a zone name like example.com")
        return zone


class Rfc2136Endpoint(_Endpoint):
    """A zone on a self-hosted primary server that accepts TSIG-signed dynamic updates."""

    provider: Literal["rfc2136"]
    #: The primary server (address or host name) that accepts updates for the zone.
    server: str
    #: Port of the primary server: 53 in production; tests use a free port.
    port: int = Field(default=53, ge=1, le=65535)
    tsig_key_name: str | None = None
    tsig_algorithm: str = "hmac-sha256"
    #: The TSIG key's base64 secret, by reference: ``${env:DNS_TSIG_SECRET}``.
    tsig_secret: Secret | None = None
    #: Seconds to wait for one answer of the server.
    timeout: float = Field(default=5.0, gt=0)


class AzureDnsEndpoint(_Endpoint):
    """An Azure DNS public zone, reached through the same ``arm:`` settings as the rest of the target."""

    provider: Literal["azure"]
    #: Subscription, credential and ARM endpoint (``${target.arm}`` of the environment file).
    arm: ArmSettings
    #: The zone's resource group when it is not ``arm.resource_group`` (zones often live apart).
    resource_group: str | None = None


#: The ``dns:`` param of every DNS step.
DnsEndpoint = Annotated[Rfc2136Endpoint | AzureDnsEndpoint, Field(discriminator="provider")]


def open_dns_provider(endpoint: Rfc2136Endpoint | AzureDnsEndpoint, ctx: Any) -> DnsProvider:
    """A provider for ``endpoint``; secrets are revealed through ``ctx.reveal`` when first needed."""
    if isinstance(endpoint, Rfc2136Endpoint):
        from migrator.providers.dns.rfc2136 import Rfc2136Provider

        return Rfc2136Provider(endpoint, ctx.reveal)
    from migrator.providers.dns.azure import AzureDnsProvider

    return AzureDnsProvider(endpoint, ctx)
