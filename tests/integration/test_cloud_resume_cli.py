"""Through the CLI: ``migrator run`` killed with SIGKILL while a long-running ARM operation is pending, then
``migrator resume``: the resumed run re-attaches to the operation; the emulator (in this test process, so it
outlives the killed runner) sees exactly one PUT or POST for it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.armemu.core import ArmEmulator
from tests.support.engine import MIGRATOR, ROOT, kill_when

pytestmark = [pytest.mark.integration, pytest.mark.e2e]




def step_memo(state_dir: Path, run_id: str, step_id: str) -> dict[str, Any]:
    path = state_dir / "state.db"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT memo FROM steps WHERE run_id = ? AND step_id = ?", (run_id, step_id)).fetchone()
    except sqlite3.Error:
        return {}
    return json.loads(row[0]) if row and row[0] else {}


def write_files(tmp_path: Path, arm: ArmEmulator, server: str) -> tuple[Path, Path]:
    env = {
        "tenant": {"name": "contoso"},
        "target": {"arm": {"subscription_id": arm.subscription_id, "resource_group": "rg-tenant",
                           "endpoint": arm.base_url, "ca_file": arm.ca_file,
                           "credential": {"type": "access_token", "token": "${env:ARM_TEST_TOKEN}"},
                           "polling_interval": 0.1, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05},
                   "server": {"name": server, "location": "westeurope", "administrator_login": "w365admin",
                              "administrator_password": "${env:SQL_ADMIN_PASSWORD}"}},
    }
    playbook = {
        "name": "provision",
        "on_failure": "stop",
        "steps": [{"id": "provision", "uses": "cloud.provision",
                   "with": {"arm": "${target.arm}", "server": "${target.server}",
                            "firewall": {"start_ip": "203.0.113.7"},
                            "database": {"name": "tenant-contoso", "sku": "GP_Gen5_2"}}}],
    }
    env_file, playbook_file = tmp_path / "env.yaml", tmp_path / "playbook.yaml"
    env_file.write_text(yaml.safe_dump(env))
    playbook_file.write_text(yaml.safe_dump(playbook))
    return playbook_file, env_file


@pytest.mark.parametrize("pending_at", ["server", "database"])
def test_sigkill_while_an_operation_is_pending_then_resume_reattaches_with_one_put(
        arm: ArmEmulator, tmp_path: Path, pending_at: str) -> None:
    server = f"sql-{uuid.uuid4().hex[:10]}"
    playbook, env_file = write_files(tmp_path, arm, server)
    state_dir = tmp_path / "state"
    run_id = f"kill-{pending_at}"
    env = dict(os.environ, ARM_TEST_TOKEN="emulator-token", SQL_ADMIN_PASSWORD="Kill-pa55-" + uuid.uuid4().hex[:6],
               PYTHONPATH=str(ROOT))
    path = rf"/servers/{server}$" if pending_at == "server" else r"/databases/tenant-contoso$"
    arm.hold_operations(path)

    runner = subprocess.Popen([*MIGRATOR, "run", str(playbook), "-e", str(env_file), "--state", str(state_dir),
                               "--run-id", run_id], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_when(runner, lambda: any(e.status == 202 for e in arm.log.matching("PUT", path))
              and f"lro:{pending_at}" in step_memo(state_dir, run_id, "provision"),
              f"the {pending_at} PUT to be accepted and its continuation token kept in the state store")
    assert f"lro:{pending_at}" in step_memo(state_dir, run_id, "provision")
    arm.release_operations()

    resumed = subprocess.run([*MIGRATOR, "resume", run_id, "--state", str(state_dir)], cwd=tmp_path, env=env,
                             capture_output=True, timeout=300)

    output = (resumed.stdout + resumed.stderr).decode(errors="replace")
    assert resumed.returncode == 0, output
    accepted = [e for e in arm.log.matching("PUT", path) if e.status == 202]
    assert len(accepted) == 1, [(e.method, e.path, e.status) for e in arm.log]
    assert arm.log.count("PUT", rf"/servers/{server}$") == 1
    assert any(i.endswith("/databases/tenant-contoso") for i in arm.store.ids())
    assert "Kill-pa55" not in output
    status = subprocess.run([*MIGRATOR, "status", run_id, "--state", str(state_dir), "--json"], cwd=tmp_path,
                            env=env, capture_output=True, timeout=120)
    assert status.returncode == 0
    assert "Kill-pa55" not in status.stdout.decode(errors="replace")
    assert "lro:" not in json.dumps(step_memo(state_dir, run_id, "provision")), "token cleared once done"
