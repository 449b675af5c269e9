"""Generic step kinds, useful in any playbook: ``shell``, ``http``, ``wait`` and ``assert``."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from migrator.errors import CompensationError, InputError, PreconditionFailed, StepError, TransientError
from migrator.estimator import Work, estimate, rates
from migrator.playbook import Duration
from migrator.procs import run_command
from migrator.providers.http import HttpRequest, HttpResponse, send
from migrator.secrets import Secret
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext

_OUTPUT_LIMIT = 4000


class ShellParams(Params):
    run: str = Field(description="the command (run by /bin/sh); {item} is replaced per item with foreach")
    undo: str | None = Field(None, description="the command that undoes it; without one the step is irreversible")
    check: str | None = Field(None, description="a command whose exit status 0 means: already done")
    verify: str | None = Field(None, description="a command whose exit status 0 proves the step worked")
    foreach: list[str] | None = Field(None, description="run once per item, with a checkpoint per item")
    foreach_count: int | None = Field(None, ge=0, description="like foreach over 0..N-1")
    env: dict[str, Secret] = Field(default_factory=dict, description="extra environment; values may be ${env:X}")
    cwd: str | None = Field(None, description="an existing directory to run in (checked when the playbook loads)")
    timeout: Duration | None = Field(None, description="per command")
    estimate: Duration | None = Field(None, description="expected duration, for the plan")

    @field_validator("cwd")
    @classmethod
    def _cwd_exists(cls, value: str | None) -> str | None:
        # checked at load, so a typo stops the run before its first step rather than at this one
        if value is not None and not os.path.isdir(value):
            raise ValueError(f"{value[:200]!r} is not an existing directory")
        return value

    @model_validator(mode="after")
    def _one_loop(self) -> ShellParams:
        if self.foreach is not None and self.foreach_count is not None:
            raise ValueError("give foreach or foreach_count, not both")
        return self


class Shell(Step[ShellParams]):
    """Runs a shell command (optionally once per item).

    Changes: whatever the command changes. Done when: the ``check`` command exits 0 (without one, never: the
    command must be safe to run again); with ``foreach``, items already recorded done are not run again.
    Undone by: the ``undo`` command; without one the step cannot be undone and rollback reports it.
    Commands run in a session of their own (a terminal's Ctrl-C does not reach them); an interrupt of the run
    stops the running command (SIGTERM to its process group, SIGKILL after a grace) and leaves the step
    interrupted, with the items done so far kept, for ``resume``.
    """

    kind = "shell"
    Params = ShellParams
    summary = "run a command, optionally per item, with an optional check, verify and undo command"

    @property
    def irreversible(self) -> bool:  # type: ignore[override]
        return self.params.undo is None

    def _items(self) -> list[str] | None:
        if self.params.foreach is not None:
            return list(self.params.foreach)
        if self.params.foreach_count is not None:
            return [str(i) for i in range(self.params.foreach_count)]
        return None

    def _sh(self, ctx: StepContext, command: str, item: str | None = None, *,
            interruptible: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs one command in a session of its own: a terminal's Ctrl-C reaches the runner, not the command.

        When the run is interrupted (or the step passes its deadline) while the command runs, the command is
        asked to stop and :class:`~migrator.errors.Cancelled` (or the timeout) goes on to the runner: the step
        ends interrupted, resumable, never failed. An undo command (``interruptible=False``) runs to its end:
        half an undo is worse than a late one.
        """
        env = dict(os.environ)
        for key, value in self.params.env.items():
            env[key] = ctx.reveal(value) or ""
        env["MIGRATOR_RUN_ID"] = ctx.run_id
        env["MIGRATOR_STEP_ID"] = ctx.step_id
        if item is not None:
            command = command.replace("{item}", item)
            env["MIGRATOR_ITEM"] = item
        try:
            return run_command(["/bin/sh", "-c", command], cwd=self.params.cwd, env=env, timeout=self.params.timeout,
                               should_stop=ctx.raise_if_cancelled if interruptible else None)
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"command timed out after {self.params.timeout}s", hint="raise timeout") from exc
        except FileNotFoundError as exc:
            raise InputError(f"cannot run the command: {exc}") from exc

    def check(self, ctx: StepContext) -> CheckResult:
        items = self._items()
        if items is not None and ctx.items.count("done") >= len(items) and \
                ctx.items.keys("done") >= set(items):
            return CheckResult(True, f"all {len(items)} items are done")
        if self.params.check is None:
            return CheckResult(False, "no check command: the command runs")
        result = self._sh(ctx, self.params.check)
        if result.returncode == 0:
            return CheckResult(True, "the check command exits 0")
        return CheckResult(False, f"the check command exits {result.returncode}")

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        items = self._items()
        what = f"run `{self.params.run}`" + (f" for {len(items)} items" if items is not None else "")
        stated = Work(fixed={"the playbook's estimate": self.params.estimate}) \
            if self.params.estimate is not None else None
        return PlanResult([what], state.reason,
                          estimate(stated, rates(ctx), items=len(items) if items is not None else None)
                          if stated is not None else Estimate(items=len(items) if items is not None else None))

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        items = self._items()
        if items is None:
            result = self._sh(ctx, self.params.run)
            self._raise_on_failure(ctx, result, self.params.run)
            return {"exit_code": result.returncode, "stdout": ctx.redactor.redact(result.stdout[-_OUTPUT_LIMIT:])}
        done = ctx.items.keys("done")
        ctx.items.set_total(items=len(items))
        ran = 0
        for item in items:
            if item in done:
                continue
            ctx.raise_if_cancelled()
            result = self._sh(ctx, self.params.run, item)
            self._raise_on_failure(ctx, result, self.params.run, item)
            ctx.items.record(item, "done")
            ran += 1
        return {"items": len(items), "ran": ran}

    def _raise_on_failure(self, ctx: StepContext, result: subprocess.CompletedProcess[str], command: str,
                          item: str | None = None) -> None:
        if result.returncode != 0:
            tail = ctx.redactor.redact((result.stderr or result.stdout).strip()[-500:])
            where = f" for item {item}" if item is not None else ""
            raise StepError(f"command exited {result.returncode}{where}: {tail}", step_id=ctx.step_id)

    def verify(self, ctx: StepContext) -> None:
        if self.params.verify is None:
            return
        result = self._sh(ctx, self.params.verify)
        if result.returncode != 0:
            from migrator.errors import VerificationFailed

            raise VerificationFailed(f"verify command exited {result.returncode}", step_id=ctx.step_id)

    def compensate(self, ctx: StepContext) -> None:
        if self.params.undo is None:
            return
        result = self._sh(ctx, self.params.undo, interruptible=False)
        if result.returncode != 0:
            raise CompensationError(f"undo command exited {result.returncode}: "
                                    f"{ctx.redactor.redact(result.stderr.strip()[-300:])}")


