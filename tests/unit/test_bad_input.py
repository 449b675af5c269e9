"""Every bad input — a malformed playbook or environment file, a hostile YAML document, a bad command-line choice, a
path that cannot be a file — exits 2 (or 1 for the machine) with one line naming the file and line, or the field or
option, before anything happens: no state store, no log, no output file, nothing else in the directory."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from typer.testing import CliRunner

from migrator import yamlsrc
from migrator.cli import app
from migrator.errors import PlaybookError

GOOD_ENV = "tenant:\n  name: contoso\n  timezone: Europe/Amsterdam\nsource:\n  path: /srv/files\n"
GOOD_STEP = "  - id: a\n    uses: wait\n    with: {seconds: 1}\n"
GATE = "name: x\nsteps:\n  - id: gate\n    uses: window.gate\n    with: {forecast_seconds: 60}\n" \
       "  - id: a\n    uses: shell\n    with: {run: 'touch made'}\n"
SHELL = "name: x\nsteps:\n  - id: a\n    uses: shell\n    with: {run: 'touch made'}\n"
ALL = ("validate", "plan", "run")


def _shell(with_: str, extra: str = "") -> str:
    """A one-step shell playbook; ``with_`` is the step's flow mapping, on line 5."""
    return f"name: x\nsteps:\n  - id: a\n    uses: shell\n    with: {with_}\n{extra}"


def _gate(with_: str) -> str:
    """A window gate (its ``with`` on line 5), then a shell step."""
    return f"name: x\nsteps:\n  - id: gate\n    uses: window.gate\n    with: {with_}\n" \
           "  - id: a\n    uses: shell\n    with: {run: 'touch made'}\n"


def _laughs(levels: int, fan_out: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan_out) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan_out) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\nname: x\n"


def _nested(depth: int) -> str:
    return "name: x\nsteps: " + "[" * depth + "]" * depth + "\n"


class Case(NamedTuple):
    id: str
    playbook: str
    environment: str
    where: str  # the file the message names: "pb" or "env"; "cli": it names the option instead
    line: int | None
    words: str  # the message holds these (case-insensitive)
    field: str | None = None  # the message names this field (or option)
    args: tuple[str, ...] = ()  # options added to the commands that take them
    commands: tuple[str, ...] = ALL
    code: int = 2
    pb_arg: str = "pb.yaml"
    env_arg: str = "env.yaml"


