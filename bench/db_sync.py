"""database.sync against the full presync copy, in one run, from a PostgreSQL or a SQLite source.

The demo tenant (``fixtures.tenant.generate``) in a scratch PostgreSQL database (``--source sqlite``: a SQLite
file, as the demo's self-hosted tenant has it), backed up to a folder and restored into a second PostgreSQL
database (the presync: the baseline), then ``--changed`` (1%) of its users and tiles changed in place, then
``database.sync`` (what runs inside the read-only window). Prints both times, the ratio sync / presync, and how
many source rows the sync read (``rows_read``: the rows read as values, against the tenant's).

    .venv/bin/python bench/db_sync.py                  # 200,000 rows
    .venv/bin/python bench/db_sync.py --rows 1000000
    .venv/bin/python bench/db_sync.py --source sqlite  # the window bench's source
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
    """The migrator endpoint of a scratch PostgreSQL database, or of a SQLite file (a path ending ``.db``)."""
    if name.endswith(".db"):
        return {"dialect": "sqlite", "connection": name}
    return {"dialect": "postgresql",
            "connection": f"Driver={{PostgreSQL Unicode}};Server={HOST};Port={PORT};Database={name};Uid={USER}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of users and tiles changed after presync")
    parser.add_argument("--source", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args(argv)
    admin = psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True)
    source, target = (f"bench_sync_{uuid.uuid4().hex[:10]}" for _ in range(2))
    created = [target] if args.source == "sqlite" else [source, target]
    for name in created:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
            if args.source == "sqlite":
                source = str(Path(tmp) / "source.db")
            location = source if args.source == "sqlite" else f"postgresql://{USER}@{HOST}:{PORT}/{source}"
            with connect(location) as db:
                generate(db, TenantSize.for_rows(args.rows))
            backup = {"kind": "folder", "path": str(Path(tmp) / "backup")}
            started = time.perf_counter()
            run_step(Backup("presync", Backup.Params.model_validate({"database": endpoint(source), "to": backup})),
                     MemoryContext())
            run_step(Restore("presync_restore", Restore.Params.model_validate(
                {"backup": backup, "database": endpoint(target)})), MemoryContext())
            presync = time.perf_counter() - started
            with connect(location) as db:
                changed = change_rows(db, args.changed)
            started = time.perf_counter()
            _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
                {"source": endpoint(source), "database": endpoint(target), "backup": backup})), MemoryContext())
            sync = time.perf_counter() - started
    finally:
        for name in created:
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