class HttpUndo(Params):
    """The request that takes an ``http`` step back: sent to the step's URL (or ``url``) with its headers."""

    method: Literal["POST", "PUT", "PATCH", "DELETE"]
    url: str | None = None
    body: str | None = None
    expect_status: list[int] = Field(default_factory=lambda: [200])


class HttpParams(Params):
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, Secret] = Field(default_factory=dict, description="values may hold ${env:X}")
    body: str | None = None
    expect_status: list[int] = Field(default_factory=lambda: [200])
    expect_body: str | None = Field(None, description="a substring or /regex/ the body must contain")
    timeout: Duration = 10.0
    ca_file: str | None = None
    undo: HttpUndo | None = Field(None, description="the request that takes this one back, if there is one")


class Http(Step[HttpParams]):
    """Sends one HTTP request and checks the answer.

    Changes: whatever the request changes on the server (GET and HEAD change nothing). Done when: never
    assumed; the request is the check. Undone by: the ``undo`` request where the playbook gives one (say, a
    ``PUT`` of the previous setting); else nothing — a request cannot be taken back — so a POST, PUT, PATCH or
    DELETE step without ``undo`` is irreversible, and rollback reports it; GET and HEAD have nothing to undo.
    """

    kind = "http"
    Params = HttpParams
    summary = "send an HTTP request and check the status and body"

    @property
    def irreversible(self) -> bool:  # type: ignore[override]
        return self.params.method not in ("GET", "HEAD") and self.params.undo is None

    def compensate(self, ctx: StepContext) -> None:
        undo = self.params.undo
        if undo is None:
            return
        url = undo.url or self.params.url
        status = self._request(ctx, method=undo.method, url=url, body=undo.body,
                               expect_status=undo.expect_status).status
        if status not in undo.expect_status:
            raise CompensationError(f"undo {undo.method} {url}: HTTP {status}, expected {undo.expect_status}")

    def _request(self, ctx: StepContext, *, method: str, url: str, body: str | None,
                 expect_status: list[int]) -> HttpResponse:
        headers: dict[str, Secret | str] = dict(self.params.headers)
        if body is not None and not any(name.lower() == "content-type" for name in headers):
            # the form type this kind has always sent by default (the standard library's); a server may rely on it
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return send(HttpRequest(method, url, headers, body.encode() if body is not None else None,
                                timeout=self.params.timeout, ca_file=self.params.ca_file, expect=expect_status),
                    ctx.reveal)

    def plan(self, ctx: StepContext) -> PlanResult:
        return PlanResult([f"{self.params.method} {self.params.url}"], "a request is always sent",
                          estimate(Work(note="one request").add("http.request", 1), rates(ctx)))

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        response = self._request(ctx, method=self.params.method, url=self.params.url, body=self.params.body,
                                 expect_status=self.params.expect_status)
        status, body = response.status, response.text()
        if status not in self.params.expect_status:
            raise PreconditionFailed(f"{self.params.method} {self.params.url}: HTTP {status}, expected "
                                     f"{self.params.expect_status}", step_id=ctx.step_id)
        expect = self.params.expect_body
        if expect is not None:
            found = re.search(expect[1:-1], body) if len(expect) > 1 and expect.startswith("/") and \
                expect.endswith("/") else (expect in body)
            if not found:
                raise PreconditionFailed(f"{self.params.url}: the body does not contain {expect!r}",
                                         step_id=ctx.step_id)
        return {"status": status, "elapsed_ms": round(response.elapsed_ms, 1)}