CASES = [Case(*c) for c in [
    # (case id, playbook text, environment text, expected file, expected line or None, expected words)
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
]] + [
    # dayparts: a midnight-crossing one (22:00-06:00) is allowed; empty, equal ends, invalid times are not
    Case("daypart-end-equals-start", GATE, GOOD_ENV + "dayparts:\n  night: {start: '06:00', end: '06:00'}\n", "env",
         7, "empty daypart", "dayparts.night"),
    Case("daypart-24-30", GATE, GOOD_ENV + "dayparts:\n  night: {start: '00:00', end: '24:30'}\n", "env", 7,
         "'24:30' is not a time of day", "dayparts.night.end"),
    Case("daypart-starts-at-24", GATE, GOOD_ENV + "dayparts:\n  night: {start: '24:00', end: '06:00'}\n", "env", 7,
         "cannot start at 24:00", "dayparts.night"),
    Case("daypart-empty-time", GATE, GOOD_ENV + "dayparts:\n  night: {start: '', end: ''}\n", "env", 7,
         "not a time of day", "dayparts.night.start"),
    Case("daypart-unquoted-time", GATE, GOOD_ENV + "dayparts:\n  night: {start: 6:00, end: '12:00'}\n", "env", 7,
         "quotes", "dayparts.night.start"),
    Case("dayparts-empty", GATE, GOOD_ENV + "dayparts: {}\n", "env", 6, "no dayparts", "dayparts"),
    Case("daypart-name-with-slash", GATE, GOOD_ENV + "dayparts:\n  a/b: {start: '00:00', end: '06:00'}\n", "env",
         6, "daypart name", "dayparts"),
    # --window, and a gate's own window, time zone and dayparts
    Case("window-garbage", GATE, GOOD_ENV, "cli", None, "no daypart 'garbage'", "--window",
         ("--window", "garbage"), ("plan", "run")),
    Case("window-february-30", GATE, GOOD_ENV, "cli", None, "'2026-02-30' is not a date", "--window",
         ("--window", "2026-02-30/night"), ("plan", "run")),
    Case("window-unknown-daypart", GATE, GOOD_ENV, "cli", None, "no daypart 'dawn'", "--window",
         ("--window", "2026-12-05/dawn"), ("plan", "run")),
    Case("window-without-a-gate", SHELL, GOOD_ENV, "cli", None, "no window.gate step", "--window",
         ("--window", "night"), ("plan", "run")),
    Case("gate-window-not-a-date", _gate("{window: 2026-02-30/night}"), GOOD_ENV, "pb", 5, "not a date",
         "steps[0].with.window"),
    Case("gate-window-unknown-daypart", _gate("{window: dawn}"), GOOD_ENV, "pb", 5, "no daypart 'dawn'",
         "steps[0].with.window"),
    Case("gate-unknown-time-zone", _gate("{time_zone: Mars/Base}"), GOOD_ENV, "pb", 5, "unknown time zone",
         "steps[0].with.time_zone"),
    Case("gate-empty-daypart", _gate("{dayparts: {night: '06:00-06:00'}}"), GOOD_ENV, "pb", 5, "empty daypart",
         "steps[0].with.dayparts"),
    Case("gate-infinite-forecast", _gate("{forecast_seconds: .inf}"), GOOD_ENV, "pb", 5, "not a finite number",
         "steps[0].with.forecast_seconds"),
    # the machine's paths, numbers that are no numbers, durations
    Case("cwd-missing", _shell("{run: 'touch made', cwd: /no/such/dir}"), GOOD_ENV, "pb", 5,
         "not an existing directory", "steps[0].with.cwd"),
    Case("timeout-nan", _shell("{run: 'touch made'}", "    timeout: .nan\n"), GOOD_ENV, "pb", 6, "duration",
         "steps[0].timeout"),
    Case("timeout-zero", _shell("{run: 'touch made'}", "    timeout: 0s\n"), GOOD_ENV, "pb", 6, "greater than 0",
         "steps[0].timeout"),
    Case("wait-infinite", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: .inf}\n", GOOD_ENV, "pb", 5,
         "not a finite number", "steps[0].with.seconds"),
    Case("wait-a-million-days", "name: x\nsteps:\n  - id: a\n    uses: wait\n    with: {seconds: 1000000d}\n",
         GOOD_ENV, "pb", 5, "longer than 30 days", "steps[0].with.seconds"),
    Case("retry-initial-over-max", "name: x\nretry: {initial: 10m, max: 1s}\nsteps:\n" + GOOD_STEP, GOOD_ENV, "pb", 2,
         "longer than max", "retry"),
    Case("concurrency-true", "name: x\nconcurrency: true\nsteps:\n" + GOOD_STEP, GOOD_ENV, "pb", 2, "true or false",
         "concurrency"),
    Case("foreach-count-true", _shell("{run: 'touch made', foreach_count: true}"), GOOD_ENV, "pb", 5,
         "true or false", "steps[0].with.foreach_count"),
    Case("env-nan", SHELL, GOOD_ENV + "settings:\n  ratio: .nan\n", "env", 7, "not a finite number",
         "settings.ratio"),
    Case("integer-of-5000-digits", "name: x\nconcurrency: " + "9" * 5000 + "\nsteps:\n" + GOOD_STEP, GOOD_ENV, "pb",
         2, "not a valid value"),
    Case("timestamp-february-30", "name: 2026-02-30\nsteps:\n" + GOOD_STEP, GOOD_ENV, "pb", 1, "not a valid value"),
    Case("concurrency-option-huge", SHELL, GOOD_ENV, "cli", None, "use 1 to 64", "--concurrency",
         ("--concurrency", "1000000000"), ("run",)),
    Case("concurrency-option-zero", SHELL, GOOD_ENV, "cli", None, "use 1 to 64", "--concurrency",
         ("--concurrency", "0"), ("run",)),
    Case("tenant-name-1000-chars", SHELL, GOOD_ENV.replace("contoso", "c" * 1000), "env", 2, "at most 63",
         "tenant.name"),
    # references: unterminated, or an ${env:...} that is not a variable name (it was taken as the secret itself)
    Case("unterminated-reference", _shell("{run: 'ls ${source.path'}"), GOOD_ENV, "pb", 5, "unterminated",
         "steps[0].with.run"),
    Case("env-unterminated-reference", SHELL, GOOD_ENV + "target:\n  password: ${env:DB_PASS\n", "env", 7,
         "unterminated", "target.password"),
    Case("env-ref-with-a-dash", SHELL, GOOD_ENV + "target:\n  password: ${env:DB-PASS}\n", "env", 7,
         "not a valid environment variable", "target.password"),
    Case("env-ref-without-a-name", SHELL, GOOD_ENV + "target:\n  password: ${env:}\n", "env", 7,
         "not a valid environment variable", "target.password"),
    Case("playbook-env-ref-with-a-dash", _shell("{run: ls, env: {PGPASSWORD: '${env:DB-PASS}'}}"), GOOD_ENV, "pb", 5,
         "not a valid environment variable", "steps[0].with.env.PGPASSWORD"),
    # literal secrets: only ${env:NAME} references may stand where a secret goes
    Case("env-literal-password", SHELL, GOOD_ENV + "target:\n  administrator_password: hunter2\n", "env", 7,
         "holds a secret", "target.administrator_password"),
    Case("env-literal-numeric-token", SHELL, GOOD_ENV + "settings:\n  api_token: 123456\n", "env", 7,
         "holds a secret", "settings.api_token"),
    Case("env-literal-account-key", SHELL, GOOD_ENV + "target:\n  blobs: {account_key: Zm9vYmFy}\n", "env", 7,
         "holds a secret", "target.blobs.account_key"),
    Case("env-connection-string-pwd", SHELL, GOOD_ENV + "target:\n  db: 'Server=h;Uid=u;Pwd=hunter2'\n", "env", 7,
         "pwd= of a connection string", "target.db"),
    Case("env-connection-string-accountkey", SHELL,
         GOOD_ENV + "target:\n  blobs: 'AccountName=a;AccountKey=Zm9vYmFy;EndpointSuffix=core'\n", "env", 7,
         "accountkey= of a connection string", "target.blobs"),
    Case("env-url-password", SHELL, GOOD_ENV + "target:\n  url: 'postgresql://u:hunter2@db/x'\n", "env", 7,
         "password of a URL", "target.url"),
    Case("playbook-literal-env-password", _shell("{run: ls, env: {PGPASSWORD: hunter2}}"), GOOD_ENV, "pb", 5,
         "holds a secret", "steps[0].with.env.PGPASSWORD"),
    Case("playbook-literal-authorization", "name: x\nsteps:\n  - id: a\n    uses: http\n    with: {url: "
         "'http://127.0.0.1:9/', headers: {Authorization: Bearer abc}}\n", GOOD_ENV, "pb", 5, "holds a secret",
         "steps[0].with.headers.Authorization"),
    Case("playbook-secret-from-plain-setting", _shell("{run: ls, env: {DB_PASSWORD: '${settings.word}'}}"),
         GOOD_ENV + "settings:\n  word: hunter2\n", "pb", 5, "holds a secret", "steps[0].with.env.DB_PASSWORD"),
    # hostile YAML: refused with a bounded amount of work
    Case("billion-laughs", _laughs(9, 10), GOOD_ENV, "pb", None, "aliases are expanded"),
    Case("env-billion-laughs", SHELL, GOOD_ENV + "settings:\n" + "".join(
        f"  {line}\n" for line in _laughs(9, 10).splitlines()[:-1]), "env", None, "aliases are expanded"),
    Case("recursive-alias", "name: x\nsteps: &s [*s]\n", GOOD_ENV, "pb", 2, "recursive alias"),
    Case("3000-nested-brackets", _nested(3000), GOOD_ENV, "pb", 2, "nested deeper than"),
    Case("brackets-in-the-message", "name: x\nsteps:\n  - id: a\n    uses: '[/x] [bold]'\n", GOOD_ENV, "pb", 4,
         "'[/x] [bold]'", "steps[0].uses"),
    # paths that cannot be files
    Case("playbook-under-a-file", SHELL, GOOD_ENV, "pb", None, "not a directory", pb_arg="afile/pb.yaml"),
    Case("playbook-symlink-loop", SHELL, GOOD_ENV, "pb", None, "symbolic links", pb_arg="loop"),
    Case("playbook-name-too-long", SHELL, GOOD_ENV, "pb", None, "too long", pb_arg="p" * 300 + ".yaml"),
    Case("environment-under-a-file", SHELL, GOOD_ENV, "env", None, "not a directory", env_arg="afile/env.yaml"),
    Case("out-names-a-file", SHELL, GOOD_ENV, "cli", None, "is a file", "--out afile", ("--out", "afile"),
         ("plan",)),
    Case("out-under-a-file", SHELL, GOOD_ENV, "cli", None, "is a file", "--out afile/x", ("--out", "afile/x"),
         ("plan",)),
]


