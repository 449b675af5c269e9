"""The dependency graph of the Workspace 365 playbooks inside the read-only window: what runs beside what, and
what every step still waits for (rollback and resume follow ``needs``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.playbook import LoadedPlaybook, load
from migrator.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
CASES = [
    ("workspace365.yaml", "azure-example.yaml",
     ("SOURCE_DB_PASSWORD", "TARGET_SQL_ADMIN_PASSWORD", "TARGET_STORAGE_KEY", "TENANT_ADMIN_TOKEN",
      "DNS_TSIG_SECRET")),
    ("workspace365-local.yaml", "demo.yaml", ("W365_ADMIN_TOKEN", "W365_CLOUD_STORAGE", "W365_DNS_TSIG")),
]


def _loaded(playbook: str, environment: str, secrets: tuple[str, ...]) -> LoadedPlaybook:
    return load(ROOT / "playbooks" / playbook, ROOT / "fixtures" / "environments" / environment,
                registry=load_registry(), environ={name: "set" for name in secrets})


@pytest.mark.parametrize(("playbook", "environment", "secrets"), CASES)
def test_the_cutover_guard_runs_beside_the_smoke_test_after_the_target_is_writable(
        playbook: str, environment: str, secrets: tuple[str, ...]) -> None:
    loaded = _loaded(playbook, environment, secrets)
    needs = {s.id: set(s.needs) for s in loaded.steps}
    assert needs["cutover_guard"] == {"target_writable"}  # the read-only switch written first: a row it prints
    assert needs["smoke"] == {"target_writable", "blobs_verify"}
    assert "smoke" not in loaded.ancestors("cutover_guard") and "cutover_guard" not in loaded.ancestors("smoke")
    # The transfer waits for both, and for everything before them.
    assert needs["dns_transfer"] == {"smoke", "cutover_guard"}
    before = loaded.ancestors("dns_transfer")
    assert {"read_only", "db_sync", "blobs_verify", "target_writable", "smoke", "cutover_guard"} <= before
    # After the transfer, one after the other: `done` asks a name server that may be a secondary, so only once
    # dns_verify has seen every authoritative server serve the new record.
    assert needs["dns_verify"] == {"dns_transfer"}
    assert needs["done"] == {"dns_verify"}
    assert [s.id for s in loaded.steps][-3:] == ["dns_transfer", "dns_verify", "done"]
