"""What ``fleet plan`` and ``fleet status`` show: the schedule as Markdown, JSON and an HTML timeline (one lane per
tenant, its read-only window shaded), and the campaign's status joined with each tenant's run in the state store.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from migrator.fleet.payloads import CampaignStatus
from migrator.fleet.schedule import Schedule


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def schedule_data(campaign: str, schedule: Schedule, forecasts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for t in schedule.tenants:
        rows.append({"tenant": t.name, "wave": t.wave, "region": t.region, "site": t.site, "start": _iso(t.start),
                     "read_only_start": _iso(t.read_only_start), "read_only_end": _iso(t.read_only_end),
                     "read_only_seconds": round(t.read_only_seconds, 1), "window": t.window.name,
                     "window_start": _iso(t.window.start), "window_end": _iso(t.window.end),
                     "window_local": f"{t.window.start.isoformat(timespec='minutes')} .. "
                                     f"{t.window.end.isoformat(timespec='minutes')}",
                     "fits": t.fits, "note": t.note, "forecast": forecasts.get(t.name, {})})
    return {"campaign": campaign, "start": _iso(schedule.start), "end": _iso(schedule.end),
            "waves": max((t.wave for t in schedule.tenants), default=-1) + 1,
            "fits": all(t.fits for t in schedule.tenants), "tenants": rows}


def schedule_markdown(data: dict[str, Any]) -> str:
    lines = [f"# Fleet plan: {data['campaign']}", "",
             f"{len(data['tenants'])} tenants in {data['waves']} waves, from {data['start']} to {data['end']} (UTC).",
             "", "| wave | tenant | region | site | starts | read-only (UTC) | seconds | window (tenant's zone) "
                 "| fits |",
             "|---:|---|---|---|---|---|---:|---|---|"]
    for t in data["tenants"]:
        lines.append(f"| {t['wave']} | {t['tenant']} | {t['region']} | {t['site']} | {t['start']} | "
                     f"{t['read_only_start']} .. {t['read_only_end'][11:]} | {t['read_only_seconds']:.0f} | "
                     f"{t['window']}: {t['window_local']} | {'yes' if t['fits'] else 'NO: ' + t['note']} |")
    return "\n".join(lines) + "\n"


_HTML = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>Fleet plan: {{ d.campaign }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; }
.lane { position: relative; height: 22px; margin: 3px 0 3px 14em; background: #f4f4f4; }
.label { position: absolute; left: -14em; width: 13.5em; font-size: 12px; line-height: 22px; overflow: hidden; }
.window { position: absolute; top: 0; height: 22px; background: #cfe3ff; }
.presync { position: absolute; top: 6px; height: 10px; background: #9bbf85; }
.ro { position: absolute; top: 3px; height: 16px; background: #d9534f; }
</style></head><body>
<h1>Fleet plan: {{ d.campaign }}</h1>
<p>{{ d.tenants|length }} tenants in {{ d.waves }} waves, {{ d.start }} to {{ d.end }} (UTC).
Shaded: each tenant's read-only window in its own time zone; green: presync while live; red: read-only.</p>
{% for t in lanes %}<div class="lane"
 title="{{ t.tenant }}: read-only {{ t.read_only_start }} .. {{ t.read_only_end }}">
<span class="label">w{{ t.wave }} {{ t.tenant }} ({{ t.region }}/{{ t.site }})</span>
<span class="window" style="left: {{ t.w0 }}%; width: {{ t.ww }}%"></span>
<span class="presync" style="left: {{ t.p0 }}%; width: {{ t.pw }}%"></span>
<span class="ro" style="left: {{ t.r0 }}%; width: {{ t.rw }}%"></span>
</div>{% endfor %}
</body></html>
""")


