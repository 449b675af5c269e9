"""The dry-run as a report: a terminal table, Markdown, JSON, and an HTML page with a timeline.

The timeline places each step after the steps it needs, using each step's own estimate, with the steps that run
at once sharing the machine's cores; the read-only window is the span from the first step that makes the tenant
read-only to the end of the last step.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from migrator.playbook import LoadedPlaybook
from migrator.reports.calibrate import EngineCost, engine_cost
from migrator.reports.jsontext import strict_dumps
from migrator.runner import StepPlanView


def lanes() -> int:
    """How many steps run side by side at full speed on this machine: one a core (``os.cpu_count()``).

    The runner runs steps as threads of one process, but their time goes mostly where the interpreter lock is
    let go or never held: the services they talk to (the storage emulator, PostgreSQL) in their own processes,
    SQLite reads and MD5 hashing in C. Measured on the demo tenant (30,000 rows, 1,000 blobs) on 2 cores:
    ``db_sync`` 0.22-0.27 s beside the blob steps of the window (``blobs_verify`` alone 0.14 s, mostly the
    emulator listing the live container), as long as alone: the longer of the two, not their sum. (Blob steps
    that keep many threads busy in this process do slow a CPU-bound step beside them; the blob steps keep their
    own work in this process small.) Beyond the cores, the steps running at once share them.
    """
    return max(1, os.cpu_count() or 1)


def schedule(order: list[str], needs: dict[str, list[str]], work: dict[str, float], *, slots: int,
             lanes: int = 1) -> dict[str, tuple[float, float]]:
    """Start and end of every step when each starts as soon as the steps it needs are done (in ``order``, at most
    ``slots`` at once, as the runner does) and the steps running at once share ``lanes``: with ``k`` running,
    each does its ``work`` (seconds when alone) at ``min(1, lanes / k)`` of its own speed.
    """
    remaining = dict(work)
    pending = list(order)
    running: list[str] = []
    done: set[str] = set()
    spans: dict[str, tuple[float, float]] = {}
    started: dict[str, float] = {}
    now = 0.0
    while pending or running:
        for step_id in list(pending):
            if len(running) >= slots:
                break
            if all(d in done or d not in work for d in needs.get(step_id, [])):
                pending.remove(step_id)
                running.append(step_id)
                started[step_id] = now
        if not running:  # needs that can never be met (the playbook loader refuses those)
            break
        rate = min(1.0, lanes / len(running))
        step = min(remaining[s] for s in running) / rate
        now += step
        for step_id in list(running):
            remaining[step_id] -= step * rate
            if remaining[step_id] <= 1e-12:
                running.remove(step_id)
                done.add(step_id)
                spans[step_id] = (started[step_id], now)
    return spans


def step_seconds(view: StepPlanView | None) -> float | None:
    """What the run will spend on a step by its plan: its estimate; for a step its check finds done now, what the
    run still spends on it (``details["run_seconds"]``: it checks and verifies again, and an earlier step may yet
    give it work)."""
    if view is None:
        return None
    if view.status == "done":
        run = view.details.get("run_seconds") if isinstance(view.details, dict) else None
        return float(run) if isinstance(run, int | float) else 0.0
    return view.estimate_seconds


def timeline(loaded: LoadedPlaybook, views: list[StepPlanView], engine: EngineCost | None = None) -> dict[str, Any]:
    """Start and end (seconds from the start of the run) of every step, and the read-only window.

    Every step also costs the engine its state-store transactions (``engine``; measured on this machine when not
    given): a step without an estimate (deferred: its params are known only in the run) counts only that.
    Steps that overlap share this machine's cores (:func:`schedule`, :func:`lanes`): more steps at once than
    cores stretch each of them by how many run over the cores.
    """
    engine = engine if engine is not None else engine_cost()
    overhead = engine.step_seconds
    by_id = {v.step_id: v for v in views}
    unknown: list[str] = []
    work: dict[str, float] = {}
    for step in loaded.steps:
        view = by_id.get(step.id)
        estimate = step_seconds(view)
        if view is not None and estimate is None and view.status != "done":
            unknown.append(step.id)
        work[step.id] = overhead + (estimate or 0.0)
    shared = lanes()
    spans = schedule([s.id for s in loaded.steps], {s.id: list(s.needs) for s in loaded.steps}, work,
                     slots=max(1, int(loaded.playbook.concurrency or 1)), lanes=shared)
    rows: list[dict[str, Any]] = []
    for step in loaded.steps:
        view = by_id.get(step.id)
        start, end = spans.get(step.id, (0.0, work[step.id]))
        rows.append({"id": step.id, "kind": step.spec.uses, "start": start, "end": end, "seconds": end - start,
                     "work_seconds": work[step.id], "status": view.status if view else "?"})
    total = max((r["end"] for r in rows), default=0.0)
    ro_start = next((r["start"] for r in rows if r["kind"].endswith("read_only")), None)
    window = {"start": ro_start, "end": total, "seconds": total - ro_start} if ro_start is not None else None
    return {"steps": rows, "total_seconds": total, "read_only_window": window, "unestimated": unknown,
            "engine_overhead": engine.as_dict(), "lanes": shared}


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _as_json(loaded: LoadedPlaybook, views: list[StepPlanView]) -> dict[str, Any]:
    env = loaded.environment
    return {
        "playbook": loaded.playbook.name,
        "tenant": env.tenant.name if env else None,
        "steps": [asdict(v) for v in views],
        "timeline": timeline(loaded, views),
        "ok": all(v.status != "error" for v in views),
    }


def _markdown(loaded: LoadedPlaybook, views: list[StepPlanView]) -> str:
    data = _as_json(loaded, views)
    tl = data["timeline"]
    lines = [f"# Migration plan: {data['tenant'] or loaded.playbook.name}", "",
             f"Playbook **{loaded.playbook.name}**, {len(views)} steps. "
             f"Estimated total: **{_fmt_s(tl['total_seconds'])}**."]
    if tl["read_only_window"]:
        lines.append(f"The tenant is read-only for about **{_fmt_s(tl['read_only_window']['seconds'])}**.")
    if tl["unestimated"]:
        lines.append(f"No estimate yet for: {', '.join(tl['unestimated'])}.")
    lines += ["", "| step | kind | would | estimate | why |", "|---|---|---|---|---|"]
    for v in views:
        would = "; ".join(v.changes) if v.changes else ("nothing" if v.status == "done" else v.status)
        lines.append(f"| {v.step_id} | {v.kind} | {would} | {_fmt_s(v.estimate_seconds)} | "
                     f"{v.reason.replace('|', '/')} |")
    problems = [v for v in views if v.status == "error"]
    if problems:
        lines += ["", "## Problems to fix before the migration", ""]
        lines += [f"- **{v.step_id}**: {v.reason}" for v in problems]
    return "\n".join(lines) + "\n"


def _table(views: list[StepPlanView]) -> str:
    table = Table(title="plan (dry-run: nothing was changed)", title_justify="left")
    for col in ("step", "kind", "status", "would change", "estimate", "reason"):
        table.add_column(col)
    colours = {"done": "green", "change": "yellow", "deferred": "cyan", "error": "red"}
    for v in views:
        # only the status is markup: commands and reasons hold brackets ("s/[abc]/x/") that must show as written
        table.add_row(escape(v.step_id), escape(v.kind), f"[{colours.get(v.status, 'white')}]{escape(v.status)}[/]",
                      escape("\n".join(v.changes)), _fmt_s(v.estimate_seconds), escape(v.reason))
    buf = io.StringIO()
    Console(file=buf, width=160, force_terminal=False).print(table)
    return buf.getvalue()


def _html(loaded: LoadedPlaybook, views: list[StepPlanView]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    data = _as_json(loaded, views)
    env = Environment(loader=PackageLoader("migrator.reports", "templates"), autoescape=select_autoescape())
    env.filters["dur"] = _fmt_s
    return env.get_template("plan.html.j2").render(data=data, views=views)


def render_plan(loaded: LoadedPlaybook, views: list[StepPlanView], kind: str, *, out_dir: Path | None = None) -> str:
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "plan.json").write_text(strict_dumps(_as_json(loaded, views)))
        (out_dir / "plan.md").write_text(_markdown(loaded, views))
        (out_dir / "plan.html").write_text(_html(loaded, views))
    if kind == "json":
        return strict_dumps(_as_json(loaded, views))
    if kind in ("markdown", "md"):
        return _markdown(loaded, views)
    if kind == "table":
        return _table(views)
    from migrator.errors import InputError

    raise InputError(f"--format {kind!r}: use table, markdown or json")
