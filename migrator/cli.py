"""The ``migrator`` command: parse, call the runner, map errors to exit codes, render. Nothing else.

Longer than the house's ~600 lines because every command's options and their checks before anything runs
(formats, output paths, windows, concurrency) stand beside the command they belong to; the fleet's commands
are their own module (:mod:`migrator.fleet.cli`).
"""

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
from rich.markup import escape
from rich.table import Table

from migrator.console import err, out
from migrator.console import guard as _guard
from migrator.errors import ExitCode, InputError, MigratorError
from migrator.fleet.cli import app as fleet_app
from migrator.playbook import LoadedPlaybook, load, schemas
from migrator.registry import load_registry
from migrator.reports.jsontext import strict_dumps
from migrator.state import DEFAULT_STATE_DIR, RunRecord, StateStore, open_store

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Move one tenant from a self-hosted install to the cloud: resumable, with dry-run and "
                       "rollback.")
app.add_typer(fleet_app, name="fleet", help="Campaigns of many tenants on Temporal: waves, windows, caps, failover.")

T = TypeVar("T")
MAX_CONCURRENCY = 64  # as a playbook's concurrency: steps are threads of this process

StateOpt = typer.Option(None, "--state", envvar="MIGRATOR_STATE",
                        help=f"state directory (default {DEFAULT_STATE_DIR}) or a postgresql:// URL")
EnvOpt = typer.Option(None, "--env", "-e", help="the tenant's environment file (YAML)")




def _check_output_file(path: Path | None, option: str) -> None:
    """Refuses, before anything is read or written, an output file that names a folder or lies under a file."""
    if path is None:
        return
    try:
        if path.is_dir():
            raise InputError(f"{option} {path}: is a directory; name the file to write (e.g. {path / 'bundle.zip'})")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"{option} {path}: {parent} is a file, not a directory")
                break
    except OSError as exc:
        raise InputError(f"{option} {str(path)[:200]}: {exc.strerror or exc}") from None


def _state_spec(state: str | None) -> str:
    return state or os.environ.get("MIGRATOR_STATE") or DEFAULT_STATE_DIR


LogDirOpt = typer.Option(None, "--log-dir", envvar="MIGRATOR_LOG_DIR",
                         help="where run logs go (default: <state dir>/logs; with a postgresql:// store "
                              "~/.local/state/migrator/logs)")


def _log_dir(state: str | None, log_dir: Path | None = None) -> Path:
    """``--log-dir``; else beside a SQLite store; else (a PostgreSQL store, shared by machines) a per-user
    directory, never the directory the command happens to run in."""
    if log_dir is not None:
        if log_dir.exists() and not log_dir.is_dir():
            from migrator.errors import InputError

            raise InputError(f"--log-dir {log_dir}: is a file, not a directory")
        return log_dir
    spec = _state_spec(state)
    if spec.startswith(("postgresql://", "postgres://")):
        base = os.environ.get("XDG_STATE_HOME")
        if not base:
            try:
                base = str(Path.home() / ".local" / "state")
            except RuntimeError as exc:
                raise MigratorError("cannot tell the home directory for the run logs",
                                    hint="pass --log-dir DIR (or set MIGRATOR_LOG_DIR)") from exc
        return Path(base) / "migrator" / "logs"
    path = Path(spec)
    return (path.parent if path.suffix.lower() in (".db", ".sqlite", ".sqlite3") else path) / "logs"


def _open_existing(state: str | None) -> StateStore | None:
    """The state store for a command that must not create one (every command but ``run``); None when there is
    none yet."""
    from migrator.errors import StoreNotFound

    try:
        return open_store(_state_spec(state), create=False)
    except StoreNotFound:
        return None


def _open_run(state: str | None, run_id: str) -> tuple[StateStore, RunRecord]:
    """The state store and a run that must be in it; a missing store means no such run (exit 2), and nothing is
    created."""
    from migrator.errors import RunNotFound, StoreNotFound

    try:
        store = open_store(_state_spec(state), create=False)
    except StoreNotFound as exc:
        raise RunNotFound(f"no run {run_id!r}: {exc.message}", hint="list them with: migrator runs") from None
    return store, store.require_run(run_id)


