"""The ``migrator`` command: parse, call the runner, map errors to exit codes, render. Nothing else."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from migrator.errors import ExitCode, MigratorError
from migrator.playbook import LoadedPlaybook, load, schemas
from migrator.registry import load_registry
from migrator.state import DEFAULT_STATE_DIR, RunRecord, StateStore, open_store

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Move one tenant from a self-hosted install to the cloud: resumable, with dry-run and "
                       "rollback.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")

StateOpt = typer.Option(None, "--state", envvar="MIGRATOR_STATE",
                        help=f"state directory (default {DEFAULT_STATE_DIR}) or a postgresql:// URL")
EnvOpt = typer.Option(None, "--env", "-e", help="the tenant's environment file (YAML)")


def _guard(fn: Callable[[], T]) -> T:
    """Runs a command body; a MigratorError becomes one line on stderr and its exit code."""
    try:
        return fn()
    except MigratorError as exc:
        err.print(f"[red]error:[/red] {exc.one_line()}", markup=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(int(ExitCode.FAILED)) from None


def _state_spec(state: str | None) -> str:
    return state or os.environ.get("MIGRATOR_STATE") or DEFAULT_STATE_DIR


def _log_dir(state: str | None) -> Path:
    spec = _state_spec(state)
    if spec.startswith(("postgresql://", "postgres://")):
        return Path(DEFAULT_STATE_DIR) / "logs"
    path = Path(spec)
    return (path.parent if path.suffix in (".db", ".sqlite", ".sqlite3") else path) / "logs"


def _load(playbook: Path | str, environment: Path | str | None, *, playbook_text: str | None = None,
          environment_text: str | None = None) -> LoadedPlaybook:
    return load(playbook, environment, registry=load_registry(), playbook_text=playbook_text,
                environment_text=environment_text)


def _load_for_run(run: RunRecord, playbook: Path | None, environment: Path | None) -> LoadedPlaybook:
    """The playbook a run was started with (kept in state), unless the engineer names other files."""
    return _load(playbook or run.playbook_path, environment or run.environment_path,
                 playbook_text=None if playbook else run.playbook_text,
                 environment_text=None if environment else run.environment_text)


class _Signals:
    """First SIGINT/SIGTERM asks the runner to stop at the next checkpoint; a second one exits at once."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self.cancel = cancel
        self.count = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(int(ExitCode.FAILED))
        err.print("stopping at the next checkpoint (again to quit at once); the run stays resumable")
        self.cancel()

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _runner(store: StateStore, state: str | None, options: dict[str, Any]) -> Any:
    import shlex

    from migrator.progress import make_listener
    from migrator.runner import Runner

    command = shlex.join(["migrator", *sys.argv[1:]])
    return Runner(store, listener=make_listener(err), log_dir=_log_dir(state),
                  options={**options, "command_line": command})


def _finish(outcome: Any, store: StateStore, state: str | None, runner: Any = None) -> None:
    close = getattr(getattr(runner, "listener", None), "close", None)
    if callable(close):
        close()
    colour = {"succeeded": "green", "rolled_back": "yellow"}.get(outcome.status, "red")
    err.print(f"run [bold]{outcome.run_id}[/bold]: [{colour}]{outcome.status.replace('_', ' ')}[/{colour}]",
              markup=True)
    if outcome.error:
        err.print(f"  error: {outcome.error}", markup=False)
    for note in outcome.notes:
        err.print(f"  {note}", markup=False)
    err.print(f"  state: {store.describe()}   log: {_log_dir(state) / (outcome.run_id + '.log')}", markup=False)
    raise typer.Exit(int(outcome.exit_code))


# ------------------------------------------------------------------------------------------------------ commands


@app.command()
def validate(playbook: Path = typer.Argument(..., help="playbook YAML"), env: Path | None = EnvOpt) -> None:
    """Check a playbook (and environment file) without running anything."""

    def body() -> None:
        loaded = _load(playbook, env)
        out.print(f"{playbook}: ok — {len(loaded.steps)} steps"
                  + (f", tenant {loaded.environment.tenant.name}" if loaded.environment else ""))

    _guard(body)


@app.command()
def plan(playbook: Path = typer.Argument(..., help="playbook YAML"), env: Path | None = EnvOpt,
         fmt: str = typer.Option("table", "--format", "-f", help="table, markdown or json"),
         as_json: bool = typer.Option(False, "--json", help="same as --format json"),
         out_dir: Path | None = typer.Option(None, "--out", help="also write plan.md, plan.html and plan.json here"),
         window: str | None = typer.Option(None, "--window", help="DATE/DAYPART for the read-only window"),
         state: str | None = StateOpt) -> None:
    """Dry-run: what every step would change, or why it is a no-op. Changes nothing and creates no run."""

    def body() -> None:
        from migrator.reports.plan import render_plan

        loaded = _load(playbook, env)
        from migrator.runner import Runner

        options: dict[str, Any] = {"window": window} if window else {}
        views = Runner(_NoStore(), options=options).plan(loaded)  # type: ignore[arg-type]
        kind = "json" if as_json else fmt
        text = render_plan(loaded, views, kind, out_dir=out_dir)
        out.print(text, markup=False) if kind != "table" else out.print(text)
        worst = max((v.error_exit or 0 for v in views), default=0)
        if worst:
            raise typer.Exit(worst)

    _guard(body)


