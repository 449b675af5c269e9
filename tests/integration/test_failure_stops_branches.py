"""A failure stops the whole run: steps busy on other branches stop at their next checkpoint, then the
rollback undoes them too, instead of waiting for them to run to their end."""

from __future__ import annotations

from pathlib import Path

from migrator.errors import ExitCode
from migrator.playbook import load
from migrator.registry import Registry
from migrator.runner import Runner
from migrator.state import open_store
from migrator.steps import generic
from tests.support import journal_steps
from tests.support.journal_steps import lines


def test_failure_on_one_branch_stops_the_other_and_rolls_both_back(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    registry = Registry()
    for module in (generic, journal_steps):
        registry.add_module(module)
    text = (f"name: branches\non_failure: rollback\ncheckpoint_batch: 10\nconcurrency: 2\nsteps:\n"
            f"  - id: long\n    uses: journal.items\n    needs: []\n"
            f"    with: {{journal: '{journal}', count: 5000, delay: 0.002}}\n"
            f"  - id: boom\n    uses: journal.flaky\n    needs: []\n"
            f"    with: {{journal: '{journal}', permanent: true}}\n")
    loaded = load("pb.yaml", registry=registry, playbook_text=text)
    outcome = Runner(open_store(tmp_path / "state"), options={"no_forecast": True}).run(loaded, run_id="r1")
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome
    written = lines(str(journal))
    items = [x for x in written if x.startswith("item")]
    assert 0 < len(items) < 5000  # the long branch stopped early
    assert written[-2:] == ["undo boom", "undo long"] or written[-2:] == ["undo long", "undo boom"]
    steps = open_store(tmp_path / "state").get_steps("r1")
    assert {s.status for s in steps.values()} == {"compensated"}