def _check_format(fmt: str, allowed: tuple[str, ...], out_dir: Path | None = None,
                  aliases: tuple[str, ...] = ("md",)) -> None:
    """Refuses a bad ``--format`` or ``--out`` before anything is read or written."""
    from migrator.errors import InputError

    if fmt not in allowed + aliases:
        raise InputError(f"--format {fmt!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}")
    if out_dir is not None:
        for path in (out_dir, *out_dir.parents):
            if path.exists():
                if not path.is_dir():
                    raise InputError(f"--out {out_dir}: {path} is a file, not a directory")
                break


def _stored_copy_note(run: RunRecord, playbook: Path | None) -> None:
    """Says so when the playbook file changed since the run started: the run goes on with its stored copy."""
    if playbook is not None or not run.playbook_path:
        return
    try:
        current = Path(run.playbook_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if current != run.playbook_text:
        err.print("the playbook file changed since the run started; using the stored copy — pass --playbook FILE "
                  "to use the file", markup=False)


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
        from migrator import procs

        self.count += 1
        if self.count > 1:
            # at once, but without orphans: the steps' commands are killed and the run's lock released first
            if sys.stderr.isatty():
                os.write(2, b"\x1b[?25h")  # the live progress display hid the cursor
            os.write(2, b"\nquitting now; the run stays resumable\n")
            procs.hard_exit(int(ExitCode.FAILED))
        err.print("stopping at the next checkpoint (again to quit at once); the run stays resumable")
        self.cancel()

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _runner(store: StateStore, state: str | None, options: dict[str, Any], log_dir: Path | None = None) -> Any:
    import shlex

    from migrator.progress import make_listener
    from migrator.runner import Runner

    command = shlex.join(["migrator", *sys.argv[1:]])
    return Runner(store, listener=make_listener(err), log_dir=_log_dir(state, log_dir),
                  options={**options, "command_line": command})


def _finish(outcome: Any, store: StateStore, state: str | None, runner: Any = None,
            log_dir: Path | None = None) -> None:
    close = getattr(getattr(runner, "listener", None), "close", None)
    if callable(close):
        close()
    colour = {"succeeded": "green", "rolled_back": "yellow"}.get(outcome.status, "red")
    err.print(f"run [bold]{escape(outcome.run_id)}[/bold]: [{colour}]{escape(outcome.status.replace('_', ' '))}"
              f"[/{colour}]", markup=True)
    if outcome.error:
        err.print(f"  error: {outcome.error}", markup=False)
    for note in outcome.notes:
        err.print(f"  {note}", markup=False)
    err.print(f"  state: {store.describe()}   log: {_log_dir(state, log_dir) / (outcome.run_id + '.log')}",
              markup=False)
    raise typer.Exit(int(outcome.exit_code))


# ------------------------------------------------------------------------------------------------------ commands


@app.command()
def validate(playbook: Path = typer.Argument(..., help="playbook YAML"), env: Path | None = EnvOpt) -> None:
    """Check a playbook (and environment file) without running anything."""

    def body() -> None:
        loaded = _load(playbook, env)
        _check_choices(loaded)
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

        kind = "json" if as_json else fmt
        _check_format(kind, ("table", "markdown", "json"), out_dir)
        loaded = _load(playbook, env)
        _check_choices(loaded, window=window)
        from migrator.runner import Runner

        options: dict[str, Any] = {"window": window} if window else {}
        if state is not None:
            options["state"] = state  # where the rates this machine measured are kept (the store is not opened)
        views = Runner(_NoStore(), options=options).plan(loaded)  # type: ignore[arg-type]
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
        concurrency: int | None = typer.Option(None, "--concurrency", help=f"steps at once (1-{MAX_CONCURRENCY})"),
        window: str | None = typer.Option(None, "--window", help="DATE/DAYPART for the read-only window"),
        allow_delete: bool = typer.Option(False, "--allow-delete",
                                          help="let rollback delete cloud resources this run created"),
        log_dir: Path | None = LogDirOpt) -> None:
    """Run a playbook for a tenant, from the start."""

    def body() -> None:
        loaded = _load(playbook, env)
        _check_choices(loaded, window=window, concurrency=concurrency)
        if run_id is not None:
            _check_run_id(run_id)
        _log_dir(state, log_dir)  # a bad --log-dir is refused before the store is made
        store = open_store(_state_spec(state))
        options = {"concurrency": concurrency, "window": window, "allow_delete": allow_delete}
        runner = _runner(store, state, {k: v for k, v in options.items() if v not in (None, False)}, log_dir)
        with _Signals(runner.cancel):
            outcome = runner.run(loaded, run_id=run_id, playbook_path=str(playbook.resolve()),
                                 environment_path=str(env.resolve()) if env else None)
        _finish(outcome, store, state, runner, log_dir)

    _guard(body)


