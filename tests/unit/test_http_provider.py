"""The HTTP provider's one error mapping, against a loopback server: what is an answer, what is worth a retry."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from migrator.errors import InputError, PermanentError, TransientError
from migrator.providers.http import HttpRequest, HttpResponse, retry_after_seconds, send
from migrator.secrets import Secret
from migrator.testing import MemoryContext

TOKEN_ENV = "HTTP_PROVIDER_TEST_TOKEN"
TOKEN = "tok-5f0c-never-shown"


class Handler(http.server.BaseHTTPRequestHandler):
    """``/status/N`` answers N (``?retry=S`` adds Retry-After), ``/slow`` waits, ``/big`` sends 3,000 bytes,
    ``/echo`` answers with the Authorization header it got."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/slow":
            time.sleep(2.0)
        status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        body = b"x" * 3000 if path == "/big" else (self.headers.get("Authorization") or "").encode() \
            if path == "/echo" else f"status {status}".encode()
        self.send_response(status)
        if query.startswith("retry="):
            self.send_header("Retry-After", query.split("=", 1)[1])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    """A loopback server whose handlers' late errors (a client that timed out and left) print nothing: they would
    land in whichever test's captured stderr runs when the handler wakes."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


def _serve(wrap: ssl.SSLContext | None = None) -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), Handler)
    if wrap is not None:
        server.socket = wrap.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if wrap else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from _serve()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    expect: tuple[int, ...] = ()
    status: int | None = None  # an answer with this status
    transient: str | None = None  # or a TransientError whose message contains this
    retry_after: float | None = None


CASES = [
    Case("ok", "/status/200", status=200),
    Case("not-found-is-an-answer", "/status/404", status=404),
    Case("server-error-is-an-answer", "/status/500", status=500),
    Case("throttled", "/status/429?retry=7", transient="HTTP 429", retry_after=7.0),
    Case("bad-gateway", "/status/502", transient="HTTP 502"),
    Case("unavailable", "/status/503", transient="HTTP 503"),
    Case("gateway-timeout", "/status/504", transient="HTTP 504"),
    Case("unavailable-when-expected", "/status/503", expect=(200, 503), status=503),
    Case("throttled-when-expected", "/status/429?retry=7", expect=(429,), status=429),
    Case("no-answer-in-time", "/slow", transient="no answer within 0.3 s"),
    Case("refused", "http://127.0.0.1:{closed}/x", transient="ConnectionRefusedError"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_statuses_and_faults_map_to_one_answer_or_one_transient_error(base_url: str, case: Case) -> None:
    url = case.path.format(closed=_closed_port()) if case.path.startswith("http") else base_url + case.path
    request = HttpRequest("GET", url, timeout=0.3, expect=case.expect)
    if case.transient is None:
        response = send(request, MemoryContext().reveal)
        assert response.status == case.status
        assert response.body == f"status {case.status}".encode()
        return
    with pytest.raises(TransientError) as caught:
        send(request, MemoryContext().reveal)
    assert caught.value.retryable
    assert caught.value.message.startswith(f"GET {url}: ") and case.transient in caught.value.message
    assert caught.value.retry_after == case.retry_after


def test_the_body_is_read_up_to_the_bound_and_says_it_was_cut(base_url: str) -> None:
    response = send(HttpRequest("GET", base_url + "/big"), MemoryContext().reveal, max_body=1000)
    assert (len(response.body), response.truncated) == (1000, True)
    whole = send(HttpRequest("GET", base_url + "/big"), MemoryContext().reveal)
    assert (len(whole.body), whole.truncated, whole.headers["Content-Length"]) == (3000, False, "3000")


def test_a_secret_header_is_revealed_at_the_call_and_named_in_no_message(base_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    ctx = MemoryContext()
    headers = {"Authorization": Secret(f"Bearer ${{env:{TOKEN_ENV}}}")}
    request = HttpRequest("GET", base_url + "/echo", headers)
    assert TOKEN not in repr(request)
    assert send(request, ctx.reveal).text() == f"Bearer {TOKEN}"
    assert ctx.redactor.redact(TOKEN) == "***"
    with pytest.raises(TransientError) as caught:
        send(HttpRequest("GET", base_url + "/status/503", headers), ctx.reveal)
    assert TOKEN not in caught.value.one_line()


def test_a_header_value_that_cannot_be_sent_is_bad_input_that_does_not_quote_it(
        base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN + "\n")
    with pytest.raises(InputError) as caught:
        send(HttpRequest("GET", base_url + "/echo", {"Authorization": Secret(f"${{env:{TOKEN_ENV}}}")}),
             MemoryContext().reveal)
    assert TOKEN not in caught.value.one_line() and "header value" in caught.value.message


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1/x"])
def test_a_url_that_is_not_http_is_bad_input(url: str) -> None:
    with pytest.raises(InputError, match="not an http"):
        send(HttpRequest("GET", url), MemoryContext().reveal)


def test_tls_verifies_against_ca_file_and_an_unknown_issuer_is_permanent(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    served = _serve(context)
    url = next(served) + "/status/200"
    try:
        response = send(HttpRequest("GET", url, ca_file=str(ca_file)), MemoryContext().reveal)
        assert response.status == 200
        with pytest.raises(PermanentError, match="TLS") as caught:
            send(HttpRequest("GET", url), MemoryContext().reveal)
        assert not caught.value.retryable and "ca_file" in (caught.value.hint or "")
    finally:
        served.close()


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None),
    ("Sat, 05 Dec 2026 00:00:30 GMT", 30.0), ("Sat, 05 Dec 2026 00:00:00 GMT", 0.0),
])
def test_retry_after_is_read_as_seconds_or_as_a_date(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=datetime(2026, 12, 5, 0, 0, 0, tzinfo=UTC)) == seconds


def test_a_body_that_is_not_json_reads_as_none() -> None:
    response = HttpResponse(200, {}, b'{"read_only": true}', 1.0)
    assert response.json() == {"read_only": True}
    assert HttpResponse(200, {}, b"<html>", 1.0).json() is None
