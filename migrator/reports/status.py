"""A run's state as plain data: what ``status --json`` prints and what reports and bundles start from."""

from __future__ import annotations

from typing import Any

from migrator.state import StateStore


def run_summary(store: StateStore, run_id: str) -> dict[str, Any]:
    run = store.require_run(run_id)
    steps = []
    for rec in sorted(store.get_steps(run_id).values(), key=lambda r: (r.seq is None, r.seq or 0, r.started_at or 0)):
        done, nbytes = store.count_items(run_id, rec.step_id, "done")
        seconds = (rec.finished_at - rec.started_at) if rec.finished_at and rec.started_at else None
        steps.append({
            "id": rec.step_id, "kind": rec.kind, "status": rec.status, "attempts": rec.attempts,
            "applied": rec.applied, "note": rec.note, "error": rec.error, "items_done": done, "bytes_done": nbytes,
            "started_at": rec.started_at, "finished_at": rec.finished_at, "seconds": seconds,
            "outputs": rec.outputs, "estimate": rec.estimate,
        })
    lock = store.get_lock(run_id)
    return {
        "run_id": run.run_id, "playbook": run.playbook_name, "tenant": run.tenant, "status": run.status,
        "error": run.error, "created_at": run.created_at, "updated_at": run.updated_at,
        "finished_at": run.finished_at, "options": run.options, "steps": steps,
        "lock": {"holder": lock.describe(), "host": lock.host, "pid": lock.pid, "generation": lock.generation,
                 "stale": lock.stale_reason()}
        if lock else None,
    }
