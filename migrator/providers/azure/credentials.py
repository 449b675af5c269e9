"""Azure credentials as the environment file names them, and the ARM endpoint a management client talks to.

```yaml
target:
  arm:
    subscription_id: 00000000-0000-0000-0000-000000000000
    resource_group: rg-workspace365-contoso
    credential: { type: default }         # default | cli | managed_identity | environment | workload_identity
                                          # | client_secret (tenant_id, client_id, client_secret: ${env:...})
                                          # | access_token (token: ${env:ARM_TOKEN}, e.g. `az account get-access-token`)
    # endpoint: https://management.azure.com   (another cloud, or a test emulator)
    # ca_file: /path/to/ca.pem                 (a private CA the endpoint's certificate chains to)
```

Nothing secret is stored: ``client_secret`` and ``token`` are ``${env:NAME}`` references revealed at the moment a
credential is built.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from azure.core.credentials import AccessToken
from pydantic import BaseModel, ConfigDict, model_validator

from migrator.errors import InputError
from migrator.secrets import Secret

PUBLIC_ARM_ENDPOINT = "https://management.azure.com"

CredentialType = Literal["default", "cli", "managed_identity", "environment", "workload_identity", "client_secret",
                         "access_token"]


class CredentialSpec(BaseModel):
    """Which azure-identity credential to use; ``default`` is DefaultAzureCredential."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: CredentialType = "default"
    tenant_id: str | None = None
    client_id: str | None = None  # client_secret, or a user-assigned managed identity
    client_secret: Secret | None = None
    token: Secret | None = None

    @model_validator(mode="after")
    def _complete(self) -> CredentialSpec:
        if self.type == "client_secret" and not (self.tenant_id and self.client_id and self.client_secret):
            raise ValueError("credential type client_secret needs tenant_id, client_id and client_secret")
        if self.type == "access_token" and self.token is None:
            raise ValueError("credential type access_token needs token (a ${env:NAME} reference)")
        if self.type != "client_secret" and self.client_secret is not None:
            raise ValueError("client_secret belongs to credential type client_secret only")
        if self.type != "access_token" and self.token is not None:
            raise ValueError("token belongs to credential type access_token only")
        return self


class ArmSettings(BaseModel):
    """Where the Azure Resource Manager is and who we are there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subscription_id: str
    resource_group: str
    credential: CredentialSpec = CredentialSpec()
    endpoint: str = PUBLIC_ARM_ENDPOINT
    ca_file: str | None = None
    #: Seconds between polls of a long-running operation when the service gives no Retry-After.
    polling_interval: float = 15.0
    #: Retries of one request inside the SDK (429 with Retry-After, 5xx, dropped connections).
    retry_total: int = 10
    #: Of those, how many may answer with an error status (azure-core's default is 3).
    retry_status: int = 5
    retry_backoff_factor: float = 0.8
    retry_backoff_max: float = 60.0

    @model_validator(mode="after")
    def _https(self) -> ArmSettings:
        if not self.endpoint.startswith("https://"):
            # azure-core's bearer-token policy refuses to send a token over plain http.
            raise ValueError("arm.endpoint must be an https:// URL")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"base_url": self.endpoint.rstrip("/"), "polling_interval": self.polling_interval,
                                  "retry_total": self.retry_total, "retry_status": self.retry_status,
                                  "retry_backoff_factor": self.retry_backoff_factor,
                                  "retry_backoff_max": self.retry_backoff_max}
        if self.ca_file:
            kwargs["connection_verify"] = self.ca_file
        return kwargs


class AccessTokenCredential:
    """A bearer token obtained elsewhere (``az account get-access-token``): no refresh, so for short runs only."""

    def __init__(self, token: str, expires_on: int | None = None) -> None:
        self._token = token
        self._expires_on = expires_on or int(time.time()) + 3600

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, self._expires_on)


def make_credential(spec: CredentialSpec, ctx: Any) -> Any:
    """The azure-core TokenCredential ``spec`` names; secrets are revealed here and registered for redaction."""
    import azure.identity as identity

    kind = spec.type
    if kind == "default":
        return identity.DefaultAzureCredential(managed_identity_client_id=spec.client_id) if spec.client_id \
            else identity.DefaultAzureCredential()
    if kind == "cli":
        return identity.AzureCliCredential(tenant_id=spec.tenant_id) if spec.tenant_id \
            else identity.AzureCliCredential()
    if kind == "managed_identity":
        return identity.ManagedIdentityCredential(client_id=spec.client_id) if spec.client_id \
            else identity.ManagedIdentityCredential()
    if kind == "environment":
        return identity.EnvironmentCredential()
    if kind == "workload_identity":
        return identity.WorkloadIdentityCredential(tenant_id=spec.tenant_id, client_id=spec.client_id)
    if kind == "client_secret":
        secret = ctx.reveal(spec.client_secret)
        return identity.ClientSecretCredential(str(spec.tenant_id), str(spec.client_id), secret)
    if kind == "access_token":
        token = ctx.reveal(spec.token)
        if not token:
            raise InputError("the access token is empty", hint="export the variable the credential's token names")
        return AccessTokenCredential(token)
    raise InputError(f"unknown credential type {kind!r}")
