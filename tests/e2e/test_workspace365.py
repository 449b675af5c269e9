"""The Workspace 365 migration end to end, through the ``migrator`` command, on the demo's local stand-ins.

Each test stands the demo up afresh (:class:`fixtures.demo.DemoStack`: the self-hosted tenant app over SQLite
and a blob folder, Azurite, a PostgreSQL database, a second tenant app, BIND) and runs
``playbooks/workspace365-local.yaml`` as a child process, the way an engineer would.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.demo import OLD_TARGET, PLAYBOOK, ROOT, TOKEN_ENV, DemoSize, DemoStack, drop_database
from fixtures.tenant.db import connect
from fixtures.tenant.harness import http
from fixtures.tenant.webapp import READ_ONLY_ERROR
from fixtures.tenant.writer import ConcurrentWriter
from tests.support.engine import kill_when, step_status

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SMALL = DemoSize(rows=600, blobs=30, blob_bytes=600_000)
NEW_TARGET = "contoso.cloud.example.test."


#: Big enough that backup and restore take a while: a SIGKILL lands while the tenant is read-only.
KILLABLE = DemoSize(rows=8_000, blobs=30, blob_bytes=600_000)


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DemoStack]:
    size = getattr(request, "param", SMALL)
    demo = DemoStack(tmp_path / "demo", size, database=f"w365_e2e_{uuid.uuid4().hex[:10]}")
    with demo:
        yield demo
    drop_database(demo.database)


def migrator(stack: DemoStack, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT, env=stack.child_environ(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_args(stack: DemoStack, env_file: Path, run_id: str) -> list[str]:
    return ["run", str(PLAYBOOK), "-e", str(env_file), "--state", str(stack.state_dir), "--run-id", run_id]


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr



def events(stack: DemoStack, run_id: str, kind: str) -> list[tuple[float, dict[str, Any]]]:
    with sqlite3.connect(stack.state_dir / "state.db") as conn:
        rows = conn.execute("SELECT * FROM events WHERE run_id = ? AND type = ? ORDER BY id",
                            (run_id, kind)).fetchall()
    # columns: id, run_id, step_id, at, type, message, data
    return [(float(r[3]), json.loads(r[6] or "{}")) for r in rows]



def personal_data(stack: DemoStack) -> list[str]:
    with connect(str(stack.source_db)) as db:
        rows = db.query("SELECT email, phone, surname FROM users ORDER BY id LIMIT 5")
    return [str(v) for row in rows for v in row if v and len(str(v)) > 5]


def written_text(stack: DemoStack) -> str:
    """Everything the run left on disk: the log files and the state store's text."""
    text = "".join(p.read_text(errors="replace") for p in (stack.state_dir / "logs").glob("*"))
    with sqlite3.connect(stack.state_dir / "state.db") as conn:
        for table in ("runs", "steps", "events", "items"):
            text += "\n".join(" ".join(str(v) for v in row) for row in conn.execute(f"SELECT * FROM {table}"))
    return text


def test_happy_path_with_a_concurrent_writer_every_acknowledged_write_reaches_the_target(
        stack: DemoStack) -> None:
    env_file = stack.write_environment()
    with ConcurrentWriter(stack.source_url, prefix="w", interval=0.01) as writer:
        assert writer.wait_until(lambda w: len(w.acknowledged) >= 5)
        result = migrator(stack, *run_args(stack, env_file, "happy"))
        # The source stays read-only after the cutover: the writer keeps being refused, never half-accepted.
        refused_before = len(writer.refused)
        assert writer.wait_until(lambda w: len(w.refused) >= refused_before + 3)
    assert result.returncode == 0, output(result)
    report = writer.verify(stack.target_tile_ids())
    assert report.ok, report  # nothing acknowledged is missing, nothing refused leaked, every refusal read-only
    assert report.acknowledged >= 5 and report.refused >= 3 and report.failed == 0, report
    assert {r.error for r in writer.refused} == {READ_ONLY_ERROR}
    assert http("GET", f"{stack.source_url}/health")[1]["read_only"] is True
    assert stack.dns_answer() == (60, {NEW_TARGET})
    target = http("GET", f"{stack.target_url}/health")[1]
    assert target["read_only"] is False and target["counts"]["tiles"] == len(stack.target_tile_ids())
    leaked = [v for v in [stack.secrets[TOKEN_ENV], *personal_data(stack)] if v in written_text(stack)]
    assert leaked == [], "a secret or personal data was written to the logs or the state store"


