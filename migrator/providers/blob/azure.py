"""Azure Storage blob containers through azure-storage-blob, with errors that say what to fix.

Every call goes through :func:`azure_errors`, which turns azure-core exceptions into migrator's own:
throttling (429), server faults (500, 502, 503, 504) and timeouts become :class:`TransientError` (retried),
bad credentials, a missing container and other 403/404 become :class:`BlobAccessError` or
:class:`PermanentError` (fail fast), each naming the account and container.

Server-side copies read the source through a SAS minted just in time: a container SAS signed with the account
key when we have it, a user-delegation SAS when the credential is an Azure AD identity, or the SAS the
endpoint was given. Minted SAS tokens are registered with the redactor and never stored.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobProperties,
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    ContentSettings,
    generate_container_sas,
)

from migrator.errors import ExitCode, MigratorError, PermanentError, TransientError
from migrator.providers.blob.base import BlobInfo, BlobStore

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
SAS_LIFETIME = timedelta(hours=1)
SAS_RENEW_BEFORE = timedelta(minutes=15)


class BlobAccessError(PermanentError):
    """Credentials or names that can never work (wrong key, missing container): fix the input and run again."""

    exit_code = ExitCode.INVALID_INPUT


def _retry_after(exc: HttpResponseError) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


def translate_error(exc: Exception, where: str, action: str) -> MigratorError:
    """The migrator error for an azure-core exception raised while doing ``action`` in ``where``."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # StorageErrorCode members print as their enum name
    status = getattr(exc, "status_code", None)
    reason = f"{action} in {where} failed"
    if isinstance(exc, ClientAuthenticationError) or code in {"AuthenticationFailed", "InvalidAuthenticationInfo"}:
        return BlobAccessError(f"{reason}: authentication failed ({code or status})",
                               hint="check the account key, SAS or connection string (and the clock: a SAS "
                                    "outside its validity window is refused too)")
    if code == "ContainerNotFound":
        return BlobAccessError(f"{reason}: the container does not exist",
                               hint="create it, or fix `container` in the environment file")
    if code == "CannotVerifyCopySource":
        return PermanentError(f"{reason}: the destination could not read the copy source ({status})",
                              hint="the source SAS is missing, expired or lacks read permission")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return TransientError(f"{reason}: {type(exc).__name__}: {exc}",
                              hint="the storage endpoint did not answer; check the network if this persists")
    if status in TRANSIENT_STATUS:
        retry_after = _retry_after(exc) if isinstance(exc, HttpResponseError) else None
        return TransientError(f"{reason}: HTTP {status} {code or ''}".rstrip(), retry_after=retry_after,
                              hint="throttled or a server fault: retried with backoff")
    if status == 403:
        return BlobAccessError(f"{reason}: access denied ({code or 403})",
                               hint="check the account key, SAS or connection string; if they are right, the "
                                    "identity lacks permission: grant a Storage Blob Data role or use a SAS with "
                                    "the needed permissions")
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return PermanentError(f"{reason}: not found ({code or 404})", hint="check the account URL and names")
    return PermanentError(f"{reason}: HTTP {status} {code or type(exc).__name__}")


@contextlib.contextmanager
def azure_errors(where: str, action: str) -> Iterator[None]:
    try:
        yield
    except MigratorError:
        raise
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        raise translate_error(exc, where, action) from exc