def _check_choices(loaded: LoadedPlaybook, *, window: str | None = None, concurrency: int | None = None) -> None:
    """Refuses command-line choices the playbook cannot take, before anything is created: a ``--window`` no gate
    can open (or a gate's own window), a ``--concurrency`` out of range."""
    from migrator.steps.window import check_window_choice

    if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InputError(f"--concurrency {concurrency}: use 1 to {MAX_CONCURRENCY} steps at once")
    check_window_choice(loaded, window)


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
           allow_delete: bool = typer.Option(False, "--allow-delete"),
           log_dir: Path | None = LogDirOpt,
           rerun: list[str] | None = typer.Option(None, "--rerun", metavar="STEP",
                                                  help="take this done step up again from its check, with every "
                                                       "done step that needs it (repeatable)")) -> None:
    """Go on with a run that stopped (crash, kill, failure fixed since): nothing done is done again.

    It goes on with the playbook and environment stored with the run; --playbook and --env pick up changed
    files, and a done step whose params changed then stops the resume unless --force. --rerun STEP takes a
    done step up again on purpose (from its check: it applies only what is not in place), and every step after
    it that needs it, even in a run that succeeded."""

    def body() -> None:
        store, run_rec = _open_run(state, run_id)
        _stored_copy_note(run_rec, playbook)
        loaded = _load_for_run(run_rec, playbook, env)
        _check_choices(loaded, window=window)
        options = dict(run_rec.options)
        options.update({k: v for k, v in {"window": window, "allow_delete": allow_delete}.items() if v})
        runner = _runner(store, state, options, log_dir)
        with _Signals(runner.cancel):
            outcome = runner.resume(run_id, loaded, force=force, rerun=tuple(rerun or ()))
        _finish(outcome, store, state, runner, log_dir)

    _guard(body)


@app.command()
def rollback(run_id: str = typer.Argument(...), state: str | None = StateOpt,
             playbook: Path | None = typer.Option(None, "--playbook"), env: Path | None = EnvOpt,
             accept_data_loss: bool = typer.Option(False, "--accept-data-loss",
                                                   help="undo even if the new instance took writes since"),
             allow_delete: bool = typer.Option(False, "--allow-delete",
                                               help="delete cloud resources this run created"),
             log_dir: Path | None = LogDirOpt) -> None:
    """Undo, newest first, everything a run did."""

    def body() -> None:
        store, run_rec = _open_run(state, run_id)
        loaded = _load_for_run(run_rec, playbook, env)
        options = dict(run_rec.options)
        options.update({"accept_data_loss": accept_data_loss, "allow_delete": allow_delete or
                        bool(run_rec.options.get("allow_delete"))})
        runner = _runner(store, state, options, log_dir)
        with _Signals(runner.cancel):
            outcome = runner.rollback(run_id, loaded)
        _finish(outcome, store, state, runner, log_dir)

    _guard(body)