def schedule_html(data: dict[str, Any]) -> str:
    def ts(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    begin = min([ts(data["start"])] + [ts(t["window_start"]) for t in data["tenants"]])
    end = max([ts(data["end"])] + [min(ts(t["window_end"]), ts(data["end"]) + 3600) for t in data["tenants"]])
    span = max(end - begin, 1.0)

    def pct(a: float) -> float:
        return round(100.0 * (min(max(a, begin), end) - begin) / span, 3)

    lanes = []
    for t in data["tenants"]:
        w0, w1 = pct(ts(t["window_start"])), pct(ts(t["window_end"]))
        p0, p1 = pct(ts(t["start"])), pct(ts(t["read_only_start"]))
        r1 = pct(ts(t["read_only_end"]))
        lanes.append({**t, "w0": w0, "ww": max(w1 - w0, 0.2), "p0": p0, "pw": max(p1 - p0, 0.2), "r0": p1,
                      "rw": max(r1 - p1, 0.3)})
    return _HTML.render(d=data, lanes=lanes)


def write_plan(data: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fleet-plan.json").write_text(json.dumps(data, indent=2))
    (out_dir / "fleet-plan.md").write_text(schedule_markdown(data))
    (out_dir / "fleet-plan.html").write_text(schedule_html(data))


# --------------------------------------------------------------------------------------------------- status


def status_data(status: CampaignStatus) -> dict[str, Any]:
    """The campaign's status with, per tenant, what its run in the state store says."""
    data = asdict(status)
    store = None
    if status.state_store:
        from migrator.state import open_store

        try:
            store = open_store(status.state_store)
        except Exception:  # the status still shows what Temporal knows
            store = None
    try:
        for tenant in data["tenants"]:
            tenant.update(_run_facts(store, tenant["run_id"]) if store is not None else {})
    finally:
        if store is not None:
            store.close()
    return data


def _run_facts(store: Any, run_id: str) -> dict[str, Any]:
    from migrator.reports.run import report_data

    if store.get_run(run_id) is None:
        return {"run_status": None, "current_step": None, "read_only_since": None, "read_only_seconds": None,
                "forecast_read_only_seconds": None}
    report = report_data(store, run_id)
    running = [s["id"] for s in report["steps"] if s["status"] == "running"]
    done = [s["id"] for s in report["steps"] if s["status"] == "done"]
    window = report["read_only_window"] or {}
    finished = report["status"] in ("succeeded", "rolled_back", "rollback_failed")
    current = None if finished else (running[0] if running else (done[-1] if done else None))
    return {"run_status": report["status"], "current_step": current,
            "read_only_since": window.get("start"), "read_only_seconds": window.get("seconds"),
            "forecast_read_only_seconds": report["read_only_forecast_seconds"]}


def status_table(data: dict[str, Any]) -> str:
    def secs(value: Any) -> str:
        return "-" if value is None else f"{float(value):.1f}s"

    lines = [f"campaign {data['campaign']}: {data['state']}" + (" (paused)" if data["paused"] and
                                                                 data["state"] != "paused" else "")]
    if data["reason"]:
        lines.append(f"  why: {data['reason']}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(data["counts"].items()))
    lines.append(f"  tenants: {counts}   waves 0-{data['waves'] - 1} (0: the canary, when there is one), "
                 f"now {data['current_wave']}")
    header = f"{'wave':>4}  {'tenant':16} {'state':18} {'step':14} {'read-only since':26} " \
             f"{'ro fcst/actual':15} {'run id':28} worker"
    lines.append(header)
    for t in data["tenants"]:
        ro = f"{secs(t.get('forecast_read_only_seconds'))}/{secs(t.get('read_only_seconds'))}"
        lines.append(f"{t['wave']:>4}  {t['name']:16} {t['state']:18} {t.get('current_step') or '-'!s:14} "
                     f"{t.get('read_only_since') or '-'!s:26} {ro:15} {t['run_id']:28} "
                     f"{','.join(t['workers']) or '-'}")
        if t.get("error"):
            lines.append(f"        {t['error']}")
    return "\n".join(lines)