def _params() -> list[object]:
    return [pytest.param(case, command, id=f"{case.id}-{command}") for case in CASES for command in case.commands]


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.mark.parametrize(("case", "command"), _params())
def test_bad_input_exits_before_anything_happens_with_one_line_naming_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Case, command: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIGRATOR_TEST_SURELY_UNSET", raising=False)
    monkeypatch.delenv("MIGRATOR_STATE", raising=False)
    (tmp_path / "pb.yaml").write_text(case.playbook)
    (tmp_path / "env.yaml").write_text(case.environment)
    (tmp_path / "afile").write_text("a file, not a directory\n")
    (tmp_path / "loop").symlink_to("loop")
    before = sorted(os.listdir(tmp_path))
    args = [command, case.pb_arg, "-e", case.env_arg]
    if command == "plan" and "--out" not in case.args:
        args += ["--out", "plan-out"]
    if command == "run":
        args += ["--state", "state"]
    args += list(case.args)

    code, output = _invoke(args)

    assert code == case.code, output
    message = output.strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    if case.where != "cli":
        expected_file = case.pb_arg if case.where == "pb" else case.env_arg
        assert expected_file in message, message
        if case.line is not None:
            assert re.search(rf"{re.escape(expected_file)}:{case.line}\b", message), message
    if case.field is not None:
        assert case.field in message, message
    assert case.words.lower() in message.lower(), message
    assert sorted(os.listdir(tmp_path)) == before  # no state, no log, no plan files, no `made`


