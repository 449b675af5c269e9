"""Names, commands and errors are printed as written: square brackets in them are text, never rich markup (which
would drop "[abc]" from "s/[abc]/x/" and crash on "[/x]")."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from migrator.cli import app
from migrator.progress import LiveListener

BRACKETS = ["s/[abc]/x/", "[/x]", "[bold]not bold[/bold]", "[red]"]
TEXT = " ".join(BRACKETS)
PLAYBOOK = f"""name: 'pb {TEXT}'
steps:
  - id: a
    uses: shell
    with:
      run: "echo '{TEXT}' >&2; exit 3"
"""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIGRATOR_STATE", raising=False)
    (tmp_path / "pb.yaml").write_text(PLAYBOOK)
    (tmp_path / "env.yaml").write_text("tenant: {name: contoso}\n")
    return tmp_path


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def test_plan_table_shows_a_command_with_brackets_as_written(in_tmp: Path) -> None:
    code, output = _invoke(["plan", "pb.yaml", "-e", "env.yaml"])

    assert code == 0, output
    assert all(b in output for b in BRACKETS), output


def test_run_status_and_runs_show_errors_and_names_with_brackets_as_written(in_tmp: Path) -> None:
    code, output = _invoke(["run", "pb.yaml", "-e", "env.yaml", "--state", "state"])
    assert code == 1, output
    assert all(b in output for b in BRACKETS), output  # the failure line and the run's summary

    for command in (["status", "--state", "state"], ["runs", "--state", "state"]):
        code, output = _invoke(command)
        assert code == 0, output
        shown = output.replace("\n", " ").replace("│", " ")
        assert "[/x]" in shown and "[red]" in shown, output


def test_live_progress_shows_a_step_with_brackets_as_written() -> None:
    buffer = io.StringIO()
    listener = LiveListener(Console(file=buffer, force_terminal=True, width=200, markup=False))
    try:
        listener.step_started("a", TEXT)
        listener.progress_ui.refresh()
        listener.step_finished("a", "failed", TEXT)
        listener.progress_ui.refresh()
    finally:
        listener.close()
    assert "s/[abc]/x/" in buffer.getvalue() and "[/x]" in buffer.getvalue()