class _NoStore:
    """The dry-run touches no state store: any use of one is a bug, and fails loudly."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the dry-run must not use the state store ({name})")


@app.command()
def run(playbook: Path = typer.Argument(..., help="playbook YAML"), env: Path | None = EnvOpt,
        run_id: str | None = typer.Option(None, "--run-id", help="name the run (default: tenant-time-random)"),
        state: str | None = StateOpt,
        concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="steps at once"),
        window: str | None = typer.Option(None, "--window", help="DATE/DAYPART for the read-only window"),
        allow_delete: bool = typer.Option(False, "--allow-delete",
                                          help="let rollback delete cloud resources this run created")) -> None:
    """Run a playbook for a tenant, from the start."""

    def body() -> None:
        loaded = _load(playbook, env)
        if run_id is not None:
            _check_run_id(run_id)
        store = open_store(_state_spec(state))
        options = {"concurrency": concurrency, "window": window, "allow_delete": allow_delete}
        runner = _runner(store, state, {k: v for k, v in options.items() if v not in (None, False)})
        with _Signals(runner.cancel):
            outcome = runner.run(loaded, run_id=run_id, playbook_path=str(playbook.resolve()),
                                 environment_path=str(env.resolve()) if env else None)
        _finish(outcome, store, state, runner)

    _guard(body)


def _check_run_id(run_id: str) -> None:
    import re

    from migrator.errors import InputError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id):
        raise InputError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 128)")


@app.command()
def resume(run_id: str = typer.Argument(..., help="the run to go on with"), state: str | None = StateOpt,
           playbook: Path | None = typer.Option(None, "--playbook", help="use this playbook instead of the "
                                                "one kept with the run"),
           env: Path | None = EnvOpt,
           force: bool = typer.Option(False, "--force", help="go on even if a done step's params changed"),
           window: str | None = typer.Option(None, "--window", help="DATE/DAYPART for the read-only window"),
           allow_delete: bool = typer.Option(False, "--allow-delete")) -> None:
    """Go on with a run that stopped (crash, kill, failure fixed since): nothing done is done again."""

    def body() -> None:
        store = open_store(_state_spec(state))
        run_rec = store.require_run(run_id)
        loaded = _load_for_run(run_rec, playbook, env)
        options = dict(run_rec.options)
        options.update({k: v for k, v in {"window": window, "allow_delete": allow_delete}.items() if v})
        runner = _runner(store, state, options)
        with _Signals(runner.cancel):
            outcome = runner.resume(run_id, loaded, force=force)
        _finish(outcome, store, state, runner)

    _guard(body)


@app.command()
def rollback(run_id: str = typer.Argument(...), state: str | None = StateOpt,
             playbook: Path | None = typer.Option(None, "--playbook"), env: Path | None = EnvOpt,
             accept_data_loss: bool = typer.Option(False, "--accept-data-loss",
                                                   help="undo even if the new instance took writes since"),
             allow_delete: bool = typer.Option(False, "--allow-delete",
                                               help="delete cloud resources this run created")) -> None:
    """Undo, newest first, everything a run did."""

    def body() -> None:
        store = open_store(_state_spec(state))
        run_rec = store.require_run(run_id)
        loaded = _load_for_run(run_rec, playbook, env)
        options = dict(run_rec.options)
        options.update({"accept_data_loss": accept_data_loss, "allow_delete": allow_delete or
                        bool(run_rec.options.get("allow_delete"))})
        runner = _runner(store, state, options)
        with _Signals(runner.cancel):
            outcome = runner.rollback(run_id, loaded)
        _finish(outcome, store, state, runner)

    _guard(body)


@app.command()
def status(run_id: str | None = typer.Argument(None, help="default: the newest run"), state: str | None = StateOpt,
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Where a run stands: each step's status, attempts, progress and error."""

    def body() -> None:
        from migrator.reports.status import run_summary

        store = open_store(_state_spec(state))
        rid = run_id
        if rid is None:
            runs_ = store.list_runs()
            if not runs_:
                out.print("no runs")
                return
            rid = runs_[0].run_id
        summary = run_summary(store, rid)
        if as_json:
            out.print(json.dumps(summary, indent=2), markup=False)
            return
        table = Table(title=f"run {rid} — {summary['status']}", title_justify="left")
        for col in ("step", "kind", "status", "tries", "items", "seconds", "note / error"):
            table.add_column(col)
        for s in summary["steps"]:
            items = f"{s['items_done']}" if s["items_done"] else ""
            table.add_row(s["id"], s["kind"], s["status"], str(s["attempts"]), items,
                          f"{s['seconds']:.1f}" if s["seconds"] is not None else "", s["error"] or s["note"] or "")
        out.print(table)
        lock = summary.get("lock")
        if lock:
            out.print(f"lock: {lock['holder']}" + (f" — stale: {lock['stale']}" if lock["stale"] else ""))

    _guard(body)


