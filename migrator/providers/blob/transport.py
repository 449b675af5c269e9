"""A lean azure-core HTTP transport over a urllib3 pool, for the blob store's plain REST calls.

The SDK's transport goes through ``requests``, whose per-request work (merging session settings, cookies and
hooks, preparing and re-validating the URL and headers) costs a small blob upload about a third of the client's
CPU; on a storage emulator on the same cores that CPU is what the service lacks. The plain REST calls of
:class:`~migrator.providers.blob.azure.AzureBlobStore` (list, put, stage, commit, copy, properties, delete) run
through an azure-core pipeline with the SDK's own retry, date/version headers and credential policies, plus any
per-retry policies of the run, on this transport instead. Everything else (downloads, block lists, user
delegation keys) keeps the SDK's pipeline and transport.

It honours what ``requests`` would: the proxy the environment names for the account host (``NO_PROXY``
included, read once when the store opens) and a CA bundle from ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (else
certifi's). Connection failures become :class:`~azure.core.exceptions.ServiceRequestError` and failures after
the request was sent :class:`~azure.core.exceptions.ServiceResponseError`, as with the SDK's transport, so
retries and error mapping are the same.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import urllib3
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import HttpResponse, HttpTransport
from urllib3.exceptions import ConnectTimeoutError, HTTPError, ProxyError, SSLError


class PlainResponse(HttpResponse):
    """A fully read response: status, headers and body."""

    def __init__(self, request: Any, response: urllib3.BaseHTTPResponse) -> None:
        super().__init__(request, response)
        self.status_code = response.status
        self.headers = response.headers  # case-insensitive
        self.reason = response.reason
        self.content_type = response.headers.get("Content-Type")
        self._body = response.data

    def body(self) -> bytes:
        return self._body


class Urllib3Transport(HttpTransport):  # type: ignore[type-arg]  # azure-core leaves its request/response types open
    """Sends each request once (the pipeline's retry policy retries), on pooled keep-alive connections."""

    def __init__(self, url: str, *, pool_size: int, connection_timeout: float, read_timeout: float,
                 proxies: dict[str, str] | None = None, ca_bundle: str | None = None) -> None:
        scheme = urlsplit(url).scheme
        proxy = (proxies or {}).get(scheme) or (proxies or {}).get("all")
        options: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": pool_size,
            "timeout": urllib3.Timeout(connect=connection_timeout, read=read_timeout),
            "retries": False,
            # A streamed body (a large blob's Put Blob) goes out in pieces of this size, not urllib3's 16 KiB.
            "blocksize": 256 * 1024,
        }
        if scheme == "https":
            import certifi

            options["ca_certs"] = ca_bundle or certifi.where()
        self._pool: urllib3.PoolManager = urllib3.ProxyManager(proxy, **options) if proxy \
            else urllib3.PoolManager(**options)

    def __enter__(self) -> Urllib3Transport:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def open(self) -> None:
        return None

    def close(self) -> None:
        self._pool.clear()

    def send(self, request: Any, **kwargs: Any) -> PlainResponse:
        body = request.content if hasattr(request, "content") else request.data
        try:
            response = self._pool.urlopen(request.method, request.url, body=body, headers=dict(request.headers),
                                          redirect=False, retries=False, preload_content=True)
        except (ConnectTimeoutError, ProxyError, SSLError) as exc:  # nothing reached the service
            raise ServiceRequestError(str(exc), error=exc) from exc
        except (HTTPError, OSError) as exc:  # sent, then the connection failed or timed out
            raise ServiceResponseError(str(exc), error=exc) from exc
        return PlainResponse(request, response)
