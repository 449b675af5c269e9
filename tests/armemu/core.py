"""A local Azure Resource Manager: an HTTPS server on a free loopback port that the real SDK clients talk to.

The emulator speaks ARM's wire protocol — JSON bodies, ``{"error": {"code", "message"}}`` error bodies, etags
with ``If-Match`` / ``If-None-Match`` (412 on mismatch), and the long-running-operation protocol (201/202 with
``Azure-AsyncOperation`` and/or ``Location``, polling endpoints answering ``InProgress`` then ``Succeeded`` /
``Failed``, the SDK's final GET) — and knows no resource type by itself: route modules add them.

Using it (the pytest fixture ``arm`` in :mod:`tests.armemu.plugin` does this)::

    with ArmEmulator(modules=("tests.armemu.sql", "tests.armemu.dns")) as arm:
        client = SqlManagementClient(arm.credential, arm.subscription_id, **arm.client_kwargs())
        ...
        assert arm.log.writes() == []                      # no PUT/PATCH/POST/DELETE seen

``arm.base_url`` (``https://127.0.0.1:PORT``), ``arm.ca_file`` (PEM of the test CA: pass it as
``connection_verify=``), ``arm.credential`` (a static :class:`StaticTokenCredential`), ``arm.subscription_id``,
``arm.client_kwargs()`` (``base_url``, ``connection_verify``, fast polling and retry settings).

Route modules
-------------
A route module is any importable module with a ``register(emulator)`` function; pass its dotted name in
``modules=`` (or call ``emulator.load(name)``). ``register`` adds handlers with :meth:`ArmEmulator.route`::

    def register(emu: ArmEmulator) -> None:
        emu.route("GET", ZONE, get_zone)     # ZONE = "/subscriptions/{subscriptionId}/resourceGroups/
                                             #   {resourceGroupName}/providers/Microsoft.Network/dnsZones/{zoneName}"

``register`` runs again on every ``emu.reset()`` (the ``arm`` fixture resets before each test), so it is the
place to (re)create a module's own state, e.g. ``emu.sql = SqlState()``.
Templates use ARM's ``{name}`` placeholders; a placeholder matches one path segment; matching is
case-insensitive, like ARM. A handler is ``handler(req: ArmRequest) -> ArmResponse``; ``req.params`` holds the
placeholders, ``req.body`` the parsed JSON (or None), ``req.query`` the query string (single values),
``req.headers`` the headers (case-insensitive), ``req.api_version``, ``req.emulator``.
A handler refuses with ``raise ArmError(status, code, message)``, which becomes ARM's error body.

Helpers for handlers:

* ``emu.store`` — :class:`ResourceStore`, resources by id (case-insensitive): ``get(id)``, ``put(id, body)``
  (assigns a fresh ``etag`` and returns the stored body), ``delete(id)``, ``children(prefix)``.
* ``emu.hold_operations(pattern=None)`` / ``emu.release_operations()`` — keep operations InProgress (to kill
  a client while one is pending).
* ``emu.check_preconditions(req, current)`` — 412 ``PreconditionFailed`` when ``If-Match`` does not match
  ``current["etag"]`` (or the resource is missing), or ``If-None-Match: *`` and the resource exists.
* ``emu.begin_operation(req, complete, *, initial_status=202, body=None, async_header=True,
  location_header=True, namespace="Microsoft.Sql", location="westeurope", result_on_location=True)`` —
  starts a long-running operation and returns its initial response. ``complete()`` runs once, when the
  operation finishes (after ``emu.lro_polls`` polls, and never while ``emu.hold_operations()`` is in effect);
  it applies the change and returns the final body for a POST's Location (or None); raising ``ArmError`` in
  it ends the operation ``Failed`` with that error.

Fault injection (``emu.faults``), consumed first-match, before the handler runs::

    arm.faults.add("PUT", r"/servers/", status=429, retry_after=1, times=3)   # throttled 3 times
    arm.faults.add("*", r"/databases/", status=503, times=2)
    arm.faults.add("GET", r"AsyncOperation", drop=True)                      # connection closed, no answer
    arm.faults.add("PUT", r"/servers/", status=403, code="AuthorizationFailed", message="...")
    arm.faults.fail_operation(r"/import", code="ImportExportJobError", message="...")  # next LRO ends Failed

Request log (``emu.log``): every request as :class:`LoggedRequest` (method, path, api_version, query,
status); ``log.writes(pattern=None)``, ``log.count(method, pattern)``, ``log.matching(method, pattern)``,
``log.clear()``. Patterns are regular expressions searched in the path.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import re
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trustme
from azure.core.credentials import AccessToken

WRITE_METHODS = frozenset({"PUT", "PATCH", "POST", "DELETE"})
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"


class ArmError(Exception):
    """An ARM error answer: HTTP status plus ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class StaticTokenCredential:
    """An azure-core ``TokenCredential`` that always hands out the same bearer token (the emulator checks it)."""

    def __init__(self, token: str = "emulator-token") -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


