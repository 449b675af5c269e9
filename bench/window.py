"""The read-only window against a full copy, in one run, on the demo's local stand-ins.

1. Stand the demo up (``fixtures.demo.DemoStack``) with the tenant at the chosen size.
2. Full copy (the baseline): the whole blob store copied to the cloud backup container by ``blobs.presync`` and
   put live from there by ``blobs.put_live`` (the playbook's ``presync`` and ``presync_live``, run alone through
   ``migrator run``), plus the full database backup and restore of step 4 (``db_backup`` + ``db_restore``, which
   now run while the tenant is live) — what the tenant would be read-only for if nothing were copied ahead.
3. The tenant in use: ``--changed`` (1%) of the rows and blobs change after that presync.
4. The migration: ``playbooks/workspace365-local.yaml`` through ``migrator run``; while the tenant is live its
   presync copies only the changed blobs and the database is backed up and restored whole; inside the window
   ``db_sync`` applies only the rows changed since. The read-only window is measured from the
   ``read_only.start`` event to the end of the run (the source stays read-only after the cutover).

Prints both times and the ratio window / full copy against its target: at most 5% at the default size, at most
3% at the large one (``--rows 200000 --blobs 5000 --blob-bytes 500000000``), on a quiet machine. ``--events``
also lists every event inside the window.

    .venv/bin/python bench/window.py                      # 20,000 rows, 500 blobs / 50 MB
    .venv/bin/python bench/window.py --rows 200000 --blobs 5000 --blob-bytes 500000000   # the issue's size
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from fixtures.demo import PLAYBOOK, DemoSize, DemoStack, drop_database  # noqa: E402
from fixtures.tenant.blobs import change_blobs  # noqa: E402
from fixtures.tenant.db import connect  # noqa: E402
from fixtures.tenant.generate import change_rows  # noqa: E402

#: The steps that run while the tenant is read-only (db_sync beside blobs_sync and blobs_live).
WINDOW_STEPS = ("read_only", "db_sync", "blobs_sync", "blobs_live", "blobs_verify", "cutover_guard",
                "target_writable", "smoke", "dns_transfer", "dns_verify", "done")


#: The target ratio window / full copy at the default size and at the large one (rows, blobs, blob bytes).
TARGETS = {(20_000, 500, 50_000_000): 0.05, (200_000, 5_000, 500_000_000): 0.03}


def target_text(rows: int, blobs: int, blob_bytes: int) -> str:
    """The target that applies at this size, or both where neither does."""
    target = TARGETS.get((rows, blobs, blob_bytes))
    return f"target <= {target:.0%}" if target is not None else "targets: <= 5% at the default size, <= 3% at the large"


def migrator(stack: DemoStack, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT, env=stack.child_environ(),
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"migrator {args[0]} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")


def step_times(state_db: Path, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's (start, end), in seconds since the epoch."""
    with sqlite3.connect(state_db) as conn:
        rows = conn.execute("SELECT step_id, started_at, finished_at FROM steps WHERE run_id = ?", (run_id,))
        return {r[0]: (float(r[1]), float(r[2])) for r in rows if r[1] is not None and r[2] is not None}


def step_seconds(state_db: Path, run_id: str) -> dict[str, float]:
    return {step: end - start for step, (start, end) in step_times(state_db, run_id).items()}


def read_only_window(state_db: Path, run_id: str) -> tuple[float, float]:
    """The read-only window's start (seconds since the epoch) and length."""
    with sqlite3.connect(state_db) as conn:
        start = conn.execute("SELECT data FROM events WHERE run_id = ? AND type = 'read_only.start'",
                             (run_id,)).fetchone()
        end = conn.execute("SELECT ts FROM events WHERE run_id = ? AND type = 'run.succeeded'",
                           (run_id,)).fetchone()
    began = datetime.fromisoformat(json.loads(start[0])["at"]).timestamp()
    return began, float(end[0]) - began