def test_the_table_covers_every_kind_of_bad_input_through_validate_plan_and_run() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 80
    assert {c.where for c in CASES} == {"pb", "env", "cli"}
    assert sum(len(c.commands) for c in CASES) >= 250


def test_a_daypart_across_midnight_is_a_window_from_evening_to_morning(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pb.yaml").write_text(GATE)
    (tmp_path / "env.yaml").write_text(GOOD_ENV + "dayparts:\n  late: {start: '22:00', end: '06:00'}\n")

    code, output = _invoke(["plan", "pb.yaml", "-e", "env.yaml", "--format", "json", "--window", "2026-12-05/late"])

    assert code == 0, output
    assert "2026-12-05T22:00:00+01:00" in output and "2026-12-06T06:00:00+01:00" in output


@pytest.mark.parametrize("name", ["../../escaped [/x]", "n" * 1000, "ünï cödé/ñame"])
def test_a_run_without_environment_names_its_log_safely_whatever_the_playbook_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pb.yaml").write_text(f"name: '{name}'\nsteps:\n" + GOOD_STEP.replace("seconds: 1", "seconds: 0"))

    code, output = _invoke(["run", "pb.yaml", "--state", "state"])

    assert code == 0, output
    logs = list((tmp_path / "state" / "logs").iterdir())
    assert len(logs) == 1 and logs[0].is_file() and len(logs[0].name) < 100, logs
    assert sorted(os.listdir(tmp_path)) == ["pb.yaml", "state"]


@pytest.mark.parametrize(("option", "value", "says"), [
    ("-o", ".", "is a directory"),
    ("-o", "afile/bundle.zip", "afile is a file"),
    ("-o", "b" * 300 + ".zip", "too long"),
])
def test_support_bundle_output_that_cannot_be_a_file_is_refused_before_anything_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, value: str, says: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    code, output = _invoke(["support-bundle", "some-run", "--state", "state", option, value])

    assert code == 2, output
    assert len(output.strip().splitlines()) == 1 and says in output, output
    assert sorted(os.listdir(tmp_path)) == ["afile"]


# ------------------------------------------------------------------------------------------ bounded work on YAML


class _Counter:
    def __init__(self) -> None:
        self.calls = 0


@pytest.mark.parametrize(("text", "says"), [
    pytest.param(_laughs(9, 10), "aliases are expanded", id="billion-laughs-9x10"),
    pytest.param(_laughs(30, 2), "aliases are expanded", id="two-to-the-thirty"),
    pytest.param("a: &a [x, *a]\n", "recursive alias", id="recursive-alias"),
    pytest.param("a: &a {b: &b [*a], c: *b}\n", "recursive alias", id="recursive-through-two-anchors"),
])
def test_alias_bombs_stop_after_a_bounded_number_of_values(monkeypatch: pytest.MonkeyPatch, text: str,
                                                           says: str) -> None:
    counter = _Counter()
    construct = yamlsrc._construct

    def counting(*args: object) -> object:
        counter.calls += 1
        return construct(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(yamlsrc, "_construct", counting)
    with pytest.raises(PlaybookError, match=says):
        yamlsrc.parse_yaml(text, "bomb.yaml")
    assert counter.calls <= yamlsrc.MAX_VALUES + 1


@pytest.mark.parametrize("depth", [yamlsrc.MAX_DEPTH + 1, 3000, 100_000])
def test_deep_nesting_stops_at_the_depth_limit_without_recursing_further(monkeypatch: pytest.MonkeyPatch,
                                                                         depth: int) -> None:
    counter = _Counter()
    compose = yamlsrc._BoundedLoader.compose_node

    def counting(self: yamlsrc._BoundedLoader, parent: object, index: object) -> object:
        counter.calls += 1
        return compose(self, parent, index)  # type: ignore[arg-type]

    monkeypatch.setattr(yamlsrc._BoundedLoader, "compose_node", counting)
    with pytest.raises(PlaybookError, match="nested deeper than"):
        yamlsrc.parse_yaml(_nested(depth), "deep.yaml")
    assert counter.calls <= yamlsrc.MAX_DEPTH + 4  # the root, "name", "steps" and then one per level


def test_a_document_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _Counter()
    init = yamlsrc._BoundedLoader.__init__

    def counting(self: yamlsrc._BoundedLoader, stream: str, file: str) -> None:
        counter.calls += 1
        init(self, stream, file)

    monkeypatch.setattr(yamlsrc._BoundedLoader, "__init__", counting)
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n# " + "x" * yamlsrc.MAX_DOCUMENT_CHARS + "\n")
    with pytest.raises(PlaybookError, match="longer than"):
        yamlsrc.load_yaml_file(big)
    assert counter.calls == 0


def test_the_shipped_playbooks_stay_far_inside_the_limits() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in [*root.glob("playbooks/*.yaml"), *root.glob("fixtures/environments/*.yaml")]:
        doc = yamlsrc.load_yaml_file(path)
        assert len(doc.text) < yamlsrc.MAX_DOCUMENT_CHARS // 10
        assert len(doc.lines) < yamlsrc.MAX_VALUES // 10
        assert max(len(p) for p in doc.lines) < yamlsrc.MAX_DEPTH // 4
