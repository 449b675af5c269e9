"""``smoke.test`` sends its HTTP checks at once and reports each outcome as soon as it is known, while its
outputs keep the order the params list the checks in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from migrator.errors import VerificationFailed
from migrator.steps.smoke import SmokeTest, SmokeTestParams
from migrator.testing import MemoryContext, run_step
from tests.support import loopback


class _Gate:
    """Holds every request until ``expected`` are in at once (or a timeout), counting the most seen in flight."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.lock = threading.Lock()
        self.all_in = threading.Event()
        self.in_flight = 0
        self.most = 0

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            if self.in_flight >= self.expected:
                self.all_in.set()
        self.all_in.wait(timeout=5)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


@pytest.fixture
def server() -> Iterator[tuple[str, _Gate]]:
    gate = _Gate(expected=3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            gate.enter()
            try:
                status = 500 if self.path == "/broken" else 200
                body = f"answer of {self.path}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            finally:
                gate.leave()

        def log_message(self, *args: object) -> None:
            pass

    with loopback.http_server(Handler) as url:
        yield url, gate


def _step(url: str, paths: list[str]) -> SmokeTest:
    return SmokeTest("smoke", SmokeTestParams.model_validate({
        "http": [{"name": path, "url": f"{url}{path}", "body_contains": f"answer of {path}"} for path in paths],
        "fingerprints": [{"name": "t", "source": {"rows": 1}, "target": {"rows": 1}}]}))


def test_the_requests_are_sent_at_once_and_the_outputs_keep_the_params_order(server: tuple[str, _Gate]) -> None:
    url, gate = server
    ctx = MemoryContext()
    _, out = run_step(_step(url, ["/a", "/b", "/c"]), ctx)
    assert gate.most == 3  # all three were in flight together: none waited for another's answer
    assert [c["check"] for c in out["checks"]] == ["/a", "/b", "/c", "fingerprint t"]
    assert out["passed"] == 4
    events = [e for e in ctx.events if e[0] == "smoke.check"]
    assert len(events) == 4 and "fingerprint t" in events[0][1]  # the comparison is told first


def test_a_failing_check_among_those_sent_at_once_fails_the_step(server: tuple[str, _Gate]) -> None:
    url, gate = server
    with pytest.raises(VerificationFailed, match="1 of 4 smoke checks failed: /broken: status 500"):
        run_step(_step(url, ["/a", "/broken", "/c"]), MemoryContext())
    assert gate.most == 3
