"""The tenant's read-only switch: through the application's admin endpoint and/or the database itself."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import Field, model_validator

from migrator.errors import CompensationError, PermanentError, TransientError, VerificationFailed
from migrator.estimator import Work, estimate, rates
from migrator.providers.database import DatabaseEndpoint
from migrator.providers.http import HttpRequest, HttpResponse, send
from migrator.secrets import Secret
from migrator.step import CheckResult, Params, PlanResult, Step, StepContext

MEMO_PREVIOUS = "previous"
MEMO_SINCE = "read_only_since"


class AdminSwitch(Params):
    """The application's admin endpoint that turns read-only on and off, and tells its state."""

    url: str
    method: str = "PUT"
    enable_body: Any = Field(default_factory=lambda: {"read_only": True, "reason": "migration in progress"})
    disable_body: Any = Field(default_factory=lambda: {"read_only": False})
    #: Where the state is read (GET), and the field of the JSON answer that says read-only; by default ``url``.
    state_url: str | None = None
    state_field: str = "read_only"
    #: The whole header value, by reference: ``"Bearer ${env:TENANT_ADMIN_TOKEN}"``.
    auth_header: Secret | None = None
    auth_header_name: str = "Authorization"
    timeout_seconds: float = Field(10.0, gt=0)


class WriteProbe(Params):
    """A write that must be refused while read-only and accepted otherwise, and that leaves nothing behind.

    The defaults suit the demo tenant app: a tile creation marked ``X-Write-Probe: rollback``.
    """

    url: str
    method: str = "POST"
    body: Any = Field(default_factory=lambda: {"title": "migrator write probe", "url": "https://probe.invalid"})
    headers: dict[str, Secret] = Field(default_factory=lambda: {"X-Write-Probe": Secret("rollback")})
    refused_status: list[int] = Field(default_factory=lambda: [423])
    #: Text the refusal must contain: the application's read-only error, not any other refusal.
    refused_body_contains: str | None = "read_only"
    accepted_status: list[int] = Field(default_factory=lambda: [200, 201, 204])
    timeout_seconds: float = Field(10.0, gt=0)


class TenantReadOnlyParams(Params):
    admin: AdminSwitch | None = None
    #: A database whose own read-only switch is turned on as well (after the application's).
    database: DatabaseEndpoint | None = None
    probes: list[WriteProbe] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete(self) -> TenantReadOnlyParams:
        if self.admin is None and self.database is None:
            raise ValueError("tenant.read_only needs `admin` (the application's endpoint) and/or `database`")
        if not self.probes and self.database is None:
            raise ValueError("tenant.read_only needs write `probes` to prove the switch took effect")
        return self


def _describe(response: HttpResponse) -> str:
    error = response.json()
    code = error.get("error") if isinstance(error, dict) else None
    return f"status {response.status}" + (f" ({code})" if code else "")


