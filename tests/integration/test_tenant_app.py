"""The demo tenant for real: generator and blobs on SQLite and PostgreSQL, the web app on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.tenant.blobs import change_blobs, folder_inventory, generate_blobs
from fixtures.tenant.db import connect
from fixtures.tenant.generate import TenantSize, change_rows
from fixtures.tenant.harness import AppProcess, create_pg_database, drop_pg_database, http, make_tenant_db
from fixtures.tenant.schema import content_fingerprint
from fixtures.tenant.webapp import READ_ONLY_ERROR, RunningApp, TenantApp, folder_blobs
from fixtures.tenant.writer import ConcurrentWriter

pytestmark = pytest.mark.integration

TOKEN_ENV = "TENANT_TEST_ADMIN_TOKEN"
TOKEN = "test-admin-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = TenantSize(users=20, groups=3, tiles=30, audit=40)


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


def _new_location(dialect: str, tmp_path: Path, created: list[str], name: str = "tenant") -> str:
    if dialect == "sqlite":
        return str(tmp_path / f"{name}.db")
    url = create_pg_database(name)
    created.append(url)
    return url


@pytest.fixture
def locations(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    created: list[str] = []
    yield tmp_path, created
    for url in created:
        drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def tenant_db(request: pytest.FixtureRequest, locations: tuple[Path, list[str]]) -> str:
    tmp_path, created = locations
    location = _new_location(request.param, tmp_path, created)
    make_tenant_db(location, SMALL)
    return location


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    root = tmp_path / "blobs"
    generate_blobs(root, count=60, total_bytes=200_000)
    return root


@pytest.fixture
def app(tenant_db: str, blob_dir: Path, admin_token: str) -> Iterator[RunningApp]:
    with RunningApp(TenantApp(tenant_db, folder_blobs(blob_dir), admin_token_env=TOKEN_ENV)) as running:
        yield running


def _fingerprint(location: str) -> object:
    with connect(location) as db:
        return content_fingerprint(db)["fingerprint"]


def _tile_ids(location: str) -> set[str]:
    with connect(location) as db:
        return {str(r[0]) for r in db.query("SELECT id FROM tiles")}


def _set_read_only(url: str, on: bool) -> None:
    status, body = http("PUT", f"{url}/admin/read-only", {"read_only": on, "reason": "test"}, headers=AUTH)
    assert status == 200 and body["read_only"] is on


# -- generator and blobs ---------------------------------------------------------------------------------------


def test_generator_writes_the_same_tenant_on_sqlite_and_postgresql(locations: tuple[Path, list[str]]) -> None:
    tmp_path, created = locations
    sqlite = make_tenant_db(_new_location("sqlite", tmp_path, created), SMALL, seed=7)
    postgres = make_tenant_db(_new_location("postgresql", tmp_path, created), SMALL, seed=7)
    other_seed = make_tenant_db(_new_location("sqlite", tmp_path, created, "other"), SMALL, seed=8)
    assert sqlite == postgres
    assert sqlite["counts"] == {"tenant": 1, "users": 20, "tile_groups": 3, "tiles": 30}
    assert other_seed["fingerprint"] != sqlite["fingerprint"]


def test_generator_size_for_rows_adds_up_to_the_requested_rows() -> None:
    size = TenantSize.for_rows(200_000)
    assert size.rows == 200_000
    assert size.users > 0 and size.tiles > 0 and size.audit > size.tiles


def test_changed_rows_change_the_fingerprint(tmp_path: Path) -> None:
    location = str(tmp_path / "t.db")
    before = make_tenant_db(location, SMALL)
    with connect(location) as db:
        changed = change_rows(db, 0.1)
    assert changed == 2 + 3  # 10% of 20 users and of 30 tiles
    assert _fingerprint(location) != before["fingerprint"]


def test_blob_generator_is_deterministic_and_changes_only_the_chosen_blobs(tmp_path: Path) -> None:
    specs = generate_blobs(tmp_path / "a", count=120, total_bytes=1_000_000)
    generate_blobs(tmp_path / "b", count=120, total_bytes=1_000_000)
    first, second = folder_inventory(tmp_path / "a"), folder_inventory(tmp_path / "b")
    assert first == second and len(first) == 120
    assert 0.95 * 1_000_000 <= sum(i["size"] for i in first.values()) <= 1_000_000
    assert {name.split("/")[0] for name in first} == {"icons", "backgrounds", "documents"}
    changed = change_blobs(tmp_path / "b", specs, 0.05)
    after = folder_inventory(tmp_path / "b")
    assert len(changed) == 6
    assert sorted(n for n in first if first[n] != after[n]) == changed


# -- the web app -----------------------------------------------------------------------------------------------


def test_created_tile_is_listed_and_counted_in_health(app: RunningApp) -> None:
    status, body = http("POST", f"{app.url}/tiles", {"id": "new-1", "title": "Payroll", "url": "https://p.example"})
    assert (status, body) == (201, {"id": "new-1", "created": True})
    assert http("GET", f"{app.url}/tiles/new-1")[1]["title"] == "Payroll"
    assert "new-1" in {t["id"] for t in http("GET", f"{app.url}/tiles")[1]["tiles"]}
    status, health = http("GET", f"{app.url}/health")
    assert status == 200 and health["ok"] and health["counts"]["tiles"] == SMALL.tiles + 1


def test_replayed_write_is_acknowledged_without_a_second_row(app: RunningApp, tenant_db: str) -> None:
    tile = {"id": "again", "title": "T", "url": "https://t.example"}
    assert http("POST", f"{app.url}/tiles", tile)[0] == 201
    assert http("POST", f"{app.url}/tiles", tile) == (200, {"id": "again", "created": False})
    assert http("POST", f"{app.url}/tiles", {**tile, "title": "other"})[0] == 409
    assert len(_tile_ids(tenant_db)) == SMALL.tiles + 1


def test_read_only_refuses_writes_with_the_read_only_error_and_changes_nothing(app: RunningApp,
                                                                               tenant_db: str) -> None:
    before = _fingerprint(tenant_db)
    _set_read_only(app.url, True)
    status, body = http("POST", f"{app.url}/tiles", {"id": "refused", "title": "T", "url": "https://t.example"})
    assert status == 423
    assert body["error"] == READ_ONLY_ERROR and "read-only" in body["message"]
    assert _fingerprint(tenant_db) == before  # the switch itself is not a content change
    assert http("GET", f"{app.url}/health")[1]["read_only"] is True
    _set_read_only(app.url, False)
    assert http("POST", f"{app.url}/tiles", {"id": "later", "title": "T", "url": "https://t.example"})[0] == 201


def test_write_probe_goes_through_the_write_path_and_leaves_no_trace(app: RunningApp, tenant_db: str) -> None:
    before = _fingerprint(tenant_db)
    probe = {"X-Write-Probe": "rollback"}
    status, body = http("POST", f"{app.url}/tiles", {"title": "probe", "url": "https://p"}, headers=probe)
    assert (status, body["probe"]) == (200, "accepted")
    _set_read_only(app.url, True)
    status, body = http("POST", f"{app.url}/tiles", {"title": "probe", "url": "https://p"}, headers=probe)
    assert (status, body["error"]) == (423, READ_ONLY_ERROR)
    assert _fingerprint(tenant_db) == before


@pytest.mark.parametrize(("headers", "token_set", "expected"), [
    ({}, True, 401),
    ({"Authorization": "Bearer wrong"}, True, 401),
    ({"Authorization": TOKEN}, True, 401),  # the scheme is required
    (AUTH, True, 200),
    (AUTH, False, 503),  # no token configured: the admin API is off, never open
])
def test_admin_endpoint_needs_the_configured_token(app: RunningApp, monkeypatch: pytest.MonkeyPatch,
                                                   headers: dict[str, str], token_set: bool, expected: int) -> None:
    if not token_set:
        monkeypatch.delenv(TOKEN_ENV)
    assert http("GET", f"{app.url}/admin/read-only", headers=headers)[0] == expected
    assert http("PUT", f"{app.url}/admin/read-only", {"read_only": True}, headers=headers)[0] == expected


def test_blobs_are_served_by_name(app: RunningApp, blob_dir: Path) -> None:
    status, data = http("GET", f"{app.url}/blobs/icons/icon-001.png")
    assert status == 200 and data == (blob_dir / "icons" / "icon-001.png").read_bytes()
    assert http("GET", f"{app.url}/blobs/icons/none.png")[0] == 404
    assert http("GET", f"{app.url}/blobs/../secrets.txt")[0] == 404


def test_database_level_read_only_is_answered_with_the_read_only_error(
        locations: tuple[Path, list[str]], admin_token: str) -> None:
    tmp_path, created = locations
    location = _new_location("postgresql", tmp_path, created)
    make_tenant_db(location, SMALL)
    name = location.rsplit("/", 1)[1]
    with connect(location) as db:
        db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        db.commit()
    with RunningApp(TenantApp(location, admin_token_env=TOKEN_ENV)) as running:
        status, body = http("POST", f"{running.url}/tiles", {"title": "T", "url": "https://t.example"})
        assert (status, body["error"]) == (423, READ_ONLY_ERROR)
        assert http("GET", f"{running.url}/health")[0] == 200  # reads go on


def test_read_only_switch_survives_a_restart_of_the_app(tmp_path: Path) -> None:
    location = str(tmp_path / "tenant.db")
    make_tenant_db(location, SMALL)
    env = {TOKEN_ENV: TOKEN}
    with AppProcess(location, tmp_path, env=env, token_env=TOKEN_ENV) as first:
        _set_read_only(first.url, True)
    with AppProcess(location, tmp_path, env=env, token_env=TOKEN_ENV) as second:
        assert second.url  # a new port, a new process
        status, state = http("GET", f"{second.url}/admin/read-only", headers=AUTH)
        assert status == 200 and state["read_only"] is True and state["reason"] == "test"
        assert http("POST", f"{second.url}/tiles", {"title": "T", "url": "https://t.example"})[0] == 423


def test_concurrent_writer_every_acknowledged_write_is_in_a_copy_taken_after_the_switch(
        app: RunningApp, tenant_db: str) -> None:
    with ConcurrentWriter(app.url, prefix="w", interval=0.0) as writer:
        assert writer.wait_until(lambda w: len(w.acknowledged) >= 5)
        _set_read_only(app.url, True)
        copy_after_switch = _tile_ids(tenant_db)  # what a backup taken now would hold
        assert writer.wait_until(lambda w: len(w.refused) >= 5)
    report = writer.verify(copy_after_switch)
    assert report.acknowledged >= 5 and report.refused >= 5 and report.failed == 0
    assert report.ok, report
    assert not set(writer.acknowledged) - _tile_ids(tenant_db)


def test_writer_report_names_missing_leaked_and_wrong_refusals(app: RunningApp) -> None:
    writer = ConcurrentWriter(app.url, prefix="x", max_writes=2)
    assert writer.write_one() == "acknowledged"
    _set_read_only(app.url, True)
    assert writer.write_one() == "refused"
    report = writer.verify({"x-000002"})  # a copy missing the acknowledged write and holding the refused one
    assert not report.ok
    assert report.missing == ["x-000001"] and report.leaked == ["x-000002"] and report.wrong_refusals == []


def test_app_module_runs_on_postgresql_as_a_process(locations: tuple[Path, list[str]]) -> None:
    tmp_path, created = locations
    location = _new_location("postgresql", tmp_path, created)
    make_tenant_db(location, SMALL)
    with AppProcess(location, env={TOKEN_ENV: TOKEN}, token_env=TOKEN_ENV) as process:
        status, health = http("GET", f"{process.url}/health?fingerprint=1")
    assert status == 200 and health["fingerprint"] == _fingerprint(location)
