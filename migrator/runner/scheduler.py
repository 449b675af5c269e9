"""The scheduler: which step runs when. Independent branches (``needs``) run at once up to the playbook's
``concurrency``; a failure stops the run (steps still busy on other branches stop at their next checkpoint) and
the playbook's ``on_failure`` decides what follows: ``stop`` leaves the run resumable, ``rollback`` compensates
every step this run applied, ``continue`` skips the steps that need the failed one. The watchdog looks at the
deadlines between steps' ends. Also: which steps ``resume`` takes up again, and what it refuses."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from migrator.errors import Cancelled, CompensationRefused, ExitCode, InputError, ParamsChanged, exit_code_for
from migrator.playbook import LoadedPlaybook, PlannedStep, params_hash
from migrator.runner.attempt import Attempts
from migrator.runner.compensation import Compensator
from migrator.runner.core import RunCore
from migrator.runner.outcome import EngineStatus, RunOutcome, StepResult
from migrator.runner.watchdog import Watchdog
from migrator.state import RunStatus, StepRecord, StepStatus

#: A step's status on the board that keeps it from running, and every step that needs it.
_BLOCKING = (StepStatus.SKIPPED, EngineStatus.TOLERATED)


@dataclass
class _Board:
    """Where every step of the run stands while the scheduler works."""

    status: dict[str, str]
    running: dict[Future[StepResult], str] = field(default_factory=dict)
    failed: StepResult | None = None
    interrupted: bool = False
    tolerated: set[str] = field(default_factory=set)
    #: The outputs of steps DONE on this board, read from the state store once: a step DONE here is not run
    #: again while the scheduler works, so its outputs do not change (each step's start and every look of the
    #: watchdog would read them again otherwise).
    outputs: dict[str, Mapping[str, Any]] = field(default_factory=dict)


class Scheduler:
    """Runs a run's steps in dependency order, then settles the run: succeeded, failed, rolled back, interrupted."""

    def __init__(self, core: RunCore, attempts: Attempts, watchdog: Watchdog, compensator: Compensator) -> None:
        self.core = core
        self.attempts = attempts
        self.watchdog = watchdog
        self.compensator = compensator

    def execute(self, run_id: str, loaded: LoadedPlaybook, *, rerun: tuple[str, ...] = ()) -> RunOutcome:
        core = self.core
        records = core.store.get_steps(run_id)
        # A step left in any unfinished state, or named in ``rerun``, is taken up again, from its check.
        board = _Board({
            s.id: StepStatus.DONE if s.id in records and records[s.id].status == StepStatus.DONE
            and s.id not in rerun else StepStatus.PENDING for s in loaded.steps})
        concurrency = int(core.options.get("concurrency") or loaded.playbook.concurrency)
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="migrator-step") as pool:
            while True:
                if board.failed is None and not board.interrupted and not core.cancel_event.is_set():
                    self._start_ready(pool, run_id, loaded, board, concurrency)
                if not board.running:
                    break
                done, _ = wait(list(board.running), timeout=self.watchdog.interval, return_when=FIRST_COMPLETED)
                if core.abort is None:
                    self.watchdog.watch(run_id, loaded, board.status, set(board.running.values()),
                                        lambda step_id: self._outputs(run_id, board, step_id))
                for fut in done:
                    self._settle(loaded, board, board.running.pop(fut), fut.result())
        return self._finish(run_id, loaded, board)

    def _start_ready(self, pool: ThreadPoolExecutor, run_id: str, loaded: LoadedPlaybook, board: _Board,
                     concurrency: int) -> None:
        """Starts every step whose needs are done, up to ``concurrency`` at once; skips those a tolerated failure
        blocks."""
        status = board.status
        for step in loaded.steps:
            if len(board.running) >= concurrency:
                break
            if status[step.id] == StepStatus.DONE or step.id in board.running.values() or status[step.id] in _BLOCKING:
                continue
            if any(status[d] in _BLOCKING for d in step.needs):
                status[step.id] = StepStatus.SKIPPED
                self._mark_skipped(run_id, step, "a step it needs failed (on_failure: continue)")
                continue
            if all(status[d] == StepStatus.DONE for d in step.needs):
                outputs = {sid: self._outputs(run_id, board, sid) for sid in loaded.ancestors(step.id)}
                board.running[pool.submit(self.attempts.run_step, run_id, loaded, step, outputs)] = step.id

    def _outputs(self, run_id: str, board: _Board, step_id: str) -> Mapping[str, Any]:
        """The outputs of a step DONE on ``board`` (:attr:`_Board.outputs`)."""
        found = board.outputs.get(step_id)
        if found is None:
            found = self.core.outputs_of(run_id, step_id)
            if board.status.get(step_id) == StepStatus.DONE:
                board.outputs[step_id] = found
        return found

    def _settle(self, loaded: LoadedPlaybook, board: _Board, step_id: str, result: StepResult) -> None:
        """Puts a step that ended on the board."""
        if result.status == StepStatus.DONE:
            board.status[step_id] = StepStatus.DONE
        elif result.status == EngineStatus.INTERRUPTED:
            board.interrupted = True
            board.status[step_id] = StepStatus.RUNNING
        elif loaded.by_id[step_id].on_failure(loaded.playbook) == "continue" and not isinstance(
                result.error, Cancelled):
            board.status[step_id] = EngineStatus.TOLERATED
            board.tolerated.add(step_id)
        else:
            board.status[step_id] = StepStatus.FAILED
            if board.failed is None:
                board.failed = result
                # The run stops here: steps still busy on other branches stop at their next checkpoint
                # (resumable, or undone by the rollback) instead of running to their end.
                self.core.cancel_event.set()

    def _finish(self, run_id: str, loaded: LoadedPlaybook, board: _Board) -> RunOutcome:
        core = self.core
        if core.abort is not None:
            culprit = core.abort_step or (board.failed.step_id if board.failed else loaded.steps[0].id)
            for step_id, st in board.status.items():
                if st == StepStatus.RUNNING:  # interrupted by the watchdog: record why
                    rec = core.store.get_step(run_id, step_id)
                    if rec is not None:
                        rec.status, rec.error = StepStatus.FAILED, core.describe_error(core.abort)
                        core.store.save_step(rec)
            return self.fail(run_id, loaded, StepResult(culprit, StepStatus.FAILED, core.abort))
        if board.failed is not None:
            return self.fail(run_id, loaded, board.failed)
        if board.interrupted or core.cancel_event.is_set():
            reason = "the run's lock was taken by another runner" if core.cancel_event.is_set() and \
                core.store.get_lock(run_id) is None else "interrupted"
            core.store.update_run(run_id, status=RunStatus.INTERRUPTED, error=reason)
            core.event(run_id, None, "run.interrupted", f"run {run_id} interrupted; resume it to go on")
            return RunOutcome(run_id, RunStatus.INTERRUPTED, ExitCode.FAILED, error=reason,
                              notes=[f"resume with: migrator resume {run_id}"])
        core.store.update_run(run_id, status=RunStatus.SUCCEEDED, finished_at=core.clock.timestamp(), error=None)
        notes = [f"step {s} failed but was allowed to (on_failure: continue)" for s in sorted(board.tolerated)]
        core.event(run_id, None, "run.succeeded", f"run {run_id} succeeded")
        return RunOutcome(run_id, RunStatus.SUCCEEDED, ExitCode.OK, notes=notes)

    def fail(self, run_id: str, loaded: LoadedPlaybook, failed: StepResult) -> RunOutcome:
        """Settles a failed run: rolled back when its policy (or a watchdog abort) says so, else left to resume."""
        assert failed.error is not None
        core = self.core
        error = core.describe_error(failed.error)
        policy = loaded.by_id[failed.step_id].on_failure(loaded.playbook)
        if policy == "rollback" or (core.abort is not None and policy != "continue"):
            return self._roll_back(run_id, loaded, failed, error)
        core.store.update_run(run_id, status=RunStatus.FAILED, error=error)
        core.event(run_id, None, "run.failed", f"run {run_id} failed at step {failed.step_id}")
        code = exit_code_for(failed.error)
        return RunOutcome(run_id, RunStatus.FAILED, code if code != ExitCode.OK else ExitCode.FAILED,
                          error=error, failed_step=failed.step_id,
                          notes=[f"fix the cause, then: migrator resume {run_id}   (or undo: migrator rollback "
                                 f"{run_id})"])

    def _roll_back(self, run_id: str, loaded: LoadedPlaybook, failed: StepResult, error: str) -> RunOutcome:
        core = self.core
        # A watchdog abort stopped the steps through the cancel flag; the undo must not see it.
        core.cancel_event.clear()
        core.store.update_run(run_id, status=RunStatus.ROLLING_BACK, error=error)
        core.event(run_id, None, "rollback.started", f"step {failed.step_id} failed; rolling back")
        core.listener.message(f"step {failed.step_id} failed; rolling back what this run did")
        try:
            clean, comp_error = self.compensator.compensate(run_id, loaded)
        except CompensationRefused as exc:
            refused = f"{error}; rollback refused: {core.describe_error(exc)}"
            core.store.update_run(run_id, status=RunStatus.FAILED, error=refused)
            core.event(run_id, None, "run.failed", f"run {run_id} failed at step {failed.step_id}; "
                                                   "its rollback was refused, nothing was undone")
            return RunOutcome(run_id, RunStatus.FAILED, ExitCode.FAILED, error=refused, failed_step=failed.step_id)
        if clean:
            core.store.update_run(run_id, status=RunStatus.ROLLED_BACK, finished_at=core.clock.timestamp(),
                                  error=error)
            core.event(run_id, None, "run.rolled_back", f"run {run_id} failed and was rolled back")
            return RunOutcome(run_id, RunStatus.ROLLED_BACK, ExitCode.ROLLED_BACK, error=error,
                              failed_step=failed.step_id)
        core.store.update_run(run_id, status=RunStatus.ROLLBACK_FAILED, finished_at=core.clock.timestamp(),
                              error=f"{error}; rollback: {comp_error}")
        return RunOutcome(run_id, RunStatus.ROLLBACK_FAILED, ExitCode.FAILED,
                          error=f"{error}; rollback incomplete: {comp_error}", failed_step=failed.step_id)

    def _mark_skipped(self, run_id: str, step: PlannedStep, why: str) -> None:
        core = self.core
        rec = core.store.get_step(run_id, step.id) or StepRecord(run_id, step.id, step.spec.uses)
        rec.status, rec.note = StepStatus.SKIPPED, why
        core.store.save_step(rec)
        core.event(run_id, step.id, "step.skipped", f"step {step.id} skipped: {why}")
        core.listener.step_finished(step.id, StepStatus.SKIPPED, why)

    def check_hashes(self, run_id: str, loaded: LoadedPlaybook, records: Mapping[str, StepRecord],
                     force: bool) -> None:
        """Refuses (:class:`ParamsChanged`) a resume in which a done step's params changed, unless ``force``."""
        outputs = {sid: r.outputs for sid, r in records.items() if r.status == StepStatus.DONE}
        for step in loaded.steps:
            rec = records.get(step.id)
            if rec is None or rec.status != StepStatus.DONE or rec.params_hash is None:
                continue
            params = loaded.try_resolve_params(step, outputs, run_id)
            if params is None:
                continue
            new_hash = params_hash(params)
            if new_hash != rec.params_hash:
                if not force:
                    raise ParamsChanged(
                        f"step {step.id} is done, but its params changed since (hash {rec.params_hash} → "
                        f"{new_hash})", hint="resume with --force to keep it done as it is, or start a new run")
                self.core.event(run_id, step.id, "step.params_changed",
                                f"params of done step {step.id} changed; kept done (--force)")


def taken_up_again(loaded: LoadedPlaybook, rerun: tuple[str, ...]) -> set[str]:
    """The steps ``resume --rerun`` takes up again: those named, and every step that needs one of them, directly or
    not (their inputs may change). Refuses a name the playbook does not have."""
    unknown = sorted(set(rerun) - loaded.by_id.keys())
    if unknown:
        raise InputError(f"--rerun {unknown[0]}: the playbook has no step {unknown[0]!r}",
                         hint=f"its steps: {', '.join(s.id for s in loaded.steps)}")
    named = set(rerun)
    return {s.id for s in loaded.steps if s.id in named or named & loaded.ancestors(s.id)}
