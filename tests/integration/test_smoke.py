"""``smoke.test`` against a real tenant app and a real name server (BIND on a loopback port)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fixtures.services import stop_process
from fixtures.tenant.generate import TenantSize
from fixtures.tenant.harness import make_tenant_db
from fixtures.tenant.webapp import RunningApp, TenantApp
from migrator.errors import VerificationFailed
from migrator.steps.smoke import SmokeTest, SmokeTestParams
from migrator.testing import MemoryContext, plan_step, run_step

pytestmark = pytest.mark.integration

ZONE = "contoso.example"
ZONE_FILE = f"""$TTL 60
@ IN SOA ns.{ZONE}. admin.{ZONE}. 1 60 60 600 60
@ IN NS ns.{ZONE}.
ns IN A 127.0.0.1
portal IN A 127.0.0.10
www IN CNAME portal.{ZONE}.
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    location = str(tmp_path_factory.mktemp("smoke") / "tenant.db")
    make_tenant_db(location, TenantSize(users=5, groups=2, tiles=5, audit=5))
    with RunningApp(TenantApp(location)) as running:
        yield running


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        return int(port)


@pytest.fixture(scope="module")
def name_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    named = shutil.which("named") or "/usr/sbin/named"
    workdir = tmp_path_factory.mktemp("bind")
    (workdir / "db.zone").write_text(ZONE_FILE)
    port = _free_port()
    (workdir / "named.conf").write_text(f"""
options {{ directory "{workdir}"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
  recursion no; pid-file "{workdir}/named.pid"; session-keyfile "{workdir}/session.key";
  allow-query {{ any; }}; dnssec-validation no; }};
controls {{ }};
zone "{ZONE}" {{ type primary; file "{workdir}/db.zone"; }};
""")
    process = subprocess.Popen([named, "-g", "-c", str(workdir / "named.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_until_answering(port, process)
        yield port
    finally:
        stop_process(process)


def _wait_until_answering(port: int, process: subprocess.Popen[bytes]) -> None:
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 1.0
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"named exited with {process.returncode}")
        try:
            resolver.resolve(f"ns.{ZONE}", "A")
            return
        except dns.exception.DNSException:
            time.sleep(0.1)
    raise RuntimeError("named did not answer")


def _fill(value: Any, app_url: str, dns_port: int) -> Any:
    """The table names the app and the name server before they exist: ``{app}`` and ``{dns}``."""
    if value == "{dns}":
        return dns_port
    if isinstance(value, str):
        return value.replace("{app}", app_url)
    if isinstance(value, dict):
        return {k: _fill(v, app_url, dns_port) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, app_url, dns_port) for v in value]
    return value


def _run(spec: dict[str, Any]) -> tuple[MemoryContext, dict[str, Any]]:
    ctx = MemoryContext(step_id="smoke")
    _, outputs = run_step(SmokeTest("smoke", SmokeTestParams.model_validate(spec)), ctx)
    return ctx, dict(outputs)


def test_passing_checks_all_report_ok(app: RunningApp, name_server: int) -> None:
    ctx, outputs = _run({
        "http": [{"url": f"{app.url}/health?fingerprint=1", "body_contains": ['"ok":true', "fingerprint"],
                  "max_latency_ms": 60_000},
                 {"name": "tiles", "url": f"{app.url}/tiles", "expect_status": [200, 204]}],
        "fingerprints": [{"name": "database", "source": "abc", "target": "abc"}],
        "inventories": [{"name": "blobs", "source": {"count": 3, "bytes": 10}, "target": {"count": 3, "bytes": 10}}],
        "dns": [{"name": f"portal.{ZONE}", "expect": "127.0.0.10", "port": name_server},
                {"name": f"www.{ZONE}", "type": "CNAME", "expect": f"portal.{ZONE}.", "port": name_server}],
    })
    assert outputs["passed"] == 6 and outputs["failed"] == 0
    assert all(c["ok"] for c in outputs["checks"])
    assert len([e for e in ctx.events if e[0] == "smoke.check"]) == 6


@pytest.mark.parametrize(("spec", "expected"), [
    ({"http": [{"url": "{app}/health", "expect_status": 201}]}, "status 200, expected 201"),
    ({"http": [{"url": "{app}/nowhere"}]}, "status 404, expected 200"),
    ({"http": [{"url": "{app}/health", "body_contains": "Fabrikam"}]}, "body does not contain 'Fabrikam'"),
    ({"http": [{"url": "{app}/health", "max_latency_ms": 0.000001}]}, "more than 1e-06 ms"),
    ({"http": [{"name": "down", "url": "http://127.0.0.1:1/health"}]}, "down: GET http://127.0.0.1:1/health"),
    ({"fingerprints": [{"name": "database", "source": "abcdef", "target": "abcdeg"}]},
     "fingerprint database: source abcdef ≠ target abcdeg"),
    ({"fingerprints": [{"name": "database", "source": None, "target": "x"}]}, "no source value"),
    ({"inventories": [{"name": "blobs", "source": {"count": 3, "bytes": 10}, "target": {"count": 3, "bytes": 9}}]},
     "inventory blobs: source ≠ target in 1 entries: bytes"),
    ({"dns": [{"name": f"portal.{ZONE}", "expect": "127.0.0.11", "port": "{dns}"}]},
     "resolves to 127.0.0.10, expected 127.0.0.11"),
    ({"dns": [{"name": f"gone.{ZONE}", "expect": "127.0.0.10", "port": "{dns}"}]},
     "resolves to nothing, expected 127.0.0.10"),
])
def test_each_failing_check_is_named_in_the_failure(app: RunningApp, name_server: int, spec: dict[str, Any],
                                                    expected: str) -> None:
    with pytest.raises(VerificationFailed) as caught:
        _run(_fill(spec, app.url, name_server))
    assert expected in caught.value.message
    assert "1 of 1 smoke checks failed" in caught.value.message
    assert not caught.value.retryable


def test_several_failures_are_all_listed_and_passing_checks_are_not(app: RunningApp) -> None:
    with pytest.raises(VerificationFailed) as caught:
        _run({"http": [{"name": "health", "url": f"{app.url}/health"},
                       {"name": "missing", "url": f"{app.url}/missing"}],
              "fingerprints": [{"name": "database", "source": "a", "target": "b"}],
              "retry_failures": True})
    message = caught.value.message
    assert "2 of 3 smoke checks failed" in message
    assert "missing: status 404" in message and "fingerprint database" in message
    assert "health:" not in message
    assert caught.value.retryable


def test_failure_message_never_quotes_the_response_body(app: RunningApp) -> None:
    with pytest.raises(VerificationFailed) as caught:
        _run({"http": [{"url": f"{app.url}/tiles", "body_contains": "no such text"}]})
    assert "tile-0000001" not in caught.value.message  # the body was there, but is not repeated


def test_plan_lists_the_checks_without_running_them() -> None:
    step = SmokeTest("smoke", SmokeTestParams.model_validate(
        {"http": [{"url": "http://127.0.0.1:1/health"}], "dns": [{"name": "x.example", "expect": "1.2.3.4"}]}))
    result = plan_step(step, MemoryContext())
    assert result.changes == ["test http GET http://127.0.0.1:1/health", "test dns x.example A @127.0.0.1:53"]
    assert result.estimate.items == 2


def test_a_smoke_test_without_checks_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one check"):
        SmokeTestParams.model_validate({})


def test_smoke_and_tenant_kinds_are_registered() -> None:
    from migrator.registry import load_registry
    from migrator.steps.tenant import TenantReadOnly

    registry = load_registry(third_party=False)
    assert registry.get("smoke.test") is SmokeTest and registry.get("tenant.read_only") is TenantReadOnly
    assert not SmokeTest.irreversible
