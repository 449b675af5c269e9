"""``database.import_bacpac`` against the ARM emulator and Azurite: the emulator really reads the BACPAC
through the SAS the step mints, so a SAS that does not work fails the test."""

from __future__ import annotations

import hashlib
import io
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from migrator.errors import PermanentError, PreconditionFailed
from migrator.steps.database import ImportBacpac, ImportBacpacParams
from migrator.testing import MemoryContext, plan_step, run_step
from tests.armemu.core import ArmEmulator
from tests.integration.test_cloud_provision import arm_settings

pytestmark = pytest.mark.integration

IMPORT_PATH = r"/servers/[^/]+/import$"


def make_bacpac() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.xml", "<DataSchemaModel/>")
        archive.writestr("Data/dbo.Users/TableData-000-00000.BCP", uuid.uuid4().bytes * 64)
    return buffer.getvalue()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARM_TEST_TOKEN", "emulator-token")
    monkeypatch.setenv("SQL_ADMIN_PASSWORD", "Imp0rt-pa55-" + uuid.uuid4().hex[:8])


@pytest.fixture
def server(arm: ArmEmulator) -> str:
    name = f"sql-{uuid.uuid4().hex[:10]}"
    rid = (f"/subscriptions/{arm.subscription_id}/resourceGroups/rg-tenant/providers/Microsoft.Sql/servers/"
           f"{name}")
    arm.store.put(rid, {"id": rid, "name": name, "type": "Microsoft.Sql/servers", "location": "westeurope",
                        "tags": {}, "properties": {"administratorLogin": "w365admin", "state": "Ready"}})
    return name


def import_params(arm: ArmEmulator, azurite: Any, server: str, container: str, **extra: Any) -> ImportBacpacParams:
    data = {"arm": arm_settings(arm, "${env:ARM_TEST_TOKEN}"), "server": server, "database": "tenant-contoso",
            "storage": azurite.endpoint("cloud", container), "blob": "exports/tenant.bacpac",
            "administrator_login": "w365admin", "administrator_password": "${env:SQL_ADMIN_PASSWORD}",
            "service_objective": "S2", "max_size_bytes": 268435456000}
    data.update(extra)
    return ImportBacpacParams.model_validate(data)


def test_import_uploads_the_bacpac_and_imports_it_through_a_read_only_sas(arm: ArmEmulator, azurite: Any,
                                                                        server: str, env: None,
                                                                        tmp_path: Path) -> None:
    container = azurite.create_container("cloud")
    bacpac = make_bacpac()
    local = tmp_path / "tenant.bacpac"
    local.write_bytes(bacpac)
    params = import_params(arm, azurite, server, container, upload_from=str(local))
    ctx = MemoryContext(run_id="run-1")

    plan = plan_step(ImportBacpac("import", params), MemoryContext(run_id="run-1"))
    assert [c.split()[0] for c in plan.changes] == ["upload", "import"]
    assert arm.log.writes() == []

    _, outputs = run_step(ImportBacpac("import", params), ctx)

    assert outputs["status"] == "Completed" and outputs["bacpac_bytes"] == len(bacpac)
    assert [(i["database"], i["sha256"]) for i in arm.sql.imports] == [
        ("tenant-contoso", hashlib.sha256(bacpac).hexdigest())]
    assert arm.log.count("POST", IMPORT_PATH) == 1
    db = arm.store.get(next(i for i in arm.store.ids() if i.endswith("/databases/tenant-contoso")))
    assert db is not None and db["sku"]["name"] == "S2"
    # The SAS: read-only, for this one blob, valid past the forecast, and recorded nowhere.
    expiry = datetime.fromisoformat(ctx.memo.get("sas_expiry"))
    assert expiry - datetime.now(UTC) > timedelta(hours=1, minutes=55)
    assert ctx.memo.get("lro:import") is None, "token cleared once the import finished"
    blob_sas = arm.sql.imports[0]["storage_uri"]
    assert "sig=" not in blob_sas and "?" not in blob_sas
    assert "sig=" not in repr(ctx.memo.as_dict()) + repr(outputs) + repr(ctx.events)


