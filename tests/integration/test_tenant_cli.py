"""Through the CLI, with the tenant app serving and a concurrent writer creating tiles throughout:
SIGKILL while the tenant is read-only, then ``migrator resume``; a failed smoke test rolled back (exit 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.tenant.db import connect
from fixtures.tenant.generate import TenantSize
from fixtures.tenant.harness import http, make_tenant_db
from fixtures.tenant.schema import content_fingerprint
from fixtures.tenant.webapp import READ_ONLY_ERROR, RunningApp, TenantApp
from fixtures.tenant.writer import ConcurrentWriter
from tests.support.engine import MIGRATOR, ROOT, step_status, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TOKEN_ENV = "TENANT_CLI_TEST_TOKEN"
TOKEN = "cli-test-token-51c2"




@pytest.fixture
def tenant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, RunningApp]]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    location = str(tmp_path / "tenant.db")
    make_tenant_db(location, TenantSize(users=10, groups=2, tiles=10, audit=10))
    with RunningApp(TenantApp(location, admin_token_env=TOKEN_ENV)) as app:
        yield location, app


def write_playbook(tmp_path: Path, app_url: str, steps: list[dict[str, Any]], on_failure: str) -> tuple[Path, Path]:
    read_only = {"id": "read_only", "uses": "tenant.read_only",
                 "with": {"admin": {"url": f"{app_url}/admin/read-only",
                                    "auth_header": f"Bearer ${{env:{TOKEN_ENV}}}"},
                          "probes": [{"url": f"{app_url}/tiles"}]}}
    playbook = {"name": "tenant", "on_failure": on_failure, "steps": [read_only, *steps]}
    env = {"tenant": {"name": "contoso", "timezone": "Europe/Amsterdam"}}
    playbook_file, env_file = tmp_path / "playbook.yaml", tmp_path / "env.yaml"
    playbook_file.write_text(yaml.safe_dump(playbook))
    env_file.write_text(yaml.safe_dump(env))
    return playbook_file, env_file


def tile_ids(location: str) -> set[str]:
    with connect(location) as db:
        return {str(r[0]) for r in db.query("SELECT id FROM tiles")}


def test_sigkill_while_read_only_then_resume_completes_and_no_acknowledged_write_is_lost(
        tenant: tuple[str, RunningApp], tmp_path: Path) -> None:
    location, app = tenant
    go = tmp_path / "go"
    hold = {"id": "hold", "uses": "shell",
            "with": {"run": f"while [ ! -e {go} ]; do sleep 0.05; done", "check": f"test -e {go}"}}
    playbook, env_file = write_playbook(tmp_path, app.url, [hold], "stop")
    state_dir, run_id = tmp_path / "state", "kill-read-only"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with ConcurrentWriter(app.url, prefix="w", interval=0.005) as writer:
        assert writer.wait_until(lambda w: len(w.acknowledged) >= 3)
        runner = subprocess.Popen([*MIGRATOR, "run", str(playbook), "-e", str(env_file), "--state",
                                   str(state_dir), "--run-id", run_id], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: step_status(state_dir, run_id, "hold") == "running" or runner.poll() is not None,
                     "the run to hold with the tenant read-only")
            assert runner.poll() is None, runner.communicate()[0].decode(errors="replace")
            copy_while_read_only = tile_ids(location)
            assert writer.wait_until(lambda w: len(w.refused) >= 3)
            runner.send_signal(signal.SIGKILL)
            runner.wait(timeout=60)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
        assert runner.returncode == -signal.SIGKILL
        status, body = http("POST", f"{app.url}/tiles", {"title": "T", "url": "https://t.example"})
        assert (status, body["error"]) == (423, READ_ONLY_ERROR)  # killed: the tenant stays safe
        go.touch()
        resumed = subprocess.run([*MIGRATOR, "resume", run_id, "--state", str(state_dir)], cwd=tmp_path,
                                 env=env, capture_output=True, timeout=300)
        output = (resumed.stdout + resumed.stderr).decode(errors="replace")
        assert resumed.returncode == 0, output
    report = writer.verify(copy_while_read_only)
    assert report.ok, report
    assert report.acknowledged >= 3 and report.refused >= 3 and report.failed == 0
    assert TOKEN not in output
    assert step_status(state_dir, run_id, "read_only") == "done"
    assert http("GET", f"{app.url}/health")[1]["read_only"] is True  # the source stays read-only after cutover
    status_json = subprocess.run([*MIGRATOR, "status", run_id, "--state", str(state_dir), "--json"],
                                 cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert status_json.returncode == 0 and TOKEN not in status_json.stdout.decode(errors="replace")
    json.loads(status_json.stdout)


def test_failed_smoke_test_rolls_back_and_the_source_is_writable_and_unchanged(
        tenant: tuple[str, RunningApp], tmp_path: Path) -> None:
    location, app = tenant
    with connect(location) as db:
        before = content_fingerprint(db)["fingerprint"]
    smoke = {"id": "smoke", "uses": "smoke.test",
             "with": {"http": [{"name": "new instance health", "url": f"{app.url}/health",
                                "body_contains": "Fabrikam"}]}}
    playbook, env_file = write_playbook(tmp_path, app.url, [smoke], "rollback")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([*MIGRATOR, "run", str(playbook), "-e", str(env_file), "--state",
                             str(tmp_path / "state"), "--run-id", "smoke-fails"], cwd=tmp_path, env=env,
                            capture_output=True, timeout=300)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 4, output
    assert "new instance health" in output
    assert http("GET", f"{app.url}/health")[1]["read_only"] is False
    assert http("POST", f"{app.url}/tiles", {"id": "after", "title": "T", "url": "https://t.example"})[0] == 201
    with connect(location) as db:
        db.execute("DELETE FROM tiles WHERE id = 'after'")
        db.commit()
        assert content_fingerprint(db)["fingerprint"] == before
