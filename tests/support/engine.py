"""Helpers for driving the ``migrator`` CLI in a subprocess, with the journal test kinds installed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATOR = [sys.executable, "-m", "migrator"]


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that, on PYTHONPATH, installs tests.support.journal_steps through the entry-point group."""
    base = tmp_path_factory.mktemp("plugins")
    dist = base / "migrator_test_kinds-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: migrator-test-kinds\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[migrator.steps]\njournal = tests.support.journal_steps\n")
    return base


class Cli:
    """Runs ``python -m migrator`` with a given state store and the test kinds on the path."""

    def __init__(self, cwd: Path, state: str, plugin_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.state = state
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), str(ROOT)])
        self.env["MIGRATOR_STATE"] = state
        self.env.update(extra_env or {})

    def argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "migrator", *args]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(args), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], what: str = "condition", timeout: float = 120.0) -> None:
    """Polls ``condition`` until it holds; fails the test naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def step_status(state_dir: Path, run_id: str, step_id: str) -> str | None:
    """A step's status in a SQLite state directory, read without taking any lock (None while unknown)."""
    path = state_dir / "state.db"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT status FROM steps WHERE run_id = ? AND step_id = ?",
                               (run_id, step_id)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def kill_when(proc: subprocess.Popen[bytes] | subprocess.Popen[str], condition: Callable[[], bool], what: str,
              timeout: float = 120.0) -> None:
    """SIGKILLs ``proc`` as soon as ``condition`` holds; fails if the process ended before that."""
    try:
        wait_for(lambda: condition() or proc.poll() is not None, what, timeout)
        if proc.poll() is not None:
            out = proc.communicate()[0]
            raise AssertionError(f"the process ended before {what}: "
                                 f"{out.decode(errors='replace') if isinstance(out, bytes) else out}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
