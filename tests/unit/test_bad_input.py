"""Every malformed playbook or environment file exits 2 with one line naming the file and line or field,
and leaves no run (no state store is even created)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator.cli import app

GOOD_ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\nsource:\n  path: /srv/files\n"
GOOD_STEP = "  - id: a\n    uses: wait\n    with: {seconds: 1}\n"

# (case id, playbook text, environment text, expected file, expected line or None, expected words)
CASES = [
    ("broken-yaml", "name: x\nsteps: [\n", GOOD_ENV, "pb", 3, "not valid YAML"),
    ("tab-indent", "name: x\nsteps:\n\t- id: a\n", GOOD_ENV, "pb", 3, "not valid YAML"),
    ("empty-file", "", GOOD_ENV, "pb", 1, "empty"),
    ("top-level-list", "- a\n- b\n", GOOD_ENV, "pb", 1, "mapping"),
    ("unknown-top-key", "name: x\nstepz: []\nsteps:\n" + GOOD_STEP, GOOD_ENV, "pb", 2, "stepz"),
    ("missing-name", "steps:\n" + GOOD_STEP, GOOD_ENV, "pb", None, "name"),
    ("no-steps", "name: x\nsteps: []\n", GOOD_ENV, "pb", 2, "steps"),
    ("unknown-step-key", "name: x\nsteps:\n  - id: a\n    uses: wait\n    wiht: {seconds: 1}\n", GOOD_ENV, "pb", 5,
     "wiht"),
    ("unknown-param", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1, minutes: 2}\n", GOOD_ENV,
     "pb", 5, "minutes"),
    ("wrong-type", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with:\n      seconds: soon\n", GOOD_ENV, "pb", 6,
     "seconds"),
    ("missing-param", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {}\n", GOOD_ENV, "pb", 5, "seconds"),
    ("unknown-kind", "name: x\nsteps:\n  - id: a\n    uses: blobs.teleport\n", GOOD_ENV, "pb", 4, "blobs.teleport"),
    ("duplicate-id", "name: x\nsteps:\n" + GOOD_STEP + GOOD_STEP, GOOD_ENV, "pb", 6, "duplicate step id"),
    ("bad-id", "name: x\nsteps:\n  - id: 'a b'\n    uses: wait\n    with: {seconds: 1}\n", GOOD_ENV, "pb", 3, "id"),
    ("needs-unknown", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1}\n    needs: [zz]\n",
     GOOD_ENV, "pb", 6, "zz"),
    ("needs-cycle", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1}\n    needs: [b]\n"
     "  - id: b\n    uses: wait\n    with: {seconds: 1}\n    needs: [a]\n", GOOD_ENV, "pb", None, "cycle"),
    ("needs-self", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1}\n    needs: [a]\n", GOOD_ENV,
     "pb", 6, "itself"),
    ("duplicate-key", "name: x\nname: y\nsteps:\n" + GOOD_STEP, GOOD_ENV, "pb", 2, "duplicate key"),
    ("unresolved-env-ref", "name: x\nsteps:\n  - id: a\n    uses: shell\n    with: {run: 'ls ${source.nothing}'}\n",
     GOOD_ENV, "pb", 5, "source.nothing"),
    ("unknown-ref-root", "name: x\nsteps:\n  - id: a\n    uses: shell\n    with: {run: 'ls ${wat.x}'}\n", GOOD_ENV,
     "pb", 5, "wat.x"),
    ("step-ref-not-needed", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1}\n    needs: []\n"
     "  - id: b\n    uses: shell\n    with: {run: 'echo ${steps.a.outputs.x}'}\n    needs: []\n", GOOD_ENV, "pb", 9,
     "needs"),
    ("missing-env-var", "name: x\nsteps:\n  - id: a\n    uses: shell\n    with:\n      run: ls\n      env:\n"
     "        TOKEN: ${env:MIGRATOR_TEST_SURELY_UNSET}\n", GOOD_ENV, "pb", 8, "MIGRATOR_TEST_SURELY_UNSET"),
    ("secret-in-plain-field",
     "name: x\nsteps:\n  - id: a\n    uses: shell\n    with:\n      run: 'curl -u ${env:HOME}'\n",
     GOOD_ENV, "pb", 6, "secret"),
    ("bad-duration", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1}\n    timeout: forever\n",
     GOOD_ENV, "pb", 6, "timeout"),
    ("bad-retry", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1}\n    retry: {attempts: 0}\n",
     GOOD_ENV, "pb", 6, "attempts"),
    ("bad-on-failure", "name: x\non_failure: pray\nsteps:\n" + GOOD_STEP, GOOD_ENV, "pb", 2, "on_failure"),
    ("env-broken-yaml", "name: x\nsteps:\n" + GOOD_STEP, "tenant: {name: x\n", "env", 2, "not valid YAML"),
    ("env-unknown-key", "name: x\nsteps:\n" + GOOD_STEP, GOOD_ENV + "sauce: 1\n", "env", 6, "sauce"),
    ("env-bad-timezone", "name: x\nsteps:\n" + GOOD_STEP, "tenant:\n  name: x\n  timezone: Mars/Olympus\n", "env", 3,
     "time zone"),
    ("env-missing-tenant", "name: x\nsteps:\n" + GOOD_STEP, "source: {}\n", "env", None, "tenant"),
    ("env-bad-tenant-name", "name: x\nsteps:\n" + GOOD_STEP, "tenant:\n  name: 'a/b'\n", "env", 2, "name"),
    ("env-missing-env-var", "name: x\nsteps:\n" + GOOD_STEP,
     GOOD_ENV + "target:\n  key: ${env:MIGRATOR_TEST_SURELY_UNSET}\n", "env", 7, "MIGRATOR_TEST_SURELY_UNSET"),
    ("env-bad-daypart", "name: x\nsteps:\n" + GOOD_STEP, GOOD_ENV + "dayparts:\n  night: {start: '25:00', end: "
     "'06:00'}\n", "env", 7, "start"),
]


@pytest.mark.parametrize(("playbook", "environment", "which", "line", "words"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_malformed_input_exits_2_naming_file_and_line_and_creates_no_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, playbook: str, environment: str, which: str,
        line: int | None, words: str, command: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIGRATOR_TEST_SURELY_UNSET", raising=False)
    (tmp_path / "pb.yaml").write_text(playbook)
    (tmp_path / "env.yaml").write_text(environment)
    state = tmp_path / "state"
    args = [command, "pb.yaml", "-e", "env.yaml"] + (["--state", str(state)] if command == "run" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1, message
    expected_file = "pb.yaml" if which == "pb" else "env.yaml"
    assert expected_file in message
    if line is not None:
        assert re.search(rf"{re.escape(expected_file)}:{line}\b", message), message
    assert words.lower() in message.lower()
    assert not state.exists()


def test_at_least_twenty_distinct_malformed_inputs_are_covered() -> None:
    assert len({c[0] for c in CASES}) >= 20
