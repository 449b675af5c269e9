"""Small things that were wrong: what rollback, plan, progress, ``steps`` and usage errors say."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from migrator import cli
from migrator.progress import PlainListener
from migrator.registry import load_registry
from migrator.steps.blobs import MiB, Progress
from migrator.steps.generic import Http
from migrator.testing import MemoryContext
from tests.support import loopback

# ---------------------------------------------------------------------------------------------- http undo


@pytest.mark.parametrize(("method", "irreversible"), [("GET", False), ("HEAD", False), ("POST", True),
                                                      ("PUT", True), ("PATCH", True), ("DELETE", True)])
def test_http_step_that_changes_the_server_is_irreversible(method: str, irreversible: bool) -> None:
    step = Http("call", Http.Params.model_validate({"url": "http://127.0.0.1:9/x", "method": method}))
    assert step.irreversible is irreversible


def test_http_step_with_an_undo_request_is_reversible_and_rollback_sends_it() -> None:
    import http.server

    seen: list[tuple[str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            seen.append(("PUT", self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with loopback.http_server(Handler) as base:
        url = f"{base}/admin/read-only"
        step = Http("writable", Http.Params.model_validate({
            "url": url, "method": "PUT", "body": '{"read_only": false}',
            "undo": {"method": "PUT", "body": '{"read_only": true}'}}))
        assert step.irreversible is False
        step.apply(MemoryContext())
        step.compensate(MemoryContext())
    assert seen == [("PUT", "/admin/read-only", b'{"read_only": false}'),
                    ("PUT", "/admin/read-only", b'{"read_only": true}')]


# ------------------------------------------------------------------------------------- plan of database.verify


def test_plan_never_shows_database_verify_done_before_it_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    with sqlite3.connect(tmp_path / "source.sqlite") as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO people VALUES (?, ?)", [(i, f"p{i}") for i in range(20)])
    sqlite3.connect(tmp_path / "target.sqlite").close()  # the new instance's database, still empty
    (tmp_path / "env.yaml").write_text(
        "tenant: {name: contoso}\n"
        f"source: {{database: {{dialect: sqlite, connection: '{tmp_path / 'source.sqlite'}'}}}}\n"
        f"target: {{database: {{dialect: sqlite, connection: '{tmp_path / 'target.sqlite'}'}}}}\n")
    (tmp_path / "pb.yaml").write_text(
        "name: verify-only\nsteps:\n  - id: verify\n    uses: database.verify\n"
        "    with: {database: '${target.database}', source: '${source.database}'}\n")
    result = CliRunner().invoke(cli.app, ["plan", "pb.yaml", "-e", "env.yaml", "--json"])
    assert result.exit_code == 0, result.output
    (view,) = json.loads(result.stdout)["steps"]
    assert view["status"] in ("change", "deferred"), view
    assert view["changes"], view


# ------------------------------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_listener() -> tuple[PlainListener, io.StringIO, FakeClock]:
    buffer, clock = io.StringIO(), FakeClock()
    return PlainListener(Console(file=buffer, width=200), every=2.0, clock=clock), buffer, clock


def test_rollback_progress_that_does_not_move_prints_one_line_not_one_per_report() -> None:
    listener, buffer, clock = plain_listener()
    listener.step_started("presync", "undo blobs.presync")
    for _ in range(76):  # a rollback re-reports the same counts at every flush
        listener.progress("presync", 2016, None, 54_000_000, None)
        clock.now += 3.0
    lines = [line for line in buffer.getvalue().splitlines() if "items" in line]
    assert len(lines) == 1, lines
    assert "0 B/s" not in lines[0]


def test_progress_rate_is_of_what_moved_items_when_no_bytes_move() -> None:
    listener, buffer, clock = plain_listener()
    listener.progress("undo", 0, 100, 5_000, None)
    clock.now += 10.0
    listener.progress("undo", 50, 100, 5_000, None)
    last = buffer.getvalue().splitlines()[-1]
    assert "5.0 items/s" in last and "B/s" not in last, last


@pytest.mark.parametrize(("server_side", "sent", "shows_transfer_rate"),
                         [(100, 0, False), (0, 100 * MiB, True), (50, 50 * MiB, True)])
def test_blob_progress_shows_a_transfer_rate_only_for_bytes_this_process_sent(
        server_side: int, sent: int, shows_transfer_rate: bool) -> None:
    progress = Progress(MemoryContext(), "put live", total_blobs=100, total_bytes=200 * MiB)
    progress.started -= 10.0  # as if it had run ten seconds
    progress.blobs, progress.bytes, progress.bytes_sent, progress.server_side = 100, 200 * MiB, sent, server_side
    message = progress.message()
    assert "blobs/s" in message
    assert ("MiB/s" in message) is shows_transfer_rate, message
    if shows_transfer_rate:
        assert f"{sent / MiB / 10.0:.1f} MiB/s" in message, message


# ------------------------------------------------------------------------------------------------- steps KIND


@pytest.mark.parametrize("kind", sorted(name for name, _ in load_registry().items()))
def test_steps_kind_shows_each_param_as_required_or_with_its_real_default(kind: str) -> None:
    result = CliRunner().invoke(cli.app, ["steps", kind])
    assert result.exit_code == 0, result.output
    assert "PydanticUndefined" not in result.output
    assert "<function" not in result.output


def test_steps_shell_shows_factory_defaults_as_their_values() -> None:
    result = CliRunner().invoke(cli.app, ["steps", "shell"])
    assert "env: " in result.output and "(default {})" in result.output, result.output


# ------------------------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize(("argv", "words"), [
    (["run"], "Missing argument"),
    (["status", "--bogus"], "No such option: --bogus"),
    (["frobnicate"], "No such command"),
    (["run", "pb.yaml", "--concurrency", "many"], "--concurrency"),
    (["steps", "shell", "extra"], "unexpected extra argument"),
])
def test_usage_error_is_one_line_with_exit_2(argv: list[str], words: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["migrator", *argv])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and words.lower() in lines[0].lower(), lines[0]
    assert "╭" not in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["steps", "wait"], 0), (["steps", "nope"], 2)])
def test_main_keeps_the_exit_code_each_command_sets(argv: list[str], code: int, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    monkeypatch.setattr(sys, "argv", ["migrator", *argv])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == code
