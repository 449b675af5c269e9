"""database.sync from a PostgreSQL source against the full presync copy, in one run.

The demo tenant (``fixtures.tenant.generate``) in a scratch PostgreSQL database, backed up to a folder and
restored into a second one (the presync: the baseline), then ``--changed`` (1%) of its users and tiles changed in
place, then ``database.sync`` (what runs inside the read-only window). Prints both times, the ratio sync / presync,
and how many source rows the sync read (``rows_read``: the rows that crossed the network, against the tenant's).

    .venv/bin/python bench/db_sync.py                  # 200,000 rows
    .venv/bin/python bench/db_sync.py --rows 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from fixtures.tenant.db import connect  # noqa: E402
from fixtures.tenant.generate import TenantSize, change_rows, generate  # noqa: E402
from migrator.steps.database import Backup, Restore, Sync  # noqa: E402
from migrator.testing import MemoryContext, run_step  # noqa: E402

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"


def endpoint(name: str) -> dict[str, Any]:
    return {"dialect": "postgresql",
            "connection": f"Driver={{PostgreSQL Unicode}};Server={HOST};Port={PORT};Database={name};Uid={USER}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of users and tiles changed after presync")
    args = parser.parse_args(argv)
    admin = psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True)
    source, target = (f"bench_sync_{uuid.uuid4().hex[:10]}" for _ in range(2))
    for name in (source, target):
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(f"postgresql://{USER}@{HOST}:{PORT}/{source}") as db:
            generate(db, TenantSize.for_rows(args.rows))
        with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
            backup = {"kind": "folder", "path": str(Path(tmp) / "backup")}
            started = time.perf_counter()
            run_step(Backup("presync", Backup.Params.model_validate({"database": endpoint(source), "to": backup})),
                     MemoryContext())
            run_step(Restore("presync_restore", Restore.Params.model_validate(
                {"backup": backup, "database": endpoint(target)})), MemoryContext())
            presync = time.perf_counter() - started
            with connect(f"postgresql://{USER}@{HOST}:{PORT}/{source}") as db:
                changed = change_rows(db, args.changed)
            started = time.perf_counter()
            _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
                {"source": endpoint(source), "database": endpoint(target), "backup": backup})), MemoryContext())
            sync = time.perf_counter() - started
    finally:
        for name in (source, target):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    print(f"tenant: {args.rows} rows; {changed} changed after the presync")
    print(f"presync (backup + restore): {presync:6.2f}s")
    print(f"sync:                       {sync:6.2f}s  ({out['changed_ranges']} of {out['ranges']} ranges changed; "
          f"{out.get('rows_read', 'n/a')} source rows read; mismatches {out['mismatches']})")
    print(f"ratio sync / presync: {sync / presync:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
