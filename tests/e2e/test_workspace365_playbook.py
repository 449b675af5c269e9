"""The Workspace 365 playbooks as files: both validate with their environment files, and the local variant
differs from the Azure playbook only in its ``provision`` step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from migrator.errors import ValidationError
from migrator.playbook import load
from migrator.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
ENVIRONMENTS = ROOT / "fixtures" / "environments"

CASES = [
    ("workspace365.yaml", "azure-example.yaml",
     ("SOURCE_DB_PASSWORD", "TARGET_SQL_ADMIN_PASSWORD", "TARGET_STORAGE_KEY", "TENANT_ADMIN_TOKEN",
      "DNS_TSIG_SECRET")),
    ("workspace365-local.yaml", "demo.yaml", ("W365_ADMIN_TOKEN", "W365_CLOUD_STORAGE", "W365_DNS_TSIG")),
]


@pytest.mark.parametrize(("playbook", "environment", "secrets"), CASES)
def test_playbook_validates_with_its_environment(playbook: str, environment: str, secrets: tuple[str, ...]) -> None:
    environ = {name: "set-for-validation" for name in secrets}
    loaded = load(PLAYBOOKS / playbook, ENVIRONMENTS / environment, registry=load_registry(), environ=environ)
    assert loaded.steps[0].id == "preflight" and loaded.steps[-1].id == "done"
    assert loaded.playbook.on_failure == "rollback"


@pytest.mark.parametrize(("playbook", "environment", "secrets"), CASES)
def test_playbook_refuses_to_load_without_its_secrets(playbook: str, environment: str,
                                                      secrets: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError, match=r"environment variable \w+ is not set"):
        load(PLAYBOOKS / playbook, ENVIRONMENTS / environment, registry=load_registry(), environ={})


def test_local_variant_differs_from_the_azure_playbook_only_in_provision() -> None:
    azure = yaml.safe_load((PLAYBOOKS / "workspace365.yaml").read_text())
    local = yaml.safe_load((PLAYBOOKS / "workspace365-local.yaml").read_text())
    assert [s["id"] for s in azure["steps"]] == [s["id"] for s in local["steps"]]
    differing = [a["id"] for a, b in zip(azure["steps"], local["steps"], strict=True) if a != b]
    assert differing == ["provision"]
    assert {k: v for k, v in azure.items() if k != "steps"} == {k: v for k, v in local.items() if k != "steps"}


def test_only_steps_before_the_dns_transfer_roll_back_by_themselves() -> None:
    playbook = yaml.safe_load((PLAYBOOKS / "workspace365.yaml").read_text())
    ids = [s["id"] for s in playbook["steps"]]
    after_transfer = ids[ids.index("dns_transfer") + 1:]
    policies = {s["id"]: s.get("on_failure", playbook["on_failure"]) for s in playbook["steps"]}
    assert {policies[i] for i in after_transfer} == {"stop"}
    assert {policies[i] for i in ids if i not in after_transfer} == {"rollback"}
