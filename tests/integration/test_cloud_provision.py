"""``cloud.provision`` against the ARM emulator (real azure-mgmt-sql over HTTPS) and Azurite."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from migrator.errors import MigratorError, PermanentError, TransientError
from migrator.steps.cloud import RUN_TAG, Provision, ProvisionParams
from migrator.testing import MemoryContext, plan_step, run_step
from tests.armemu.core import ArmEmulator

pytestmark = pytest.mark.integration

SERVER_PATH = r"/servers/[^/]+$"


@pytest.fixture
def arm_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ARM_TEST_TOKEN", "emulator-token")
    monkeypatch.setenv("SQL_ADMIN_PASSWORD", "Adm1n-pa55-" + uuid.uuid4().hex[:8])
    return "${env:ARM_TEST_TOKEN}"


def arm_settings(arm: ArmEmulator, token_ref: str) -> dict[str, Any]:
    return {"subscription_id": arm.subscription_id, "resource_group": "rg-tenant",
            "endpoint": arm.base_url, "ca_file": arm.ca_file,
            "credential": {"type": "access_token", "token": token_ref},
            "polling_interval": 0.02, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}


def provision_params(emu: ArmEmulator, token_ref: str, *, server: str | None = None,
                     containers: dict[str, Any] | None = None, **overrides: Any) -> ProvisionParams:
    data: dict[str, Any] = {
        "arm": arm_settings(emu, token_ref),
        "server": {"name": server or f"sql-{uuid.uuid4().hex[:10]}", "location": "westeurope",
                   "administrator_login": "w365admin", "administrator_password": "${env:SQL_ADMIN_PASSWORD}",
                   "tags": {"tenant": "contoso"}},
        "firewall": {"start_ip": "203.0.113.7"},
        "database": {"name": "tenant-contoso", "sku": "GP_Gen5_2", "max_size_bytes": 34359738368,
                     "tags": {"tenant": "contoso"}},
        "containers": containers or {},
    }
    data.update(overrides)
    return ProvisionParams.model_validate(data)


def test_provision_creates_server_firewall_database_with_run_tag(arm: ArmEmulator, arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    ctx = MemoryContext(run_id="run-1")
    state, outputs = run_step(Provision("provision", params), ctx)

    assert not state.done
    assert outputs["server_fqdn"] == f"{params.server.name}.database.windows.net"
    server = arm.store.get(f"/subscriptions/{arm.subscription_id}/resourceGroups/rg-tenant/providers/"
                           f"Microsoft.Sql/servers/{params.server.name}")
    assert server is not None and server["tags"] == {"tenant": "contoso", RUN_TAG: "run-1"}
    db = arm.store.get(server["id"] + "/databases/tenant-contoso")
    assert db is not None
    assert (db["sku"]["name"], db["properties"]["maxSizeBytes"]) == ("GP_Gen5_2", 34359738368)
    assert db["tags"][RUN_TAG] == "run-1"
    assert arm.store.get(server["id"] + "/firewallRules/migrator-runner") is not None
    assert {e.api_version for e in arm.log} == {"2025-01-01"}
    # The admin password went to Azure once and is kept nowhere the step owns.
    assert "Adm1n-pa55" not in repr(ctx.memo.as_dict()) + repr(outputs) + repr(ctx.events)


def test_provision_twice_second_run_sends_no_write(arm: ArmEmulator, arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    run_step(Provision("provision", params), MemoryContext(run_id="run-1"))
    assert arm.log.writes(), "the first run must have written"
    arm.log.clear()

    state, outputs = run_step(Provision("provision", params), MemoryContext(run_id="run-2"))

    assert state.done, state.reason
    assert "present and as specified" in state.reason
    assert arm.log.writes() == []
    assert outputs["database"] == "tenant-contoso"


def test_plan_lists_differences_and_changes_nothing(arm: ArmEmulator, arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    run_step(Provision("provision", params), MemoryContext(run_id="run-1"))
    changed = provision_params(arm, arm_token, server=params.server.name,
                               database={"name": "tenant-contoso", "sku": "GP_Gen5_4",
                                         "max_size_bytes": 34359738368, "tags": {"tenant": "contoso"}})
    arm.log.clear()

    plan = plan_step(Provision("provision", changed), MemoryContext(run_id="run-2"))

    assert plan.changes == ["database tenant-contoso: sku 'GP_Gen5_2' -> 'GP_Gen5_4'"]
    assert arm.log.writes() == []
    nothing = plan_step(Provision("provision", params), MemoryContext(run_id="run-2"))
    assert nothing.noop and "as specified" in nothing.reason


def test_provision_updates_only_what_differs(arm: ArmEmulator, arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    run_step(Provision("provision", params), MemoryContext(run_id="run-1"))
    changed = provision_params(arm, arm_token, server=params.server.name,
                               database={"name": "tenant-contoso", "sku": "GP_Gen5_4",
                                         "max_size_bytes": 34359738368, "tags": {"tenant": "contoso"}})
    arm.log.clear()

    run_step(Provision("provision", changed), MemoryContext(run_id="run-2"))

    writes = [(e.method, e.path.rsplit("/", 2)[-2]) for e in arm.log.writes()]
    assert writes == [("PUT", "databases")]
    db = arm.store.get(next(i for i in arm.store.ids() if i.endswith("/databases/tenant-contoso")))
    assert db is not None and db["sku"]["name"] == "GP_Gen5_4"
    assert db["tags"][RUN_TAG] == "run-1", "the creating run's tag survives an update"


def run_retrying(step: Provision, ctx: MemoryContext, attempts: int = 5) -> dict[str, Any]:
    """check -> apply -> verify again after a retryable error, as the runner does."""
    for attempt in range(attempts):
        try:
            return dict(run_step(step, ctx)[1])
        except MigratorError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def test_provision_rides_out_a_storm_of_429_and_503(arm: ArmEmulator, arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    arm.faults.add("PUT", SERVER_PATH, status=429, retry_after=0.01, times=3)
    arm.faults.add("GET", r"AzureAsyncOperation", status=503, times=2)
    arm.faults.add("PUT", r"/databases/", status=503, times=2)
    arm.faults.add("GET", r"/firewallRules/", drop=True)
    arm.faults.add("PUT", r"/databases/", status=429, retry_after=0.01, times=2)

    run_step(Provision("provision", params), MemoryContext(run_id="run-1"))

    assert arm.faults.pending() == 0, "every injected fault was met"
    statuses = [e.status for e in arm.log]
    assert statuses.count(429) == 5 and statuses.count(503) == 4 and statuses.count(0) == 1
    assert arm.log.count("PUT", SERVER_PATH) == 4  # 3 throttled + the one that was accepted
    assert any(i.endswith("/databases/tenant-contoso") for i in arm.store.ids())


def test_a_storm_longer_than_the_sdk_retries_is_ridden_out_by_step_retries(arm: ArmEmulator,
                                                                          arm_token: str) -> None:
    params = provision_params(arm, arm_token, arm={**arm_settings(arm, arm_token), "retry_status": 2})
    arm.faults.add("PUT", r"/databases/", status=503, times=4)
    arm.faults.add("PUT", r"/databases/", status=429, retry_after=0.01, times=3)

    outputs = run_retrying(Provision("provision", params), MemoryContext(run_id="run-1"))

    assert outputs["database"] == "tenant-contoso"
    accepted = [e for e in arm.log.matching("PUT", r"/databases/") if e.status == 202]
    assert len(accepted) == 1
    assert arm.log.count("PUT", SERVER_PATH) == 1, "the server, done before the storm, is not written again"


def test_throttling_beyond_the_sdk_retries_is_a_transient_error_for_the_runner(arm: ArmEmulator,
                                                                              arm_token: str) -> None:
    params = provision_params(arm, arm_token, arm={**arm_settings(arm, arm_token), "retry_total": 2})
    arm.faults.add("PUT", SERVER_PATH, status=429, retry_after=0.01, times=10)

    with pytest.raises(TransientError) as caught:
        run_step(Provision("provision", params), MemoryContext(run_id="run-1"))

    assert caught.value.retryable
    assert "TooManyRequests" in caught.value.message


@pytest.mark.parametrize(("inject", "expected_code", "hint_words"), [
    ({"status": 403, "code": "AuthorizationFailed",
      "message": "The client 'x' does not have authorization to perform action"},
     "AuthorizationFailed", "SQL Server Contributor"),
    ({"status": 409, "code": "SubscriptionQuotaExceeded",
      "message": "Server quota exceeded for this subscription"}, "SubscriptionQuotaExceeded", "quota increase"),
    ({"status": 400, "code": "RegionDoesNotAllowProvisioning",
      "message": "Location 'westeurope' is not accepting creation of new Windows Azure SQL Database servers"},
     "RegionDoesNotAllowProvisioning", "another region"),
])
def test_permanent_arm_errors_fail_fast_with_what_to_do(arm: ArmEmulator, arm_token: str, inject: dict[str, Any],
                                                       expected_code: str, hint_words: str) -> None:
    params = provision_params(arm, arm_token)
    arm.faults.add("PUT", SERVER_PATH, times=5, **inject)

    with pytest.raises(PermanentError) as caught:
        run_step(Provision("provision", params), MemoryContext(run_id="run-1"))

    assert not caught.value.retryable
    assert expected_code in caught.value.message
    assert caught.value.hint and hint_words in caught.value.hint
    assert arm.log.count("PUT", SERVER_PATH) == 1, "no retry of a permanent error"


def test_server_name_taken_elsewhere_fails_the_operation_with_choose_another_name(arm: ArmEmulator,
                                                                                arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    arm.sql.taken_server_names.add(params.server.name)
    ctx = MemoryContext(run_id="run-1")

    with pytest.raises(PermanentError) as caught:
        run_step(Provision("provision", params), ctx)

    assert "NameAlreadyExists" in caught.value.message
    assert "choose another server name" in (caught.value.hint or "")
    assert ctx.memo.get("lro:server") is None, "a failed operation's token is spent"


def test_compensation_deletes_only_what_this_run_created_and_only_when_allowed(arm: ArmEmulator,
                                                                              arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    ctx = MemoryContext(run_id="run-1")
    run_step(Provision("provision", params), ctx)
    server_id = next(i for i in arm.store.ids() if i.endswith(f"/servers/{params.server.name}"))

    # Another run did not create them: nothing of theirs is deleted even when deletion is allowed.
    other = MemoryContext(run_id="run-2", options={"allow_delete": True})
    Provision("provision", params).compensate(other)
    assert arm.store.get(server_id) is not None

    # The creating run without permission to delete: the firewall rule goes, the rest stays, and it says so.
    Provision("provision", params).compensate(ctx)
    assert arm.store.get(server_id + "/firewallRules/migrator-runner") is None
    assert arm.store.get(server_id + "/databases/tenant-contoso") is not None
    assert [e[0] for e in ctx.events].count("compensation.kept") == 1

    allowed = MemoryContext(run_id="run-1", options={"allow_delete": True})
    Provision("provision", params).compensate(allowed)
    assert arm.store.get(server_id) is None
    assert arm.store.get(server_id + "/databases/tenant-contoso") is None


def test_provision_creates_storage_containers_tagged_with_the_run(arm: ArmEmulator, arm_token: str,
                                                                  azurite: Any) -> None:
    live, backup = f"live{uuid.uuid4().hex[:10]}", f"backup{uuid.uuid4().hex[:10]}"
    existing = azurite.create_container("cloud", f"pre{uuid.uuid4().hex[:10]}")
    containers = {"live": azurite.endpoint("cloud", live), "backup": azurite.endpoint("cloud", backup),
                  "shared": azurite.endpoint("cloud", existing)}
    params = provision_params(arm, arm_token, containers=containers)
    ctx = MemoryContext(run_id="run-1")

    run_step(Provision("provision", params), ctx)

    service = azurite.service("cloud")
    assert service.get_container_client(live).get_container_properties().metadata == {"migrator_run": "run-1"}
    assert service.get_container_client(backup).exists()
    again, _ = run_step(Provision("provision", params), MemoryContext(run_id="run-2"))
    assert again.done

    Provision("provision", params).compensate(MemoryContext(run_id="run-1", options={"allow_delete": True}))
    assert not service.get_container_client(live).exists()
    assert service.get_container_client(existing).exists(), "a container this run did not create stays"


def test_resume_with_a_pending_server_operation_reattaches_without_a_second_put(arm: ArmEmulator,
                                                                                arm_token: str) -> None:
    params = provision_params(arm, arm_token)
    ctx = MemoryContext(run_id="run-1")
    arm.hold_operations()
    # A run cancelled while the server operation is pending: its token is already in the memo.
    step = Provision("provision", params)
    ctx.cancel_event.set()
    with pytest.raises(MigratorError):
        step.apply(ctx)
    assert ctx.memo.get("lro:server"), "token checkpointed before the wait"
    arm.release_operations()

    resumed = MemoryContext(run_id="run-1", memo=ctx.memo)
    _, outputs = run_step(Provision("provision", params), resumed)

    assert arm.log.count("PUT", SERVER_PATH) == 1
    assert outputs["server"] == params.server.name
    assert any(e[0] == "lro.reattach" for e in resumed.events)
