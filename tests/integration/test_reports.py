"""After a failed run: the report (forecast against actual) and the support bundle, through the CLI."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

from tests.support.engine import Cli

SECRET = "pa55-w0rd-for-the-bundle-test"
PLAYBOOK = """name: bundle
on_failure: stop
steps:
  - id: prepare
    uses: journal.append
    with: {{journal: '{journal}', estimate: 2}}
  - id: copy
    uses: shell
    with:
      run: 'echo "cannot reach db as $TOKEN for jan.jansen@contoso.example, call +31 30 711 6725" >&2; exit 7'
      env: {{TOKEN: '${{env:MIGRATOR_TEST_BUNDLE_TOKEN}}'}}
      estimate: 5
"""
ENV = """tenant:
  name: contoso
  reference: SUP-4711
  timezone: Europe/Amsterdam
  environments: [contoso-prod]
  contacts: [j.admin]
"""


def test_support_bundle_has_what_support_asks_for_and_no_secret_or_personal_data(
        tmp_path: Path, plugin_path: Path) -> None:
    cli = Cli(tmp_path, str(tmp_path / "state"), plugin_path, {"MIGRATOR_TEST_BUNDLE_TOKEN": SECRET})
    (tmp_path / "pb.yaml").write_text(PLAYBOOK.format(journal=tmp_path / "journal"))
    (tmp_path / "env.yaml").write_text(ENV)
    assert cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1").returncode == 1
    result = cli("support-bundle", "r1", "-o", "bundle.zip")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        texts = {name.split("/", 1)[1]: zf.read(name).decode() for name in zf.namelist()}
    readme = texts["README.md"]
    for needed in ("SUP-4711", "contoso-prod", "j.admin", "Date and time of the issue", "Step `copy` failed",
                   "exit", "migrator run pb.yaml -e env.yaml --run-id r1", "Steps to reproduce"):
        assert needed in readme, needed
    assert {"status.json", "report.json", "events.jsonl", "versions.json", "playbook.yaml", "environment.yaml",
            "logs/r1.log"} <= set(texts)
    everything = "\n".join(texts.values())
    assert SECRET not in everything
    assert "jan.jansen@contoso.example" not in everything and "711 6725" not in everything
    assert "cannot reach db as ***" in everything


def test_report_shows_forecast_against_actual_for_every_step(tmp_path: Path, plugin_path: Path) -> None:
    cli = Cli(tmp_path, str(tmp_path / "state"), plugin_path, {"MIGRATOR_TEST_BUNDLE_TOKEN": SECRET})
    (tmp_path / "pb.yaml").write_text(PLAYBOOK.format(journal=tmp_path / "journal"))
    (tmp_path / "env.yaml").write_text(ENV)
    cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    result = cli("report", "r1", "--format", "json", "--out", "out")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    steps = {s["id"]: s for s in data["steps"]}
    assert steps["prepare"]["forecast_seconds"] == 2 and steps["prepare"]["actual_seconds"] is not None
    assert steps["copy"]["forecast_seconds"] == 5 and steps["copy"]["status"] == "failed"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.json", "report.md", "report.html"}
    assert "forecast" in (tmp_path / "out" / "report.md").read_text()


def test_report_json_is_strict_json_when_a_forecast_is_not_finite(tmp_path: Path, plugin_path: Path) -> None:
    cli = Cli(tmp_path, str(tmp_path / "state"), plugin_path, {"MIGRATOR_TEST_BUNDLE_TOKEN": SECRET})
    (tmp_path / "pb.yaml").write_text(PLAYBOOK.format(journal=tmp_path / "journal"))
    (tmp_path / "env.yaml").write_text(ENV)
    cli("run", "pb.yaml", "-e", "env.yaml", "--run-id", "r1")
    # A forecast no finite number can say (a rate of zero): Python's json writes it as NaN, which JSON lacks.
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        db.execute("""UPDATE steps SET estimate = '{"seconds": NaN, "basis": "x"}' WHERE step_id = 'prepare'""")

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    for args in (("report", "r1", "--format", "json", "--out", "out"), ("status", "r1", "--json")):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout, parse_constant=refuse)
    steps = {s["id"]: s for s in json.loads((tmp_path / "out" / "report.json").read_text(),
                                            parse_constant=refuse)["steps"]}
    assert steps["prepare"]["forecast_seconds"] is None
    result = cli("support-bundle", "r1", "-o", "bundle.zip")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        for name in zf.namelist():
            if name.endswith((".json", ".jsonl")):
                for line in zf.read(name).decode().splitlines() if name.endswith(".jsonl") else [zf.read(name)]:
                    json.loads(line, parse_constant=refuse)
