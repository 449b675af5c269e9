"""Showing a run as it goes: live bars on a terminal, plain timestamped lines otherwise (logs, CI)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class PlainListener:
    """One line per event; item progress at most every ``every`` seconds per step, and only when it moved."""

    def __init__(self, console: Console, every: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._started: dict[str, tuple[float, int, int]] = {}  # when, items, bytes at a step's first report
        self._shown: dict[str, tuple[int, int | None, int, int | None]] = {}  # the counts of its last line
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False)

    def step_started(self, step_id: str, kind: str) -> None:
        # a step started again (resumed, or undone) counts its rate from here
        self._started.pop(step_id, None)
        self._shown.pop(step_id, None)
        self._line(f"{step_id}: started ({kind})")

    def step_finished(self, step_id: str, status: str, note: str | None) -> None:
        self._line(f"{step_id}: {status}" + (f" — {note}" if note else ""))

    def progress(self, step_id: str, items: int, total_items: int | None, nbytes: int,
                 total_bytes: int | None) -> None:
        now = self.clock()
        first = self._started.setdefault(step_id, (now, items, nbytes))
        if now - self._last.get(step_id, -self.every) < self.every:
            return
        counts = (items, total_items, nbytes, total_bytes)
        if self._shown.get(step_id) == counts:  # nothing moved (a rollback reports the same counts over and over)
            return
        self._last[step_id], self._shown[step_id] = now, counts
        text = f"{step_id}: {items}" + (f"/{total_items}" if total_items else "") + " items"
        if nbytes or total_bytes:
            text += f", {_human(nbytes)}" + (f" of {_human(total_bytes)}" if total_bytes else "")
        elapsed = now - first[0]
        if elapsed > 0.5:
            # a rate only of what moved: bytes when bytes moved, else items (undoing a step deletes, it moves
            # no bytes: "0 B/s" said nothing)
            byte_rate, item_rate = (nbytes - first[2]) / elapsed, (items - first[1]) / elapsed
            if byte_rate > 0:
                text += f", {_human(byte_rate)}/s"
                if total_bytes:
                    text += f", ETA {max(total_bytes - nbytes, 0) / byte_rate:.0f}s"
            elif item_rate > 0:
                text += f", {item_rate:.1f} items/s"
                if total_items:
                    text += f", ETA {max(total_items - items, 0) / item_rate:.0f}s"
        self._line(text)

    def message(self, text: str) -> None:
        self._line(text)


class LiveListener:
    """Rich progress bars per step: items, bytes, rate and time left."""

    def __init__(self, console: Console) -> None:
        self.console = console
        # markup off: a step's id, kind or note is text, and "[/x]" in it would crash the bar, "[abc]" vanish
        self.progress_ui = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                    DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                    console=console, transient=False)
        self.tasks: dict[str, TaskID] = {}  # rich indexes tasks by id
        self._lock = threading.Lock()
        self.progress_ui.start()

    def step_started(self, step_id: str, kind: str) -> None:
        with self._lock:
            if step_id not in self.tasks:
                self.tasks[step_id] = self.progress_ui.add_task(f"{step_id} ({kind})", total=None)

    def step_finished(self, step_id: str, status: str, note: str | None) -> None:
        with self._lock:
            task = self.tasks.get(step_id)
            if task is not None:
                total = self.progress_ui.tasks[task].total
                if status == "done":  # a finished step shows a full bar, whatever it counted
                    self.progress_ui.update(task, total=total or 1, completed=total or 1)
                self.progress_ui.update(task, description=f"{step_id}: {status}")
                self.progress_ui.stop_task(task)
        if note and status != "done":
            self.progress_ui.console.print(f"  {step_id}: {note}", markup=False)

    def progress(self, step_id: str, items: int, total_items: int | None, nbytes: int,
                 total_bytes: int | None) -> None:
        with self._lock:
            task = self.tasks.get(step_id)
            if task is None:
                return
            if total_bytes:
                self.progress_ui.update(task, completed=nbytes, total=total_bytes)
            else:
                self.progress_ui.update(task, completed=items, total=total_items)

    def message(self, text: str) -> None:
        self.progress_ui.console.print(text, markup=False)

    def close(self) -> None:
        self.progress_ui.stop()


def make_listener(console: Console) -> Any:
    return LiveListener(console) if console.is_terminal else PlainListener(console)
