"""``tenant.read_only`` against the real tenant app (and the database's own switch on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.tenant.db import connect
from fixtures.tenant.generate import TenantSize
from fixtures.tenant.harness import create_pg_database, drop_pg_database, http, make_tenant_db
from fixtures.tenant.schema import content_fingerprint
from fixtures.tenant.webapp import READ_ONLY_ERROR, RunningApp, TenantApp
from migrator.errors import CompensationError, PermanentError, TransientError, VerificationFailed
from migrator.steps.tenant import TenantReadOnly, TenantReadOnlyParams
from migrator.testing import MemoryContext, plan_step, run_step

pytestmark = pytest.mark.integration

TOKEN_ENV = "TENANT_RO_TEST_TOKEN"
TOKEN = "ro-test-token-8d1f"
SIZE = TenantSize(users=10, groups=2, tiles=10, audit=10)


@pytest.fixture
def tenant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, RunningApp]]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    location = str(tmp_path / "tenant.db")
    make_tenant_db(location, SIZE)
    with RunningApp(TenantApp(location, admin_token_env=TOKEN_ENV)) as app:
        yield location, app


def _params(url: str, **extra: Any) -> TenantReadOnlyParams:
    spec: dict[str, Any] = {
        "admin": {"url": f"{url}/admin/read-only", "auth_header": f"Bearer ${{env:{TOKEN_ENV}}}"},
        "probes": [{"url": f"{url}/tiles"}],
    }
    spec.update(extra)
    return TenantReadOnlyParams.model_validate(spec)


def _post_tile(url: str, tile_id: str) -> tuple[int, Any]:
    return http("POST", f"{url}/tiles", {"id": tile_id, "title": "T", "url": "https://t.example"})


def _fingerprint(location: str) -> object:
    with connect(location) as db:
        return content_fingerprint(db)["fingerprint"]


def test_read_only_refuses_writes_and_compensate_accepts_them_again(tenant: tuple[str, RunningApp]) -> None:
    location, app = tenant
    before = _fingerprint(location)
    step, ctx = TenantReadOnly("ro", _params(app.url)), MemoryContext(step_id="ro")
    first_check, outputs = run_step(step, ctx)
    assert not first_check.done and outputs["via"] == ["admin"] and outputs["previous"] == {"admin": False}
    status, body = _post_tile(app.url, "during")
    assert (status, body["error"]) == (423, READ_ONLY_ERROR)
    assert step.check(ctx).done
    step.compensate(ctx)
    assert _post_tile(app.url, "after")[0] == 201
    assert [e[0] for e in ctx.events] == ["read_only.start", "read_only.end"]
    assert ctx.events[1][2]["seconds"] >= 0
    with connect(location) as db:
        db.execute("DELETE FROM tiles WHERE id = 'after'")
        db.commit()
    assert _fingerprint(location) == before  # the probes left nothing behind


def test_the_token_is_read_from_the_environment_and_kept_out_of_outputs(tenant: tuple[str, RunningApp]) -> None:
    _, app = tenant
    ctx = MemoryContext()
    _, outputs = run_step(TenantReadOnly("ro", _params(app.url)), ctx)
    assert TOKEN not in repr(outputs) and TOKEN not in repr(ctx.memo.as_dict())
    assert ctx.redactor.redact(f"header Bearer {TOKEN}") == "header Bearer ***"


def test_wrong_token_is_a_permanent_error_that_names_no_secret(tenant: tuple[str, RunningApp],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _, app = tenant
    monkeypatch.setenv("WRONG_TOKEN", "not-the-token")
    params = _params(app.url, admin={"url": f"{app.url}/admin/read-only", "auth_header": "Bearer ${env:WRONG_TOKEN}"})
    with pytest.raises(PermanentError, match="refused the credentials") as caught:
        run_step(TenantReadOnly("ro", params), MemoryContext())
    assert "not-the-token" not in caught.value.one_line()
    assert not caught.value.retryable


def test_plan_says_what_would_change_and_changes_nothing(tenant: tuple[str, RunningApp]) -> None:
    _, app = tenant
    step = TenantReadOnly("ro", _params(app.url))
    result = plan_step(step, MemoryContext())
    assert result.changes[0] == f"PUT {app.url}/admin/read-only: read-only on"
    assert _post_tile(app.url, "still-writable")[0] == 201
    step.apply(MemoryContext())
    assert plan_step(step, MemoryContext()).noop


def test_verify_fails_when_a_probe_is_not_refused(tenant: tuple[str, RunningApp]) -> None:
    _, app = tenant
    params = _params(app.url, probes=[{"url": f"{app.url}/tiles"},
                                      {"url": f"{app.url}/health", "method": "GET"}])
    with pytest.raises(VerificationFailed, match=r"GET .*/health was accepted \(status 200\), expected refused"):
        run_step(TenantReadOnly("ro", params), MemoryContext())


def test_compensate_leaves_a_tenant_that_was_read_only_before_the_run(tenant: tuple[str, RunningApp]) -> None:
    _, app = tenant
    step, ctx = TenantReadOnly("ro", _params(app.url)), MemoryContext()
    step.apply(ctx)  # as if an engineer had switched it on already: this run found it on
    other = MemoryContext()
    check, _ = run_step(step, other)
    assert check.done
    other.memo.set("previous", {"admin": True})
    step.compensate(other)
    assert _post_tile(app.url, "x")[0] == 423
    step.compensate(ctx)  # the run that switched it on lifts it
    assert _post_tile(app.url, "x")[0] == 201


def test_repeated_apply_after_a_restart_keeps_the_first_start_time(tenant: tuple[str, RunningApp]) -> None:
    _, app = tenant
    step, ctx = TenantReadOnly("ro", _params(app.url)), MemoryContext()
    first = step.apply(ctx)
    ctx.clock = type(ctx.clock)()
    second = step.apply(ctx)  # a resume re-applies a RUNNING step
    assert first["read_only_since"] == second["read_only_since"]
    assert second["previous"] == {"admin": False}  # not the read-only state the first try left
    assert [e[0] for e in ctx.events] == ["read_only.start"]


def test_app_that_is_down_is_a_transient_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with RunningApp(TenantApp(str(tmp_path / "none.db"))) as app:
        url = app.url
    with pytest.raises(TransientError):
        TenantReadOnly("ro", _params(url)).check(MemoryContext())


def test_compensate_fails_loudly_when_writes_stay_refused(tenant: tuple[str, RunningApp]) -> None:
    location, app = tenant
    step, ctx = TenantReadOnly("ro", _params(app.url)), MemoryContext()
    run_step(step, ctx)
    with connect(location) as db:  # something else locked the tenant in the meantime
        db.execute("CREATE TRIGGER lock_tiles BEFORE INSERT ON tiles BEGIN SELECT RAISE(ABORT, 'read-only: x'); END")
        db.commit()
    with pytest.raises(CompensationError, match="writes are still refused"):
        step.compensate(ctx)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_tenant(request: pytest.FixtureRequest, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, Any], RunningApp]]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    if request.param == "sqlite":
        location = str(tmp_path / "tenant.db")
        endpoint = {"dialect": "sqlite", "connection": location}
    else:
        location = create_pg_database("ro")
        name = location.rsplit("/", 1)[1]
        endpoint = {"dialect": "postgresql",
                    "connection": f"Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port=5432;Database={name};"
                                  "Uid=postgres"}
    make_tenant_db(location, SIZE)
    try:
        with RunningApp(TenantApp(location, admin_token_env=TOKEN_ENV)) as app:
            yield location, endpoint, app
    finally:
        if request.param == "postgresql":
            drop_pg_database(location)


def test_database_switch_alone_makes_the_app_refuse_writes_with_the_read_only_error(
        database_tenant: tuple[str, dict[str, Any], RunningApp]) -> None:
    _, endpoint, app = database_tenant
    params = TenantReadOnlyParams.model_validate({"database": endpoint, "probes": [{"url": f"{app.url}/tiles"}]})
    step, ctx = TenantReadOnly("ro", params), MemoryContext()
    _, outputs = run_step(step, ctx)
    assert outputs["via"] == ["database"]
    status, body = _post_tile(app.url, "during")
    assert (status, body["error"]) == (423, READ_ONLY_ERROR)
    step.compensate(ctx)
    assert _post_tile(app.url, "after")[0] == 201


def test_admin_and_database_switches_are_both_set_and_both_lifted(
        database_tenant: tuple[str, dict[str, Any], RunningApp]) -> None:
    _, endpoint, app = database_tenant
    step, ctx = TenantReadOnly("ro", _params(app.url, database=endpoint)), MemoryContext()
    _, outputs = run_step(step, ctx)
    assert outputs["via"] == ["admin", "database"]
    assert step.check(ctx).reason == "read-only: admin, database switch on"
    step.compensate(ctx)
    assert not step.check(ctx).done
    assert _post_tile(app.url, "after")[0] == 201


@pytest.mark.parametrize(("spec", "message"), [
    ({"probes": [{"url": "http://127.0.0.1:1/tiles"}]}, "needs `admin`"),
    ({"admin": {"url": "http://127.0.0.1:1/admin"}}, "needs write `probes`"),
    ({"admin": {"url": "http://127.0.0.1:1/admin"}, "probes": [], "extra": 1}, "extra"),
])
def test_incomplete_params_are_rejected_when_the_playbook_loads(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TenantReadOnlyParams.model_validate(spec)
