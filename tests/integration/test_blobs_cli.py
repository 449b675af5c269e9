"""Through the CLI: ``migrator run`` killed with SIGKILL in the middle of a presync, then ``migrator resume``.

Azurite runs in this test process's session, so it outlives the killed runner and shows what was sent: every
blob committed at the destination before the kill keeps its ETag through the resume (any re-upload or
re-copy would give it a new one), and the resumed run verifies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fixtures.services.azurite import CLOUD_ACCOUNT, SOURCE_ACCOUNT, Azurite
from tests.integration.test_blobs import container, small_name, upload_many
from tests.support.engine import kill_when

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
MIGRATOR = [sys.executable, "-m", "migrator"]
BLOBS = 1000


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write_files(tmp_path: Path, azurite: Azurite, source: str, backup: str, *, server_side: bool) -> tuple[Path, Path]:
    env = {
        "tenant": {"name": "contoso"},
        "source": {"blobs": {"kind": "azure", "account_url": azurite.source_url, "container": source,
                             "account_key": "${env:SOURCE_STORAGE_KEY}"}},
        "target": {"blobs": {"kind": "azure", "account_url": azurite.cloud_url, "container": backup,
                             "account_key": "${env:CLOUD_STORAGE_KEY}"}},
    }
    playbook = {
        "name": "blobs",
        "on_failure": "stop",
        "steps": [
            {"id": "presync", "uses": "blobs.presync",
             "with": {"source": "${source.blobs}", "destination": "${target.blobs}", "concurrency": 4,
                      "server_side_copy": server_side}},
            {"id": "verify", "uses": "blobs.verify",
             "with": {"source": "${source.blobs}", "destination": "${target.blobs}"}},
        ],
    }
    env_file, playbook_file = tmp_path / "env.yaml", tmp_path / "playbook.yaml"
    env_file.write_text(yaml.safe_dump(env))
    playbook_file.write_text(yaml.safe_dump(playbook))
    return playbook_file, env_file


# Streamed copies only: the server-side path is resumed the same way and is covered in-process
# (test_blobs.py::test_resume_after_stop_mid_presync_uploads_no_completed_blob_again).
def test_sigkill_mid_presync_then_resume_sends_no_completed_blob_again(azurite: Azurite, tmp_path: Path) -> None:
    server_side = False
    source, backup = azurite.create_container(SOURCE_ACCOUNT), azurite.create_container(CLOUD_ACCOUNT)
    upload_many(container(azurite, SOURCE_ACCOUNT, source), [small_name(i) for i in range(BLOBS)])
    playbook, env_file = write_files(tmp_path, azurite, source, backup, server_side=server_side)
    state_dir, run_id = tmp_path / "state", "blobs-kill"
    env = dict(os.environ, SOURCE_STORAGE_KEY=azurite.source_key, CLOUD_STORAGE_KEY=azurite.cloud_key,
               PYTHONPATH=str(ROOT))
    dst = container(azurite, CLOUD_ACCOUNT, backup)

    runner = subprocess.Popen([*MIGRATOR, "run", str(playbook), "-e", str(env_file), "--state", str(state_dir),
                               "--run-id", run_id], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_when(runner, lambda: sum(1 for _ in dst.list_blob_names()) >= BLOBS // 5,
              "a fifth of the blobs at the destination")
    before = {b.name: b.etag for b in dst.list_blobs()}
    assert BLOBS // 5 <= len(before) < BLOBS

    resumed = subprocess.run([*MIGRATOR, "resume", run_id, "--state", str(state_dir)], cwd=tmp_path, env=env,
                             capture_output=True, timeout=300)

    output = (resumed.stdout + resumed.stderr).decode(errors="replace")
    assert resumed.returncode == 0, output
    after = {b.name: b.etag for b in dst.list_blobs()}
    assert len(after) == BLOBS
    sent_again = [name for name, etag in before.items() if after[name] != etag]
    assert sent_again == [], f"{len(sent_again)} blob(s) finished before the kill were written again"
    assert azurite.source_key not in output and azurite.cloud_key not in output