class TenantReadOnly(Step[TenantReadOnlyParams]):
    """Puts the tenant in read-only mode: writes are refused, reads go on.

    Changes: the application's switch (an admin request: method, URL, body and auth header configurable), then,
    when a ``database`` is given, the database's own read-only switch. Done when the application reports
    read-only and the database's switch is on; proved by write probes that must be refused with the read-only
    error (and the database's own write probe). Undone by lifting both switches, in reverse order, unless the
    tenant was read-only before this run; then writes must be accepted again (the probes prove it).
    """

    kind = "tenant.read_only"
    Params = TenantReadOnlyParams
    summary = "put the tenant read-only (admin endpoint and/or database), proved by write probes"

    # -- the application's switch ----------------------------------------------------------------------------

    def _admin_headers(self, admin: AdminSwitch) -> dict[str, Secret | str]:
        return {admin.auth_header_name: admin.auth_header} if admin.auth_header is not None else {}

    def _admin_call(self, ctx: StepContext, method: str, url: str, body: Any = None) -> HttpResponse:
        admin = self.params.admin
        assert admin is not None
        response = send(HttpRequest.with_payload(method, url, body, self._admin_headers(admin),
                                                 timeout=admin.timeout_seconds), ctx.reveal)
        if response.status in (401, 403):
            raise PermanentError(f"{self.step_id}: the admin endpoint {url} refused the credentials "
                                 f"({_describe(response)})", hint="check the token behind auth_header")
        if response.status >= 500 or response.status == 429:
            raise TransientError(f"{self.step_id}: the admin endpoint {url} answered {_describe(response)}")
        if not 200 <= response.status < 300:
            raise PermanentError(f"{self.step_id}: {method} {url} answered {_describe(response)}")
        return response

    def _admin_state(self, ctx: StepContext) -> bool:
        admin = self.params.admin
        assert admin is not None
        response = self._admin_call(ctx, "GET", admin.state_url or admin.url)
        payload = response.json()
        if not isinstance(payload, dict) or admin.state_field not in payload:
            raise PermanentError(f"{self.step_id}: the admin state answer has no {admin.state_field!r} field")
        return bool(payload[admin.state_field])

    def _admin_set(self, ctx: StepContext, on: bool) -> None:
        admin = self.params.admin
        assert admin is not None
        self._admin_call(ctx, admin.method, admin.url, admin.enable_body if on else admin.disable_body)

    # -- the database's switch -------------------------------------------------------------------------------

    def _with_database(self, ctx: StepContext, action: str, on: bool = False) -> Any:
        from migrator.providers.database import open_database  # opened only when a database is configured

        assert self.params.database is not None
        db = open_database(self.params.database, ctx)
        try:
            if action == "state":
                return db.read_only()
            if action == "set":
                db.set_read_only(on)
                return None
            return db.write_probe()
        finally:
            db.close()

    # -- state and proof -------------------------------------------------------------------------------------

    def _state(self, ctx: StepContext) -> dict[str, bool]:
        state: dict[str, bool] = {}
        if self.params.admin is not None:
            state["admin"] = self._admin_state(ctx)
        if self.params.database is not None:
            state["database"] = bool(self._with_database(ctx, "state"))
        return state

    def _probe(self, ctx: StepContext, probe: WriteProbe) -> tuple[str, HttpResponse]:
        response = send(HttpRequest.with_payload(probe.method, probe.url, probe.body, probe.headers,
                                                 timeout=probe.timeout_seconds,
                                                 expect=[*probe.refused_status, *probe.accepted_status]),
                        ctx.reveal)
        text = response.text()
        if response.status in probe.refused_status and (
                probe.refused_body_contains is None or probe.refused_body_contains in text):
            return "refused", response
        if response.status in probe.accepted_status:
            return "accepted", response
        return "other", response

    def _probe_failures(self, ctx: StepContext, expect: str) -> list[str]:
        failures = []
        for probe in self.params.probes:
            outcome, response = self._probe(ctx, probe)
            if outcome != expect:
                failures.append(f"{probe.method} {probe.url} was {outcome} ({_describe(response)}), "
                                f"expected {expect}")
        if self.params.database is not None:
            refusal = self._with_database(ctx, "probe")
            if (refusal is not None) != (expect == "refused"):
                failures.append(f"the database's write probe was {'refused' if refusal else 'accepted'}, "
                                f"expected {expect}")
        return failures

    # -- contract --------------------------------------------------------------------------------------------

    def check(self, ctx: StepContext) -> CheckResult:
        state = self._state(ctx)
        off = [name for name, on in state.items() if not on]
        if off:
            return CheckResult(False, f"not read-only yet: {', '.join(off)} switch off")
        return CheckResult(True, f"read-only: {', '.join(state)} switch on",
                           outputs={"read_only_since": ctx.memo.get(MEMO_SINCE), "via": sorted(state)})

    def plan(self, ctx: StepContext) -> PlanResult:
        started = time.perf_counter()
        state = self.check(ctx)
        looked = time.perf_counter() - started
        if state.done:
            return PlanResult.nothing(state.reason)
        changes = []
        if self.params.admin is not None:
            changes.append(f"{self.params.admin.method} {self.params.admin.url}: read-only on")
        if self.params.database is not None:
            changes.append(f"database read-only on: {self.params.database.describe()}")
        changes.append(f"prove it with {len(self.params.probes)} write probe(s)")
        return PlanResult(changes=changes, reason=state.reason,
                          # apply sets what check read (the admin switch, the database) and probes; verify
                          # probes again: about twice what reading the state took, plus two requests a probe.
                          # Reading the state is an admin request and a database check at once: no one rate.
                          estimate=estimate(Work(fixed={"reading the state, twice": 2 * looked})
                                            .add("http.request", 2 * len(self.params.probes)), rates(ctx)))

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        if ctx.memo.get(MEMO_PREVIOUS) is None:
            # Read before changing anything, so compensate restores what was, not what this run assumed.
            ctx.memo.set(MEMO_PREVIOUS, self._state(ctx))
        if self.params.admin is not None:
            self._admin_set(ctx, True)
        if self.params.database is not None:
            self._with_database(ctx, "set", True)
        since = ctx.memo.get(MEMO_SINCE)
        if since is None:
            since = ctx.clock.now().isoformat()
            ctx.memo.set(MEMO_SINCE, since)
            ctx.event("read_only.start", "the tenant is read-only", at=since)
        return {"read_only_since": since, "via": sorted(ctx.memo.get(MEMO_PREVIOUS) or {}),
                "previous": ctx.memo.get(MEMO_PREVIOUS)}

    def verify(self, ctx: StepContext) -> None:
        state = self.check(ctx)
        problems = [] if state.done else [state.reason]
        problems += self._probe_failures(ctx, "refused")
        if problems:
            raise VerificationFailed(f"{self.step_id}: the tenant is not read-only: {'; '.join(problems)}",
                                     step_id=self.step_id)

    def compensate(self, ctx: StepContext) -> None:
        previous = ctx.memo.get(MEMO_PREVIOUS)
        if previous is None:
            ctx.log.info("%s: apply never started; nothing to lift", self.step_id)
            return
        lifted = []
        try:
            if self.params.database is not None and not previous.get("database", False):
                self._with_database(ctx, "set", False)
                lifted.append("database")
            if self.params.admin is not None and not previous.get("admin", False):
                self._admin_set(ctx, False)
                lifted.append("admin")
        except Exception as exc:
            raise CompensationError(f"{self.step_id}: lifting read-only failed: {exc}") from exc
        if len(lifted) < len(previous):
            ctx.log.warning("%s: the tenant was read-only before this run; left so (%s)", self.step_id,
                            ", ".join(k for k, v in previous.items() if v))
            return
        failures = self._probe_failures(ctx, "accepted")
        if failures:
            raise CompensationError(f"{self.step_id}: read-only lifted but writes are still refused: "
                                    f"{'; '.join(failures)}")
        until = ctx.clock.now()
        since = ctx.memo.get(MEMO_SINCE)
        duration = None
        if since:
            duration = (until - datetime.fromisoformat(since)).total_seconds()
        ctx.memo.set("read_only_until", until.isoformat())
        ctx.event("read_only.end", "read-only lifted; writes are accepted again", at=until.isoformat(),
                  seconds=duration)
