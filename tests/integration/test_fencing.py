"""Fencing: a runner that lost its run's lock (paused past its expiry and taken over, or unlocked by force) does
nothing more — no side effect, no state write, no compensation — against both state backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator.errors import LockLost
from migrator.state import StateStore, StepRecord, open_store
from tests.support.engine import Cli, kill_when, wait_for
from tests.support.journal_steps import lines
from tests.support.postgres import PostgresServer, ScratchDatabase

ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\n"
TTL = "1.5"


@pytest.fixture
def cli(tmp_path: Path, state_spec: str, plugin_path: Path) -> Cli:
    return Cli(tmp_path, state_spec, plugin_path, extra_env={"MIGRATOR_LOCK_TTL": TTL})


@pytest.fixture
def shared_cli(tmp_path: Path, pg_state_url: str, plugin_path: Path) -> Cli:
    """On a PostgreSQL store, the one runners on several hosts share: a paused runner is taken over there (a
    SQLite store is one machine's file, whose lock a runner frozen inside a write keeps until it goes on)."""
    return Cli(tmp_path, pg_state_url, plugin_path, extra_env={"MIGRATOR_LOCK_TTL": TTL})


def dump(store: StateStore, run_id: str) -> tuple[object, ...]:
    """Everything the store holds about a run, to compare before and after."""
    run = store.get_run(run_id)
    steps = store.get_steps(run_id)
    events = [(e.id, e.type, e.message) for e in store.events(run_id)]
    items = {sid: sorted((i.key, i.status) for i in store.iter_items(run_id, sid)) for sid in steps}
    return (run.status if run else None, run.updated_at if run else None,
            {sid: (r.status, r.attempts, r.error, r.outputs) for sid, r in steps.items()}, events, items)


def wait_for_lock_expiry(state: str, run_id: str = "r1") -> None:
    """Waits until the run's lock no longer protects its (paused) holder; each look closes its store."""

    def expired() -> bool:
        store = open_store(state)
        try:
            lock = store.get_lock(run_id)
            return lock is not None and lock.stale_reason() is not None
        finally:
            store.close()

    wait_for(expired, "the paused runner's lock to expire")


def test_a_store_fenced_on_a_lock_that_was_taken_over_writes_nothing(state_spec: str) -> None:
    first = open_store(state_spec)
    lock, _ = first.acquire_lock("r1", ttl=0.5)
    first.hold(lock)
    first.save_step(StepRecord("r1", "a", "shell"))
    assert lock.generation == 1
    time.sleep(0.6)  # the lease runs out (a paused process)
    second = open_store(state_spec)
    successor, stale = second.acquire_lock("r1")
    assert stale is not None and successor.generation == 2
    second.hold(successor)
    before = dump(second, "r1")
    writes = [
        lambda: first.save_step(StepRecord("r1", "a", "shell", status="done")),
        lambda: first.add_event("r1", "a", "step.done", "late"),
        lambda: first.set_memo("r1", "a", {"x": 1}),
        lambda: first.update_run("r1", status="interrupted"),
        lambda: first.clear_items("r1", "a"),
    ]
    for write in writes:
        with pytest.raises(LockLost, match="generation 1"):
            write()
    assert not first.heartbeat(lock)
    assert dump(second, "r1") == before
    second.save_step(StepRecord("r1", "a", "shell", status="done"))  # the holder writes as usual
    assert second.get_step("r1", "a").status == "done"
    second.release_lock(successor)
    third, _ = open_store(state_spec).acquire_lock("r1")
    assert third.generation == 3  # generations only grow, across releases too


def items_playbook(journal: Path, flag: Path, *, fail_after_pause: bool) -> str:
    return (
        "name: fenced\non_failure: rollback\nsteps:\n"
        f"  - id: first\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
        f"  - id: items\n    uses: journal.items\n    with: {{journal: '{journal}', count: 40, pause_at: 10, "
        f"pause_flag: '{flag}', fail_after_pause: {str(fail_after_pause).lower()}}}\n"
        f"  - id: last\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n")


@pytest.mark.parametrize("fail_after_pause", [False, True], ids=["continues", "held-update-fails"])
def test_a_runner_paused_past_its_lock_and_taken_over_does_nothing_when_it_continues(
        tmp_path: Path, shared_cli: Cli, fail_after_pause: bool) -> None:
    cli = shared_cli
    journal, flag = tmp_path / "journal", tmp_path / "paused"
    (tmp_path / "pb.yaml").write_text(items_playbook(journal, flag, fail_after_pause=fail_after_pause))
    (tmp_path / "env.yaml").write_text(ENV)
    first = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    try:
        wait_for(lambda: flag.exists() or first.poll() is not None, "the first runner to pause itself")
        assert first.poll() is None, first.communicate()
        wait_for(lambda: os.waitid(os.P_PID, first.pid, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
                 is not None, "the first runner to be stopped")
        wait_for_lock_expiry(cli.state)
        successor = cli("resume", "r1")
        assert successor.returncode == 0, successor.stderr
        assert "stale lock" in successor.stderr
        done_journal = lines(str(journal))
        store = open_store(cli.state)
        done_state = dump(store, "r1")
        assert done_state[0] == "succeeded"
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 3, err
    assert "lock" in err and "Traceback" not in err
    # no side effect (no item, no undo), no state written: the completed migration stays completed
    assert lines(str(journal)) == done_journal
    assert not any(line.startswith("undo") for line in done_journal)
    assert dump(store, "r1") == done_state
    items = [line for line in done_journal if line.startswith("item")]
    assert len(set(items)) == 40


def guard_playbook(journal: Path, db: ScratchDatabase) -> str:
    endpoint = json.dumps(db.endpoint)
    return (
        "name: cutover\non_failure: stop\nsteps:\n"
        f"  - id: cutover_guard\n    uses: database.write_guard\n    with: {{database: {endpoint}}}\n"
        f"  - id: dns_transfer\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
        f"  - id: dns_verify\n    uses: journal.append\n    with: {{journal: '{journal}', delay: 60}}\n")


@pytest.mark.parametrize("then", ["rollback", "resume-then-rollback"])
def test_a_write_between_the_dns_switch_and_a_kill_is_never_lost_by_a_rollback(
        tmp_path: Path, cli: Cli, postgres: PostgresServer, then: str) -> None:
    """The guard's baseline is taken before the switch: a runner killed right after it, a user's write, then a
    rollback (with or without a resume first) refuses and undoes nothing, DNS included."""
    db = postgres.create_database()
    db.sql("CREATE TABLE tiles (id integer PRIMARY KEY, title text)")
    db.sql("INSERT INTO tiles VALUES (1, 'one')")
    journal = tmp_path / "journal"
    (tmp_path / "pb.yaml").write_text(guard_playbook(journal, db))
    (tmp_path / "env.yaml").write_text(ENV)
    proc = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    kill_when(proc, lambda: "apply dns_transfer" in lines(str(journal)), "the DNS switch")
    db.sql("INSERT INTO tiles VALUES (2, 'written by a user after the switch')")
    if then == "resume-then-rollback":
        stopped = cli.start("resume", "r1")
        kill_when(stopped, lambda: open_store(cli.state).get_step("r1", "dns_verify") is not None,
                  "the resumed run to pass the guard")
    refused = cli("rollback", "r1")
    assert refused.returncode == 1, refused.stderr
    assert "cutover_guard" in refused.stderr and "--accept-data-loss" in refused.stderr
    assert not any(line.startswith("undo") for line in lines(str(journal)))  # DNS not switched back
    assert db.sql("SELECT count(*) FROM tiles") == [(2,)]
    accepted = cli("rollback", "r1", "--accept-data-loss")
    assert accepted.returncode == 0, accepted.stderr
    assert "undo dns_transfer" in lines(str(journal))


def test_a_restore_paused_mid_chunk_and_taken_over_commits_nothing_when_it_continues(
        tmp_path: Path, postgres: PostgresServer, pg_state_url: str) -> None:
    """The successor ends the paused runner's database sessions and claims the restore's fence; the paused
    runner, continued, loads no chunk twice and writes no state."""
    from migrator.steps.database import Backup
    from migrator.testing import MemoryContext, run_step
    from tests.integration.test_database_cli import (
        CHUNK_ROWS,
        PASSWORD,
        RESTORE_AND_VERIFY,
        ROOT,
        assert_no_duplicates,
        make_source,
        write_files,
    )

    source, target = make_source(postgres), postgres.create_database()
    backup = tmp_path / "backup"
    backup.mkdir()
    run_step(Backup("backup", Backup.Params.model_validate(
        {"database": {"dialect": "postgresql", "connection": source.odbc},
         "to": {"kind": "folder", "path": str(backup)}, "chunk_rows": CHUNK_ROWS})), MemoryContext())
    playbook, env_file = write_files(tmp_path, RESTORE_AND_VERIFY, source, target, backup)
    state = pg_state_url
    env = dict(os.environ, DB_PASSWORD=PASSWORD, PYTHONPATH=str(ROOT), MIGRATOR_LOCK_TTL=TTL)
    argv = [sys.executable, "-m", "migrator"]
    first = subprocess.Popen([*argv, "run", str(playbook), "-e", str(env_file), "--state", state,
                              "--run-id", "r1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)

    def loading() -> bool:
        try:
            return target.sql('SELECT count(*) FROM "Person"')[0][0] >= 10 * CHUNK_ROWS
        except Exception:  # the table does not exist yet
            return False

    try:
        wait_for(lambda: loading() or first.poll() is not None, "ten chunks loaded")
        assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGSTOP)
        wait_for_lock_expiry(state)
        successor = subprocess.run([*argv, "resume", "r1", "--state", state], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=600)
        assert successor.returncode == 0, successor.stderr
        store = open_store(state)
        done_state = dump(store, "r1")
        assert done_state[0] == "succeeded"
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 3, err
    assert "Traceback" not in err
    assert_no_duplicates(target)
    assert dump(store, "r1") == done_state


def test_a_blob_presync_paused_and_taken_over_writes_no_state_and_at_most_its_in_flight_blobs(
        tmp_path: Path, shared_cli: Cli) -> None:
    """Blob copies are idempotent per blob: after waking, the paused runner may finish only the copies it had in
    flight (at most its concurrency), each the same content; it starts no other, writes no state and exits 3."""
    source, copies = tmp_path / "source", tmp_path / "copies"
    for n in range(1500):
        folder = source / f"f{n % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"blob-{n:05d}.bin").write_bytes(os.urandom(2048) + str(n).encode())
    env = ("tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\n"
           f"source: {{blobs: {{kind: folder, path: '{source}'}}}}\n"
           f"target: {{blobs: {{kind: folder, path: '{copies}'}}}}\n")
    (tmp_path / "env.yaml").write_text(env)
    (tmp_path / "pb.yaml").write_text(
        "name: blobs\non_failure: rollback\nsteps:\n"
        "  - id: presync\n    uses: blobs.presync\n"
        "    with: {source: '${source.blobs}', destination: '${target.blobs}', concurrency: 2}\n")
    cli = shared_cli
    first = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")

    def copied() -> int:
        return sum(1 for _ in copies.rglob("*.bin")) if copies.exists() else 0

    try:
        wait_for(lambda: copied() >= 200 or first.poll() is not None, "200 blobs copied")
        assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGSTOP)
        wait_for_lock_expiry(cli.state)
        successor = cli("resume", "r1")
        assert successor.returncode == 0, successor.stderr
        store = open_store(cli.state)
        done_state = dump(store, "r1")
        before = {p: p.stat().st_mtime_ns for p in copies.rglob("*.bin")}
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 3, err
    assert dump(store, "r1") == done_state
    after = {p: p.stat().st_mtime_ns for p in copies.rglob("*.bin")}
    assert after.keys() == before.keys()
    assert sum(1 for p in after if after[p] != before[p]) <= 2  # only the copies in flight at the pause
    for path in source.rglob("*.bin"):
        assert (copies / path.relative_to(source)).read_bytes() == path.read_bytes()
