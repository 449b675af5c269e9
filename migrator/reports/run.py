"""After a run: forecast against actual for every step, and the read-only window as it really was."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrator.reports.jsontext import strict_dumps
from migrator.reports.plan import _fmt_s as _fmt_long
from migrator.reports.status import run_summary
from migrator.state import StateStore


def _fmt_s(seconds: float | None) -> str:
    """Durations as a report shows them: tenths below ten seconds, where a demo's steps live."""
    if seconds is not None and seconds < 10:
        return f"{seconds:.1f}s"
    return _fmt_long(seconds)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def read_only_window(store: StateStore, run_id: str, run_end: float | None) -> dict[str, Any] | None:
    """From the first ``read_only.start`` event to the last ``read_only.end`` (or the run's end, when the
    source stays read-only after cutover)."""
    events = store.events(run_id)
    starts = [e.ts for e in events if e.type == "read_only.start"]
    if not starts:
        return None
    ends = [e.ts for e in events if e.type == "read_only.end" and e.ts >= starts[0]]
    end = ends[-1] if ends else run_end
    return {"start": _iso(starts[0]), "end": _iso(end), "seconds": (end - starts[0]) if end else None,
            "lifted": bool(ends)}


def report_data(store: StateStore, run_id: str) -> dict[str, Any]:
    summary = run_summary(store, run_id)
    rows = []
    for s in summary["steps"]:
        forecast = (s["estimate"] or {}).get("seconds")
        actual = s["seconds"]
        rows.append({"id": s["id"], "kind": s["kind"], "status": s["status"], "attempts": s["attempts"],
                     "forecast_seconds": forecast, "actual_seconds": actual,
                     "ratio": (actual / forecast) if forecast and actual is not None else None,
                     "basis": (s["estimate"] or {}).get("basis"), "note": s["error"] or s["note"]})
    end = summary["finished_at"] or summary["updated_at"]
    window = read_only_window(store, run_id, end)
    forecast_window = next((e.data.get("seconds") for e in store.events(run_id) if e.type == "forecast"), None)
    return {"run_id": run_id, "tenant": summary["tenant"], "playbook": summary["playbook"],
            "status": summary["status"], "error": summary["error"], "started": _iso(summary["created_at"]),
            "finished": _iso(summary["finished_at"]), "steps": rows, "read_only_window": window,
            "read_only_forecast_seconds": forecast_window}


def _markdown(data: dict[str, Any]) -> str:
    lines = [f"# Migration report: {data['tenant'] or data['playbook']} — run {data['run_id']}", "",
             f"Status **{data['status']}**; started {data['started']}, finished {data['finished'] or '—'}."]
    if data["error"]:
        lines.append(f"Error: {data['error']}")
    win = data["read_only_window"]
    if win:
        lines.append(f"Read-only from {win['start']} to {win['end'] or 'now'}: **{_fmt_s(win['seconds'])}**"
                     + (f" (forecast at the gate: {_fmt_s(data['read_only_forecast_seconds'])})"
                        if data["read_only_forecast_seconds"] is not None else "")
                     + ("; lifted again." if win["lifted"] else "; the source stays read-only after cutover."))
    lines += ["", "| step | kind | status | forecast | actual | actual/forecast |", "|---|---|---|---|---|---|"]
    for r in data["steps"]:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
        lines.append(f"| {r['id']} | {r['kind']} | {r['status']} | {_fmt_s(r['forecast_seconds'])} | "
                     f"{_fmt_s(r['actual_seconds'])} | {ratio} |")
    return "\n".join(lines) + "\n"


def _html(data: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("migrator.reports", "templates"), autoescape=select_autoescape())
    env.filters["dur"] = _fmt_s
    return env.get_template("report.html.j2").render(data=data)


def render_report(store: StateStore, run_id: str, kind: str, out_dir: Path | None = None) -> str:
    data = report_data(store, run_id)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(strict_dumps(data))
        (out_dir / "report.md").write_text(_markdown(data))
        (out_dir / "report.html").write_text(_html(data))
    if kind == "json":
        return strict_dumps(data)
    if kind in ("markdown", "md", "table"):
        return _markdown(data)
    if kind == "html":
        return _html(data)
    from migrator.errors import InputError

    raise InputError(f"--format {kind!r}: use markdown, html or json")
