"""Campaign files, waves and the schedule, without a server: validation errors are one line naming the file, the
line and the field (exit 2); an unreachable Temporal server is one line naming the address (exit 1)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from fixtures.demo import ENVIRONMENT_TEMPLATE, PLAYBOOK, ROOT, STORAGE_ENV, TOKEN_ENV, TSIG_ENV
from fixtures.services.temporal import free_port
from migrator.fleet.schedule import TenantForecast, assign_waves, simulate, wave_sizes
from migrator.window import parse_dayparts

STATE = "postgresql://postgres@127.0.0.1:5432/unused"
ENV = {**os.environ, TOKEN_ENV: "t", STORAGE_ENV: "UseDevelopmentStorage=true", TSIG_ENV: "c2VjcmV0",
       "PYTHONPATH": str(ROOT)}


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", "fleet", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120, check=False)


def _environment(directory: Path, name: str, zone: str = "Europe/Amsterdam") -> Path:
    env = yaml.safe_load(ENVIRONMENT_TEMPLATE.read_text())
    env["tenant"]["name"], env["tenant"]["timezone"] = name, zone
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(env, sort_keys=False))
    return path


def _campaign(directory: Path, text: str) -> Path:
    for name in ("alpha", "beta", "gamma"):
        _environment(directory, name, "Asia/Tokyo" if name == "beta" else "Europe/Amsterdam")
    path = directory / "campaign.yaml"
    path.write_text(text)
    return path


GOOD = f"""\
name: spring
playbook: {PLAYBOOK}
state: {STATE}
window: night
tenants:
  - {{environment: alpha.yaml, region: westeurope, site: ams}}
  - {{environment: beta.yaml, region: japaneast, site: tyo}}
  - {{environment: gamma.yaml, region: westeurope, site: ams}}
