"""The workflows: a campaign orders tenants (waves, caps, failure threshold, pause/abort); a tenant workflow waits
for its window and drives its run through activities. Deterministic: no I/O, no clock but ``workflow.now()``,
no randomness; everything that touches the world is an activity (:mod:`migrator.fleet.activities`), called by
name so that this module imports nothing but the payloads. ``tests/fleet/test_replay.py`` replays recorded
histories against this code: a change that would break running campaigns fails there.

A tenant goes: presync (the run up to its ``window.gate`` step, while the tenant is live) → waits with a
durable timer for its daypart → asks the campaign for a read-only slot in its region → the read-only part
(up to the DNS transfer when the cutover needs approval, then, approved, the rest). ``abort`` rolls a tenant
back unless its DNS transfer is done, in which case its run is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any, cast

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ChildWorkflowError
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

from migrator.fleet.payloads import (
    ABORTED,
    AWAITING_APPROVAL,
    FAILED,
    FAILED_STATES,
    FINISHED_STATES,
    NOT_STARTED,
    PENDING,
    PRESYNC,
    READ_ONLY,
    ROLLBACK_INCOMPLETE,
    ROLLED_BACK,
    SUCCEEDED,
    WAITING_SLOT,
    WAITING_WINDOW,
    CampaignInput,
    CampaignStatus,
    DriveRequest,
    DriveResult,
    FinishRequest,
    TenantInput,
    TenantResult,
    TenantSpec,
    TenantStatus,
    TenantUpdate,
    WindowAnswer,
    WindowRequest,
)

SA_CAMPAIGN = SearchAttributeKey.for_keyword("MigratorCampaign")
SA_TENANT = SearchAttributeKey.for_keyword("MigratorTenant")
SA_WAVE = SearchAttributeKey.for_int("MigratorWave")
SA_REGION = SearchAttributeKey.for_keyword("MigratorRegion")
SA_SITE = SearchAttributeKey.for_keyword("MigratorSite")
SA_STEP = SearchAttributeKey.for_keyword("MigratorStep")
SA_READ_ONLY = SearchAttributeKey.for_bool("MigratorReadOnly")

#: The step kinds a phase stops before: the read-only part starts at the window gate; an approved cutover at
#: the DNS transfer.
GATE_KIND, CUTOVER_KIND = "window.gate", "dns.transfer"
#: How long one phase of a tenant may take in all (its heartbeats catch a dead worker far sooner).
PHASE_TIMEOUT = timedelta(hours=24)


def tenant_workflow_id(campaign_workflow_id: str, tenant: str) -> str:
    return f"{campaign_workflow_id}--{tenant}"


def tenant_search_attributes(campaign: str, tenant: TenantSpec) -> TypedSearchAttributes:
    return TypedSearchAttributes([
        SearchAttributePair(SA_CAMPAIGN, campaign), SearchAttributePair(SA_TENANT, tenant.name),
        SearchAttributePair(SA_WAVE, tenant.wave), SearchAttributePair(SA_REGION, tenant.region),
        SearchAttributePair(SA_SITE, tenant.site), SearchAttributePair(SA_STEP, PENDING),
        SearchAttributePair(SA_READ_ONLY, False)])


class _Aborted(Exception):
    pass


@workflow.defn(name="MigratorTenant")
class TenantWorkflow:
    """One tenant's migration: the runner's run for ``tenant.run_id``, in phases around its window."""

    def __init__(self) -> None:
        self._state = PENDING
        self._granted = False
        self._approved = False
        self._aborted = False
        self._window: str | None = None
        self._workers: list[str] = []
        self._input: TenantInput | None = None
        self._telling: asyncio.Task[None] | None = None

    @workflow.signal
    def grant_read_only(self) -> None:
        self._granted = True

    @workflow.signal
    def approve(self) -> None:
        self._approved = True

    @workflow.signal
    def abort(self) -> None:
        self._aborted = True

    @workflow.query
    def state(self) -> str:
        return self._state

    @workflow.run
    async def run(self, inp: TenantInput) -> TenantResult:
        self._input = inp
        tenant = inp.tenant
        try:
            # The campaign marked the tenant presync when it started it: only the UI's attribute changes here.
            await self._set(PRESYNC, tell_campaign=False)
            result = await self._drive("presync", stop_before=GATE_KIND)
            if result.status != "stopped":
                return await self._finish(result)
            # Pure but for the zone database: a local activity, recorded once, no task queue round trip.
            answer: WindowAnswer = await workflow.execute_local_activity(
                "tenant_window", WindowRequest(tenant.name, tenant.window, tenant.time_zone, tenant.dayparts,
                                               self._now().isoformat()),
                result_type=WindowAnswer, start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=3))
            self._window = answer.name
            wait = answer.timestamp_start - self._now().timestamp()
            if wait > 0:
                await self._set(WAITING_WINDOW)
                # A durable timer: no process waits; any worker picks the tenant up when it fires.
                await self._until(lambda: False, timeout=wait)
            await self._set(WAITING_SLOT)
            await self._until(lambda: self._granted)
            await self._set(READ_ONLY, read_only=True)
            needs_approval = inp.approval == "cutover"
            result = await self._drive("window", window=answer.name,
                                       stop_before=CUTOVER_KIND if needs_approval else None)
            if result.status == "stopped":
                await self._set(AWAITING_APPROVAL, read_only=True)
                await self._until(lambda: self._approved)
                await self._set(READ_ONLY, read_only=True)
                result = await self._drive("cutover", window=answer.name)
            return await self._finish(result)
        except _Aborted:
            return await self._abort_tenant()

    def _now(self) -> datetime:
        """The campaign's clock: the workflow's time, ``clock_offset_seconds`` ahead (0 but in rehearsals)."""
        assert self._input is not None
        return workflow.now() + timedelta(seconds=self._input.clock_offset_seconds)

    # -- steps ---------------------------------------------------------------------------------------------

    async def _until(self, condition: Any, timeout: float | None = None) -> None:
        """Waits for ``condition`` (or ``timeout`` seconds); an abort signal ends any wait."""
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(lambda: self._aborted or condition(), timeout=timeout)
        if self._aborted:
            raise _Aborted

    async def _drive(self, phase: str, *, window: str | None = None, stop_before: str | None = None) -> DriveResult:
        inp = self._input
        assert inp is not None
        retry = inp.retry
        handle = workflow.start_activity(
            "drive_tenant",
            DriveRequest(inp.tenant.name, inp.tenant.run_id, phase, inp.playbook_path, inp.tenant.environment_path,
                         inp.state, inp.options, retry.lock_ttl_seconds, window, stop_before,
                         inp.clock_offset_seconds),
            result_type=DriveResult, start_to_close_timeout=PHASE_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=retry.heartbeat_timeout_seconds),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            retry_policy=_retry_policy(inp))
        try:
            await workflow.wait_condition(lambda: handle.done() or self._aborted)
        except BaseException:
            handle.cancel()
            raise
        if not handle.done():
            handle.cancel()  # the runner stops at its next checkpoint; then the abort decides what to undo
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                await handle
            raise _Aborted
        try:
            result = handle.result()
        except ActivityError as exc:
            cause = exc.cause if exc.cause is not None else exc
            return DriveResult(inp.tenant.run_id, "failed", 1, error=f"{phase}: {cause}")
        if result.worker and result.worker not in self._workers:
            self._workers.append(result.worker)
        if self._aborted and result.status == "stopped":
            raise _Aborted
        return cast(DriveResult, result)

    async def _finish(self, result: DriveResult) -> TenantResult:
        state = {"succeeded": SUCCEEDED, "rolled_back": ROLLED_BACK,
                 "rollback_failed": ROLLBACK_INCOMPLETE}.get(result.status, FAILED)
        await self._set(state, error=result.error, read_only=False, tell_campaign=False)
        await self._told()
        return self._result(state, result.error)

    async def _abort_tenant(self) -> TenantResult:
        inp = self._input
        assert inp is not None
        request = FinishRequest(inp.tenant.name, inp.tenant.run_id, inp.playbook_path, inp.tenant.environment_path,
                                inp.state, inp.options, inp.retry.lock_ttl_seconds)
        try:
            result: DriveResult = await workflow.execute_activity(
                "abort_tenant", request, result_type=DriveResult, start_to_close_timeout=PHASE_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=inp.retry.heartbeat_timeout_seconds),
                retry_policy=_retry_policy(inp))
        except ActivityError as exc:
            result = DriveResult(inp.tenant.run_id, "failed", 1, error=f"abort: {exc.cause or exc}")
        state = {"succeeded": SUCCEEDED, "rolled_back": ABORTED, "rollback_failed": ABORTED,
                 "not_started": ABORTED}.get(result.status, FAILED)
        error = result.error if state == FAILED else "aborted by the operator" + (
            "; its DNS transfer was done, so its run was finished" if state == SUCCEEDED else "")
        await self._set(state, error=error, read_only=False, tell_campaign=False)
        await self._told()
        return self._result(state, error)

    def _result(self, state: str, error: str | None) -> TenantResult:
        assert self._input is not None
        return TenantResult(self._input.tenant.name, self._input.tenant.run_id, state, error, self._window,
                            list(self._workers))

    async def _set(self, state: str, *, error: str | None = None, read_only: bool | None = None,
                   tell_campaign: bool = True) -> None:
        """Shows ``state`` in the UI's search attributes and tells the campaign (not waiting for the delivery:
        the tenant goes on while the server delivers it; signals go out one after another, in order)."""
        inp = self._input
        assert inp is not None
        self._state = state
        updates = [SA_STEP.value_set(state)]
        if read_only is not None:
            updates.append(SA_READ_ONLY.value_set(read_only))  # type: ignore[arg-type]
        workflow.upsert_search_attributes(updates)
        if not tell_campaign:
            return
        update = TenantUpdate(inp.tenant.name, state, self._window, error,
                              self._workers[-1] if self._workers else None)
        earlier = self._telling

        async def tell() -> None:
            if earlier is not None:
                await earlier
            await workflow.get_external_workflow_handle(inp.campaign_workflow_id).signal("tenant_update", update)

        self._telling = asyncio.create_task(tell())

    async def _told(self) -> None:
        """Every update is delivered (before the tenant's result: the campaign learns the end from that)."""
        if self._telling is not None:
            await self._telling


def _retry_policy(inp: TenantInput) -> RetryPolicy:
    return RetryPolicy(initial_interval=timedelta(seconds=inp.retry.initial_seconds),
                       maximum_interval=timedelta(seconds=inp.retry.max_seconds),
                       maximum_attempts=inp.retry.attempts,
                       non_retryable_error_types=["InputError", "PlaybookError", "ValidationError", "ParamsChanged"])


@workflow.defn(name="MigratorCampaign")
class CampaignWorkflow:
    """Starts tenants wave by wave under the caps; stops starting them past the failure threshold or on abort."""

    def __init__(self) -> None:
        self._tenants: dict[str, TenantStatus] = {}
        self._specs: dict[str, TenantSpec] = {}
        self._handles: dict[str, Any] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._running: set[str] = set()
        self._granted: set[str] = set()
        self._wanted: list[str] = []
        self._to_signal: list[tuple[str, str]] = []
        self._paused = False
        self._aborted = False
        self._stopped: str | None = None
        self._dirty = False
        self._wave = 0
        self._waves = 0
        self._name = ""
        self._state_store = ""

    # -- signals and query ---------------------------------------------------------------------------------

    @workflow.signal
    def pause(self) -> None:
        self._paused = True
        self._dirty = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False
        self._dirty = True

    @workflow.signal
    def abort(self, reason: str) -> None:
        if not self._aborted:
            self._aborted = True
            self._stopped = f"aborted by the operator: {reason}" if reason else "aborted by the operator"
            self._to_signal.extend((name, "abort") for name in sorted(self._running))
        self._dirty = True

    @workflow.signal
    def tenant_update(self, update: TenantUpdate) -> None:
        status = self._tenants.get(update.name)
        if status is None:
            return
        # A tenant's end comes with its workflow's result (_watch), where the failure threshold is counted.
        if status.state not in FINISHED_STATES and update.state not in FINISHED_STATES:
            status.state = update.state
        status.window = update.window or status.window
        status.error = update.error or status.error
        if update.worker and update.worker not in status.workers:
            status.workers.append(update.worker)
        if update.state == WAITING_SLOT and update.name not in self._wanted:
            self._wanted.append(update.name)
        self._dirty = True

    @workflow.query
    def status(self) -> CampaignStatus:
        counts: dict[str, int] = {}
        for t in self._tenants.values():
            counts[t.state] = counts.get(t.state, 0) + 1
        state = "completed" if all(t.state in FINISHED_STATES for t in self._tenants.values()) else (
            "paused" if self._paused else "running")
        if self._stopped:
            state = "aborted" if self._aborted else "stopped"
        return CampaignStatus(self._name, state, self._stopped, self._paused, self._wave, self._waves,
                              list(self._tenants.values()), counts, self._state_store)

    # -- the campaign ----------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignStatus:
        self._name, self._waves, self._state_store = inp.campaign, inp.waves, inp.state
        me = workflow.info().workflow_id
        for spec in inp.tenants:
            self._specs[spec.name] = spec
            self._tenants[spec.name] = TenantStatus(spec.name, spec.wave, spec.region, spec.site, spec.run_id,
                                                    tenant_workflow_id(me, spec.name))
        while True:
            await self._send_signals()
            self._grant_read_only(inp)
            if self._stopped is None and not self._paused:
                await self._start_tenants(inp)
            if self._stopped is not None:
                for t in self._tenants.values():
                    if t.state == PENDING:
                        t.state = NOT_STARTED
            if all(t.state in FINISHED_STATES for t in self._tenants.values()) and not self._running:
                break
            await workflow.wait_condition(lambda: self._dirty)
            self._dirty = False
        return self.status()

    def _current_wave(self) -> int | None:
        """The lowest wave with a tenant not started yet, once every earlier wave has finished."""
        for wave in range(self._waves):
            members = [t for t in self._tenants.values() if t.wave == wave]
            if any(t.state == PENDING for t in members):
                return wave
            if any(t.state not in FINISHED_STATES for t in members):
                return None  # this wave still runs: the next one waits for it
        return None

    async def _start_tenants(self, inp: CampaignInput) -> None:
        wave = self._current_wave()
        if wave is None:
            return
        self._wave = wave
        for status in self._tenants.values():
            if status.wave != wave or status.state != PENDING:
                continue
            if len(self._running) >= inp.cap_global:
                return
            if inp.cap_site is not None and sum(
                    1 for n in self._running if self._specs[n].site == status.site) >= inp.cap_site:
                continue
            spec = self._specs[status.name]
            handle = await workflow.start_child_workflow(
                TenantWorkflow.run,
                TenantInput(inp.campaign, workflow.info().workflow_id, spec, inp.playbook_path, inp.state,
                            inp.approval, inp.options, inp.retry, inp.clock_offset_seconds),
                id=status.workflow_id, task_queue=workflow.info().task_queue,
                search_attributes=tenant_search_attributes(inp.campaign, spec),
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL)
            self._handles[status.name] = handle
            self._running.add(status.name)
            status.state = PRESYNC
            self._watchers.append(asyncio.create_task(self._watch(inp, status.name, handle)))

    def _grant_read_only(self, inp: CampaignInput) -> None:
        if self._paused or self._aborted:
            return
        for name in list(self._wanted):
            region = self._specs[name].region
            if inp.cap_region is not None and sum(
                    1 for n in self._granted if self._specs[n].region == region) >= inp.cap_region:
                continue
            self._wanted.remove(name)
            self._granted.add(name)
            self._to_signal.append((name, "grant_read_only"))
        if self._to_signal:
            self._dirty = True

    async def _send_signals(self) -> None:
        while self._to_signal:
            name, signal = self._to_signal.pop(0)
            handle = self._handles.get(name)
            if handle is not None and name in self._running:
                await handle.signal(signal)

    async def _watch(self, inp: CampaignInput, name: str, handle: Any) -> None:
        status = self._tenants[name]
        try:
            result: TenantResult = await handle
            status.state, status.error = result.state, result.error
            status.window = result.window or status.window
            for worker in result.workers:
                if worker not in status.workers:
                    status.workers.append(worker)
        except ChildWorkflowError as exc:
            status.state, status.error = FAILED, str(exc.cause or exc)
        self._running.discard(name)
        self._granted.discard(name)
        if name in self._wanted:
            self._wanted.remove(name)
        self._check_failures(inp, status.wave)
        self._dirty = True

    def _check_failures(self, inp: CampaignInput, wave: int) -> None:
        if self._stopped is not None:
            return
        failed = [t for t in self._tenants.values() if t.state in FAILED_STATES]
        members = [t for t in self._tenants.values() if t.wave == wave]
        in_wave = [t for t in members if t.state in FAILED_STATES]
        if inp.max_failed is not None and len(failed) > inp.max_failed:
            self._stopped = (f"{len(failed)} tenant(s) failed ({', '.join(t.name for t in failed)}), more than "
                             f"failure.max_failed ({inp.max_failed}): no more tenants are started")
        elif inp.max_failed_percent is not None and members and \
                100.0 * len(in_wave) / len(members) > inp.max_failed_percent:
            self._stopped = (f"{len(in_wave)} of {len(members)} tenants of wave {wave} failed, more than "
                             f"failure.max_failed_percent ({inp.max_failed_percent:g}%): no more tenants are started")
        if self._stopped is not None and inp.on_stop == "rollback":
            self._to_signal.extend((n, "abort") for n in sorted(self._running))
