"""Through the CLI: ``migrator run`` killed with SIGKILL in the middle of a database backup, and of a restore,
then ``migrator resume``: the resumed run verifies (row counts and content checksums) and no row is doubled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrator.steps.database import Backup
from migrator.testing import MemoryContext, run_step
from tests.support.engine import kill_when
from tests.support.postgres import PostgresServer, ScratchDatabase

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
MIGRATOR = [sys.executable, "-m", "migrator"]
PEOPLE = 100_000
EVENTS = 20_000
CHUNK_ROWS = 1000
PASSWORD = "s3cret-db-password"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def make_source(postgres: PostgresServer) -> ScratchDatabase:
    source = postgres.create_database()
    source.sql('CREATE TABLE "Person" (id bigint PRIMARY KEY, "First Name" text, amount numeric(20,4), '
               'seen timestamptz, active boolean, photo bytea)')
    source.sql(f"""INSERT INTO "Person" SELECT g, 'name ' || g, g * 1.25, now() - g * interval '1 second',
                   g % 2 = 0, decode(md5(g::text), 'hex') FROM generate_series(1, {PEOPLE}) g""")
    source.sql('CREATE TABLE "events" (kind text, n integer)')  # no primary key, many identical rows
    source.sql(f"INSERT INTO events SELECT 'k' || (g % 7), g % 100 FROM generate_series(1, {EVENTS}) g")
    return source


def endpoint(db: ScratchDatabase) -> dict[str, Any]:
    return {"dialect": "postgresql", "connection": db.odbc + ";Pwd=${env:DB_PASSWORD}"}


def write_files(tmp_path: Path, steps: list[dict[str, Any]], source: ScratchDatabase, target: ScratchDatabase,
                backup: Path) -> tuple[Path, Path]:
    env = {
        "tenant": {"name": "contoso"},
        "source": {"database": endpoint(source)},
        "target": {"database": endpoint(target)},
        "settings": {"backup": {"kind": "folder", "path": str(backup)}},
    }
    env_file, playbook_file = tmp_path / "env.yaml", tmp_path / "playbook.yaml"
    env_file.write_text(yaml.safe_dump(env))
    playbook_file.write_text(yaml.safe_dump({"name": "database", "on_failure": "stop", "steps": steps}))
    return playbook_file, env_file


def run_killed_then_resume(tmp_path: Path, playbook: Path, env_file: Path, killed_when: Callable[[], bool],
                           what: str) -> str:
    state_dir, run_id = tmp_path / "state", "db-kill"
    env = dict(os.environ, DB_PASSWORD=PASSWORD, PYTHONPATH=str(ROOT))
    runner = subprocess.Popen([*MIGRATOR, "run", str(playbook), "-e", str(env_file), "--state", str(state_dir),
                               "--run-id", run_id], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_when(runner, killed_when, what)
    resumed = subprocess.run([*MIGRATOR, "resume", run_id, "--state", str(state_dir)], cwd=tmp_path, env=env,
                             capture_output=True, timeout=600)
    output = (resumed.stdout + resumed.stderr).decode(errors="replace")
    assert resumed.returncode == 0, output
    state_files = b"".join(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())
    assert PASSWORD not in output and PASSWORD.encode() not in state_files
    return output


def chunk_files(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.jsonl.gz")) if folder.exists() else 0


RESTORE_AND_VERIFY = [
    {"id": "restore", "uses": "database.restore",
     "with": {"backup": "${settings.backup}", "database": "${target.database}"}},
    {"id": "verify", "uses": "database.verify",
     "with": {"database": "${target.database}", "source": "${source.database}"}},
]


def assert_no_duplicates(target: ScratchDatabase) -> None:
    assert target.sql('SELECT count(*), count(DISTINCT id) FROM "Person"') == [(PEOPLE, PEOPLE)]
    assert target.sql("SELECT count(*) FROM events") == [(EVENTS,)]
    assert target.sql("SELECT kind, n, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2") == \
        make_expected_events()


def make_expected_events() -> list[tuple[str, int, int]]:
    counts: dict[tuple[str, int], int] = {}
    for g in range(1, EVENTS + 1):
        key = (f"k{g % 7}", g % 100)
        counts[key] = counts.get(key, 0) + 1
    return [(k, n, c) for (k, n), c in sorted(counts.items())]


def test_sigkill_mid_backup_then_resume_restores_every_row_once(postgres: PostgresServer, tmp_path: Path) -> None:
    source, target = make_source(postgres), postgres.create_database()
    backup = tmp_path / "backup"
    steps = [{"id": "backup", "uses": "database.backup",
              "with": {"database": "${source.database}", "to": "${settings.backup}", "chunk_rows": CHUNK_ROWS}},
             *RESTORE_AND_VERIFY]
    playbook, env_file = write_files(tmp_path, steps, source, target, backup)

    run_killed_then_resume(tmp_path, playbook, env_file, lambda: chunk_files(backup) >= 10,
                           "ten backup chunks written")

    assert (backup / "manifest.json").exists()
    assert_no_duplicates(target)


def test_sigkill_mid_restore_then_resume_loads_no_row_twice(postgres: PostgresServer, tmp_path: Path) -> None:
    source, target = make_source(postgres), postgres.create_database()
    backup = tmp_path / "backup"
    backup.mkdir()
    run_step(Backup("backup", Backup.Params.model_validate(
        {"database": {"dialect": "postgresql", "connection": source.odbc},
         "to": {"kind": "folder", "path": str(backup)}, "chunk_rows": CHUNK_ROWS})), MemoryContext())
    playbook, env_file = write_files(tmp_path, RESTORE_AND_VERIFY, source, target, backup)

    def loading() -> bool:
        try:
            return target.sql('SELECT count(*) FROM "Person"')[0][0] >= 10 * CHUNK_ROWS
        except Exception:  # the table does not exist yet
            return False

    run_killed_then_resume(tmp_path, playbook, env_file, loading, "ten chunks loaded")

    assert_no_duplicates(target)
    assert target.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = '_migrator_restore_chunks'") \
        == [(0,)]