def window_events(state_db: Path, run_id: str, began: float) -> list[tuple[float, str, str, str]]:
    """Every event of the run from the read-only window's start on: (seconds from it, step, type, message)."""
    with sqlite3.connect(state_db) as conn:
        rows = conn.execute("SELECT ts, step_id, type, message FROM events WHERE run_id = ? AND ts >= ? "
                            "ORDER BY id", (run_id, began)).fetchall()
    return [(float(ts) - began, step or "", kind, message) for ts, step, kind, message in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--blobs", type=int, default=500)
    parser.add_argument("--blob-bytes", type=int, default=50_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows and blobs changed after presync")
    parser.add_argument("--events", action="store_true", help="also list every event inside the window")
    args = parser.parse_args(argv)
    size = DemoSize(rows=args.rows, blobs=args.blobs, blob_bytes=args.blob_bytes)
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp:
        stack = DemoStack(Path(tmp) / "demo", size, database=f"w365_bench_{uuid.uuid4().hex[:10]}")
        print(f"tenant: {args.rows} rows, {args.blobs} blobs, {args.blob_bytes / 1e6:.0f} MB; "
              f"{args.changed:.0%} changed after the presync")
        started = time.monotonic()
        with stack:
            print(f"set-up: {time.monotonic() - started:.1f}s")
            env_file = stack.write_environment()
            state_db = stack.state_dir / "state.db"
            # 2. the baseline: a full copy of the blob store, to the backup and live, through the same steps
            full = yaml.safe_load(PLAYBOOK.read_text())
            full["steps"] = [dict(s, needs=[]) for s in full["steps"] if s["id"] == "presync"] + \
                [dict(s, needs=["presync"]) for s in full["steps"] if s["id"] == "presync_live"]
            full_playbook = Path(tmp) / "full-copy.yaml"
            full_playbook.write_text(yaml.safe_dump(full))
            migrator(stack, "run", str(full_playbook), "-e", str(env_file), "--state", str(stack.state_dir),
                     "--run-id", "full-copy")
            copied = step_seconds(state_db, "full-copy")
            blobs_full = copied["presync"] + copied["presync_live"]
            put_live = copied["presync_live"]
            # 3. the tenant in use after the presync
            with connect(str(stack.source_db)) as db:
                rows_changed = change_rows(db, args.changed)
            blobs_changed = len(change_blobs(stack.source_files, stack.blob_specs, args.changed))
            # 4. the migration
            migrator(stack, "run", str(PLAYBOOK), "-e", str(env_file), "--state", str(stack.state_dir),
                     "--run-id", "migration")
            times = step_times(state_db, "migration")
            seconds = {step: end - start for step, (start, end) in times.items()}
            began, window = read_only_window(state_db, "migration")
            events = window_events(state_db, "migration", began) if args.events else []
        drop_database(stack.database)
    database_full = seconds["db_backup"] + seconds["db_restore"]
    full_copy = blobs_full + database_full
    print(f"changed after presync: {rows_changed} rows, {blobs_changed} blobs")
    print(f"full copy:        {full_copy:8.1f}s  (blobs to backup and live {blobs_full:.1f}s + database backup "
          f"and restore {database_full:.1f}s)")
    print(f"read-only window: {window:8.1f}s  (while live: blob delta presync {seconds['presync']:.1f}s, "
          f"database presync {database_full:.1f}s)")
    target = target_text(args.rows, args.blobs, args.blob_bytes)
    print(f"ratio window / full copy: {window / full_copy:.1%}  ({target}; against the copies to the backup "
          f"and the database alone, without putting the blobs live: {window / (full_copy - put_live):.1%})")
    inside = sorted((s for s in WINDOW_STEPS if s in times), key=lambda s: times[s][0])
    print("inside the window (step: start .. end, seconds from read-only):")
    for step in inside:
        start, end = times[step]
        print(f"  {step:16s} {start - began:6.2f} .. {end - began:6.2f}  ({end - start:.2f}s)")
    if events:
        print("events inside the window (seconds from read-only, step, type: message):")
        for at, step, kind, message in events:
            print(f"  {at:7.3f}  {step:16s} {kind}: {message[:100]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