class _DownloadStream(io.RawIOBase):
    """A file-like view of a download that fetches chunk by chunk (constant memory)."""

    def __init__(self, downloader: Any, where: str, name: str) -> None:
        self._downloader = downloader
        self._where = where
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        with azure_errors(self._where, f"reading blob {self._name!r}"):
            data = self._downloader.read(len(view))
        view[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        with azure_errors(self._where, f"reading blob {self._name!r}"):
            return bytes(self._downloader.read(size if size is not None and size >= 0 else -1))


def _info(name: str, props: BlobProperties) -> BlobInfo:
    settings = props.content_settings
    md5 = settings.content_md5 if settings is not None else None
    return BlobInfo(
        name=name,
        size=int(props.size or 0),
        md5=bytes(md5) if md5 else None,
        etag=props.etag.strip('"') if props.etag else None,
        last_modified=props.last_modified.timestamp() if props.last_modified else None,
        content_type=settings.content_type if settings is not None else None,
        metadata=dict(props.metadata or {}),
    )


class AzureBlobStore(BlobStore):
    """One container (optionally one prefix inside it) of an Azure Storage account."""

    supports_blocks = True

    def __init__(self, service: BlobServiceClient, container_name: str, *, prefix: str = "",
                 account_key: str | None = None, sas_token: str | None = None, token_credential: Any = None,
                 on_secret: Callable[[str], None] | None = None, owned: list[Any] | None = None) -> None:
        self.service = service
        self.container: ContainerClient = service.get_container_client(container_name)
        self.account = service.account_name or "?"
        self.container_name = container_name
        self.prefix = prefix.strip("/")
        self._account_key = account_key
        self._sas_token = sas_token.lstrip("?") if sas_token else None
        self._token_credential = token_credential
        self._on_secret = on_secret or (lambda value: None)
        self._owned = owned or []
        self._minted: tuple[str, datetime] | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        where = f"account {self.account}, container {self.container_name}"
        return where + (f", prefix {self.prefix}" if self.prefix else "")

    def _full(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _blob(self, name: str) -> Any:
        return self.container.get_blob_client(self._full(name))

    # -- reading -------------------------------------------------------------------------------------------

    def exists(self) -> bool:
        with azure_errors(self.describe(), "checking the container"):
            return bool(self.container.exists())

    def ensure_container(self) -> None:
        with azure_errors(self.describe(), "checking the container"):
            self.container.get_container_properties()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        start = self._full(prefix) if self.prefix else prefix
        if self.prefix and not prefix:
            start = self.prefix + "/"
        with azure_errors(self.describe(), "listing blobs"):
            for props in self.container.list_blobs(name_starts_with=start or None, include=["metadata"]):
                yield _info(self._rel(props.name), props)

    def info(self, name: str) -> BlobInfo | None:
        try:
            with azure_errors(self.describe(), f"reading properties of blob {name!r}"):
                props = self._blob(name).get_blob_properties()
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError) and \
                    getattr(exc.__cause__, "error_code", None) in (None, "BlobNotFound"):
                return None
            raise
        return _info(name, props)

    def open_read(self, name: str) -> BinaryIO:
        with azure_errors(self.describe(), f"reading blob {name!r}"):
            downloader = self._blob(name).download_blob(max_concurrency=1)
        return io.BufferedReader(_DownloadStream(downloader, self.describe(), name))  # type: ignore[return-value]

    # -- writing -------------------------------------------------------------------------------------------

    def write(self, name: str, data: bytes | BinaryIO, *, length: int | None = None,
              content_type: str | None = None, metadata: Mapping[str, str] | None = None,
              md5: bytes | None = None) -> BlobInfo:
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5) if md5 else None)
        if isinstance(data, (bytes, bytearray)) and length is None:
            length = len(data)
        with azure_errors(self.describe(), f"writing blob {name!r}"):
            result = self._blob(name).upload_blob(data, length=length, overwrite=True, content_settings=settings,
                                                  metadata=dict(metadata or {}), max_concurrency=1)
        etag = str(result.get("etag") or "").strip('"') or None
        return BlobInfo(name=name, size=length or 0, md5=md5, etag=etag,
                        content_type=content_type, metadata=dict(metadata or {}))

    def delete(self, name: str) -> None:
        try:
            with azure_errors(self.describe(), f"deleting blob {name!r}"):
                self._blob(name).delete_blob()
        except PermanentError as exc:
            if not isinstance(exc.__cause__, ResourceNotFoundError):
                raise

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        with azure_errors(self.describe(), f"staging a block of blob {name!r}"):
            # validate_content: the service checks each block's MD5 on arrival, so what is stored is what we hashed.
            self._blob(name).stage_block(block_id, data, length=len(data), validate_content=True)

    def staged_blocks(self, name: str) -> dict[str, int]:
        try:
            with azure_errors(self.describe(), f"listing blocks of blob {name!r}"):
                _, uncommitted = self._blob(name).get_block_list("uncommitted")
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return {}
            raise
        return {block.id: int(block.size or 0) for block in uncommitted}

    def commit_blocks(self, name: str, block_ids: list[str], *, content_type: str | None = None,
                      metadata: Mapping[str, str] | None = None, md5: bytes | None = None) -> BlobInfo:
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5) if md5 else None)
        with azure_errors(self.describe(), f"committing blob {name!r}"):
            result = self._blob(name).commit_block_list([BlobBlock(block_id=b) for b in block_ids],
                                                        content_settings=settings, metadata=dict(metadata or {}))
        etag = str(result.get("etag") or "").strip('"') or None
        return BlobInfo(name=name, size=0, md5=md5, etag=etag, content_type=content_type,
                        metadata=dict(metadata or {}))

    # -- server-side copy ----------------------------------------------------------------------------------

    def _read_sas(self) -> str | None:
        """A read/list SAS for this container, minted when first needed and renewed before it expires."""
        if self._sas_token:
            return self._sas_token
        now = datetime.now(UTC)
        with self._lock:
            if self._minted and self._minted[1] - now > SAS_RENEW_BEFORE:
                return self._minted[0]
            start, expiry = now - timedelta(minutes=5), now + SAS_LIFETIME
            permission = ContainerSasPermissions(read=True)
            if self._account_key:
                token = generate_container_sas(self.account, self.container_name, account_key=self._account_key,
                                               permission=permission, start=start, expiry=expiry)
            elif self._token_credential is not None:
                with azure_errors(self.describe(), "getting a user delegation key"):
                    key = self.service.get_user_delegation_key(start, expiry)
                token = generate_container_sas(self.account, self.container_name, user_delegation_key=key,
                                               permission=permission, start=start, expiry=expiry)
            else:
                return None
            self._on_secret(token)
            self._minted = (token, expiry)
            return token

    def copy_source_url(self, name: str) -> str | None:
        sas = self._read_sas()
        if sas is None:
            return None
        return f"{self._blob(name).url}?{sas}"

    def start_copy(self, name: str, source_url: str) -> str:
        with azure_errors(self.describe(), f"starting a server-side copy into blob {name!r}"):
            result = self._blob(name).start_copy_from_url(source_url)
        return str(result.get("copy_status") or "pending")

    def copy_status(self, name: str) -> tuple[str | None, str | None]:
        with azure_errors(self.describe(), f"reading the copy status of blob {name!r}"):
            props = self._blob(name).get_blob_properties()
        copy = props.copy
        return (copy.status if copy else None), (copy.status_description if copy else None)

    def close(self) -> None:
        for obj in self._owned:
            with contextlib.suppress(Exception):
                obj.close()
        with contextlib.suppress(Exception):
            self.service.close()