def test_import_sas_grants_read_on_the_blob_only(arm: ArmEmulator, azurite: Any, server: str, env: None) -> None:
    container = azurite.create_container("cloud")
    azurite.service("cloud").get_blob_client(container, "exports/tenant.bacpac").upload_blob(make_bacpac())
    params = import_params(arm, azurite, server, container)
    step = ImportBacpac("import", params)
    ctx = MemoryContext(run_id="run-1")
    store = step._store(ctx)

    _, sas = step._mint_sas(ctx, store, 1024)

    fields = parse_qs(sas)
    assert fields["sp"] == ["r"] and fields["sr"] == ["b"]
    expiry = datetime.fromisoformat(fields["se"][0].replace("Z", "+00:00"))
    assert timedelta(hours=1, minutes=55) < expiry - datetime.now(UTC) < timedelta(hours=2, minutes=5)


def test_second_run_finds_the_database_and_imports_nothing(arm: ArmEmulator, azurite: Any, server: str,
                                                          env: None) -> None:
    container = azurite.create_container("cloud")
    azurite.service("cloud").get_blob_client(container, "exports/tenant.bacpac").upload_blob(make_bacpac())
    params = import_params(arm, azurite, server, container)
    run_step(ImportBacpac("import", params), MemoryContext(run_id="run-1"))
    arm.log.clear()

    state, _ = run_step(ImportBacpac("import", params), MemoryContext(run_id="run-2"))

    assert state.done
    assert arm.log.writes() == []


def test_missing_bacpac_without_upload_source_is_a_precondition_failure(arm: ArmEmulator, azurite: Any,
                                                                       server: str, env: None) -> None:
    container = azurite.create_container("cloud")
    params = import_params(arm, azurite, server, container)

    with pytest.raises(PreconditionFailed):
        run_step(ImportBacpac("import", params), MemoryContext(run_id="run-1"))
    assert arm.log.count("POST", IMPORT_PATH) == 0


def test_import_operation_that_ends_failed_is_permanent_and_spends_the_token(arm: ArmEmulator, azurite: Any,
                                                                            server: str, env: None) -> None:
    container = azurite.create_container("cloud")
    azurite.service("cloud").get_blob_client(container, "exports/tenant.bacpac").upload_blob(make_bacpac())
    params = import_params(arm, azurite, server, container)
    arm.faults.fail_operation(IMPORT_PATH, code="ImportExportJobError",
                              message="The ImportExport operation failed: the BACPAC is corrupt")
    ctx = MemoryContext(run_id="run-1")

    with pytest.raises(PermanentError) as caught:
        run_step(ImportBacpac("import", params), ctx)

    assert "ImportExportJobError" in caught.value.message
    assert ctx.memo.get("lro:import") is None


def test_import_reattaches_after_a_restart_and_posts_once(arm: ArmEmulator, azurite: Any, server: str,
                                                        env: None) -> None:
    container = azurite.create_container("cloud")
    azurite.service("cloud").get_blob_client(container, "exports/tenant.bacpac").upload_blob(make_bacpac())
    params = import_params(arm, azurite, server, container)
    first = MemoryContext(run_id="run-1")
    arm.hold_operations()
    first.cancel_event.set()  # the run stops while the import is pending
    with pytest.raises(Exception, match="cancelled"):
        ImportBacpac("import", params).apply(first)
    token = first.memo.get("lro:import")
    assert token and "Imp0rt-pa55" not in token and "sig=" not in token
    arm.release_operations()

    resumed = MemoryContext(run_id="run-1", memo=first.memo)
    state, outputs = run_step(ImportBacpac("import", params), resumed)

    assert not state.done and "pending" in state.reason
    assert outputs["status"] == "Completed"
    assert arm.log.count("POST", IMPORT_PATH) == 1
    assert len(arm.sql.imports) == 1


def test_compensation_drops_the_imported_database_only_when_allowed(arm: ArmEmulator, azurite: Any,
                                                                   server: str, env: None) -> None:
    container = azurite.create_container("cloud")
    azurite.service("cloud").get_blob_client(container, "exports/tenant.bacpac").upload_blob(make_bacpac())
    params = import_params(arm, azurite, server, container)
    ctx = MemoryContext(run_id="run-1")
    run_step(ImportBacpac("import", params), ctx)
    db_id = next(i for i in arm.store.ids() if i.endswith("/databases/tenant-contoso"))

    ImportBacpac("import", params).compensate(ctx)
    assert arm.store.get(db_id) is not None

    ctx.options = {"allow_delete": True}
    ImportBacpac("import", params).compensate(ctx)
    assert arm.store.get(db_id) is None
