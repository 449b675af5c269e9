"""Ctrl-C as a terminal sends it: to the whole foreground process group. An interrupt is never a step failure:
the step's commands do not take the terminal's signals, the run stops at the next checkpoint, resumable, and
is never rolled back; a second Ctrl-C quits at once, leaving no command running and the lock released."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from migrator.errors import Cancelled, ExitCode, PermanentError, TransientError
from migrator.playbook import load
from migrator.procs import group_alive
from migrator.registry import Registry
from migrator.runner import Runner
from migrator.state import open_store
from migrator.step import Params, Step, StepContext
from migrator.steps.generic import Shell, ShellParams
from migrator.testing import MemoryContext
from tests.support import journal_steps
from tests.support.engine import Cli, wait_for
from tests.support.journal_steps import lines

ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\n"


@pytest.fixture
def cli(tmp_path: Path, state_spec: str, plugin_path: Path) -> Cli:
    return Cli(tmp_path, state_spec, plugin_path)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, killed and not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Terminal:
    """``migrator`` started as a terminal's foreground job: a process group of its own, stderr read as it comes."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.proc = subprocess.Popen(cli.argv(args), cwd=cli.cwd, env=cli.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for_pid(self, pid_file: Path) -> int:
        """The pid the step's command writes to ``pid_file`` once it runs."""
        wait_for(lambda: (pid_file.exists() and pid_file.read_text().strip() != "") or self.proc.poll() is not None,
                 what=f"{pid_file.name}")
        assert self.proc.poll() is None, self.output()
        return int(pid_file.read_text())

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.stderr))

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(10)
        return code

    def output(self) -> str:
        return "".join(self.stderr)


