"""Azure Storage blob containers through azure-storage-blob, with errors that say what to fix.

Every call goes through :func:`azure_errors`, which turns azure-core exceptions into migrator's own:
throttling (429), server faults (500, 502, 503, 504) and timeouts become :class:`TransientError` (retried),
bad credentials, a missing container and other 403/404 become :class:`BlobAccessError` or
:class:`PermanentError` (fail fast), each naming the account and container.

Server-side copies read the source through a SAS minted just in time: a container SAS signed with the account
key when we have it, a user-delegation SAS when the credential is an Azure AD identity, or the SAS the
endpoint was given. Minted SAS tokens are registered with the redactor and never stored.

The hot calls (List Blobs, Put Blob of an in-memory body, Put Block, Put Block List, Copy Blob, Get Blob
Properties, Delete Blob) are sent as plain REST requests, because the SDK's per-call work dominates small blobs:
building a ``BlobClient`` per blob, deserializing listings model by model and the ``requests`` transport cost more
CPU than the storage service spends on the request. They run through a pipeline made of the container client's
own retry, header and credential policies plus the run's per-retry policies, on the lean transport of
:mod:`~migrator.providers.blob.transport` when the store was opened with one (else the SDK's transport).
Everything else uses the SDK API; without those policies to borrow (a future SDK), the hot calls fall back to it
too.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import io
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlencode

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import Pipeline
from azure.core.rest import HttpRequest
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
from migrator.providers.azure.errors import retry_after as retry_after_seconds
from migrator.providers.blob.base import BlobInfo, BlobStore
from migrator.secrets import blob_label, without_url_paths

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
SAS_LIFETIME = timedelta(hours=1)
SAS_RENEW_BEFORE = timedelta(minutes=15)
#: Blobs per List Blobs page (the service maximum).
LIST_PAGE = 5000

# azure-core logs every request and response at INFO through this logger: far too costly (and noisy) for
# hundreds of thousands of blob requests. Quiet unless someone configured it on purpose.
_HTTP_LOG = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
if _HTTP_LOG.level == logging.NOTSET:
    _HTTP_LOG.setLevel(logging.WARNING)


class BlobAccessError(PermanentError):
    """Credentials or names that can never work (wrong key, missing container): fix the input and run again."""

    exit_code = ExitCode.INVALID_INPUT


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
        return TransientError(f"{reason}: {type(exc).__name__}: {without_url_paths(str(exc))}",
                              hint="the storage endpoint did not answer; check the network if this persists")
    if status in TRANSIENT_STATUS:
        retry_after = retry_after_seconds(exc) if isinstance(exc, HttpResponseError) else None
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


def _response_error(response: Any) -> HttpResponseError:
    """The azure-core exception the SDK would raise for a failed response (with its storage error code)."""
    code = response.headers.get("x-ms-error-code")
    status = response.status_code
    cls = ResourceNotFoundError if status == 404 else \
        ClientAuthenticationError if code in {"AuthenticationFailed", "InvalidAuthenticationInfo"} else \
        HttpResponseError
    exc = cls(message=f"HTTP {status} {code or response.reason or ''}".rstrip(), response=response)
    exc.error_code = code  # type: ignore[attr-defined]  # azure-core sets it on errors it parses itself
    return exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _next_marker(body: bytes) -> str:
    """The NextMarker of a List Blobs page, read from the end of the body before the page is parsed."""
    at = body.rfind(b"<NextMarker")
    if at < 0:
        return ""
    end = body.find(b"</NextMarker>", at)
    snippet = body[at:end + len(b"</NextMarker>")] if end >= 0 else body[at:body.find(b">", at) + 1]
    return ET.fromstring(snippet).text or ""


def _parse_listing(body: bytes, rel: Callable[[str], str], dates: dict[str, float]) -> tuple[list[BlobInfo], str]:
    """The blobs and next marker of one List Blobs page (``dates`` caches parsed Last-Modified values)."""
    root = ET.fromstring(body)
    found = []
    blobs = root.find("Blobs")
    for el in blobs.iterfind("Blob") if blobs is not None else ():
        name_el = el.find("Name")
        name = (name_el.text or "") if name_el is not None else ""
        if name_el is not None and name_el.get("Encoded") == "true":
            name = unquote(name)
        props = el.find("Properties")
        get = props.findtext if props is not None else (lambda tag, default=None: default)
        md5 = get("Content-MD5")
        modified = get("Last-Modified")
        stamp = None
        if modified:
            stamp = dates.get(modified)
            if stamp is None:
                stamp = dates[modified] = parsedate_to_datetime(modified).timestamp()
        meta_el = el.find("Metadata")
        metadata = {m.tag: m.text or "" for m in meta_el if m.tag != "x-ms-invalid-name"} \
            if meta_el is not None else {}
        etag = get("Etag")
        found.append(BlobInfo(name=rel(name), size=int(get("Content-Length") or 0),
                              md5=base64.b64decode(md5) if md5 else None,
                              etag=etag.strip('"') if etag else None, last_modified=stamp,
                              content_type=get("Content-Type") or None, metadata=metadata))
    return found, root.findtext("NextMarker") or ""


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


def _plain_pipeline(container: ContainerClient, transport: Any, per_retry: list[Any]) -> Any:
    """The pipeline of the plain REST calls: the container client's retry, date/version header, user agent and
    credential policies (a SAS travels in the URL), then the per-retry policies, on ``transport`` (default: the
    SDK's). The SDK's pipeline adds request/response hooks, logging, tracing, content validation and decoding
    policies that these calls do not use. None when the client lacks what is borrowed (another SDK version)."""
    config = getattr(container, "_config", None)
    retry = getattr(config, "retry_policy", None)
    headers = getattr(config, "headers_policy", None)
    agent = getattr(config, "user_agent_policy", None)
    sdk_pipeline = getattr(container, "_pipeline", None)
    if retry is None or headers is None or sdk_pipeline is None or not hasattr(container, "_credential_policy"):
        return sdk_pipeline
    credential = container._credential_policy
    policies = [p for p in (agent, retry, headers, credential) if p is not None] + list(per_retry)
    return Pipeline(transport if transport is not None else sdk_pipeline._transport, policies=policies)


def _props_from_headers(name: str, headers: Mapping[str, str]) -> BlobInfo:
    """A blob's properties from a Get Blob Properties response."""
    md5 = headers.get("Content-MD5")
    modified = headers.get("Last-Modified")
    etag = headers.get("ETag")
    metadata = {key[len("x-ms-meta-"):]: value for key, value in headers.items()
                if key.lower().startswith("x-ms-meta-")}
    return BlobInfo(name=name, size=int(headers.get("Content-Length") or 0),
                    md5=base64.b64decode(md5) if md5 else None, etag=etag.strip('"') if etag else None,
                    last_modified=parsedate_to_datetime(modified).timestamp() if modified else None,
                    content_type=headers.get("Content-Type") or None, metadata=metadata)


class AzureBlobStore(BlobStore):
    """One container (optionally one prefix inside it) of an Azure Storage account."""

    supports_blocks = True

    def __init__(self, service: BlobServiceClient, container_name: str, *, prefix: str = "",
                 account_key: str | None = None, sas_token: str | None = None, token_credential: Any = None,
                 on_secret: Callable[[str], None] | None = None, owned: list[Any] | None = None,
                 plain_transport: Any = None, per_retry_policies: list[Any] | None = None) -> None:
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
        self._pipeline: Any = _plain_pipeline(self.container, plain_transport, per_retry_policies or [])
        self._api_version = str(getattr(self.container, "api_version", "") or "")
        if not self._api_version:
            self._pipeline = None
        base, _, query = str(self.container.url).partition("?")
        self._split_url = (base.rstrip("/"), query)  # query: the SAS, when the credential is one

    def _url(self, name: str, **params: str) -> str:
        base, query = self._split_url
        url = f"{base}/{quote(self._full(name), safe='~/')}"
        extra = "&".join(p for p in (urlencode(params, quote_via=quote) if params else "", query) if p)
        return f"{url}?{extra}" if extra else url

    def _send(self, request: HttpRequest, *expected: int) -> Any:
        """Runs ``request`` through the SDK pipeline; a status other than ``expected`` raises as the SDK would."""
        response = self._pipeline.run(request).http_response
        if response.status_code not in expected:
            raise _response_error(response)
        return response

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
        """Every blob under ``prefix``, a page (:data:`LIST_PAGE`) at a time; ``metadata=False`` leaves it out."""
        start = self._full(prefix) if self.prefix else prefix
        if self.prefix and not prefix:
            start = self.prefix + "/"
        if self._pipeline is None:
            with azure_errors(self.describe(), "listing blobs"):
                for props in self.container.list_blobs(name_starts_with=start or None,
                                                       include=["metadata"] if metadata else None):
                    yield _info(self._rel(props.name), props)
            return
        base, query = self._split_url
        dates: dict[str, float] = {}

        def fetch(marker: str) -> bytes:
            params = {"restype": "container", "comp": "list", "maxresults": str(LIST_PAGE)}
            if start:
                params["prefix"] = start
            if marker:
                params["marker"] = marker
            if metadata:
                params["include"] = "metadata"
            url = f"{base}?{urlencode(params, quote_via=quote)}" + (f"&{query}" if query else "")
            with azure_errors(self.describe(), "listing blobs"):
                response = self._send(HttpRequest("GET", url, headers={"x-ms-version": self._api_version,
                                                                       "Accept": "application/xml"}), 200)
                return bytes(response.body())

        # The next page is requested as soon as a page's marker is known, so the service prepares it while this
        # one is parsed and consumed.
        with ThreadPoolExecutor(1, thread_name_prefix="blob-list-page") as pool:
            body = fetch("")
            while True:
                marker = _next_marker(body)
                ahead = pool.submit(fetch, marker) if marker else None
                try:
                    with azure_errors(self.describe(), "listing blobs"):
                        page, _ = _parse_listing(body, self._rel, dates)
                    yield from page
                except BaseException:  # the caller stopped early (or parsing failed): the page ahead is not needed
                    if ahead is not None:
                        ahead.cancel()
                    raise
                if ahead is None:
                    return
                body = ahead.result()

    def _head(self, name: str) -> Any:
        """Get Blob Properties as a plain request: the response (its headers), or None for a missing blob."""
        with azure_errors(self.describe(), f"reading properties of blob {blob_label(name)}"):
            response = self._pipeline.run(HttpRequest("HEAD", self._url(name),
                                                      headers={"x-ms-version": self._api_version})).http_response
            if response.status_code == 404 and response.headers.get("x-ms-error-code") in (None, "BlobNotFound"):
                return None
            if response.status_code != 200:
                raise _response_error(response)
        return response

    def info(self, name: str) -> BlobInfo | None:
        if self._pipeline is not None:
            response = self._head(name)
            return _props_from_headers(name, response.headers) if response is not None else None
        try:
            with azure_errors(self.describe(), f"reading properties of blob {blob_label(name)}"):
                props = self._blob(name).get_blob_properties()
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError) and \
                    getattr(exc.__cause__, "error_code", None) in (None, "BlobNotFound"):
                return None
            raise
        return _info(name, props)

    def open_read(self, name: str) -> BinaryIO:
        with azure_errors(self.describe(), f"reading blob {blob_label(name)}"):
            downloader = self._blob(name).download_blob(max_concurrency=1)
        return io.BufferedReader(_DownloadStream(downloader, self.describe(), name))  # type: ignore[return-value]

    # -- writing -------------------------------------------------------------------------------------------

    def write(self, name: str, data: bytes | BinaryIO, *, length: int | None = None,
              content_type: str | None = None, metadata: Mapping[str, str] | None = None,
              md5: bytes | None = None) -> BlobInfo:
        if isinstance(data, (bytes, bytearray, memoryview)) and self._pipeline is not None:
            return self._put_blob(name, bytes(data), content_type=content_type, metadata=metadata, md5=md5)
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5) if md5 else None)
        if isinstance(data, (bytes, bytearray)) and length is None:
            length = len(data)
        with azure_errors(self.describe(), f"writing blob {blob_label(name)}"):
            result = self._blob(name).upload_blob(data, length=length, overwrite=True, content_settings=settings,
                                                  metadata=dict(metadata or {}), max_concurrency=1)
        etag = str(result.get("etag") or "").strip('"') or None
        return BlobInfo(name=name, size=length or 0, md5=md5, etag=etag,
                        content_type=content_type, metadata=dict(metadata or {}))

    def _put_blob(self, name: str, data: bytes, *, content_type: str | None, metadata: Mapping[str, str] | None,
                  md5: bytes | None) -> BlobInfo:
        """One Put Blob with content settings, metadata and Content-MD5 in the same request (no follow-up calls).

        The MD5 goes both as ``Content-MD5`` (the service refuses a body that does not match it) and as the
        blob's stored Content-MD5; it is computed here when the caller has none.
        """
        md5 = md5 or hashlib.md5(data, usedforsecurity=False).digest()
        encoded = _b64(md5)
        headers = {"x-ms-version": self._api_version, "x-ms-blob-type": "BlockBlob",
                   "Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                   "Content-MD5": encoded, "x-ms-blob-content-md5": encoded}
        if content_type:
            headers["x-ms-blob-content-type"] = content_type
        for key, value in (metadata or {}).items():
            headers[f"x-ms-meta-{key}"] = value
        with azure_errors(self.describe(), f"writing blob {blob_label(name)}"):
            response = self._send(HttpRequest("PUT", self._url(name), headers=headers, content=data), 201)
        etag = str(response.headers.get("ETag") or "").strip('"') or None
        return BlobInfo(name=name, size=len(data), md5=md5, etag=etag, content_type=content_type,
                        metadata=dict(metadata or {}))

    def delete(self, name: str) -> None:
        if self._pipeline is not None:
            with azure_errors(self.describe(), f"deleting blob {blob_label(name)}"):
                response = self._pipeline.run(HttpRequest("DELETE", self._url(name), headers={
                    "x-ms-version": self._api_version})).http_response
                if response.status_code not in (202, 404):  # gone already: fine
                    raise _response_error(response)
            return
        try:
            with azure_errors(self.describe(), f"deleting blob {blob_label(name)}"):
                self._blob(name).delete_blob()
        except PermanentError as exc:
            if not isinstance(exc.__cause__, ResourceNotFoundError):
                raise

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        # With a Content-MD5 the service checks each block on arrival, so what is stored is what we hashed.
        # (Azurite also stores a block several times faster when the request carries one.)
        if self._pipeline is None:
            with azure_errors(self.describe(), f"staging a block of blob {blob_label(name)}"):
                self._blob(name).stage_block(block_id, data, length=len(data), validate_content=True)
            return
        # The SDK base64-encodes block ids once more on the wire (and decodes them when listing): so do we.
        url = self._url(name, comp="block", blockid=_b64(block_id.encode()))
        headers = {"x-ms-version": self._api_version, "Content-Type": "application/octet-stream",
                   "Content-Length": str(len(data)), "Content-MD5": _b64(hashlib.md5(data, usedforsecurity=False)
                                                                         .digest())}
        with azure_errors(self.describe(), f"staging a block of blob {blob_label(name)}"):
            self._send(HttpRequest("PUT", url, headers=headers, content=data), 201)

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
        if self._pipeline is not None:
            # Ids base64-encoded once more, as staged (see stage_block).
            body = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                    + "".join(f"<Latest>{_b64(b.encode())}</Latest>" for b in block_ids) + "</BlockList>").encode()
            headers = {"x-ms-version": self._api_version, "Content-Type": "application/xml",
                       "Content-Length": str(len(body)),
                       "Content-MD5": _b64(hashlib.md5(body, usedforsecurity=False).digest())}
            if md5:
                headers["x-ms-blob-content-md5"] = _b64(md5)
            if content_type:
                headers["x-ms-blob-content-type"] = content_type
            for key, value in (metadata or {}).items():
                headers[f"x-ms-meta-{key}"] = value
            with azure_errors(self.describe(), f"committing blob {blob_label(name)}"):
                response = self._send(HttpRequest("PUT", self._url(name, comp="blocklist"), headers=headers,
                                                  content=body), 201)
            etag = str(response.headers.get("ETag") or "").strip('"') or None
            return BlobInfo(name=name, size=0, md5=md5, etag=etag, content_type=content_type,
                            metadata=dict(metadata or {}))
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
        if self._pipeline is not None:
            with azure_errors(self.describe(), f"starting a server-side copy into blob {blob_label(name)}"):
                response = self._send(HttpRequest("PUT", self._url(name), headers={
                    "x-ms-version": self._api_version, "x-ms-copy-source": source_url, "Content-Length": "0"}), 202)
            return str(response.headers.get("x-ms-copy-status") or "pending")
        with azure_errors(self.describe(), f"starting a server-side copy into blob {blob_label(name)}"):
            result = self._blob(name).start_copy_from_url(source_url)
        return str(result.get("copy_status") or "pending")

    def copy_status(self, name: str) -> tuple[str | None, str | None]:
        if self._pipeline is not None:
            response = self._head(name)
            if response is None:
                return None, None
            return response.headers.get("x-ms-copy-status"), response.headers.get("x-ms-copy-status-description")
        with azure_errors(self.describe(), f"reading the copy status of blob {blob_label(name)}"):
            props = self._blob(name).get_blob_properties()
        copy = props.copy
        return (copy.status if copy else None), (copy.status_description if copy else None)

    def close(self) -> None:
        for obj in self._owned:
            with contextlib.suppress(Exception):
                obj.close()
        with contextlib.suppress(Exception):
            self.service.close()
