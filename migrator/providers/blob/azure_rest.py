"""The REST fast path of the Azure blob store: the hot calls as plain requests, on a pipeline borrowed from the SDK.

The hot calls of a transfer (List Blobs, Put Blob of an in-memory body, Put Block, Put Block List, Copy Blob, Get
Blob Properties, Delete Blob) are sent as plain REST requests, because the SDK's per-call work dominates small
blobs: building a ``BlobClient`` per blob, deserializing listings model by model and the ``requests`` transport
cost more CPU than the storage service spends on the request. They run through a pipeline made of the container
client's own retry, header and credential policies plus the run's per-retry policies, on the lean transport of
:mod:`~migrator.providers.blob.transport` (else the SDK's transport).

Those policies are private attributes of azure-storage-blob's clients (``_config``, ``_pipeline``,
``_credential_policy``, the pipeline's ``_transport``), and the per-retry policies go in through the private client
option ``_additional_pipeline_policies``. This module is the only place that touches them, and
``azure-storage-blob`` is pinned to a minor range for it. Without them (another SDK version, or
``MIGRATOR_BLOB_FAST_PATH=0``) :func:`rest_calls` returns None and the store uses the SDK API for everything;
:func:`missing_borrowings` names what is missing (a test fails on it).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlencode

from azure.core.pipeline import Pipeline
from azure.core.rest import HttpRequest

from migrator.providers.blob.base import BlobInfo
from migrator.providers.blob.errors import azure_errors, response_error
from migrator.secrets import blob_label

#: ``0`` turns the fast path off: every call goes through the SDK API (the fallback; the tests run both).
FAST_PATH_ENV = "MIGRATOR_BLOB_FAST_PATH"
#: Blobs per List Blobs page (the service maximum).
LIST_PAGE = 5000


def fast_path_wanted() -> bool:
    return os.environ.get(FAST_PATH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def client_options(per_retry: builtins.list[Any]) -> dict[str, Any]:
    """The client option that appends ``per_retry`` after the SDK's retry policy (they see every try)."""
    return {"_additional_pipeline_policies": per_retry}


def missing_borrowings(container: Any) -> builtins.list[str]:
    """What the fast path borrows from a ``ContainerClient`` and ``container`` lacks (empty: all there)."""
    config = getattr(container, "_config", None)
    missing = [] if config is not None else ["_config"]
    missing += [f"_config.{name}" for name in ("retry_policy", "headers_policy")
                if config is not None and getattr(config, name, None) is None]
    pipeline = getattr(container, "_pipeline", None)
    if pipeline is None:
        missing.append("_pipeline")
    elif getattr(pipeline, "_transport", None) is None:
        missing.append("_pipeline._transport")
    if not hasattr(container, "_credential_policy"):
        missing.append("_credential_policy")
    if not str(getattr(container, "api_version", "") or ""):
        missing.append("api_version")
    return missing


def blob_url(base: str, query: str, full_name: str, **params: str) -> str:
    """The URL of blob ``full_name`` in the container at ``base`` (``query``: the SAS, when that is the
    credential), with ``params``."""
    url = f"{base}/{quote(full_name, safe='~/')}"
    extra = "&".join(p for p in (urlencode(params, quote_via=quote) if params else "", query) if p)
    return f"{url}?{extra}" if extra else url


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def next_marker(body: bytes) -> str:
    """The NextMarker of a List Blobs page, read from the end of the body before the page is parsed."""
    at = body.rfind(b"<NextMarker")
    if at < 0:
        return ""
    end = body.find(b"</NextMarker>", at)
    snippet = body[at:end + len(b"</NextMarker>")] if end >= 0 else body[at:body.find(b">", at) + 1]
    return ET.fromstring(snippet).text or ""


def parse_listing(body: bytes, rel: Callable[[str], str],
                  dates: dict[str, float]) -> tuple[builtins.list[BlobInfo], str]:
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


def props_from_headers(name: str, headers: Mapping[str, str]) -> BlobInfo:
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


def _etag(response: Any) -> str | None:
    return str(response.headers.get("ETag") or "").strip('"') or None


def _with_settings(headers: dict[str, str], content_type: str | None, metadata: Mapping[str, str] | None) -> None:
    if content_type:
        headers["x-ms-blob-content-type"] = content_type
    for key, value in (metadata or {}).items():
        headers[f"x-ms-meta-{key}"] = value


