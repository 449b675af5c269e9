"""Commands that only read create nothing, and a state store that cannot be one is refused in one line.

Only ``run`` creates a state store. ``status``, ``resume``, ``rollback``, ``report``, ``support-bundle`` and
``unlock`` of a run that is not there leave a fresh store as it was: no ``state.db``, no tables in a fresh
PostgreSQL database, no output files. A ``--state`` that can never be a store (a file, a path under a file, a
bad ``postgresql://`` URL, one without a database) exits 2, one that cannot be reached or read (a server
down, a damaged file) exits 1 saying what to do; neither prints a traceback or creates anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.state import RunRecord, open_store

STORE_TABLES = ("meta", "runs", "steps", "items", "events", "locks", "fences")
PLAYBOOK = "name: tiny\nsteps:\n  - id: check\n    uses: assert\n    with: {value: 1, expected: 1}\n"
ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\n"

READ_ONLY_COMMANDS = {
    "status": ["status", "nope"],
    "status-json": ["status", "nope", "--json"],
    "resume": ["resume", "nope"],
    "rollback": ["rollback", "nope"],
    "report": ["report", "nope", "--out", "report-out"],
    "support-bundle": ["support-bundle", "nope", "-o", "bundle.zip"],
    "unlock": ["unlock", "nope"],
}


def pg_tables(url: str) -> list[str]:
    """The store's tables that exist in the database at ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [t for t in STORE_TABLES if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is not None]


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (symlinks not followed), with the size of each file."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found.add(f"{path.relative_to(root)}:{path.lstat().st_size if path.is_file() else '-'}")
    return found


def store_is_untouched(state_spec: str, cwd: Path) -> None:
    if state_spec.startswith("postgresql://"):
        assert pg_tables(state_spec) == []
    else:
        assert not Path(state_spec).exists()
    assert tree(cwd) == set(), tree(cwd)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("args", list(READ_ONLY_COMMANDS.values()), ids=list(READ_ONLY_COMMANDS))
def test_command_on_an_unknown_run_of_a_fresh_store_exits_2_and_creates_nothing(
        args: list[str], state_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, [*args, "--state", state_spec])
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert "no run 'nope'" in line and "migrator runs" in line, line
    store_is_untouched(state_spec, cwd)


@pytest.mark.parametrize(("args", "expected"), [(["runs", "--json"], "[]"), (["status"], "no runs"),
                                                (["status", "--json"], "no runs")])
def test_listing_a_fresh_store_shows_no_runs_and_creates_nothing(
        args: list[str], expected: str, state_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, [*args, "--state", state_spec])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == expected
    store_is_untouched(state_spec, cwd)


