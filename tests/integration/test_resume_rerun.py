"""``migrator resume RUN --rerun STEP`` through the CLI: a done step taken up again on purpose, from its check,
with every done step that needs it; an unknown step is bad input that changes nothing. SQLite only: the steps
taken up again are chosen from the playbook, and written as any resume writes them, whichever the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from migrator.state import open_store
from tests.support.engine import Cli
from tests.support.journal_steps import lines

ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\n"


@pytest.fixture
def cli(tmp_path: Path, plugin_path: Path) -> Cli:
    return Cli(tmp_path, str(tmp_path / "state"), plugin_path)


def diamond(tmp_path: Path) -> Path:
    """a -> b -> c, and d beside them (needs nothing): every step appends ``apply <id>`` to one journal, and is
    done when the journal has that line."""
    journal = tmp_path / "journal"
    steps = [("a", "[]"), ("b", "[a]"), ("c", "[b]"), ("d", "[]")]
    text = "name: rerun\non_failure: stop\nsteps:\n" + "".join(
        f"  - id: {sid}\n    uses: journal.append\n    needs: {needs}\n    with: {{journal: '{journal}'}}\n"
        for sid, needs in steps)
    (tmp_path / "pb.yaml").write_text(text)
    (tmp_path / "env.yaml").write_text(ENV)
    return journal


def summary(cli: Cli, run_id: str) -> dict[str, Any]:
    result = cli("status", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def state_snapshot(cli: Cli, run_id: str) -> tuple[Any, ...]:
    store = open_store(cli.state)
    try:
        run = store.require_run(run_id)
        steps = store.get_steps(run_id)
        return (run.status, run.updated_at, len(store.events(run_id)),
                sorted((sid, r.status, r.attempts, r.note) for sid, r in steps.items()), store.get_lock(run_id))
    finally:
        store.close()


def test_rerun_takes_a_done_step_and_the_steps_needing_it_up_again_from_their_check(tmp_path: Path,
                                                                                     cli: Cli) -> None:
    journal = diamond(tmp_path)
    assert cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1").returncode == 0
    assert sorted(lines(str(journal))) == ["apply a", "apply b", "apply c", "apply d"]  # d ran beside a, b, c
    before = {s["id"]: s for s in summary(cli, "r1")["steps"]}
    # b's effect is lost in the world: a plain resume of the succeeded run does nothing about it...
    journal.write_text("apply a\napply c\napply d\n")
    plain = cli("resume", "r1")
    assert plain.returncode == 0, plain.stderr
    assert lines(str(journal)) == ["apply a", "apply c", "apply d"]

    rerun = cli("resume", "r1", "--rerun", "b")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # ...--rerun b applies b again (its check finds it missing) and re-checks c, which needs it: still in place,
    # so c is not applied twice; a and d, which do not need b, are not touched.
    assert lines(str(journal)) == ["apply a", "apply c", "apply d", "apply b"]
    after = {s["id"]: s for s in summary(cli, "r1")["steps"]}
    assert summary(cli, "r1")["status"] == "succeeded"
    assert after["b"]["attempts"] == before["b"]["attempts"] + 1
    assert after["c"]["attempts"] == before["c"]["attempts"] + 1 and "already done" in (after["c"]["note"] or "")
    assert {sid: after[sid]["attempts"] for sid in "ad"} == {sid: before[sid]["attempts"] for sid in "ad"}


def test_rerun_of_a_step_whose_params_changed_needs_no_force_for_it(tmp_path: Path, cli: Cli) -> None:
    journal = diamond(tmp_path)
    assert cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1").returncode == 0
    other = tmp_path / "journal2"
    (tmp_path / "pb2.yaml").write_text((tmp_path / "pb.yaml").read_text().replace(
        f"id: c\n    uses: journal.append\n    needs: [b]\n    with: {{journal: '{journal}'}}",
        f"id: c\n    uses: journal.append\n    needs: [b]\n    with: {{journal: '{other}'}}"))

    result = cli("resume", "r1", "--playbook", "pb2.yaml", "-e", "env.yaml", "--rerun", "c")

    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(str(other)) == ["apply c"]  # taken up with its params as they are now
    assert sorted(lines(str(journal))) == ["apply a", "apply b", "apply c", "apply d"]


def test_rerun_of_a_step_the_playbook_lacks_is_bad_input_and_changes_nothing(tmp_path: Path, cli: Cli) -> None:
    journal = diamond(tmp_path)
    assert cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1").returncode == 0
    journal.write_text("apply a\n")
    before = state_snapshot(cli, "r1")

    result = cli("resume", "r1", "--rerun", "b", "--rerun", "nope")  # b alone would apply b again

    assert result.returncode == 2, result.stdout + result.stderr
    assert "nope" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # one line, and its hint
    assert state_snapshot(cli, "r1") == before
    assert lines(str(journal)) == ["apply a"]
