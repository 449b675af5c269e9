"""Small things that were wrong, through the CLI against both state stores: strict JSON from ``status``, logs of
a PostgreSQL store, rollback of an HTTP request, and resume telling when the playbook file changed."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.state import RunRecord, StepRecord, open_store
from tests.support import loopback

ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\n"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


# ------------------------------------------------------------------------------------------ status --json


def _no_constants(name: str) -> None:
    raise AssertionError(f"not JSON: {name}")


def test_status_json_is_strict_json_with_nan_and_infinity_as_null(state_spec: str) -> None:
    store = open_store(state_spec)
    now = time.time()
    store.create_run(RunRecord(run_id="r1", playbook_name="pb", playbook_path="/pb.yaml", playbook_text="name: pb",
                               environment_path=None, environment_text=None, status="failed", created_at=now,
                               updated_at=now))
    store.save_step(StepRecord(run_id="r1", step_id="copy", kind="wait", status="failed",
                               outputs={"rate": math.nan, "ratio": math.inf},
                               estimate={"seconds": -math.inf, "items": 3}))
    store.close()
    result = invoke("status", "r1", "--json", "--state", state_spec)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout, parse_constant=_no_constants)
    (step,) = summary["steps"]
    assert step["outputs"] == {"rate": None, "ratio": None}
    assert step["estimate"] == {"seconds": None, "items": 3}


# --------------------------------------------------------------------------------- logs of a PostgreSQL store


PLAYBOOK = "name: tiny\nsteps:\n  - id: check\n    uses: assert\n    with: {value: 1, expected: 1}\n"


@pytest.mark.parametrize(("how", "expected"), [
    ("default", "xdg/migrator/logs"),
    ("option", "chosen"),
    ("environment", "from-env"),
])
def test_logs_of_a_postgresql_store_never_go_to_the_working_directory(
        how: str, expected: str, pg_state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "pb.yaml").write_text(PLAYBOOK)
    (work / "env.yaml").write_text(ENV)
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MIGRATOR_LOG_DIR", raising=False)
    args = ["run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1", "--state", pg_state_url]
    if how == "option":
        args += ["--log-dir", str(tmp_path / "chosen")]
    if how == "environment":
        monkeypatch.setenv("MIGRATOR_LOG_DIR", str(tmp_path / "from-env"))
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / expected / "r1.log").is_file()
    assert str(tmp_path / expected / "r1.log") in result.output
    assert sorted(p.name for p in work.iterdir()) == ["env.yaml", "pb.yaml"]


# ------------------------------------------------------------------------------------- rollback of a request


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback server that answers 200 to everything and notes each request's method."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.command)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    with loopback.http_server(Handler) as url:
        yield f"{url}/tenant", seen


@pytest.mark.parametrize(("method", "clean"), [("PUT", False), ("POST", False), ("GET", True)])
def test_rollback_of_a_request_that_changed_the_server_is_not_reported_clean(
        method: str, clean: bool, http_server: tuple[str, list[str]], state_spec: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = http_server
    monkeypatch.chdir(tmp_path)
    (tmp_path / "env.yaml").write_text(ENV)
    (tmp_path / "pb.yaml").write_text(
        f"name: request\non_failure: rollback\nsteps:\n  - id: call\n    uses: http\n"
        f"    with: {{url: '{url}', method: {method}, body: 'x'}}\n"
        "  - id: boom\n    uses: assert\n    with: {value: 1, expected: 2}\n")
    result = invoke("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1", "--state", state_spec)
    assert seen == [method]
    if clean:
        assert result.exit_code == 4, result.output  # failed, and rolled back cleanly
    else:
        assert result.exit_code != 4, result.output
        assert "call cannot be undone" in result.output


# ------------------------------------------------------------------------------- resume and a changed playbook


def test_resume_says_it_uses_the_stored_playbook_and_picks_up_the_file_with_playbook(
        state_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "env.yaml").write_text(ENV)
    first = "name: changed\nsteps:\n  - id: first\n    uses: shell\n    with: {run: 'true'}\n" \
            "  - id: second\n    uses: shell\n    with: {run: 'test -f go'}\n"
    (tmp_path / "pb.yaml").write_text(first)
    common = ["--state", state_spec]
    assert invoke("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1", *common).exit_code == 1
    (tmp_path / "pb.yaml").write_text(first.replace("run: 'true'", "run: 'echo changed'"))
    note = "the playbook file changed since the run started; using the stored copy"

    # --playbook takes the file, and the params check then stops the resume: a done step would change
    picked = invoke("resume", "r1", "--playbook", "pb.yaml", *common)
    assert picked.exit_code == 2, picked.output
    assert "first" in picked.output and note not in picked.output

    (tmp_path / "go").touch()
    resumed = invoke("resume", "r1", *common)
    assert resumed.exit_code == 0, resumed.output
    assert f"{note} — pass --playbook FILE to use the file" in resumed.output