def test_failed_smoke_test_rolls_back_leaving_the_source_writable_unchanged_and_dns_untouched(
        stack: DemoStack) -> None:
    # The new instance answers, but not as the tenant the smoke test expects: an injected smoke failure.
    env_file = stack.write_environment(smoke={"tenant_display_name": "Fabrikam", "max_latency_ms": 5000,
                                              "blob": "icons/icon-000.png"})
    fingerprint_before = stack.source_fingerprint()
    dns_before = stack.dns_answer()
    result = migrator(stack, *run_args(stack, env_file, "smoke-fails"))
    assert result.returncode == 4, output(result)
    assert "Fabrikam" in output(result)
    assert step_status(stack.state_dir, "smoke-fails", "dns_transfer") in (None, "pending")
    assert stack.dns_answer() == dns_before == (300, {OLD_TARGET})
    assert http("GET", f"{stack.source_url}/health")[1]["read_only"] is False
    status, body = http("POST", f"{stack.source_url}/tiles",
                        {"id": "after-rollback", "title": "T", "url": "https://t.example"})
    assert status == 201, body
    with connect(str(stack.source_db)) as db:
        db.execute("DELETE FROM tiles WHERE id = 'after-rollback'")
        db.commit()
    assert stack.source_fingerprint() == fingerprint_before
    assert [data.get("seconds") for _, data in events(stack, "smoke-fails", "read_only.end")] != []


@pytest.mark.parametrize("stack", [KILLABLE], indirect=True)
def test_sigkill_while_the_tenant_is_read_only_then_resume_completes_the_migration(stack: DemoStack) -> None:
    env_file = stack.write_environment()
    run_id = "killed"
    with ConcurrentWriter(stack.source_url, prefix="k", interval=0.01) as writer:
        assert writer.wait_until(lambda w: len(w.acknowledged) >= 3)
        child = subprocess.Popen([sys.executable, "-m", "migrator", *run_args(stack, env_file, run_id)],
                                 cwd=ROOT, env=stack.child_environ(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        kill_when(child, lambda: step_status(stack.state_dir, run_id, "read_only") == "done",
                  "the tenant to be read-only")
        assert step_status(stack.state_dir, run_id, "dns_transfer") != "done", "the run ended before it could be killed"
        status, body = http("POST", f"{stack.source_url}/tiles", {"title": "T", "url": "https://t.example"})
        assert (status, body["error"]) == (423, READ_ONLY_ERROR)  # killed: the tenant stays safely read-only
        resumed = migrator(stack, "resume", run_id, "--state", str(stack.state_dir))
        assert resumed.returncode == 0, output(resumed)
    report = writer.verify(stack.target_tile_ids())
    assert report.ok and report.failed == 0, report
    assert stack.dns_answer() == (60, {NEW_TARGET})
    assert len(events(stack, run_id, "read_only.start")) == 1  # the window was not opened twice
    assert step_status(stack.state_dir, run_id, "done") == "done"


def _world(stack: DemoStack) -> dict[str, Any]:
    """What a dry-run must leave as it found: source, target database and containers, DNS, state."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(stack.secrets["W365_CLOUD_STORAGE"])
    blobs = {c.name: sorted(b.name for b in service.get_container_client(c.name).list_blobs())
             for c in service.list_containers()}
    with connect(stack.target_db_url) as db:
        tables = db.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {"source": stack.source_fingerprint(),
            "source_state": http("GET", f"{stack.source_url}/health")[1]["read_only"],
            "source_audit": http("GET", f"{stack.source_url}/health")[1].get("counts"),
            "containers": blobs, "target_tables": sorted(tables), "dns": stack.dns_answer(),
            "state": stack.state_dir.exists()}


def plan_json(stack: DemoStack, env_file: Path, out: Path) -> dict[str, Any]:
    result = migrator(stack, "plan", str(PLAYBOOK), "-e", str(env_file), "--json", "--out", str(out))
    assert result.stdout.strip(), output(result)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_plan_changes_nothing_and_writes_the_customer_plan(stack: DemoStack, tmp_path: Path) -> None:
    env_file = stack.write_environment()
    before = _world(stack)
    with connect(str(stack.source_db)) as db:
        audit_before = db.scalar("SELECT COUNT(*) FROM audit")
    plan = plan_json(stack, env_file, tmp_path / "plan")
    assert _world(stack) == before
    with connect(str(stack.source_db)) as db:
        assert db.scalar("SELECT COUNT(*) FROM audit") == audit_before  # not even an audited admin request
    assert {p.name for p in (tmp_path / "plan").iterdir()} >= {"plan.md", "plan.html", "plan.json"}
    assert plan["timeline"]["read_only_window"]["seconds"] > 0
    assert [s["step_id"] for s in plan["steps"]][:2] == ["preflight", "provision"]
    # blobs.verify changes nothing yet is work the run will do (not "done"); inside the window it works from the
    # live container's inventory the presyncs keep, so its estimate lists only the source.
    verify = next(s for s in plan["steps"] if s["step_id"] == "blobs_verify")
    assert verify["status"] == "change" and "(reads only)" in verify["changes"][0]
    assert "kept by the steps before: not listed" in verify["basis"], verify["basis"]


def test_rollback_after_cutover_refuses_when_the_new_instance_took_writes_unless_accepting_data_loss(
        stack: DemoStack) -> None:
    env_file = stack.write_environment()
    assert migrator(stack, *run_args(stack, env_file, "cut")).returncode == 0
    assert stack.dns_answer() == (60, {NEW_TARGET})
    status, _ = http("POST", f"{stack.target_url}/tiles", {"title": "after cutover", "url": "https://x.test"})
    assert status == 201
    state = ["--state", str(stack.state_dir)]
    refused = migrator(stack, "rollback", "cut", *state)
    assert refused.returncode == 1, output(refused)
    assert "took writes since cutover" in output(refused) and "--accept-data-loss" in output(refused)
    assert stack.dns_answer() == (60, {NEW_TARGET})  # nothing before the guard was undone
    accepted = migrator(stack, "rollback", "cut", "--accept-data-loss", *state)
    assert accepted.returncode == 0, output(accepted)
    assert stack.dns_answer() == (300, {OLD_TARGET})
    assert http("GET", f"{stack.source_url}/health")[1]["read_only"] is False


def live_container(stack: DemoStack) -> dict[str, bytes]:
    """Name -> stored MD5 of every blob in the new instance's live container."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(stack.secrets["W365_CLOUD_STORAGE"])
    return {b.name: bytes(b.content_settings.content_md5 or b"")
            for b in service.get_container_client("live").list_blobs()}


def source_files(stack: DemoStack) -> dict[str, bytes]:
    """Name -> MD5 of every file of the self-hosted file store (its sidecar folder aside)."""
    import hashlib

    root = stack.source_files
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes(), usedforsecurity=False).digest()
            for p in root.rglob("*") if p.is_file() and not p.relative_to(root).as_posix().startswith(".blobmeta/")}


