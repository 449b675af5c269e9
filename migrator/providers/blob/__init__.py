"""Blob endpoints as playbooks name them, and :func:`open_blob_store` to reach one.

An endpoint is either an Azure Storage container (``kind: azure``) or a folder tree (``kind: folder``, the
self-hosted file store). Credentials are :class:`~migrator.secrets.Secret` references (``${env:NAME}``) and are
revealed only when the store is opened.

```yaml
source: { kind: folder, path: /srv/workspace365/files }
backup:
  kind: azure
  account_url: https://contosobackup.blob.core.windows.net
  container: tenant-files
  account_key: ${env:BACKUP_KEY}        # or connection_string, sas, or credential: default
```
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, Protocol

import requests
from pydantic import BaseModel, ConfigDict, model_validator
from urllib3.util.retry import Retry

from migrator.errors import InputError
from migrator.providers.blob.azure import AzureBlobStore
from migrator.providers.blob.base import BlobInfo, BlobStore
from migrator.providers.blob.errors import BlobAccessError, azure_errors, translate_error
from migrator.providers.blob.folder import FolderBlobStore, check_relative_name
from migrator.resources import ResourceKey, RunResources
from migrator.secrets import Redactor, Secret

__all__ = [
    "PER_RETRY_POLICIES",
    "AzureBlobStore",
    "BlobAccessError",
    "BlobEndpoint",
    "BlobInfo",
    "BlobStore",
    "FolderBlobStore",
    "StoreEnvironment",
    "azure_errors",
    "check_relative_name",
    "open_blob_store",
    "run_resources",
    "store_key",
    "translate_error",
]

#: Instrumentation (tests, benchmarks) may put extra azure-core policies here, applied on every try of every
#: request to any Azure blob store opened with those resources.
PER_RETRY_POLICIES: ResourceKey[list[Any]] = ResourceKey("blob.per_retry_policies")
#: Where :func:`run_resources` keeps the run's resources inside a context whose ``resources`` is still a dict.
_ADAPTED = "migrator.run_resources"


def run_resources(resources: RunResources | MutableMapping[str, Any]) -> RunResources:
    """The run's :class:`~migrator.resources.RunResources`: ``resources`` itself, or, from a context that still
    hands its steps a dict, the one kept in that dict (made once; the dict's owner closes it with the rest)."""
    if isinstance(resources, RunResources):
        return resources
    found = resources.setdefault(_ADAPTED, RunResources())
    assert isinstance(found, RunResources)
    return found


class StoreEnvironment(Protocol):
    """What opening a store needs of its caller (a step's context has it): secrets revealed and redacted, and the
    run's resources, where stores are shared."""

    @property
    def redactor(self) -> Redactor: ...

    @property
    def resources(self) -> Any: ...  # RunResources, or a dict holding it (run_resources)

    def reveal(self, secret: Secret | str | None) -> str | None: ...


class BlobEndpoint(BaseModel):
    """Where blobs live: an Azure Storage container, or a folder tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["azure", "folder"]
    # azure
    account_url: str | None = None
    container: str | None = None
    connection_string: Secret | None = None
    account_key: Secret | None = None
    sas: Secret | None = None
    credential: Literal["default"] | None = None
    # folder
    path: str | None = None
    # both: only blobs under this prefix, names relative to it
    prefix: str = ""
    #: Seconds to wait for a connection and for each response before the try counts as a timeout (retried).
    connection_timeout: float = 20.0
    read_timeout: float = 120.0
    #: Retries of one request by the store (429, 5xx, timeouts), with exponential backoff from ``retry_backoff``.
    retry_total: int = 4
    retry_backoff: float = 1.0

    @model_validator(mode="after")
    def _complete(self) -> BlobEndpoint:
        if self.kind == "folder":
            if not self.path:
                raise ValueError("a folder endpoint needs `path`")
            extra = [f for f in ("account_url", "container", "connection_string", "account_key", "sas", "credential")
                     if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"a folder endpoint takes no {', '.join(extra)}")
            return self
        if not self.container:
            raise ValueError("an azure endpoint needs `container`")
        if self.path is not None:
            raise ValueError("an azure endpoint takes no `path`")
        auth = [f for f in ("connection_string", "account_key", "sas", "credential") if getattr(self, f) is not None]
        if len(auth) != 1:
            raise ValueError("an azure endpoint needs exactly one of connection_string, account_key, sas, "
                             f"credential (got {', '.join(auth) or 'none'})")
        if not self.account_url and self.connection_string is None:
            raise ValueError("an azure endpoint needs `account_url` (or a connection_string)")
        return self

    def describe(self) -> str:
        """Where it is, never how to get in."""
        if self.kind == "folder":
            return f"folder {self.path}" + (f", prefix {self.prefix}" if self.prefix else "")
        return f"{self.account_url or 'connection string'}, container {self.container}" + (
            f", prefix {self.prefix}" if self.prefix else "")

    def cache_key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _parse_connection_string(text: str) -> dict[str, str]:
    parts = {}
    for piece in text.split(";"):
        if "=" in piece:
            key, value = piece.split("=", 1)
            parts[key.strip().lower()] = value.strip()
    return parts


def _session(pool_size: int) -> requests.Session:
    session = requests.Session()
    # azure-core does the retrying; urllib3 must not retry underneath it.
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4),
                                            max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _settle_environment(session: requests.Session, url: str) -> tuple[dict[str, str], str | None]:
    """Reads the proxy and CA-bundle environment once for ``url`` instead of on every request; returns both.

    requests re-reads the whole environment per request (``trust_env``), which costs about as much CPU as the
    rest of a small blob upload. A store talks to one account endpoint, so the answer does not change.
    """
    proxies = requests.utils.get_environ_proxies(url)  # honours NO_PROXY for this host
    session.proxies.update(proxies)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return dict(proxies), bundle


def _open_azure(endpoint: BlobEndpoint, env: StoreEnvironment, resources: RunResources,
                concurrency: int) -> AzureBlobStore:
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import BlobServiceClient

    from migrator.providers.blob.azure_rest import client_options, rest_calls
    from migrator.providers.blob.retry import BackoffRetry
    from migrator.providers.blob.transport import Urllib3Transport

    on_secret: Callable[[str], None] = env.redactor.add
    # Up to `concurrency` blob workers and as many block uploads can each hold a connection at once.
    session = _session(2 * concurrency + 2)
    instrumented = resources.find(PER_RETRY_POLICIES)
    per_retry = list(instrumented) if instrumented is not None else []
    transport = RequestsTransport(session=session, session_owner=False,
                                  connection_timeout=endpoint.connection_timeout,
                                  read_timeout=endpoint.read_timeout)
    options: dict[str, Any] = {
        "transport": transport,
        "retry_policy": BackoffRetry(initial=endpoint.retry_backoff, retry_total=endpoint.retry_total),
        # Bounded request sizes keep memory constant: 4 MiB per ranged GET, blocks of 4 MiB.
        "max_single_get_size": 4 * 1024 * 1024,
        "max_chunk_get_size": 4 * 1024 * 1024,
        "max_single_put_size": 8 * 1024 * 1024,
        "max_block_size": 4 * 1024 * 1024,
        # Appended after the retry policy: they see every try of every request.
        **client_options(per_retry),
    }
    account_key = sas = None
    token_credential = None
    if endpoint.connection_string is not None:
        text = env.reveal(endpoint.connection_string) or ""
        parts = _parse_connection_string(text)
        account_key = parts.get("accountkey")
        sas = parts.get("sharedaccesssignature")
        try:
            service = BlobServiceClient.from_connection_string(text, **options)
        except ValueError:
            raise InputError(f"the connection string of {endpoint.describe()} cannot be parsed",
                             hint="expected AccountName=...;AccountKey=...;BlobEndpoint=... or a SAS form") from None
        if endpoint.account_url:
            service = BlobServiceClient(endpoint.account_url, credential=service.credential, **options)
    else:
        credential: Any
        if endpoint.account_key is not None:
            account_key = env.reveal(endpoint.account_key)
            credential = account_key
        elif endpoint.sas is not None:
            sas = (env.reveal(endpoint.sas) or "").lstrip("?")
            credential = sas
        else:
            from azure.identity import DefaultAzureCredential

            token_credential = credential = DefaultAzureCredential()
        service = BlobServiceClient(str(endpoint.account_url), credential=credential, **options)
    proxies, bundle = _settle_environment(session, str(service.url))
    # The plain REST calls (every per-blob request of a transfer) skip requests: see transport.py.
    plain = Urllib3Transport(str(service.url), pool_size=2 * concurrency + 2,
                             connection_timeout=endpoint.connection_timeout, read_timeout=endpoint.read_timeout,
                             proxies=proxies, ca_bundle=bundle)
    for value in (account_key, sas):
        if value:
            on_secret(value)
    assert endpoint.container is not None
    return AzureBlobStore(service, endpoint.container, prefix=endpoint.prefix, account_key=account_key,
                          sas_token=sas, token_credential=token_credential, on_secret=on_secret,
                          owned=[session, plain],
                          rest=lambda container, prefix, where: rest_calls(container, plain, per_retry,
                                                                           prefix=prefix, where=where))


def store_key(endpoint: BlobEndpoint, concurrency: int) -> ResourceKey[BlobStore]:
    """The run resource of the store behind ``endpoint`` opened for ``concurrency`` (a test may put its own)."""
    return ResourceKey(f"blob-store:{endpoint.cache_key()}:{concurrency}")


def open_blob_store(endpoint: BlobEndpoint | dict[str, Any], env: StoreEnvironment, *, concurrency: int = 8,
                    create: bool = False) -> BlobStore:
    """The store behind ``endpoint``, made once per run (the run's resources hold it, and close it at the end).

    ``concurrency`` sizes the HTTP connection pool; ``create`` makes a missing folder root (destination side).
    Azure containers are never created here: a missing container is an input error the engineer must fix.
    """
    if isinstance(endpoint, dict):
        endpoint = BlobEndpoint.model_validate(endpoint)
    resources = run_resources(env.resources)

    def make() -> BlobStore:
        assert isinstance(endpoint, BlobEndpoint)
        if endpoint.kind == "folder":
            assert endpoint.path is not None
            return FolderBlobStore(endpoint.path, endpoint.prefix, create=create)
        return _open_azure(endpoint, env, resources, concurrency)

    return resources.obtain(store_key(endpoint, concurrency), make)