def summary(cli: Cli, run_id: str) -> dict[str, Any]:
    result = cli("status", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ctrl_c_to_the_process_group_interrupts_a_shell_step_and_never_rolls_back(tmp_path: Path, cli: Cli) -> None:
    journal = tmp_path / "journal"
    (tmp_path / "block").touch()
    # item 1 blocks in a long sleep (as the step's command, pid recorded) until the test lets it through
    command = ("if [ {item} = 1 ] && [ -e block ]; then echo $$ > child.pid; exec sleep 60; fi; "
               "echo {item} >> items.txt")
    (tmp_path / "pb.yaml").write_text(
        f"name: interrupt\non_failure: rollback\nsteps:\n"
        f"  - id: first\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
        f"  - id: loop\n    uses: shell\n    with:\n      foreach_count: 3\n      run: '{command}'\n"
        f"      undo: 'echo undone >> undo.txt'\n")
    (tmp_path / "env.yaml").write_text(ENV)
    term = Terminal(cli, "run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    child = term.wait_for_pid(tmp_path / "child.pid")
    assert alive(child)

    term.ctrl_c()
    code = term.wait()

    assert code != ExitCode.ROLLED_BACK, term.output()
    assert code == ExitCode.FAILED, term.output()
    wait_for(lambda: not group_alive(child), what="the command gone", timeout=10)
    state = summary(cli, "r1")
    assert state["status"] == "interrupted", state
    steps = {s["id"]: s for s in state["steps"]}
    assert steps["first"]["status"] == "done"
    assert steps["loop"]["status"] not in ("failed", "compensated"), steps["loop"]
    assert not any(s["status"].startswith("compensat") for s in state["steps"])
    assert "undo first" not in lines(str(journal)) and not (tmp_path / "undo.txt").exists()
    assert (tmp_path / "items.txt").read_text().split() == ["0"]  # item 0 done and checkpointed
    assert state["lock"] is None

    (tmp_path / "block").unlink()
    resumed = cli("resume", "r1")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "items.txt").read_text().split() == ["0", "1", "2"]  # item 0 not run again
    assert lines(str(journal)) == ["apply first"]


def test_second_ctrl_c_quits_at_once_killing_the_command_and_releasing_the_lock(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "block").touch()
    # the command ignores SIGTERM, so the first Ctrl-C leaves it in its grace period: the second must kill it
    command = "if [ -e block ]; then trap \"\" TERM; echo $$ > child.pid; exec sleep 60; fi; echo ran >> ran.txt"
    (tmp_path / "pb.yaml").write_text(
        f"name: interrupt\non_failure: rollback\nsteps:\n"
        f"  - id: long\n    uses: shell\n    with:\n      run: '{command}'\n      undo: 'echo undone >> undo.txt'\n")
    (tmp_path / "env.yaml").write_text(ENV)
    term = Terminal(cli, "run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    child = term.wait_for_pid(tmp_path / "child.pid")

    term.ctrl_c()
    wait_for(lambda: term.said("stopping at the next checkpoint"), what="the first Ctrl-C handled")
    assert term.proc.poll() is None and alive(child)  # the command ignores SIGTERM: still in its grace period
    term.ctrl_c()
    code = term.wait(timeout=10)

    assert code == ExitCode.FAILED, term.output()
    assert term.said("quitting now") and "Traceback" not in term.output()
    wait_for(lambda: not group_alive(child), what="the command gone", timeout=10)
    store = open_store(cli.state)
    try:
        assert store.get_lock("r1") is None
    finally:
        store.close()
    assert not (tmp_path / "undo.txt").exists()

    (tmp_path / "block").unlink()
    resumed = cli("resume", "r1")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "ran.txt").read_text().split() == ["ran"]
    assert summary(cli, "r1")["status"] == "succeeded"


# ------------------------------------------------------------------------------------ in-process, no terminal


class LeakyParams(Params):
    journal: str


class FailsWhenInterrupted(Step[LeakyParams]):
    """Waits for the run's interrupt, then raises an ordinary error (as a client library whose call the
    interrupt cut short would). Undone by appending ``undo <id>``."""

    kind = "test.fails_when_interrupted"
    Params = LeakyParams

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        journal_steps.append(self.params.journal, f"apply {self.step_id}")
        ctx.cancel_event.wait(60)
        raise PermanentError("connection closed while reading")

    def compensate(self, ctx: StepContext) -> None:
        journal_steps.append(self.params.journal, f"undo {self.step_id}")


def test_an_error_raised_by_a_step_during_an_interrupt_leaves_it_interrupted_not_failed(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    registry = Registry()
    registry.add_module(journal_steps)
    registry.add(FailsWhenInterrupted)
    text = (f"name: leaky\non_failure: rollback\nsteps:\n"
            f"  - id: first\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
            f"  - id: leaky\n    uses: test.fails_when_interrupted\n    with: {{journal: '{journal}'}}\n")
    loaded = load("pb.yaml", registry=registry, playbook_text=text)
    runner = Runner(open_store(tmp_path / "state"), options={"no_forecast": True})

    def interrupt() -> None:  # as the CLI's signal handler does on Ctrl-C
        wait_for(lambda: "apply leaky" in lines(str(journal)), "leaky applying")
        runner.cancel()

    threading.Thread(target=interrupt, daemon=True).start()
    outcome = runner.run(loaded, run_id="r1")
    assert outcome.status == "interrupted" and outcome.exit_code != ExitCode.ROLLED_BACK, outcome
    steps = open_store(tmp_path / "state").get_steps("r1")
    assert steps["leaky"].status == "running" and steps["leaky"].error == "interrupted"
    assert lines(str(journal)) == ["apply first", "apply leaky"]  # nothing undone


def test_a_shell_step_interrupted_while_its_command_runs_is_cancelled_and_the_command_gone(tmp_path: Path) -> None:
    ctx = MemoryContext(step_id="sh")
    step = Shell("sh", ShellParams(run="echo $$ > child.pid; exec sleep 60", cwd=str(tmp_path)))
    pid_file = tmp_path / "child.pid"

    def interrupt() -> None:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the command")
        ctx.cancel_event.set()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(Cancelled):
        step.apply(ctx)
    assert not alive(int(pid_file.read_text()))


def test_a_shell_command_past_its_timeout_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    step = Shell("sh", ShellParams(run="sleep 60 >/dev/null 2>&1 & echo $! > bg.pid; wait", cwd=str(tmp_path),
                                   timeout=0.5))
    with pytest.raises(TransientError, match="timed out"):
        step.apply(MemoryContext(step_id="sh"))
    assert not alive(int((tmp_path / "bg.pid").read_text()))
