"""Through the CLI against BIND: the DNS cutover playbook killed, resumed, failed and rolled back.

The state lives in the SQLite store of a real ``migrator run`` subprocess, so these tests prove that what the
DNS steps keep in their memo (the record before the change) survives a SIGKILL and drives the rollback.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.services.bind import BindServer
from tests.support.engine import MIGRATOR, ROOT, kill_when, step_status

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TARGET = "tenant-contoso.cloud.example.net."
ORIGINAL = {"A": (3600, ["192.0.2.10", "192.0.2.11"]), "AAAA": (1800, ["2001:db8::10"])}




def expected_original() -> dict[str, tuple[int, set[str]]]:
    return {t: (ttl, set(values)) for t, (ttl, values) in ORIGINAL.items()}


def write_files(tmp_path: Path, bind: BindServer, zone: str, name: str, *, on_failure: str,
                verify_timeout: float) -> tuple[Path, Path]:
    env = {"tenant": {"name": "contoso"},
           "settings": {"dns": bind.endpoint(zone), "name": name,
                        "nameservers": bind.nameserver_addresses(zone)}}
    playbook = {
        "name": "dns-cutover",
        "on_failure": on_failure,
        "steps": [
            {"id": "lower-ttl", "uses": "dns.lower_ttl",
             "with": {"dns": "${settings.dns}", "name": "${settings.name}", "ttl": 60}},
            {"id": "transfer", "uses": "dns.transfer",
             "with": {"dns": "${settings.dns}", "name": "${settings.name}", "to": {"CNAME": [TARGET]},
                      "expect": {"A": ORIGINAL["A"][1], "AAAA": ORIGINAL["AAAA"][1]}}},
            {"id": "verify", "uses": "dns.verify",
             "with": {"dns": "${settings.dns}", "name": "${settings.name}", "expect": {"CNAME": [TARGET]},
                      "nameserver_addresses": "${settings.nameservers}", "timeout": verify_timeout,
                      "interval": 0.2}},
        ],
    }
    env_file, playbook_file = tmp_path / "env.yaml", tmp_path / "playbook.yaml"
    env_file.write_text(yaml.safe_dump(env))
    playbook_file.write_text(yaml.safe_dump(playbook))
    return playbook_file, env_file


def migrator(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*MIGRATOR, *args], cwd=cwd, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, timeout=timeout)


def output_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


def test_sigkill_while_verify_waits_for_a_lagging_secondary_then_resume_and_rollback(
        bind_server: BindServer, tmp_path: Path) -> None:
    zone, name = bind_server.stale_zone, bind_server.fresh_name()
    bind_server.someone_sets(zone, name, ORIGINAL)
    bind_server.notify_secondary(zone)
    assert bind_server.wait_secondary(zone, name, "A", (3600, {"192.0.2.10", "192.0.2.11"}))
    playbook, env_file = write_files(tmp_path, bind_server, zone, name, on_failure="stop", verify_timeout=300)
    state_dir, run_id = tmp_path / "state", "dns-kill"

    runner = subprocess.Popen([*MIGRATOR, "run", str(playbook), "-e", str(env_file), "--state", str(state_dir),
                               "--run-id", run_id], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_when(runner, lambda: step_status(state_dir, run_id, "verify") == "running",
              "dns.verify to be waiting for the secondary")
    serial_after_transfer = bind_server.soa_serial(zone)
    assert bind_server.served(zone, name) == {"CNAME": (60, {TARGET})}
    bind_server.notify_secondary(zone)  # the lagging secondary catches up while nobody runs

    resumed = migrator(["resume", run_id, "--state", str(state_dir)], tmp_path)

    assert resumed.returncode == 0, output_of(resumed)
    assert bind_server.soa_serial(zone) == serial_after_transfer  # nothing written twice
    assert bind_server.served(zone, name, secondary=True) == {"CNAME": (60, {TARGET})}

    rolled_back = migrator(["rollback", run_id, "--state", str(state_dir)], tmp_path)

    assert rolled_back.returncode == 0, output_of(rolled_back)
    assert bind_server.served(zone, name) == expected_original()
    assert bind_server.key_secret.encode() not in (state_dir / "state.db").read_bytes()


def test_failed_verify_rolls_back_the_transfer_and_the_ttl_exactly(bind_server: BindServer, tmp_path: Path) -> None:
    zone, name = bind_server.stale_zone, bind_server.fresh_name()
    bind_server.someone_sets(zone, name, ORIGINAL)
    playbook, env_file = write_files(tmp_path, bind_server, zone, name, on_failure="rollback", verify_timeout=1)
    state_dir = tmp_path / "state"

    result = migrator(["run", str(playbook), "-e", str(env_file), "--state", str(state_dir), "--run-id",
                       "dns-fail"], tmp_path)

    text = output_of(result)
    assert result.returncode == 4, text
    assert f"ns2.{zone}" in text
    assert bind_server.served(zone, name) == expected_original()
    status = migrator(["status", "dns-fail", "--state", str(state_dir), "--json"], tmp_path)
    report: dict[str, Any] = json.loads(status.stdout)
    assert bind_server.key_secret not in json.dumps(report)
