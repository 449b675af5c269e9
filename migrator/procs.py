"""Child processes of steps, and what a hard exit (a second Ctrl-C) must still do before the process ends.

A step's command runs in a session of its own, so a terminal's Ctrl-C (sent to the whole foreground process
group) reaches the runner only: the runner decides whether the command stops, and a stopped command is an
interrupted step, never a failed one. Every live command's process group is kept here, so a hard exit can kill
them all (no orphans left running against a tenant) and release what the run holds (its lock) before it ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: Seconds a command asked to stop (SIGTERM) gets to end before its process group is killed (SIGKILL).
STOP_GRACE_SECONDS = 5.0
#: Seconds a hard exit waits for its cleanups (releasing the run's lock) before it ends anyway.
HARD_EXIT_CLEANUP_SECONDS = 3.0
#: How often (seconds) a running command's caller looks at its stop condition.
POLL_SECONDS = 0.1

# Process group ids of live commands, and the cleanups a hard exit runs. Changed by single operations, no lock:
# the signal handler that reads them may have interrupted a thread holding it.
_groups: set[int] = set()
_cleanups: dict[int, Callable[[], None]] = {}
_keys = itertools.count(1)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Sends ``sig`` to a whole process group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def at_hard_exit(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Registers ``cleanup`` to run on a hard exit; returns the function that unregisters it."""
    key = next(_keys)
    _cleanups[key] = cleanup

    def forget() -> None:
        _cleanups.pop(key, None)

    return forget


def hard_exit(code: int) -> None:
    """Ends the process now: kills every live command's process group, runs the cleanups (at most
    :data:`HARD_EXIT_CLEANUP_SECONDS`), then ``os._exit(code)``. Safe to call from a signal handler."""
    for pgid in list(_groups):
        kill_group(pgid)
    cleanups = list(_cleanups.values())

    def run_all() -> None:
        for cleanup in cleanups:
            # a cleanup that cannot finish (a state store gone) must not keep the process alive
            with contextlib.suppress(Exception):
                cleanup()

    # In a thread: the signal handler may have interrupted the main thread inside a state-store call, whose
    # lock a cleanup would then wait for; the timeout bounds that wait (the lock is stale once we are gone).
    worker = threading.Thread(target=run_all, name="migrator-hard-exit", daemon=True)
    worker.start()
    worker.join(HARD_EXIT_CLEANUP_SECONDS)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


def run_command(argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                timeout: float | None = None, should_stop: Callable[[], None] | None = None,
                grace: float | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` in a new session and returns its exit status and output.

    While it runs, ``should_stop`` is called every :data:`POLL_SECONDS`; when it raises (the run was interrupted,
    the step ran past its deadline), the command's whole process group is asked to stop (SIGTERM), killed
    (SIGKILL) after ``grace`` seconds, and the exception goes on to the caller. Past ``timeout`` seconds the same
    happens and :class:`subprocess.TimeoutExpired` is raised. A command that ends on its own while the run is
    being stopped is also reported through ``should_stop``: its exit status may be the interrupt's doing.
    """
    grace = STOP_GRACE_SECONDS if grace is None else grace
    proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    pgid = proc.pid  # a new session's leader leads its own process group
    _groups.add(pgid)
    end = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            if should_stop is not None:
                should_stop()
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(list(argv), timeout or 0.0)
    except BaseException:
        _stop(proc, pgid, grace)
        raise
    finally:
        _groups.discard(pgid)
    if proc.returncode != 0 and should_stop is not None:
        should_stop()
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


def _stop(proc: subprocess.Popen[str], pgid: int, grace: float) -> None:
    """Asks the command's process group to end, waits ``grace`` seconds, then kills what is left of it."""
    kill_group(pgid, signal.SIGTERM)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=grace)
    finally:
        # anything of the group still there (it ignored SIGTERM, or left the pipes) goes now
        kill_group(pgid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=grace)
    _wait_group_gone(pgid, grace)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Waits (at most ``timeout`` seconds) until no process of the group is left, so that a stopped step's
    commands are gone when the step ends, not merely signalled."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and group_alive(pgid):
        time.sleep(0.02)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (a zombie, dead and waiting to be reaped, does not)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")"
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False