class Headers:
    """Case-insensitive, read-only view of request headers."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = {k.lower(): v for k, v in items}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items


@dataclass
class ArmRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: Any
    params: dict[str, str]
    emulator: ArmEmulator

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    @property
    def url(self) -> str:
        return self.emulator.base_url + self.path


@dataclass
class ArmResponse:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    api_version: str | None
    query: Mapping[str, str]
    status: int  # 0 when the connection was dropped without an answer


class RequestLog:
    """Every request the emulator saw, in order; thread-safe."""

    def __init__(self) -> None:
        self._entries: list[LoggedRequest] = []
        self._lock = threading.Lock()

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._entries)

    def __iter__(self) -> Iterator[LoggedRequest]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def matching(self, method: str = "*", pattern: str | None = None) -> list[LoggedRequest]:
        rx = re.compile(pattern, re.IGNORECASE) if pattern else None
        return [e for e in self.entries()
                if (method == "*" or e.method == method.upper()) and (rx is None or rx.search(e.path))]

    def count(self, method: str = "*", pattern: str | None = None) -> int:
        return len(self.matching(method, pattern))

    def writes(self, pattern: str | None = None) -> list[LoggedRequest]:
        return [e for e in self.matching("*", pattern) if e.method in WRITE_METHODS]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int = 500
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    drop: bool = False
    times: int = 1


@dataclass
class OperationFault:
    pattern: re.Pattern[str]
    code: str
    message: str
    times: int = 1


_DEFAULT_CODES = {400: "BadRequest", 403: "AuthorizationFailed", 404: "ResourceNotFound", 409: "Conflict",
                  412: "PreconditionFailed", 429: "TooManyRequests", 500: "InternalServerError",
                  502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}


class FaultQueue:
    """Faults to inject, first match wins; each is used ``times`` times, then forgotten."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._operation_faults: list[OperationFault] = []
        self._lock = threading.Lock()

    def add(self, method: str, pattern: str, status: int = 500, *, code: str | None = None,
            message: str | None = None, retry_after: float | None = None, drop: bool = False,
            times: int = 1) -> Fault:
        fault = Fault(method.upper(), re.compile(pattern, re.IGNORECASE), status, code, message, retry_after,
                      drop, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_operation(self, pattern: str, code: str = "OperationFailed", message: str = "the operation failed",
                       times: int = 1) -> None:
        """The next ``times`` long-running operations started on a path matching ``pattern`` end Failed."""
        with self._lock:
            self._operation_faults.append(OperationFault(re.compile(pattern, re.IGNORECASE), code, message, times))

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.pattern.search(path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def take_operation_fault(self, path: str) -> OperationFault | None:
        with self._lock:
            for fault in self._operation_faults:
                if fault.pattern.search(path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._operation_faults.remove(fault)
                    return fault
        return None

    def pending(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults) + sum(f.times for f in self._operation_faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._operation_faults.clear()


class ResourceStore:
    """Resources by ARM id, case-insensitive, each body carrying its ``etag``."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    def get(self, resource_id: str) -> dict[str, Any] | None:
        with self._lock:
            body = self._items.get(resource_id.lower())
            return json.loads(json.dumps(body)) if body is not None else None

    def put(self, resource_id: str, body: dict[str, Any]) -> dict[str, Any]:
        stored = json.loads(json.dumps(body))
        stored["etag"] = f'W/"{uuid.uuid4().hex}"'
        with self._lock:
            self._items[resource_id.lower()] = stored
        return json.loads(json.dumps(stored))

    def delete(self, resource_id: str) -> bool:
        with self._lock:
            return self._items.pop(resource_id.lower(), None) is not None

    def children(self, prefix: str) -> list[dict[str, Any]]:
        """Direct children of ``prefix`` (one more path segment)."""
        p = prefix.lower().rstrip("/") + "/"
        with self._lock:
            return [json.loads(json.dumps(v)) for k, v in self._items.items()
                    if k.startswith(p) and "/" not in k[len(p):]]

    def ids(self) -> list[str]:
        with self._lock:
            return [v.get("id", k) for k, v in self._items.items()]


@dataclass
class Operation:
    id: str
    method: str
    path: str
    complete: Callable[[], Any]
    polls_left: int
    result_on_location: bool
    status: str = "InProgress"
    error: ArmError | None = None
    result: Any = None
    forced_failure: OperationFault | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


Handler = Callable[[ArmRequest], ArmResponse]


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    rx = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{rx}/?$", re.IGNORECASE)


class ArmEmulator:
    """The emulator. Start with ``start()`` or as a context manager; see the module docstring for the API."""

    def __init__(self, modules: Iterable[str] = (), *, subscription_id: str = DEFAULT_SUBSCRIPTION,
                 lro_polls: int = 1) -> None:
        self.subscription_id = subscription_id
        self.lro_polls = lro_polls
        self.store = ResourceStore()
        self.log = RequestLog()
        self.faults = FaultQueue()
        self.credential = StaticTokenCredential()
        self.require_token = True
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._operations: dict[str, Operation] = {}
        self._ops_lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self._held: list[re.Pattern[str]] = []
        self._counter = itertools.count(1)
        self._tmp = tempfile.TemporaryDirectory(prefix="armemu-")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_file = ""
        self.port = 0
        self.loaded: list[str] = []
        for name in modules:
            self.load(name)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> ArmEmulator:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = str(Path(self._tmp.name) / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        emulator = self

        class _Handler(_RequestHandler):
            emu = emulator

        server = _TLSServer(("127.0.0.1", 0), _Handler)
        server.ssl_context = context
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="armemu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._tmp.cleanup()

    def __enter__(self) -> ArmEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_kwargs(self, *, polling_interval: float = 0.05, retry_backoff_factor: float = 0.01,
                      retry_backoff_max: float = 0.2) -> dict[str, Any]:
        """Keyword arguments for a management client: where the emulator is, and fast polling/retries."""
        return {"base_url": self.base_url, "connection_verify": self.ca_file, "polling_interval": polling_interval,
                "retry_backoff_factor": retry_backoff_factor, "retry_backoff_max": retry_backoff_max}

    def reset(self) -> None:
        """Forget resources, operations, faults and the log (a fresh ARM on the same port)."""
        self.store = ResourceStore()
        self.log.clear()
        self.faults.clear()
        with self._ops_lock:
            self._operations.clear()
        self.release_operations()
        self.lro_polls = 1
        self.require_token = True
        modules, self.loaded, self._routes = list(self.loaded), [], []
        for name in modules:
            self.load(name)

    # ---- routes ----------------------------------------------------------------------------------------

    def load(self, module_name: str) -> None:
        module = importlib.import_module(module_name)
        register = getattr(module, "register", None)
        if register is None:
            raise TypeError(f"{module_name} has no register(emulator) function")
        register(self)
        self.loaded.append(module_name)

    def route(self, method: str, template: str, handler: Handler) -> None:
        self._routes.append((method.upper(), _template_regex(template), handler))

    def _find_route(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        allowed = False
        for route_method, rx, handler in self._routes:
            match = rx.match(path)
            if match:
                if route_method == method:
                    return handler, match.groupdict()
                allowed = True
        if allowed:
            raise ArmError(405, "MethodNotAllowed", f"{method} is not supported on {path}")
        return None

    # ---- helpers for handlers ----------------------------------------------------------------------------

    @staticmethod
    def check_preconditions(req: ArmRequest, current: Mapping[str, Any] | None) -> None:
        if_match = req.headers.get("If-Match")
        if_none_match = req.headers.get("If-None-Match")
        if if_match is not None and if_match != "*":
            if current is None or current.get("etag") != if_match:
                raise ArmError(412, "PreconditionFailed",
                               "The condition specified using HTTP conditional header(s) is not met.")
        elif if_match == "*" and current is None:
            raise ArmError(412, "PreconditionFailed", "The resource does not exist (If-Match: *).")
        if if_none_match == "*" and current is not None:
            raise ArmError(412, "PreconditionFailed", "The resource already exists (If-None-Match: *).")

    def hold_operations(self, pattern: str | None = None) -> None:
        """Long-running operations (those started on a path matching ``pattern``, or all) stay InProgress,
        however often they are polled, until released."""
        if pattern is None:
            self._released.clear()
        else:
            self._held.append(re.compile(pattern, re.IGNORECASE))

    def release_operations(self) -> None:
        self._held.clear()
        self._released.set()

    def _is_held(self, op: Operation) -> bool:
        return not self._released.is_set() or any(rx.search(op.path) for rx in list(self._held))

    def operations(self) -> list[Operation]:
        with self._ops_lock:
            return list(self._operations.values())

    def begin_operation(self, req: ArmRequest, complete: Callable[[], Any], *, initial_status: int = 202,
                        body: Any = None, async_header: bool = True, location_header: bool = True,
                        namespace: str = "Microsoft.Sql", location: str = "westeurope",
                        async_kind: str = "AzureAsyncOperation", location_kind: str = "OperationResults",
                        result_on_location: bool = True) -> ArmResponse:
        op_id = str(uuid.UUID(int=uuid.uuid4().int))
        base = f"/subscriptions/{req.params.get('subscriptionId', self.subscription_id)}"
        rg = req.params.get("resourceGroupName")
        if rg:
            base += f"/resourceGroups/{rg}"
        base += f"/providers/{namespace}/locations/{location}"
        op = Operation(op_id, req.method, req.path, complete, self.lro_polls, result_on_location,
                       forced_failure=self.faults.take_operation_fault(req.path))
        headers: dict[str, str] = {}
        with self._ops_lock:
            if async_header:
                path = f"{base}/{async_kind}/{op_id}"
                self._operations[path.lower()] = op
                headers["Azure-AsyncOperation"] = self.base_url + path + f"?api-version={req.api_version}"
            if location_header:
                path = f"{base}/{location_kind}/{op_id}"
                self._operations[path.lower() + "#location"] = op
                headers["Location"] = self.base_url + path + f"?api-version={req.api_version}"
        headers["Retry-After"] = "0"
        return ArmResponse(initial_status, body, headers)

    def _advance(self, op: Operation) -> None:
        with op.lock:
            if op.status != "InProgress" or self._is_held(op):
                return
            if op.polls_left > 0:
                op.polls_left -= 1
                return
            if op.forced_failure is not None:
                op.status = "Failed"
                op.error = ArmError(400, op.forced_failure.code, op.forced_failure.message)
                return
            try:
                op.result = op.complete()
                op.status = "Succeeded"
            except ArmError as exc:
                op.status = "Failed"
                op.error = exc

    def _poll(self, path: str) -> ArmResponse | None:
        key = path.lower()
        with self._ops_lock:
            op = self._operations.get(key)
            on_location = False
            if op is None:
                op = self._operations.get(key + "#location")
                on_location = op is not None
        if op is None:
            return None
        self._advance(op)
        if not on_location:
            body: dict[str, Any] = {"name": op.id, "status": op.status,
                                    "startTime": "2025-01-01T00:00:00Z"}
            if op.error is not None:
                body["error"] = op.error.body()["error"]
            return ArmResponse(200, body)
        if op.status == "InProgress":
            return ArmResponse(202, None, {"Location": self.base_url + path, "Retry-After": "0"})
        if op.error is not None:
            return ArmResponse(op.error.status, op.error.body())
        if op.result_on_location and op.result is not None:
            return ArmResponse(200, op.result)
        return ArmResponse(204, None)

    # ---- dispatch ----------------------------------------------------------------------------------------

    def dispatch(self, method: str, raw_path: str, headers: Headers, raw_body: bytes) -> ArmResponse | None:
        """Answers one request; None means: drop the connection without an answer."""
        parts = urlsplit(raw_path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        api_version = query.get("api-version")
        fault = self.faults.take(method, path)
        if fault is not None and fault.drop:
            self.log.append(LoggedRequest(method, path, api_version, query, 0))
            return None
        try:
            if fault is not None:
                extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                raise ArmError(fault.status, fault.code or _DEFAULT_CODES.get(fault.status, "Error"),
                               fault.message or f"injected fault {fault.status}", headers=extra)
            if self.require_token and not (headers.get("Authorization") or "").startswith("Bearer "):
                raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header "
                               "is missing.")
            if not api_version:
                raise ArmError(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests.")
            response = self._poll(path) if method == "GET" else None
            if response is None:
                found = self._find_route(method, path)
                if found is None:
                    raise ArmError(404, "InvalidResourceType" if "/providers/" in path else "NotFound",
                                   f"No route for {method} {path}")
                handler, params = found
                try:
                    body = json.loads(raw_body) if raw_body else None
                except ValueError as exc:
                    raise ArmError(400, "InvalidRequestContent", f"The request content is not valid JSON: {exc}")\
                        from exc
                req = ArmRequest(method, path, query, headers, body, params, self)
                response = handler(req)
        except ArmError as exc:
            response = ArmResponse(exc.status, exc.body(), exc.headers)
        self.log.append(LoggedRequest(method, path, api_version, query, response.status))
        return response


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens in the worker thread, so one slow client cannot stall the accept loop.
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        self.RequestHandlerClass(tls, client_address, self)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    emu: ArmEmulator

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        response = self.emu.dispatch(self.command, self.path, Headers(self.headers.items()), raw)
        if response is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-ms-request-id", str(next(self.emu._counter)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = _handle