@app.command()
def report(run_id: str = typer.Argument(...), state: str | None = StateOpt,
           fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, html or json"),
           out_dir: Path | None = typer.Option(None, "--out", help="also write report.md, .html and .json here")
           ) -> None:
    """Forecast against actual for every step of a run, and the read-only window as it was."""

    def body() -> None:
        from migrator.reports.run import render_report

        store = open_store(_state_spec(state))
        out.print(render_report(store, run_id, fmt, out_dir), markup=False)

    _guard(body)


@app.command("support-bundle")
def support_bundle(run_id: str = typer.Argument(...), state: str | None = StateOpt,
                   output: Path | None = typer.Option(None, "--output", "-o", help="zip to write"),
                   description: str | None = typer.Option(None, "--description",
                                                          help="what went wrong, in your words")) -> None:
    """A zip with what the provider's support asks for, secrets and personal data redacted."""

    def body() -> None:
        from migrator.reports.bundle import build_bundle
        from migrator.secrets import Redactor

        store = open_store(_state_spec(state))
        run_rec = store.require_run(run_id)
        redactor = Redactor()
        # the values of the secrets this run referenced, if set here, are masked wherever they appear
        from migrator.secrets import env_names

        for text in (run_rec.playbook_text, run_rec.environment_text or ""):
            for name in env_names(text):
                redactor.add(os.environ.get(name))
        path = build_bundle(store, run_id, output or Path(f"support-{run_id}.zip"), log_dir=_log_dir(state),
                            redactor=redactor, description=description)
        out.print(f"support bundle: {path}")

    _guard(body)


@app.command()
def runs(state: str | None = StateOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """The runs in the state store, newest first."""

    def body() -> None:
        store = open_store(_state_spec(state))
        rows = [{"run_id": r.run_id, "playbook": r.playbook_name, "tenant": r.tenant, "status": r.status,
                 "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at))}
                for r in store.list_runs()]
        if as_json:
            out.print(json.dumps(rows, indent=2), markup=False)
            return
        table = Table()
        for col in ("run", "playbook", "tenant", "status", "created (UTC)"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["run_id"], r["playbook"], r["tenant"] or "", r["status"], r["created"])
        out.print(table)

    _guard(body)


@app.command()
def unlock(run_id: str = typer.Argument(...), state: str | None = StateOpt) -> None:
    """Break a run's lock on purpose (when its runner is known to be gone)."""

    def body() -> None:
        store = open_store(_state_spec(state))
        store.require_run(run_id)
        lock = store.break_lock(run_id)
        if lock is None:
            out.print(f"run {run_id} was not locked")
        else:
            stale = lock.stale_reason()
            out.print(f"unlocked run {run_id} (was held by {lock.describe()}"
                      + (f"; stale: {stale})" if stale else "; it looked alive)"))
            store.add_event(run_id, None, "lock.broken", f"lock of {lock.host} pid {lock.pid} broken by unlock")

    _guard(body)


@app.command()
def steps(kind: str | None = typer.Argument(None, help="one kind, in full"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """The step kinds this migrator knows, with their params."""

    def body() -> None:
        from migrator.errors import InputError

        registry = load_registry()
        kinds = registry.items()
        if kind is not None:
            if kind not in registry:
                raise InputError(f"no step kind {kind!r}", hint="list them with: migrator steps")
            kinds = [(kind, registry.get(kind))]
        if as_json:
            out.print(json.dumps({n: {"summary": c.summary, "doc": (c.__doc__ or "").strip(),
                                      "params": c.Params.model_json_schema()} for n, c in kinds}, indent=2),
                      markup=False)
            return
        for name, cls in kinds:
            out.print(f"[bold]{name}[/bold] — {cls.summary or (cls.__doc__ or '').strip().splitlines()[0]}")
            if kind is not None:
                out.print((cls.__doc__ or "").strip(), markup=False)
                for fname, field in cls.Params.model_fields.items():
                    req = "required" if field.is_required() else f"default {field.default!r}"
                    desc = f" — {field.description}" if field.description else ""
                    out.print(f"  {fname}: {_type_name(field.annotation)} ({req}){desc}", markup=False)

    _guard(body)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


@app.command()
def schema(which: str = typer.Argument("playbook", help="playbook or environment")) -> None:
    """JSON Schema of playbooks or environment files (for editors)."""

    def body() -> None:
        from migrator.errors import InputError

        all_ = schemas()
        if which not in all_:
            raise InputError(f"no schema {which!r}: use playbook or environment")
        out.print(json.dumps(all_[which], indent=2), markup=False)

    _guard(body)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        # click reports usage errors with 2 already; keep every other code as the command set it
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
