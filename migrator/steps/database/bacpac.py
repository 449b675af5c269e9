"""``database.import_bacpac``: a BACPAC import into a new Azure SQL database, through Azure Resource Manager.

It talks to ARM through azure-mgmt-sql (:mod:`migrator.providers.azure`) and keeps the import's continuation
token in the step's memo before waiting on it, so a resumed run re-attaches to the pending import instead of
starting it again. README, "BACPAC and Managed Instance", says when to use it instead of backup and restore.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from migrator.errors import InputError, PreconditionFailed, VerificationFailed
from migrator.estimator import Rates, Work, estimate, rates
from migrator.providers.azure import ArmSettings, SqlControlPlane, pending, run_lro
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.secrets import Secret
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext
from migrator.steps.cloud import _deletion_allowed


class ImportBacpacParams(Params):
    arm: ArmSettings
    server: str
    database: str
    #: Where the .bacpac lives: an Azure blob endpoint (container) and the blob's name in it.
    storage: BlobEndpoint
    blob: str
    #: A local .bacpac uploaded to ``storage``/``blob`` when the blob is not there yet.
    upload_from: str | None = None
    service_objective: str = "GP_Gen5_2"
    edition: str | None = None
    max_size_bytes: int | None = None
    administrator_login: str
    administrator_password: Secret
    #: Throughput assumed for the forecast (Azure imports run at a few MB/s); the SAS outlives 3x the forecast.
    assumed_mb_per_second: float = 2.0
    min_sas_hours: float = 2.0
    allow_delete: bool = False


class ImportBacpac(Step[ImportBacpacParams]):
    """Imports a BACPAC into a new Azure SQL database (``servers.begin_import_database``, ImportNewDatabase).

    Changes: uploads the .bacpac to blob storage when it is not there, mints a read-only SAS for that one blob
    just in time (expiry past three times the forecast), and starts the import; its continuation token is kept
    in the memo before waiting, so a resumed run re-attaches. Knows it is done when the database exists and no
    import is pending. Verified by the database being Online and the BACPAC unchanged since the import began.
    Undone by deleting the database, only when this run created it and deletion is allowed.
    """

    kind = "database.import_bacpac"
    Params = ImportBacpacParams
    summary = "import a .bacpac from blob storage into a new Azure SQL database"

    def _plane(self, ctx: StepContext) -> SqlControlPlane:
        return SqlControlPlane.open(self.params.arm, ctx)

    def _store(self, ctx: StepContext) -> Any:
        if self.params.storage.kind != "azure":
            raise InputError("storage must be an Azure blob endpoint (kind: azure): Azure SQL reads the BACPAC "
                             "from blob storage")
        return open_blob_store(self.params.storage, ctx)

    def check(self, ctx: StepContext) -> CheckResult:
        p = self.params
        if pending(ctx, "import"):
            return CheckResult(False, f"an import into {p.database} is pending: re-attaching")
        database = self._plane(ctx).get_database(p.server, p.database)
        if database is None:
            return CheckResult(False, f"database {p.database} does not exist on {p.server}")
        return CheckResult(True, f"database {p.database} exists on {p.server}",
                           outputs={"database": p.database, "status": (database.get("properties") or {})
                                    .get("status")})

    def _work(self, size: int) -> Work:
        """The import at the rate the playbook assumes (``assumed_mb_per_second``: the service's own pace, which
        no probe of this machine measures), and about 5 minutes of the service starting it."""
        mb = self.params.assumed_mb_per_second
        return Work(fixed={f"{size} bytes at the playbook's {mb:g} MB/s": size / (mb * 1024 * 1024),
                           "the service starting the import": 300.0})

    def _forecast(self, size: int) -> float:
        return Rates().seconds_of(self._work(size))

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        p = self.params
        info = self._store(ctx).info(p.blob)
        size = info.size if info else (os.path.getsize(p.upload_from) if p.upload_from and
                                       os.path.exists(p.upload_from) else None)
        changes = []
        if info is None:
            if not p.upload_from:
                raise PreconditionFailed(f"{p.blob} is not in {p.storage.describe()} and no upload_from is given",
                                         step_id=self.step_id)
            changes.append(f"upload {p.upload_from} to {p.storage.describe()} as {p.blob}")
        changes.append(f"import {p.blob} into new database {p.database} on {p.server} ({p.service_objective})")
        return PlanResult(changes=changes, reason=state.reason,
                          estimate=estimate(self._work(size), rates(ctx), bytes=size) if size
                          else Estimate(basis="size unknown"))

    def _locate(self, ctx: StepContext, store: Any) -> Any:
        p = self.params
        info = store.info(p.blob)
        if info is not None:
            return info
        if not p.upload_from:
            raise PreconditionFailed(f"{p.blob} is not in {p.storage.describe()} and no upload_from is given",
                                     step_id=self.step_id, hint="export the BACPAC first, or set upload_from")
        if not os.path.exists(p.upload_from):
            raise InputError(f"upload_from {p.upload_from} does not exist")
        with open(p.upload_from, "rb") as stream:
            store.write(p.blob, stream, length=os.path.getsize(p.upload_from),
                        content_type="application/octet-stream")
        ctx.event("bacpac.uploaded", f"uploaded {p.blob} to {p.storage.describe()}")
        return store.info(p.blob)

    def _mint_sas(self, ctx: StepContext, store: Any, size: int) -> tuple[str, str]:
        """The blob's URL and a read-only SAS for it alone, valid well past the forecast."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        p = self.params
        endpoint = p.storage
        full = f"{endpoint.prefix.strip('/')}/{p.blob}" if endpoint.prefix.strip("/") else p.blob
        url = store.container.get_blob_client(full).url
        if endpoint.sas is not None:
            sas = (ctx.reveal(endpoint.sas) or "").lstrip("?")
            return url, sas
        now = datetime.now(UTC)
        lifetime = max(timedelta(hours=p.min_sas_hours), timedelta(seconds=3 * self._forecast(size)))
        start, expiry = now - timedelta(minutes=5), now + lifetime
        permission = BlobSasPermissions(read=True)
        key = _account_key(endpoint, ctx)
        if key:
            sas = generate_blob_sas(store.account, store.container_name, full, account_key=key,
                                    permission=permission, start=start, expiry=expiry, protocol=None)
        else:
            delegation = store.service.get_user_delegation_key(start, expiry)
            sas = generate_blob_sas(store.account, store.container_name, full, user_delegation_key=delegation,
                                    permission=permission, start=start, expiry=expiry)
        ctx.redactor.add(sas)
        ctx.memo.set("sas_expiry", expiry.isoformat())
        return url, sas

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        p = self.params
        plane = self._plane(ctx)
        store = self._store(ctx)
        info = self._locate(ctx, store)

        def begin(token: str | None) -> Any:
            if token:
                return plane.begin_import_new_database(p.server, None, token)
            url, sas = self._mint_sas(ctx, store, info.size)
            body: dict[str, Any] = {
                "databaseName": p.database, "serviceObjectiveName": p.service_objective,
                "storageKeyType": "SharedAccessKey", "storageKey": "?" + sas, "storageUri": url,
                "administratorLogin": p.administrator_login,
                "administratorLoginPassword": ctx.reveal(p.administrator_password), "authenticationType": "Sql"}
            if p.edition:
                body["edition"] = p.edition
            if p.max_size_bytes:
                body["maxSizeBytes"] = str(p.max_size_bytes)
            ctx.memo.set("bacpac", {"etag": info.etag, "size": info.size})
            ctx.memo.set("created_database", p.database)
            return plane.begin_import_new_database(p.server, body)

        if not pending(ctx, "import") and plane.get_database(p.server, p.database) is not None:
            raise PreconditionFailed(f"database {p.database} already exists on {p.server}", step_id=self.step_id,
                                     hint="ImportNewDatabase creates the database: drop it or choose another name")
        result = run_lro(ctx, "import", begin, action=f"importing {p.blob} into {p.database}",
                         timeout=None)
        props = (result.as_dict() if hasattr(result, "as_dict") else dict(result or {})).get("properties") or {}
        ctx.items.record(f"bacpac/{p.blob}", "done", bytes=info.size)
        ctx.memo.set("import_status", props.get("status"))
        return {"database": p.database, "server": p.server, "status": props.get("status"),
                "request_id": props.get("requestId"), "bacpac_bytes": info.size}

    def verify(self, ctx: StepContext) -> None:
        p = self.params
        database = self._plane(ctx).get_database(p.server, p.database)
        if database is None:
            raise VerificationFailed(f"database {p.database} is missing after the import", step_id=self.step_id)
        status = (database.get("properties") or {}).get("status")
        if status != "Online":
            raise VerificationFailed(f"database {p.database} is {status}, not Online", step_id=self.step_id)
        before = ctx.memo.get("bacpac")
        if before:
            info = self._store(ctx).info(p.blob)
            if info is None or (before.get("etag") and info.etag != before["etag"]):
                raise VerificationFailed(f"{p.blob} changed or vanished while it was imported",
                                         step_id=self.step_id, hint="import again from an unchanged BACPAC")

    def compensate(self, ctx: StepContext) -> None:
        p = self.params
        if ctx.memo.get("created_database") != p.database:
            return
        plane = self._plane(ctx)
        if plane.get_database(p.server, p.database) is None:
            return
        if not _deletion_allowed(ctx, p.allow_delete):
            ctx.event("compensation.kept", f"database {p.database} imported by this run left in place "
                      "(deletion not allowed)")
            return
        run_lro(ctx, "delete-database", lambda t: plane.begin_delete_database(p.server, p.database, t),
                action=f"deleting database {p.database}")
        ctx.memo.delete("created_database")


def _account_key(endpoint: BlobEndpoint, ctx: StepContext) -> str | None:
    if endpoint.account_key is not None:
        return ctx.reveal(endpoint.account_key)
    if endpoint.connection_string is not None:
        text = ctx.reveal(endpoint.connection_string) or ""
        for piece in text.split(";"):
            if piece.strip().lower().startswith("accountkey="):
                return piece.split("=", 1)[1].strip()
    return None