def test_run_still_creates_the_store_that_read_only_commands_then_read(
        state_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pb.yaml").write_text(PLAYBOOK)
    (tmp_path / "env.yaml").write_text(ENV)
    assert CliRunner().invoke(app, ["run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1", "--state", state_spec]
                              ).exit_code == 0
    result = CliRunner().invoke(app, ["status", "r1", "--state", state_spec])
    assert result.exit_code == 0 and "succeeded" in result.output, result.output


# ------------------------------------------------------------------------------------------- bad --state specs


def _file(path: Path, text: str = "not a state store\n") -> Path:
    path.write_text(text)
    return path


def _loop(tmp: Path) -> Path:
    (tmp / "loop").symlink_to(tmp / "loop")
    return tmp / "loop" / "state"


def _damaged(tmp: Path) -> Path:
    (tmp / "st").mkdir()
    _file(tmp / "st" / "state.db", "this was never a SQLite database\n" * 200)
    return tmp / "st"


PG = "postgresql://postgres@127.0.0.1:5432"

# (case id, the spec made in a scratch directory, exit code, words the one line must hold)
BAD_STATES: list[tuple[str, Callable[[Path], object], int, str]] = [
    ("plain-file", lambda t: _file(t / "notes.txt"), 2, "is a file, not a directory"),
    ("path-under-a-file", lambda t: _file(t / "notes.txt") / "state", 2, "is a file, not a directory"),
    ("db-name-is-a-directory", lambda t: (t / "x.db").mkdir() or t / "x.db", 2, "is a directory"),
    ("symlink-loop", _loop, 2, "symbolic links"),
    ("name-too-long", lambda t: t / ("n" * 300), 2, "longer than 255 bytes"),
    ("damaged-state-file", _damaged, 1, "damaged"),
    ("other-scheme", lambda t: "mysql://root@127.0.0.1/state", 2, "not a postgresql:// URL"),
    ("postgres-without-slashes", lambda t: "postgresql:state", 2, "not a postgresql:// URL"),
    ("pg-no-database", lambda t: PG, 2, "names no database"),
    ("pg-empty-database", lambda t: "postgres://postgres@127.0.0.1:5432/", 2, "names no database"),
    ("pg-port-out-of-range", lambda t: "postgresql://postgres@127.0.0.1:99999/state", 2, "port '99999'"),
    ("pg-port-not-a-number", lambda t: "postgresql://postgres@127.0.0.1:abc/state", 2, "port 'abc'"),
    ("pg-unknown-param", lambda t: f"{PG}/state?colour=blue", 2, "colour"),
    ("pg-unclosed-bracket", lambda t: "postgresql://postgres@[::1:5432/state", 2, "not a valid PostgreSQL URL"),
    ("pg-server-down", lambda t: "postgresql://postgres@127.0.0.1:1/state", 1, "PostgreSQL answers"),
    ("pg-no-such-database", lambda t: f"{PG}/migrator_surely_absent_db", 1, "does not exist"),
]


@pytest.mark.parametrize("command", ["runs", "status", "run"])
@pytest.mark.parametrize(("make_spec", "code", "words"), [pytest.param(*c[1:], id=c[0]) for c in BAD_STATES])
def test_bad_state_spec_is_one_line_with_the_right_exit_code_and_creates_nothing(
        make_spec: Callable[[Path], object], code: int, words: str, command: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, scratch = tmp_path / "inputs", tmp_path / "scratch"
    inputs.mkdir()
    scratch.mkdir()
    (inputs / "pb.yaml").write_text(PLAYBOOK)
    (inputs / "env.yaml").write_text(ENV)
    spec = str(make_spec(scratch))
    monkeypatch.chdir(scratch)
    before = tree(scratch)
    args = {"runs": ["runs"], "status": ["status", "r1"],
            "run": ["run", str(inputs / "pb.yaml"), "-e", str(inputs / "env.yaml")]}[command]
    result = CliRunner().invoke(app, [*args, "--state", spec])
    assert result.exit_code == code, result.output
    line = one_line(result.output)
    assert line.startswith("error: ") and words in line, line
    assert tree(scratch) == before


def test_password_in_a_bad_state_url_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("postgresql://postgres:hunter2@127.0.0.1:5432/state?colour=blue",
                "postgresql://postgres:hunter2@[::1:5432/state",
                "postgresql://postgres:hunter2@127.0.0.1:1/state"):
        result = CliRunner().invoke(app, ["runs", "--state", url])
        assert result.exit_code in (1, 2) and "hunter2" not in result.output, result.output


# ------------------------------------------------------------------------------------- outputs refused first


@pytest.fixture
def store_with_run(tmp_path: Path) -> str:
    spec = str(tmp_path / "state")
    store = open_store(spec)
    now = time.time()
    store.create_run(RunRecord(run_id="r1", playbook_name="tiny", playbook_path=str(tmp_path / "pb.yaml"),
                               playbook_text=PLAYBOOK, environment_path=None, environment_text=None,
                               status="succeeded", created_at=now, updated_at=now, finished_at=now))
    store.close()
    return spec


@pytest.mark.parametrize(("args", "words"), [
    (["plan", "pb.yaml", "-e", "env.yaml", "--format", "bad", "--out", "out"], "--format 'bad'"),
    (["plan", "pb.yaml", "-e", "env.yaml", "--out", "afile"], "is a file"),
    (["plan", "pb.yaml", "-e", "env.yaml", "--out", "afile/out"], "is a file"),
    (["report", "r1", "--format", "bad", "--out", "out"], "--format 'bad'"),
    (["report", "r1", "--out", "afile/out"], "is a file"),
], ids=["plan-bad-format", "plan-out-is-a-file", "plan-out-under-a-file", "report-bad-format",
        "report-out-under-a-file"])
def test_refused_format_or_output_folder_writes_no_file(
        args: list[str], words: str, store_with_run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "pb.yaml").write_text(PLAYBOOK)
    (work / "env.yaml").write_text(ENV)
    _file(work / "afile")
    before = tree(work)
    result = CliRunner().invoke(app, [*args, "--state", store_with_run])
    assert result.exit_code == 2, result.output
    assert words in one_line(result.output)
    assert tree(work) == before
