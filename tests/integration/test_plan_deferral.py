"""The dry-run: a step whose input an earlier step has yet to make is deferred, not reported as a problem."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from migrator.errors import PreconditionFailed
from migrator.playbook import load
from migrator.registry import Registry
from migrator.runner import Runner
from migrator.state import open_store
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext
from migrator.steps import generic
from tests.support import journal_steps


class NeedsFileParams(Params):
    path: str


class NeedsFile(Step[NeedsFileParams]):
    """Reads a file an earlier step writes; plans fail while it is missing. Changes nothing."""

    kind = "test.needs_file"
    Params = NeedsFileParams

    def check(self, ctx: StepContext) -> CheckResult:
        return CheckResult(False, "always reads")

    def plan(self, ctx: StepContext) -> PlanResult:
        if not Path(self.params.path).exists():
            raise PreconditionFailed(f"{self.params.path} does not exist")
        return PlanResult(["read it"], "")

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        return {}


def plan(tmp_path: Path, journal_has_line: bool) -> dict[str, Any]:
    journal = tmp_path / "journal"
    if journal_has_line:
        journal.write_text("apply make\n")
    registry = Registry()
    for module in (generic, journal_steps):
        registry.add_module(module)
    registry.add(NeedsFile)
    text = (f"name: p\nsteps:\n  - id: make\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
            f"  - id: read\n    uses: test.needs_file\n    with: {{path: '{tmp_path / 'nothing'}'}}\n")
    loaded = load("p.yaml", registry=registry, playbook_text=text)
    return {v.step_id: v for v in Runner(open_store(tmp_path / "state")).plan(loaded)}


def test_step_waiting_for_an_earlier_change_is_deferred(tmp_path: Path) -> None:
    views = plan(tmp_path, journal_has_line=False)
    assert views["make"].status == "change"
    assert views["read"].status == "deferred" and "make" in views["read"].reason
    assert views["read"].error_exit is None


def test_same_failure_with_nothing_pending_before_it_is_an_error(tmp_path: Path) -> None:
    views = plan(tmp_path, journal_has_line=True)
    assert views["make"].status == "done"
    assert views["read"].status == "error" and views["read"].error_exit == 1


class UsesOutputParams(Params):
    value: str
    checks: list[str]


class UsesOutput(Step[UsesOutputParams]):
    """Needs an earlier step's output; its rough cost is known from its params as written. Changes nothing."""

    kind = "test.uses_output"
    Params = UsesOutputParams

    @classmethod
    def estimate_deferred(cls, raw_params: Mapping[str, Any]) -> Estimate | None:
        return Estimate(seconds=0.5 * len(raw_params.get("checks", [])), basis="per check")

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        return {}


def test_deferred_step_still_gets_the_estimate_its_kind_can_give_from_the_params_as_written(tmp_path: Path) -> None:
    registry = Registry()
    for module in (generic, journal_steps):
        registry.add_module(module)
    registry.add(UsesOutput)
    journal = tmp_path / "journal"
    text = (f"name: p\nsteps:\n  - id: make\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
            f"  - id: use\n    uses: test.uses_output\n"
            f"    with: {{value: '${{steps.make.outputs.line}}', checks: [a, b, c]}}\n")
    loaded = load("p.yaml", registry=registry, playbook_text=text)
    views = {v.step_id: v for v in Runner(open_store(tmp_path / "state")).plan(loaded)}
    assert views["use"].status == "deferred"
    assert views["use"].estimate_seconds == 1.5 and views["use"].basis == "per check"
