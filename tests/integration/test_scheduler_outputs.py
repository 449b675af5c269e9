"""The scheduler reads a done step's outputs from the state store once per run, however many steps after it
start: what each step receives is what the store holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from migrator.errors import ExitCode
from migrator.playbook import load
from migrator.registry import Registry
from migrator.runner import Runner
from migrator.runner.core import RunCore
from migrator.state import open_store
from tests.support import journal_steps
from tests.support.journal_steps import lines

pytestmark = pytest.mark.integration


def test_each_done_steps_outputs_are_read_once_and_given_to_every_step_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "journal"
    steps = "".join(f"  - id: s{i}\n    uses: journal.append\n    with: {{journal: '{journal}'}}\n"
                    for i in range(1, 6))
    registry = Registry()
    registry.add_module(journal_steps)
    loaded = load("pb.yaml", registry=registry, playbook_text=f"name: linear\nsteps:\n{steps}")
    reads: Counter[str] = Counter()
    given: dict[str, Mapping[str, Mapping[str, Any]]] = {}
    outputs_of, step_context = RunCore.outputs_of, RunCore.step_context

    def counted(self: RunCore, run_id: str, step_id: str) -> Mapping[str, Any]:
        reads[step_id] += 1
        return outputs_of(self, run_id, step_id)

    def seen(self: RunCore, run_id: str, loaded: Any, step: Any, rec: Any,
             outputs: Mapping[str, Mapping[str, Any]]) -> Any:
        given[step.id] = outputs
        return step_context(self, run_id, loaded, step, rec, outputs)

    monkeypatch.setattr(RunCore, "outputs_of", counted)
    monkeypatch.setattr(RunCore, "step_context", seen)
    outcome = Runner(open_store(tmp_path / "state"), options={"no_forecast": True}).run(loaded, run_id="r1")

    assert outcome.exit_code == ExitCode.OK, outcome
    assert lines(str(journal)) == [f"apply s{i}" for i in range(1, 6)]
    # s1 is an ancestor of four steps and s4 of one; each was read from the store once.
    assert reads == Counter({f"s{i}": 1 for i in range(1, 5)})
    assert given["s5"] == {f"s{i}": {"line": f"s{i}"} for i in range(1, 5)}
    assert given["s2"] == {"s1": {"line": "s1"}}
