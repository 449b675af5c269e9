"""The engine through its CLI, in real subprocesses, against both state backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from migrator.state import open_store
from tests.support.engine import Cli, wait_for
from tests.support.journal_steps import lines

ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\n"


def write(tmp_path: Path, playbook: str, env: str = ENV) -> None:
    (tmp_path / "pb.yaml").write_text(playbook)
    (tmp_path / "env.yaml").write_text(env)


def running_with_lock(cli: Cli, run_id: str) -> bool:
    store = open_store(cli.state)
    try:
        return store.get_run(run_id) is not None and store.get_lock(run_id) is not None
    finally:
        store.close()


def status_json(cli: Cli, run_id: str) -> dict:
    result = cli("status", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def linear_playbook(journal: Path, n: int = 4, delay: float = 0.0, on_failure: str = "stop",
                    tail: str = "") -> str:
    steps = "".join(f"  - id: s{i}\n    uses: journal.append\n    with: {{journal: '{journal}', delay: {delay}}}\n"
                    for i in range(1, n + 1))
    return f"name: linear\non_failure: {on_failure}\nsteps:\n{steps}{tail}"


@pytest.fixture
def cli(tmp_path: Path, state_spec: str, plugin_path: Path) -> Cli:
    return Cli(tmp_path, state_spec, plugin_path)


def test_run_applies_every_step_once_and_succeeds(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    write(tmp_path, linear_playbook(journal))
    result = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    assert result.returncode == 0, result.stderr
    assert lines(str(journal)) == ["apply s1", "apply s2", "apply s3", "apply s4"]
    summary = status_json(cli, "r1")
    assert summary["status"] == "succeeded"
    assert [s["status"] for s in summary["steps"]] == ["done"] * 4
    # the lock is released when the command ends
    assert summary["lock"] is None
    # the same run id again is refused as bad input, and changes nothing
    again = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    assert again.returncode == 2 and "exists already" in again.stderr
    assert lines(str(journal)) == ["apply s1", "apply s2", "apply s3", "apply s4"]


@pytest.mark.parametrize("kill_after", ["apply s1", "apply s2", "apply s3"])
def test_sigkill_between_steps_then_resume_applies_each_step_exactly_once(
        tmp_path: Path, cli: Cli, kill_after: str) -> None:
    journal = tmp_path / "journal"
    write(tmp_path, linear_playbook(journal, n=4, delay=0.3))
    proc = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    wait_for(lambda: kill_after in lines(str(journal)), what=kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = cli("resume", "r1")
    assert result.returncode == 0, result.stderr
    assert Counter(lines(str(journal))) == Counter(["apply s1", "apply s2", "apply s3", "apply s4"])
    assert status_json(cli, "r1")["status"] == "succeeded"


def test_sigkill_mid_item_step_then_resume_repeats_at_most_one_checkpoint_batch(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    batch = 50
    write(tmp_path, f"name: items\ncheckpoint_batch: {batch}\nsteps:\n"
                    f"  - id: first\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
                    f"  - id: items\n    uses: journal.items\n    with: {{journal: '{journal}', count: 1000, "
                    f"delay: 0.002}}\n"
                    f"  - id: last\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n")
    proc = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    wait_for(lambda: sum(1 for x in lines(str(journal)) if x.startswith("item")) >= 400, what="400 items")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [x for x in lines(str(journal)) if x.startswith("item")]
    assert 400 <= len(before) < 1000
    result = cli("resume", "r1")
    assert result.returncode == 0, result.stderr
    all_lines = lines(str(journal))
    items = Counter(x for x in all_lines if x.startswith("item"))
    assert set(items) == {f"item {n:05d}" for n in range(1000)}
    repeated = {k for k, c in items.items() if c > 1}
    assert all(c <= 2 for c in items.values())
    # only the items in flight at the kill were attempted again: the tail of the first attempt, one batch at most
    assert len(repeated) <= batch
    assert repeated <= set(before[-batch:])
    assert all_lines.count("apply first") == 1 and all_lines.count("apply last") == 1


def test_plan_changes_nothing_and_creates_no_run(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    journal.write_text("apply s1\n")
    write(tmp_path, linear_playbook(journal, n=3))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = cli("plan", "pb.yaml", "-e", "env.yaml", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [s["status"] for s in plan["steps"]] == ["done", "change", "change"]
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert open_store(cli.state).list_runs() == []


def test_failure_compensates_completed_steps_in_reverse_order_and_exits_4(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    tail = f"  - id: boom\n    uses: journal.flaky\n    with: {{journal: '{journal}', permanent: true}}\n"
    write(tmp_path, linear_playbook(journal, n=3, on_failure="rollback", tail=tail))
    result = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    assert result.returncode == 4, result.stderr
    assert "recreate the thing" in result.stderr  # the permanent error says what to do
    assert lines(str(journal)) == ["apply s1", "apply s2", "apply s3", "try boom", "undo boom", "undo s3", "undo s2",
                                   "undo s1"]
    summary = status_json(cli, "r1")
    assert summary["status"] == "rolled_back"
    boom = next(s for s in summary["steps"] if s["id"] == "boom")
    assert boom["attempts"] == 1  # a permanent error is not retried


def test_failure_with_stop_leaves_run_resumable_and_rollback_on_demand_undoes_in_reverse(
        tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    tail = f"  - id: boom\n    uses: journal.flaky\n    with: {{journal: '{journal}', permanent: true}}\n"
    write(tmp_path, linear_playbook(journal, n=2, tail=tail))
    result = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    assert result.returncode == 1, result.stderr
    assert status_json(cli, "r1")["status"] == "failed"
    result = cli("rollback", "r1")
    assert result.returncode == 0, result.stderr
    assert lines(str(journal))[-3:] == ["undo boom", "undo s2", "undo s1"]
    assert status_json(cli, "r1")["status"] == "rolled_back"
    # a rolled-back run cannot be resumed
    assert cli("resume", "r1").returncode == 2


def test_transient_errors_are_retried_until_success(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    write(tmp_path, f"name: flaky\nsteps:\n  - id: f\n    uses: journal.flaky\n"
                    f"    with: {{journal: '{journal}', transient_failures: 2}}\n"
                    f"    retry: {{attempts: 4, initial: 0.01, max: 0.05, jitter: 0.01}}\n")
    result = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    assert result.returncode == 0, result.stderr
    assert lines(str(journal)) == ["try f", "try f", "try f", "apply f"]
    assert status_json(cli, "r1")["steps"][0]["attempts"] == 3


def test_transient_errors_beyond_the_attempts_fail_the_step(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    write(tmp_path, f"name: flaky\nsteps:\n  - id: f\n    uses: journal.flaky\n"
                    f"    with: {{journal: '{journal}', transient_failures: 5}}\n"
                    f"    retry: {{attempts: 2, initial: 0.01, max: 0.05, jitter: 0.01}}\n")
    result = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    assert result.returncode == 1
    assert lines(str(journal)) == ["try f", "try f"]


def test_two_concurrent_runs_of_one_run_id_one_proceeds_other_exits_3(tmp_path: Path, cli: Cli) -> None:
    journal, gate = tmp_path / "journal", tmp_path / "gate"
    steps = "".join(f"  - id: s{i}\n    uses: journal.append\n    with: {{journal: '{journal}', until: '{gate}'}}\n"
                    for i in (1, 2))
    write(tmp_path, f"name: linear\nsteps:\n{steps}")
    first = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "same")
    wait_for(lambda: running_with_lock(cli, "same"), what="first runner's lock")
    second = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "same")
    assert second.returncode == 3, second.stderr
    assert f"pid {first.pid}" in second.stderr
    resumed = cli("resume", "same")
    assert resumed.returncode == 3
    gate.touch()  # the first runner goes on only now, however slow the machine
    assert first.wait(60) == 0
    assert lines(str(journal)) == ["apply s1", "apply s2"]


def test_resume_takes_over_a_stale_lock_of_a_killed_runner_and_says_so(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    write(tmp_path, linear_playbook(journal, n=2, delay=1.0))
    proc = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    wait_for(lambda: running_with_lock(cli, "r1"), what="a locked run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = status_json(cli, "r1")
    assert status["lock"]["stale"] and "gone" in status["lock"]["stale"]
    result = cli("resume", "r1")
    assert result.returncode == 0, result.stderr
    assert "stale lock" in result.stderr


def test_unlock_of_a_live_lock_needs_force_and_the_holder_then_stops_writing(tmp_path: Path, cli: Cli) -> None:
    journal, gate = tmp_path / "journal", tmp_path / "gate"
    steps = "".join(f"  - id: s{i}\n    uses: journal.append\n    with: {{journal: '{journal}', until: '{gate}'}}\n"
                    for i in (1, 2))
    write(tmp_path, f"name: linear\nsteps:\n{steps}")
    proc = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    wait_for(lambda: running_with_lock(cli, "r1"), what="a locked run")
    refused = cli("unlock", "r1")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert open_store(cli.state).get_lock("r1") is not None
    result = cli("unlock", "r1", "--force")
    assert result.returncode == 0 and "unlocked" in result.stdout
    gate.touch()  # s1 goes on only now: its next state write finds the lock gone
    # the runner whose lock was broken finds out at its next checkpoint: exit 3, and it applied nothing more
    assert proc.wait(60) == 3, proc.communicate()
    assert "apply s2" not in lines(str(journal))
    s2 = open_store(cli.state).get_step("r1", "s2")
    assert s2 is None or (s2.status == "pending" and s2.attempts == 0)


def test_resume_refuses_when_a_done_steps_params_changed_unless_forced(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    tail = f"  - id: boom\n    uses: journal.flaky\n    with: {{journal: '{journal}', permanent: true}}\n"
    write(tmp_path, linear_playbook(journal, n=1, tail=tail))
    assert cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1").returncode == 1
    changed = linear_playbook(journal, n=1, delay=0.01) + \
        f"  - id: boom\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
    (tmp_path / "pb2.yaml").write_text(changed)
    store = open_store(cli.state)
    before = (store.get_run("r1").status, len(store.events("r1")))
    refused = cli("resume", "r1", "--playbook", "pb2.yaml", "-e", "env.yaml")
    assert refused.returncode == 2
    assert "s1" in refused.stderr and "params changed" in refused.stderr
    # refused before anything about the run changed: still failed, no event added
    assert (store.get_run("r1").status, len(store.events("r1"))) == before == ("failed", before[1])
    forced = cli("resume", "r1", "--playbook", "pb2.yaml", "-e", "env.yaml", "--force")
    assert forced.returncode == 0, forced.stderr
    assert lines(str(journal)).count("apply s1") == 1


def test_sigterm_stops_at_a_checkpoint_and_the_run_resumes(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    write(tmp_path, f"name: items\ncheckpoint_batch: 20\nsteps:\n  - id: items\n    uses: journal.items\n"
                    f"    with: {{journal: '{journal}', count: 400, delay: 0.005}}\n")
    proc = cli.start("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    wait_for(lambda: len(lines(str(journal))) >= 100, what="100 items")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 1
    assert status_json(cli, "r1")["status"] == "interrupted"
    assert cli("resume", "r1").returncode == 0
    items = Counter(lines(str(journal)))
    assert len(items) == 400


def test_secret_values_never_reach_state_logs_or_output(tmp_path: Path, state_spec: str, plugin_path: Path) -> None:
    secret = "s3cr3t-V4lue-never-to-be-seen"
    cli = Cli(tmp_path, state_spec, plugin_path, {"MIGRATOR_TEST_TOKEN": secret})
    write(tmp_path, "name: secrets\non_failure: stop\nsteps:\n"
                    "  - id: use\n    uses: shell\n    with:\n"
                    "      run: 'echo token is $TOKEN; echo \"$TOKEN\" > seen.txt'\n"
                    "      env: {TOKEN: '${env:MIGRATOR_TEST_TOKEN}'}\n"
                    "  - id: leak\n    uses: shell\n    with:\n"
                    "      run: 'echo failing with $TOKEN >&2; exit 3'\n"
                    "      env: {TOKEN: 'Bearer ${env:MIGRATOR_TEST_TOKEN}'}\n")
    outputs = [cli("validate", "pb.yaml", "-e", "env.yaml"), cli("plan", "pb.yaml", "-e", "env.yaml", "--json"),
               cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1"), cli("status", "r1", "--json")]
    assert outputs[2].returncode == 1
    assert (tmp_path / "seen.txt").read_text().strip() == secret  # the command did get the real value
    for result in outputs:
        assert secret not in result.stdout and secret not in result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "seen.txt":
            assert secret.encode() not in path.read_bytes(), path
    if state_spec.startswith("postgresql"):
        dump = subprocess.run(["pg_dump", "--data-only", state_spec], capture_output=True, check=True).stdout
        assert secret.encode() not in dump
    else:
        db = Path(state_spec) / "state.db"
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT * FROM runs").fetchall() + conn.execute("SELECT * FROM steps").fetchall() \
                + conn.execute("SELECT * FROM events").fetchall()
        assert rows and secret not in repr(rows)
    assert "token is ***" in json.loads(outputs[3].stdout)["steps"][0]["outputs"]["stdout"]


def test_independent_branches_run_concurrently(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    steps = "".join(f"  - id: b{i}\n    uses: journal.append\n    with: {{journal: '{journal}', delay: 1.0}}\n"
                    f"    needs: []\n" for i in range(3))
    write(tmp_path, f"name: fan\nconcurrency: 3\nsteps:\n{steps}"
                    f"  - id: join\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
                    f"    needs: [b0, b1, b2]\n")
    result = cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    assert result.returncode == 0, result.stderr
    steps_ = {s["id"]: s for s in status_json(cli, "r1")["steps"]}
    starts = [steps_[f"b{i}"]["started_at"] for i in range(3)]
    ends = [steps_[f"b{i}"]["finished_at"] for i in range(3)]
    # all three branches were running at the same moment
    assert max(starts) < min(ends)
    assert steps_["join"]["started_at"] >= max(ends)
    assert lines(str(journal))[-1] == "apply join"


def test_status_and_runs_list_runs_newest_first(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    write(tmp_path, linear_playbook(journal, n=1))
    for rid in ("a1", "a2"):
        assert cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", rid).returncode == 0
        (tmp_path / "journal").unlink()
        time.sleep(0.01)
    runs = json.loads(cli("runs", "--json").stdout)
    assert [r["run_id"] for r in runs] == ["a2", "a1"]
    assert os.path.exists(tmp_path) and cli("status", "nope").returncode == 2
