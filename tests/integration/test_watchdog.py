"""The window watchdog: work that would overrun the read-only window is aborted and rolled back in time.

Runs the runner in-process with an injected clock, so hours of a daypart pass in a fraction of a second.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrator.clock import FakeClock
from migrator.errors import ExitCode
from migrator.playbook import load
from migrator.registry import Registry
from migrator.runner import Runner
from migrator.state import open_store
from migrator.step import Estimate, Params, PlanResult, Step, StepContext
from migrator.steps import generic, window
from tests.support import journal_steps
from tests.support.journal_steps import lines


class SlowParams(Params):
    minutes_per_tick: float
    ticks: int
    estimate_seconds: float


class Slow(Step[SlowParams]):
    """Advances the run's clock tick by tick, as a long copy would. Nothing to undo."""

    kind = "test.slow"
    Params = SlowParams

    def plan(self, ctx: StepContext) -> PlanResult:
        return PlanResult(["be slow"], "", Estimate(seconds=self.params.estimate_seconds))

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        clock = ctx.clock
        assert isinstance(clock, WatchedClock)
        for _ in range(self.params.ticks):
            ctx.raise_if_cancelled()
            clock.sleep(self.params.minutes_per_tick * 60)
            clock.seen_by_the_watchdog(ctx.cancel_event)
        return {}


class WatchedClock(FakeClock):
    """A fake clock that counts who read the time: while the slow step runs, only the watchdog does."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.looks = 0

    def now(self) -> datetime:
        self.looks += 1
        return super().now()

    def seen_by_the_watchdog(self, cancel: threading.Event) -> None:
        """Waits until the watchdog has looked at the time as it is now, to the end (its next look begun), or
        stopped the run: a tick of this clock is never jumped over, however slow the machine."""
        until = self.looks + 2
        for _ in range(500):
            if self.looks >= until or cancel.wait(0.01):
                return


def registry() -> Registry:
    reg = Registry()
    for module in (generic, window, journal_steps):
        reg.add_module(module)
    reg.add(Slow)
    return reg


PLAYBOOK = """
name: overrun
on_failure: rollback
steps:
  - id: gate
    uses: window.gate
    with: {{window: night, margin_ratio: 0, margin_seconds: 600}}
  - id: read_only
    uses: journal.append
    with: {{journal: '{journal}'}}
  - id: copy
    uses: test.slow
    with: {{minutes_per_tick: {tick}, ticks: {ticks}, estimate_seconds: 3600}}
"""


def run(tmp_path: Path, tick: float, ticks: int) -> tuple[Any, FakeClock, str]:
    journal = tmp_path / "journal"
    env = "tenant: {name: contoso, timezone: UTC}\n"
    loaded = load("pb.yaml", "env.yaml", registry=registry(),
                  playbook_text=PLAYBOOK.format(journal=journal, tick=tick, ticks=ticks), environment_text=env)
    clock = WatchedClock(datetime(2026, 3, 2, 0, 30, tzinfo=UTC))
    runner = Runner(open_store(tmp_path / "state"), clock=clock)
    runner.watchdog_interval = 0.02
    return runner.run(loaded, run_id="r1"), clock, str(journal)


def test_slow_step_under_injected_clock_is_aborted_and_rolled_back_before_the_daypart_ends(tmp_path: Path) -> None:
    outcome, clock, journal = run(tmp_path, tick=10, ticks=100)  # would take 16 h in a 6 h night
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome
    assert "deadline" in (outcome.error or "")
    assert lines(journal) == ["apply read_only", "undo read_only"]  # read-only lifted again
    window_end = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    assert clock.now() < window_end
    events = [e.type for e in open_store(tmp_path / "state").events("r1")]
    assert "watchdog.abort" in events and "run.rolled_back" in events


def test_work_that_fits_the_window_is_not_aborted(tmp_path: Path) -> None:
    outcome, _, journal = run(tmp_path, tick=1, ticks=30)  # 30 minutes of work, estimate 1 h, from 00:30
    assert outcome.exit_code == ExitCode.OK, outcome
    assert lines(journal) == ["apply read_only"]