waves: {{canary: 1, sizes: ["50%"]}}
caps: {{global: 2, per_region: 1, per_site: 1}}
"""

BAD = [
    # (what is wrong, replace this, with this, expected line, expected text)
    ("unknown key", "window: night\n", "window: night\nwindows: 3\n", 5, "windows: unknown key"),
    ("wave size", "[\"50%\"]", "[\"half\"]", 9, "waves.sizes: expected a count"),
    ("missing env file", "gamma.yaml", "delta.yaml", 8, "tenants[2].environment: environment file"),
    ("state not shared", STATE, "/var/lib/migrator", 3, "state: a campaign's state store is shared"),
    ("unknown daypart", "window: night", "window: siesta", 4, "window: window 'siesta'"),
    ("duplicate tenant", "gamma.yaml", "alpha.yaml", 8, "tenant 'alpha' is in the campaign twice"),
    ("negative cap", "per_region: 1", "per_region: 0", 10, "caps.per_region"),
]


@pytest.mark.parametrize(("what", "old", "new", "line", "text"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_campaign_file_is_one_line_naming_file_line_and_field_exit_2(
        tmp_path: Path, what: str, old: str, new: str, line: int, text: str) -> None:
    path = _campaign(tmp_path, GOOD.replace(old, new, 1))
    for command in ("validate", "start"):
        result = fleet(command, str(path), *(["--temporal", "127.0.0.1:1"] if command == "start" else []))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"{path}:{line}: " in lines[0] and text in lines[0], lines[0]


def test_a_good_campaign_validates_and_plans_md_json_and_html(tmp_path: Path) -> None:
    path = _campaign(tmp_path, GOOD)
    ok = fleet("validate", str(path))
    assert ok.returncode == 0 and "3 tenants in 3 waves (1, 2)" not in ok.stdout, ok.stdout
    assert "3 tenants in 2 waves (1, 2)" in ok.stdout, ok.stdout
    plan = fleet("plan", str(path), "--assume", "600/1800", "--start", "2026-03-14T12:00:00+00:00", "--json",
                 "--out", str(tmp_path / "plan"))
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert {p.name for p in (tmp_path / "plan").iterdir()} == {"fleet-plan.json", "fleet-plan.md", "fleet-plan.html"}
    rows = {t["tenant"]: t for t in data["tenants"]}
    assert [rows[n]["wave"] for n in ("alpha", "beta", "gamma")] == [0, 1, 1]
    # The canary alone first, then the wave; each read-only part inside that tenant's night in its zone:
    # Amsterdam 00-06 is 23-05 UTC in March, Tokyo 00-06 is 15-21 UTC.
    assert rows["alpha"]["read_only_start"] == "2026-03-14T23:00:00+00:00"
    assert rows["alpha"]["read_only_end"] == "2026-03-14T23:30:00+00:00"
    # The wave starts when the canary has ended; gamma presyncs ten minutes, its night is still open.
    assert rows["gamma"]["start"] == "2026-03-14T23:30:00+00:00"
    assert rows["gamma"]["read_only_start"] == "2026-03-14T23:40:00+00:00"
    assert rows["beta"]["read_only_start"] == "2026-03-15T15:00:00+00:00"
    html = (tmp_path / "plan" / "fleet-plan.html").read_text()
    assert html.count('class="lane"') == 3 and html.count('class="window"') == 3


def test_wave_sizes_by_count_and_percentage_with_the_rest_in_a_last_wave() -> None:
    assert wave_sizes(10, 1, [2, "50%"]) == [1, 2, 5, 2]
    assert wave_sizes(3, 1, ["50%"]) == [1, 2]
    assert wave_sizes(4, 0, []) == [4]
    assert wave_sizes(2, 5, [1]) == [2]
    assert assign_waves(["a", "b", "c", "d"], 1, [1]) == {"a": 0, "b": 1, "c": 2, "d": 2}


def test_the_schedule_keeps_the_caps_and_each_tenants_window_across_a_dst_change() -> None:
    night = parse_dayparts({"night": "00:00-06:00"})
    tenants = [TenantForecast(f"t{i}", 0, "eu" if i < 3 else "us", f"s{i % 2}", "night",
                              "Europe/Amsterdam" if i < 3 else "America/New_York", night, 600.0, 3 * 3600.0)
               for i in range(5)]
    # 2026-03-29: Amsterdam's night loses an hour (02:00 -> 03:00): five hours long.
    schedule = simulate(tenants, datetime(2026, 3, 28, 12, tzinfo=UTC), cap_global=5, cap_region=1, cap_site=None)
    by_name = {t.name: t for t in schedule.tenants}
    eu = sorted((by_name[f"t{i}"] for i in range(3)), key=lambda t: t.read_only_start)
    for a, b in itertools.pairwise(eu):
        assert b.read_only_start >= a.read_only_end  # one read-only at once in the region
    assert all(t.fits and t.window.contains(t.read_only_start) for t in schedule.tenants)
    assert all(t.read_only_end <= t.window.end_utc for t in schedule.tenants)
    assert eu[0].window.seconds == 5 * 3600 and eu[0].window.name == "2026-03-29/night"
    assert eu[1].window.name == "2026-03-30/night"  # a three-hour part does not fit twice in five hours


def test_an_unreachable_temporal_server_is_one_line_with_the_address_exit_1(tmp_path: Path) -> None:
    path = _campaign(tmp_path, GOOD)
    address = f"127.0.0.1:{free_port()}"
    for args in (["start", str(path)], ["status", "spring"], ["pause", "spring"], ["worker"]):
        result = fleet(*args, "--temporal", address)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"cannot reach the Temporal server at {address}" in lines[0], result.stderr


def test_the_api_key_is_taken_only_by_reference(tmp_path: Path) -> None:
    literal = fleet("status", "spring", "--api-key", "sk-live-abc123")
    assert literal.returncode == 2 and "${env:" in literal.stderr and "sk-live-abc123" not in literal.stderr
    unset = fleet("status", "spring", "--api-key", "${env:NO_SUCH_TEMPORAL_KEY}")
    assert unset.returncode == 2 and "NO_SUCH_TEMPORAL_KEY is not set" in unset.stderr, unset.stderr