class WaitParams(Params):
    seconds: Duration = Field(description="how long to wait")


class Wait(Step[WaitParams]):
    """Waits (on the run's clock, so tests can skip ahead).

    Changes: nothing. Done when: never (waiting again is harmless). Undone by: nothing to undo.
    """

    kind = "wait"
    Params = WaitParams
    summary = "wait a while"

    def plan(self, ctx: StepContext) -> PlanResult:
        return PlanResult([f"wait {self.params.seconds:g}s"], "",
                          estimate(Work(fixed={"the wait": self.params.seconds}), rates(ctx)))

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        end = ctx.clock.monotonic() + self.params.seconds
        while (left := end - ctx.clock.monotonic()) > 0:
            ctx.raise_if_cancelled()
            ctx.clock.sleep(min(left, 0.5))
        return {"waited_s": self.params.seconds}


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "in": lambda a, b: a in b,
    "contains": lambda a, b: b in a,
}


class AssertParams(Params):
    value: Any = Field(description="usually a reference such as ${steps.x.outputs.count}")
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "contains"] = "eq"
    expected: Any = None
    message: str | None = None


class Assert(Step[AssertParams]):
    """Fails unless ``value <op> expected`` holds.

    Changes: nothing. Done when: the comparison holds. Undone by: nothing to undo.
    """

    kind = "assert"
    Params = AssertParams
    summary = "compare a value (often another step's output) with what it should be"

    def _holds(self) -> bool:
        try:
            return bool(_OPS[self.params.op](self.params.value, self.params.expected))
        except TypeError as exc:
            raise InputError(f"cannot compare {self.params.value!r} {self.params.op} {self.params.expected!r}: "
                             f"{exc}") from exc

    def check(self, ctx: StepContext) -> CheckResult:
        return CheckResult(self._holds(), "comparison")

    def plan(self, ctx: StepContext) -> PlanResult:
        return PlanResult.nothing(f"checks {self.params.value!r} {self.params.op} {self.params.expected!r}")

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        from migrator.errors import VerificationFailed

        raise VerificationFailed(self.params.message or f"assertion failed: {self.params.value!r} "
                                 f"{self.params.op} {self.params.expected!r}", step_id=ctx.step_id)
