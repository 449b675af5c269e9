"""Azure Storage blob containers through azure-storage-blob, with errors that say what to fix.

Every call goes through :func:`~migrator.providers.blob.errors.azure_errors`, which turns azure-core exceptions
into migrator's own (transient ones retried, bad input failing fast), each naming the account and container.

Server-side copies read the source through a SAS minted just in time: a container SAS signed with the account
key when we have it, a user-delegation SAS when the credential is an Azure AD identity, or the SAS the
endpoint was given. Minted SAS tokens are registered with the redactor and never stored.

The hot calls go through the REST fast path of :mod:`~migrator.providers.blob.azure_rest` when the store has one
(``rest``), else through the SDK API; everything else always uses the SDK API.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import (
    BlobBlock,
    BlobProperties,
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    ContentSettings,
    generate_container_sas,
)

from migrator.errors import PermanentError
from migrator.providers.blob.azure_rest import RestCalls, blob_url
from migrator.providers.blob.base import BlobInfo, BlobStore
from migrator.providers.blob.errors import BlobAccessError, azure_errors, translate_error
from migrator.secrets import blob_label

__all__ = ["AzureBlobStore", "BlobAccessError", "azure_errors", "translate_error"]

SAS_LIFETIME = timedelta(hours=1)
SAS_RENEW_BEFORE = timedelta(minutes=15)

# azure-core logs every request and response at INFO through this logger: far too costly (and noisy) for
# hundreds of thousands of blob requests. Quiet unless someone configured it on purpose.
_HTTP_LOG = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
if _HTTP_LOG.level == logging.NOTSET:
    _HTTP_LOG.setLevel(logging.WARNING)


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
        with azure_errors(self._where, f"reading blob {blob_label(self._name)}"):
            data = self._downloader.read(len(view))
        view[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        with azure_errors(self._where, f"reading blob {blob_label(self._name)}"):
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
    """One container (optionally one prefix inside it) of an Azure Storage account.

    ``rest``: the fast path of the hot calls (:class:`~migrator.providers.blob.azure_rest.RestCalls`), made by the
    caller with the same container client's policies; None: the SDK API throughout.
    """

    supports_blocks = True

    def __init__(self, service: BlobServiceClient, container_name: str, *, prefix: str = "",
                 account_key: str | None = None, sas_token: str | None = None, token_credential: Any = None,
                 on_secret: Callable[[str], None] | None = None, owned: list[Any] | None = None,
                 rest: Callable[[ContainerClient, str, str], RestCalls | None] | None = None) -> None:
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
        base, _, query = str(self.container.url).partition("?")
        self._split_url = (base.rstrip("/"), query)  # query: the SAS, when the credential is one
        self.rest = rest(self.container, self.prefix, self.describe()) if rest is not None else None
        # One Put Blob for any stream on the fast path (the SDK would cut a large one into blocks, unhashed).
        self.hashes_streamed_writes = self.rest is not None

    def _url(self, name: str) -> str:
        return blob_url(*self._split_url, self._full(name))

    def describe(self) -> str:
        where = f"account {self.account}, container {self.container_name}"
        return where + (f", prefix {self.prefix}" if self.prefix else "")

    def inventory_identity(self) -> tuple[str, str]:
        """The container's URL (without the SAS query, when the credential is one) and the prefix."""
        return self._split_url[0], self.prefix

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

    def list(self, prefix: str = "", *, metadata: bool = True) -> Iterator[BlobInfo]:
        """Every blob under ``prefix``, page by page; ``metadata=False`` leaves metadata out."""
        start = self._full(prefix) if self.prefix else prefix
        if self.prefix and not prefix:
            start = self.prefix + "/"
        if self.rest is not None:
            yield from self.rest.list(start, metadata)
            return
        with azure_errors(self.describe(), "listing blobs"):
            for props in self.container.list_blobs(name_starts_with=start or None,
                                                   include=["metadata"] if metadata else None):
                yield _info(self._rel(props.name), props)

    def _properties(self, name: str) -> BlobProperties | None:
        """Get Blob Properties through the SDK, or None for a missing blob."""
        try:
            with azure_errors(self.describe(), f"reading properties of blob {blob_label(name)}"):
                props: BlobProperties = self._blob(name).get_blob_properties()
                return props
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError) and \
                    getattr(exc.__cause__, "error_code", None) in (None, "BlobNotFound"):
                return None
            raise

    def info(self, name: str) -> BlobInfo | None:
        if self.rest is not None:
            return self.rest.info(name)
        props = self._properties(name)
        return _info(name, props) if props is not None else None

    def open_read(self, name: str) -> BinaryIO:
        with azure_errors(self.describe(), f"reading blob {blob_label(name)}"):
            downloader = self._blob(name).download_blob(max_concurrency=1)
        return io.BufferedReader(_DownloadStream(downloader, self.describe(), name))

    # -- writing -------------------------------------------------------------------------------------------

    def write(self, name: str, data: bytes | BinaryIO, *, length: int | None = None,
              content_type: str | None = None, metadata: Mapping[str, str] | None = None,
              md5: bytes | None = None) -> BlobInfo:
        if self.rest is not None and isinstance(data, (bytes, bytearray, memoryview)):
            return self.rest.put_blob(name, bytes(data), content_type=content_type, metadata=metadata, md5=md5)
        if self.rest is not None and length is not None and hasattr(data, "seek"):
            return self.rest.put_blob(name, data, length=length, content_type=content_type, metadata=metadata,
                                      md5=md5)  # a seekable stream
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5) if md5 else None)
        if isinstance(data, (bytes, bytearray)) and length is None:
            length = len(data)
        with azure_errors(self.describe(), f"writing blob {blob_label(name)}"):
            result = self._blob(name).upload_blob(data, length=length, overwrite=True, content_settings=settings,
                                                  metadata=dict(metadata or {}), max_concurrency=1)
        etag = str(result.get("etag") or "").strip('"') or None
        # Without an MD5 of ours, the one the service computed for a single Put Blob (none for blocks).
        computed = result.get("content_md5")
        return BlobInfo(name=name, size=length or 0, md5=md5 or (bytes(computed) if computed else None), etag=etag,
                        content_type=content_type, metadata=dict(metadata or {}))

    def set_metadata(self, name: str, metadata: Mapping[str, str], *, etag: str | None) -> None:
        if self.rest is not None:
            self.rest.set_metadata(name, metadata, etag=etag)
            return
        with azure_errors(self.describe(), f"setting the metadata of blob {blob_label(name)}"):
            self._blob(name).set_blob_metadata(dict(metadata), etag=etag,
                                               match_condition=MatchConditions.IfNotModified if etag else None)

    def delete(self, name: str) -> None:
        if self.rest is not None:
            self.rest.delete(name)
            return
        try:
            with azure_errors(self.describe(), f"deleting blob {blob_label(name)}"):
                self._blob(name).delete_blob()
        except PermanentError as exc:
            if not isinstance(exc.__cause__, ResourceNotFoundError):
                raise

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        # No per-block Content-MD5: the copy hashes each byte once, for the whole blob's (see the copy engine).
        if self.rest is not None:
            self.rest.stage_block(name, block_id, data)
            return
        with azure_errors(self.describe(), f"staging a block of blob {blob_label(name)}"):
            self._blob(name).stage_block(block_id, data, length=len(data))

    def staged_blocks(self, name: str) -> dict[str, int]:
        try:
            with azure_errors(self.describe(), f"listing blocks of blob {blob_label(name)}"):
                _, uncommitted = self._blob(name).get_block_list("uncommitted")
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return {}
            raise
        return {block.id: int(block.size or 0) for block in uncommitted}

    def commit_blocks(self, name: str, block_ids: builtins.list[str], *, content_type: str | None = None,
                      metadata: Mapping[str, str] | None = None, md5: bytes | None = None) -> BlobInfo:
        if self.rest is not None:
            return self.rest.commit_blocks(name, block_ids, content_type=content_type, metadata=metadata, md5=md5)
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5) if md5 else None)
        with azure_errors(self.describe(), f"committing blob {blob_label(name)}"):
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

    def _shares_account_with(self, other: BlobStore | None) -> bool:
        """Whether ``other`` is a container of this account that signs requests with the account's key or an
        identity: a Copy Blob it receives may then name a source of this account without a SAS (the service
        authorizes the read with the request's own credential, and skips checking a SAS on every copy)."""
        return isinstance(other, AzureBlobStore) and other.account == self.account \
            and self._split_url[0].rsplit("/", 1)[0] == other._split_url[0].rsplit("/", 1)[0] \
            and other._sas_token is None and (other._account_key is not None or other._token_credential is not None)

    def copy_source_url(self, name: str, *, into: BlobStore | None = None) -> str | None:
        if self._shares_account_with(into):
            return self._url(name).partition("?")[0]
        sas = self._read_sas()
        if sas is None:
            return None
        return f"{self._blob(name).url}?{sas}"

    def start_copy(self, name: str, source_url: str) -> str:
        if self.rest is not None:
            return self.rest.start_copy(name, source_url)
        with azure_errors(self.describe(), f"starting a server-side copy into blob {blob_label(name)}"):
            result = self._blob(name).start_copy_from_url(source_url)
        return str(result.get("copy_status") or "pending")

    def copy_status(self, name: str) -> tuple[str | None, str | None]:
        if self.rest is not None:
            return self.rest.copy_status(name)
        props = self._properties(name)
        copy = props.copy if props is not None else None
        return (copy.status if copy else None), (copy.status_description if copy else None)

    def close(self) -> None:
        for obj in self._owned:
            with contextlib.suppress(Exception):
                obj.close()
        with contextlib.suppress(Exception):
            self.service.close()