@app.command()
def status(run_id: str | None = typer.Argument(None, help="default: the newest run"), state: str | None = StateOpt,
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Where a run stands: each step's status, attempts, progress and error."""

    def body() -> None:
        from migrator.reports.status import run_summary

        rid = run_id
        if rid is None:
            store = _open_existing(state)
            runs_ = store.list_runs() if store is not None else []
            if store is None or not runs_:
                out.print("no runs")
                return
            rid = runs_[0].run_id
        else:
            store, _ = _open_run(state, rid)
        summary = run_summary(store, rid)
        if as_json:
            out.print(strict_dumps(summary), markup=False)
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

        _check_format(fmt, ("markdown", "html", "json"), out_dir, aliases=("md", "table"))
        store, _ = _open_run(state, run_id)
        out.print(render_report(store, run_id, fmt, out_dir), markup=False)

    _guard(body)


@app.command("support-bundle")
def support_bundle(run_id: str = typer.Argument(...), state: str | None = StateOpt,
                   output: Path | None = typer.Option(None, "--output", "-o", help="zip to write"),
                   description: str | None = typer.Option(None, "--description",
                                                          help="what went wrong, in your words"),
                   log_dir: Path | None = LogDirOpt) -> None:
    """A zip with what the provider's support asks for, secrets and personal data redacted."""

    def body() -> None:
        from migrator.reports.bundle import build_bundle
        from migrator.secrets import Redactor

        _check_output_file(output, "--output")
        store, run_rec = _open_run(state, run_id)
        redactor = Redactor()
        # the values of the secrets this run referenced, if set here, are masked wherever they appear
        from migrator.secrets import env_names

        for text in (run_rec.playbook_text, run_rec.environment_text or ""):
            for name in env_names(text):
                redactor.add(os.environ.get(name))
        path = build_bundle(store, run_id, output or Path(f"support-{run_id}.zip"), log_dir=_log_dir(state, log_dir),
                            redactor=redactor, description=description)
        out.print(f"support bundle: {path}")

    _guard(body)


@app.command()
def runs(state: str | None = StateOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """The runs in the state store, newest first."""

    def body() -> None:
        store = _open_existing(state)
        rows = [{"run_id": r.run_id, "playbook": r.playbook_name, "tenant": r.tenant, "status": r.status,
                 "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at))}
                for r in (store.list_runs() if store is not None else [])]
        if as_json:
            out.print(strict_dumps(rows), markup=False)
            return
        table = Table()
        for col in ("run", "playbook", "tenant", "status", "created (UTC)"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["run_id"], r["playbook"], r["tenant"] or "", r["status"], r["created"])
        out.print(table)

    _guard(body)


@app.command()
def unlock(run_id: str = typer.Argument(...), state: str | None = StateOpt,
           force: bool = typer.Option(False, "--force", help="break it even though its runner looks alive")) -> None:
    """Break a run's lock on purpose (when its runner is known to be gone).

    A lock whose runner looks alive (its process runs here, or its heartbeat is fresh) is broken only with
    --force: that runner then stops at its next checkpoint and writes nothing more, but what it had in flight
    (one blob, one chunk, one request) may still land beside the next runner's work.
    """

    def body() -> None:
        store, _ = _open_run(state, run_id)
        current = store.get_lock(run_id)
        if current is not None and current.stale_reason() is None and not force:
            raise InputError(f"run {run_id} is locked by a runner that looks alive: {current.describe()}",
                             hint="wait for it; or, if you are sure, unlock --force: it stops at its next "
                                  "checkpoint, but what it has in flight may still land beside the next runner")
        lock = store.break_lock(run_id)
        if lock is None:
            out.print(f"run {run_id} was not locked")
        else:
            stale = lock.stale_reason()
            out.print(f"unlocked run {run_id} (was held by {lock.describe()}"
                      + (f"; stale: {stale})" if stale else "; it looked alive: forced)"))
            store.add_event(run_id, None, "lock.broken", f"lock of {lock.host} pid {lock.pid} "
                            f"(generation {lock.generation}) broken by unlock" + ("" if stale else " --force"))

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
            summary = cls.summary or (cls.__doc__ or "").strip().splitlines()[0]
            out.print(f"[bold]{escape(name)}[/bold] — {escape(summary)}", markup=True)
            if kind is not None:
                out.print((cls.__doc__ or "").strip(), markup=False)
                for fname, field in cls.Params.model_fields.items():
                    # a default made by a factory (lists, dicts) is shown as the value it makes
                    req = "required" if field.is_required() else \
                        f"default {field.get_default(call_default_factory=True)!r}"
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


def _click_exceptions() -> Any:
    """Click's exception module: typer ships its own copy of click in newer versions."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer before it carried click
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def main() -> None:
    """The ``migrator`` command. A usage error (unknown option, missing argument) is one line, exit 2."""
    code = _main()
    from migrator.fleet.cli import temporal_used

    if temporal_used():
        # The Temporal SDK's native runtime threads can abort the interpreter's shutdown (SIGABRT after the command
        # succeeded): everything is said and written by now, so leave without the shutdown.
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def _main() -> int:
    exceptions = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except exceptions.NoArgsIsHelpError as exc:
        message = exc.format_message()
        if message:  # with rich help, typer has printed it already
            err.print(message, markup=False, highlight=False)
        return int(ExitCode.INVALID_INPUT)
    except exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "migrator"
        err.print(f"error: {where}: {exc.format_message()} — see: {where} --help", markup=False, highlight=False)
        return int(ExitCode.INVALID_INPUT)
    except exceptions.ClickException as exc:
        err.print(f"error: {exc.format_message()}", markup=False, highlight=False)
        return int(exc.exit_code)
    except typer.Abort:
        err.print("interrupted")
        return int(ExitCode.FAILED)
    return code if isinstance(code, int) else int(ExitCode.OK)


if __name__ == "__main__":
    main()