def start_run(stack: DemoStack, run_id: str, playbook: Path = PLAYBOOK) -> subprocess.Popen[str]:
    env_file = stack.write_environment()
    args = ["run", str(playbook), "-e", str(env_file), "--state", str(stack.state_dir), "--run-id", run_id]
    return subprocess.Popen([sys.executable, "-m", "migrator", *args], cwd=ROOT, env=stack.child_environ(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def delete_and_rename_after_presync(stack: DemoStack, child: subprocess.Popen[str], run_id: str, *,
                                    kill: bool = False) -> None:
    """Once the presync is done, the run is stopped (SIGSTOP, or SIGKILL for good) while a file is deleted and
    another renamed at the source, so that the delta sync surely lists after the change."""
    import signal

    from tests.support.engine import wait_for

    wait_for(lambda: step_status(stack.state_dir, run_id, "presync") == "done" or child.poll() is not None,
             "the presync")
    child.send_signal(signal.SIGKILL if kill else signal.SIGSTOP)
    assert step_status(stack.state_dir, run_id, "blobs_sync") in (None, "pending"), "the sync had begun"
    (stack.source_files / "icons/icon-010.png").unlink()
    (stack.source_files / "renamed").mkdir()
    (stack.source_files / "icons/icon-011.png").rename(stack.source_files / "renamed/icon-011.png")
    if kill:
        child.wait(timeout=60)
    else:
        child.send_signal(signal.SIGCONT)


def assert_live_is_the_source(stack: DemoStack, run_id: str) -> None:
    assert step_status(stack.state_dir, run_id, "blobs_verify") == "done"
    live = live_container(stack)
    assert "icons/icon-010.png" not in live and "icons/icon-011.png" not in live
    assert "renamed/icon-011.png" in live
    assert live == source_files(stack)
    assert stack.dns_answer() == (60, {NEW_TARGET})


@pytest.mark.parametrize("then", ["go on", "killed, then resumed"])
def test_a_file_deleted_and_one_renamed_between_presync_and_window_the_run_ends_with_live_as_the_source(
        stack: DemoStack, then: str) -> None:
    child = start_run(stack, "deleted")
    try:
        delete_and_rename_after_presync(stack, child, "deleted", kill=then != "go on")
        if then == "go on":
            out, code = child.communicate(timeout=240)[0], child.returncode
        else:
            resumed = migrator(stack, "resume", "deleted", "--state", str(stack.state_dir))
            out, code = output(resumed), resumed.returncode
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert code == 0, out
    assert_live_is_the_source(stack, "deleted")


def test_a_run_whose_playbook_kept_deleted_files_live_is_finished_by_resume_rerun_of_the_delta_sync(
        stack: DemoStack, tmp_path: Path) -> None:
    # The playbook as it was shipped before: the delta sync deletes in the backup only; here the verify stops
    # (instead of rolling back) so that the run can be taken up again.
    import yaml

    old = yaml.safe_load(PLAYBOOK.read_text())
    steps = {s["id"]: s for s in old["steps"]}
    del steps["blobs_sync"]["with"]["also_delete_from"]
    steps["blobs_verify"]["on_failure"] = "stop"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    child = start_run(stack, "old", tmp_path / "old.yaml")
    try:
        delete_and_rename_after_presync(stack, child, "old")
        out = child.communicate(timeout=240)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1 and "2 only at the destination" in out, out
    state = ["--state", str(stack.state_dir)]
    plain = migrator(stack, "resume", "old", *state)
    assert plain.returncode == 1 and "2 only at the destination" in output(plain), output(plain)

    rerun = migrator(stack, "resume", "old", *state, "--playbook", str(PLAYBOOK), "--rerun", "blobs_sync")

    assert rerun.returncode == 0, output(rerun)
    assert_live_is_the_source(stack, "old")
