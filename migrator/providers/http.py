"""The one HTTP client of the steps (``http``, ``smoke.test``, ``tenant.read_only``), on ``requests``.

A step describes a request (:class:`HttpRequest`) and gets an answer (:class:`HttpResponse`: status, headers, a
body read up to a bound, the time it took). Every status comes back as an answer except the ones that say "try
again later", so that all callers map faults the same way:

* no connection, a dropped connection, no answer in time, and HTTP 429, 502, 503 or 504 raise
  :class:`~migrator.errors.TransientError` (with the server's ``Retry-After``, where it gave one) — unless the
  caller expects that status (``expect``), then it is an answer like any other;
* a certificate that does not verify (against ``ca_file`` when given) raises
  :class:`~migrator.errors.PermanentError`: retrying does not change a certificate;
* a URL that is not http(s) or a header value that cannot be sent raise :class:`~migrator.errors.InputError`.

Header values may be :class:`~migrator.secrets.Secret` templates: they are revealed here, at the moment of the
call, through the ``reveal`` the caller passes (the run's, so the values reach its redactor). No message names a
header value or quotes a response body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from migrator.errors import InputError, PermanentError, TransientError
from migrator.secrets import Secret

#: The most of a response body that is read; the rest is left unread (an answer is checked, never stored).
MAX_BODY = 1_000_000
#: Statuses that say "not now": throttled, or a gateway in front of a server that is not there yet.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})

#: Turns a header value (a :class:`Secret` template or plain text) into the text sent.
Reveal = Callable[[Secret | str | None], str | None]


@dataclass(frozen=True)
class HttpRequest:
    """One request: what a step asks the client to send."""

    method: str
    url: str
    headers: Mapping[str, Secret | str] = field(default_factory=dict)
    body: bytes | None = None
    timeout: float = 10.0
    #: A CA bundle (PEM) to verify the server's certificate with instead of the default ones.
    ca_file: str | None = None
    #: Statuses the caller expects as answers, even those that would otherwise be transient faults.
    expect: Collection[int] = ()

    @classmethod
    def with_payload(cls, method: str, url: str, payload: Any, headers: Mapping[str, Secret | str], *,
                     timeout: float, expect: Collection[int] = ()) -> HttpRequest:
        """A request whose body is given as the tenant steps' params give it: text as is, anything else as JSON
        (and its Content-Type, unless ``headers`` name one)."""
        if payload is None:
            return cls(method, url, headers, None, timeout, expect=expect)
        if isinstance(payload, str):
            body, content_type = payload.encode(), "text/plain"
        else:
            body, content_type = json.dumps(payload).encode(), "application/json"
        return cls(method, url, {"Content-Type": content_type, **headers}, body, timeout, expect=expect)


@dataclass(frozen=True)
class HttpResponse:
    """The answer: status, headers, the body up to :data:`MAX_BODY` bytes and the milliseconds it took."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_ms: float
    #: Whether the body was longer than what was read.
    truncated: bool = False

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (it gives either seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def send(request: HttpRequest, reveal: Reveal, *, max_body: int = MAX_BODY) -> HttpResponse:
    """Sends ``request`` and reads the answer; faults are mapped as the module says."""
    method = request.method.upper()
    where = f"{method} {request.url}"
    if not request.url.startswith(("http://", "https://")):
        raise InputError(f"{request.url!r} is not an http(s) URL")
    headers = {name: reveal(value) or "" for name, value in request.headers.items()}
    started = time.perf_counter()
    try:
        with requests.Session() as session, session.request(
                method, request.url, data=request.body, headers=headers, timeout=request.timeout,
                verify=request.ca_file or True, stream=True) as answer:
            body, truncated = _read(answer, max_body)
    except requests.exceptions.InvalidHeader:
        # its text quotes the value, which may be a secret
        raise InputError(f"{where}: a header value cannot be sent (a line break, or a leading space?)") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as exc:
        raise InputError(f"{where}: not a URL that can be requested ({type(exc).__name__})") from None
    except requests.exceptions.SSLError as exc:
        raise PermanentError(f"{where}: TLS: {_cause(exc)}",
                             hint="check the server's certificate, and ca_file if it is signed by a private CA"
                             ) from None
    except requests.exceptions.Timeout:
        raise TransientError(f"{where}: no answer within {request.timeout:g} s") from None
    except requests.exceptions.RequestException as exc:  # refused, reset, dropped mid-body
        raise TransientError(f"{where}: {_cause(exc)}") from None
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    status = answer.status_code
    if status in TRANSIENT_STATUSES and status not in request.expect:
        retry_after = retry_after_seconds(answer.headers.get("Retry-After"))
        raise TransientError(f"{where}: HTTP {status}" + (f" (retry after {retry_after:g} s)" if retry_after else ""),
                             retry_after=retry_after)
    return HttpResponse(status, dict(answer.headers), body, elapsed_ms, truncated)


def _read(answer: requests.Response, max_body: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    for chunk in answer.iter_content(chunk_size=65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_body:
            return b"".join(chunks)[:max_body], True
    return b"".join(chunks), False


def _cause(exc: BaseException) -> str:
    """The innermost cause of a requests fault ("ConnectionRefusedError: [Errno 111] Connection refused"):
    the operating system's or the TLS layer's words rather than the wrappers' around them."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        reason = getattr(current, "reason", None)
        first = current.args[0] if current.args else None
        inner = next((e for e in (reason, first, current.__cause__, current.__context__)
                      if isinstance(e, BaseException)), None)
        if inner is None:
            break
        current = inner
    return f"{type(current).__name__}: {current}"