class RestCalls:
    """The hot calls of one container (and prefix), as plain REST requests through ``pipeline``."""

    def __init__(self, pipeline: Any, api_version: str, container_url: str, prefix: str, where: str) -> None:
        self._run = pipeline.run
        self._version = api_version
        base, _, query = container_url.partition("?")
        self._base, self._query = base.rstrip("/"), query
        self._prefix = prefix
        self._where = where

    def _full(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    def _rel(self, full: str) -> str:
        return full[len(self._prefix) + 1:] if self._prefix else full

    def _url(self, name: str, **params: str) -> str:
        return blob_url(self._base, self._query, self._full(name), **params)

    def _send(self, request: HttpRequest, *expected: int) -> Any:
        """Runs ``request`` through the pipeline; a status other than ``expected`` raises as the SDK would."""
        response = self._run(request).http_response
        if response.status_code not in expected:
            raise response_error(response)
        return response

    def list(self, start: str, metadata: bool) -> Iterator[BlobInfo]:
        """Every blob whose full name starts with ``start``, a page (:data:`LIST_PAGE`) at a time."""
        dates: dict[str, float] = {}

        def fetch(marker: str) -> bytes:
            params = {"restype": "container", "comp": "list", "maxresults": str(LIST_PAGE)}
            if start:
                params["prefix"] = start
            if marker:
                params["marker"] = marker
            if metadata:
                params["include"] = "metadata"
            url = f"{self._base}?{urlencode(params, quote_via=quote)}" + (f"&{self._query}" if self._query else "")
            with azure_errors(self._where, "listing blobs"):
                response = self._send(HttpRequest("GET", url, headers={"x-ms-version": self._version,
                                                                       "Accept": "application/xml"}), 200)
                return bytes(response.body())

        # The next page is requested as soon as a page's marker is known, so the service prepares it while this
        # one is parsed and consumed.
        with ThreadPoolExecutor(1, thread_name_prefix="blob-list-page") as pool:
            body = fetch("")
            while True:
                marker = next_marker(body)
                ahead = pool.submit(fetch, marker) if marker else None
                try:
                    with azure_errors(self._where, "listing blobs"):
                        page, _ = parse_listing(body, self._rel, dates)
                    yield from page
                except BaseException:  # the caller stopped early (or parsing failed): the page ahead is not needed
                    if ahead is not None:
                        ahead.cancel()
                    raise
                if ahead is None:
                    return
                body = ahead.result()

    def head(self, name: str) -> Any:
        """Get Blob Properties: the response (its headers), or None for a missing blob."""
        with azure_errors(self._where, f"reading properties of blob {blob_label(name)}"):
            response = self._run(HttpRequest("HEAD", self._url(name),
                                             headers={"x-ms-version": self._version})).http_response
            if response.status_code == 404 and response.headers.get("x-ms-error-code") in (None, "BlobNotFound"):
                return None
            if response.status_code != 200:
                raise response_error(response)
        return response

    def info(self, name: str) -> BlobInfo | None:
        response = self.head(name)
        return props_from_headers(name, response.headers) if response is not None else None

    def copy_status(self, name: str) -> tuple[str | None, str | None]:
        response = self.head(name)
        if response is None:
            return None, None
        return response.headers.get("x-ms-copy-status"), response.headers.get("x-ms-copy-status-description")

    def put_blob(self, name: str, data: bytes | BinaryIO, *, content_type: str | None,
                 metadata: Mapping[str, str] | None, md5: bytes | None, length: int | None = None) -> BlobInfo:
        """One Put Blob with content settings, metadata and Content-MD5 in the same request (no follow-up calls).

        ``data``: the body in memory, or a seekable stream of ``length`` bytes (sent as it is read; a retry seeks
        back). The MD5 goes both as ``Content-MD5`` (the service refuses a body that does not match it) and as the
        blob's stored Content-MD5; it is computed here for a body in memory when the caller has none. A stream
        sent without one: the service computes the body's MD5, stores it as the blob's Content-MD5 and returns it,
        and the result carries it (None where the response has none).
        """
        if isinstance(data, bytes):
            length = len(data)
            md5 = md5 or hashlib.md5(data, usedforsecurity=False).digest()
        if length is None:
            raise ValueError("a streamed Put Blob needs its length")
        headers = {"x-ms-version": self._version, "x-ms-blob-type": "BlockBlob",
                   "Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if md5 is not None:
            headers["Content-MD5"] = headers["x-ms-blob-content-md5"] = _b64(md5)
        _with_settings(headers, content_type, metadata)
        with azure_errors(self._where, f"writing blob {blob_label(name)}"):
            response = self._send(HttpRequest("PUT", self._url(name), headers=headers, content=data), 201)
        if md5 is None and response.headers.get("Content-MD5"):
            md5 = base64.b64decode(response.headers["Content-MD5"])
        return BlobInfo(name=name, size=length, md5=md5, etag=_etag(response), content_type=content_type,
                        metadata=dict(metadata or {}))

    def set_metadata(self, name: str, metadata: Mapping[str, str], *, etag: str | None) -> None:
        """Replaces the blob's metadata, only while its ETag is ``etag`` (412 otherwise: written since)."""
        headers = {"x-ms-version": self._version, "Content-Length": "0"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        _with_settings(headers, None, metadata)
        with azure_errors(self._where, f"setting the metadata of blob {blob_label(name)}"):
            self._send(HttpRequest("PUT", self._url(name, comp="metadata"), headers=headers), 200)

    def delete(self, name: str) -> None:
        with azure_errors(self._where, f"deleting blob {blob_label(name)}"):
            response = self._run(HttpRequest("DELETE", self._url(name), headers={
                "x-ms-version": self._version})).http_response
            if response.status_code not in (202, 404):  # gone already: fine
                raise response_error(response)

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        # The SDK base64-encodes block ids once more on the wire (and decodes them when listing): so do we. No
        # Content-MD5: the copy hashes each byte once, for the whole blob's (see the copy engine).
        url = self._url(name, comp="block", blockid=_b64(block_id.encode()))
        headers = {"x-ms-version": self._version, "Content-Type": "application/octet-stream",
                   "Content-Length": str(len(data))}
        with azure_errors(self._where, f"staging a block of blob {blob_label(name)}"):
            self._send(HttpRequest("PUT", url, headers=headers, content=data), 201)

    def commit_blocks(self, name: str, block_ids: builtins.list[str], *, content_type: str | None,
                      metadata: Mapping[str, str] | None, md5: bytes | None) -> BlobInfo:
        # Ids base64-encoded once more, as staged (see stage_block).
        body = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                + "".join(f"<Latest>{_b64(b.encode())}</Latest>" for b in block_ids) + "</BlockList>").encode()
        headers = {"x-ms-version": self._version, "Content-Type": "application/xml",
                   "Content-Length": str(len(body)),
                   "Content-MD5": _b64(hashlib.md5(body, usedforsecurity=False).digest())}
        if md5:
            headers["x-ms-blob-content-md5"] = _b64(md5)
        _with_settings(headers, content_type, metadata)
        with azure_errors(self._where, f"committing blob {blob_label(name)}"):
            response = self._send(HttpRequest("PUT", self._url(name, comp="blocklist"), headers=headers,
                                              content=body), 201)
        return BlobInfo(name=name, size=0, md5=md5, etag=_etag(response), content_type=content_type,
                        metadata=dict(metadata or {}))

    def start_copy(self, name: str, source_url: str) -> str:
        with azure_errors(self._where, f"starting a server-side copy into blob {blob_label(name)}"):
            response = self._send(HttpRequest("PUT", self._url(name), headers={
                "x-ms-version": self._version, "x-ms-copy-source": source_url, "Content-Length": "0"}), 202)
        return str(response.headers.get("x-ms-copy-status") or "pending")


def rest_calls(container: Any, transport: Any, per_retry: builtins.list[Any], *, prefix: str,
               where: str) -> RestCalls | None:
    """The fast path for ``container`` (a ``ContainerClient``): its user agent, retry, date/version header and
    credential policies (a SAS travels in the URL), then the per-retry policies, on ``transport`` (default: the
    SDK's). The SDK's pipeline adds request/response hooks, logging, tracing, content validation and decoding
    policies that these calls do not use. None when it is turned off or the client lacks what is borrowed."""
    if not fast_path_wanted() or missing_borrowings(container):
        return None
    config = container._config
    policies = [p for p in (getattr(config, "user_agent_policy", None), config.retry_policy, config.headers_policy,
                            container._credential_policy) if p is not None] + list(per_retry)
    pipeline = Pipeline(transport if transport is not None else container._pipeline._transport, policies=policies)
    return RestCalls(pipeline, str(container.api_version), str(container.url), prefix, where)
