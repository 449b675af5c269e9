"""Step kinds for the engine's own tests: each appends what it does to a journal file.

They are installed for the CLI under test through the ``migrator.steps`` entry-point group (see
``tests/support/engine.py``), which also proves that third-party kinds load that way.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from migrator.errors import PermanentError, TransientError
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext


def append(journal: str, line: str) -> None:
    with open(journal, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def lines(journal: str) -> list[str]:
    path = Path(journal)
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


class AppendParams(Params):
    journal: str
    delay: float = 0.0
    estimate: float | None = None
    #: Before appending, wait (checking for cancellation) until this file exists: a test's gate.
    until: str | None = None


class JournalAppend(Step[AppendParams]):
    """Appends ``apply <id>``. Done when the journal holds that line. Undone by appending ``undo <id>``."""

    kind = "journal.append"
    Params = AppendParams

    def check(self, ctx: StepContext) -> CheckResult:
        done = f"apply {self.step_id}" in lines(self.params.journal)
        return CheckResult(done, "the journal has it" if done else "not in the journal", {"line": self.step_id})

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        return PlanResult([f"append to {self.params.journal}"], state.reason, Estimate(seconds=self.params.estimate))

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        end = time.monotonic() + self.params.delay
        while time.monotonic() < end or (self.params.until and not Path(self.params.until).exists()):
            ctx.raise_if_cancelled()
            time.sleep(0.02)
        append(self.params.journal, f"apply {self.step_id}")
        return {"line": self.step_id}

    def compensate(self, ctx: StepContext) -> None:
        append(self.params.journal, f"undo {self.step_id}")


class ItemsParams(Params):
    journal: str
    count: int = Field(ge=0)
    delay: float = 0.0
    #: The first runner to reach this item (the flag file ``pause_flag`` does not exist yet) stops its own
    #: process (SIGSTOP) right after that item's checkpoint, as a frozen VM or a closed laptop lid would.
    pause_at: int | None = None
    pause_flag: str | None = None
    #: After such a pause, fail for good at once, as an external update held across the pause would.
    fail_after_pause: bool = False


class JournalItems(Step[ItemsParams]):
    """Appends ``item <n>`` for each of ``count`` items, with a checkpoint per item. Undone: ``undo <id>``."""

    kind = "journal.items"
    Params = ItemsParams

    def check(self, ctx: StepContext) -> CheckResult:
        done = ctx.items.count("done")
        return CheckResult(done >= self.params.count, f"{done}/{self.params.count} items done",
                           {"items": self.params.count})

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        done = ctx.items.keys("done")
        ctx.items.set_total(items=self.params.count)
        with open(self.params.journal, "a", encoding="utf-8") as fh:
            for n in range(self.params.count):
                key = f"{n:05d}"
                if key in done:
                    continue
                ctx.raise_if_cancelled()
                fh.write(f"item {key}\n")
                fh.flush()
                if self.params.delay:
                    time.sleep(self.params.delay)
                ctx.items.record(key, "done", bytes=1)
                if n == self.params.pause_at and self.params.pause_flag and not Path(self.params.pause_flag).exists():
                    Path(self.params.pause_flag).write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGSTOP)
                    if self.params.fail_after_pause:
                        raise PermanentError("the update held across the pause was refused")
        return {"items": self.params.count}

    def compensate(self, ctx: StepContext) -> None:
        append(self.params.journal, f"undo {self.step_id}")


class FlakyParams(Params):
    journal: str
    transient_failures: int = 0
    permanent: bool = False
    retry_after: float | None = None


class JournalFlaky(Step[FlakyParams]):
    """Fails ``transient_failures`` times with a transient error, then succeeds; or always fails for good."""

    kind = "journal.flaky"
    Params = FlakyParams

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        tries = sum(1 for line in lines(self.params.journal) if line == f"try {self.step_id}")
        append(self.params.journal, f"try {self.step_id}")
        if self.params.permanent:
            raise PermanentError("the thing is gone for good", hint="recreate the thing")
        if tries < self.params.transient_failures:
            raise TransientError(f"busy (try {tries + 1})", retry_after=self.params.retry_after)
        append(self.params.journal, f"apply {self.step_id}")
        return {"tries": tries + 1}

    def compensate(self, ctx: StepContext) -> None:
        append(self.params.journal, f"undo {self.step_id}")
