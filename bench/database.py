"""Benchmark: database.backup + database.restore (PostgreSQL → PostgreSQL) against its peers.

Every tool moves the same table of mixed types (default 1,000,000 rows, about 240 MB in PostgreSQL) in the same
run: ``pg_dump -Fc`` + ``pg_restore``; ``pg_dump | psql``; and the COPY pipe, ``COPY … TO STDOUT | COPY … FROM
STDIN`` into a table without its key, the primary key added after (the ceiling of a logical copy). The script
prints each time, migrator's (backup + restore, each with its verify) and the ratios (targets: at most 1.5 x
``pg_dump -Fc`` + ``pg_restore`` and at most 2.5 x the COPY pipe), and this process's peak RSS, which must not
grow with the table (backup and restore stream). Needs PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres)
and its client programs.

    .venv/bin/python bench/database.py --rows 1000000

``--mode window-delta``: the read-only window's database.sync after a presync, with 1% of the rows changed
(``--churn``), once with Change-Tracking-shaped input (the changed keys given, as ``CHANGETABLE(CHANGES …)``
gives them on SQL Server: only those rows are read) and once as today's range compare (every range of the
source read again); prints both and their ratio, which is what change tracking buys inside the window.

    .venv/bin/python bench/database.py --mode window-delta --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrator.steps.database import Backup, Restore
from migrator.testing import MemoryContext, run_step

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"


def admin(sql: str) -> None:
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


def odbc(name: str) -> str:
    return f"Driver={{PostgreSQL Unicode}};Server={HOST};Port={PORT};Database={name};Uid={USER}"


#: The bench table, without its primary key (the COPY pipe adds it after the load).
PEOPLE = """CREATE TABLE people (
    id bigint NOT NULL, first_name text, surname text, email text, job_title text,
    amount numeric(18,4), score double precision, active boolean, born date,
    updated timestamptz, ref uuid, note text, avatar bytea)"""


def make_source(name: str, rows: int) -> str:
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname=name, autocommit=True) as conn:
        conn.execute(PEOPLE)
        conn.execute("ALTER TABLE people ADD PRIMARY KEY (id)")
        conn.execute(f"""INSERT INTO people SELECT g, 'first ' || g, 'surname ' || (g % 5000),
            'user' || g || '@example.test', 'job title number ' || (g % 300), g * 1.2345, g / 7.0, g % 3 = 0,
            DATE '1950-01-01' + (g % 20000), TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 second',
            md5(g::text)::uuid, repeat('note ', 10 + g % 20), decode(md5(g::text) || md5((g + 1)::text), 'hex')
            FROM generate_series(1, {rows}) g""")
        conn.execute("VACUUM ANALYZE people")
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('people'))").fetchone()
    return str(size[0] if size else "?")


def dump_to_psql(source: str, target: str) -> float:
    """Seconds of ``pg_dump -t people <source> | psql <target>`` (plain SQL: COPY, then the key)."""
    start = time.perf_counter()
    dump = subprocess.Popen(["pg_dump", "-h", HOST, "-U", USER, "-t", "people", source], stdout=subprocess.PIPE)
    subprocess.run(["psql", "-h", HOST, "-U", USER, "-q", "-v", "ON_ERROR_STOP=1", "-d", target],
                   stdin=dump.stdout, stdout=subprocess.DEVNULL, check=True)
    assert dump.stdout is not None
    dump.stdout.close()
    if dump.wait() != 0:
        raise SystemExit("pg_dump failed")
    return time.perf_counter() - start


def copy_pipe(source: str, target: str) -> float:
    """Seconds of ``COPY people TO STDOUT | COPY people FROM STDIN`` (psql on both ends) into the table without
    its key, and the primary key added after: the ceiling of a logical copy."""
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname=target, autocommit=True) as conn:
        conn.execute(PEOPLE)
    psql = ["psql", "-h", HOST, "-U", USER, "-q", "-v", "ON_ERROR_STOP=1", "-d"]
    start = time.perf_counter()
    out = subprocess.Popen([*psql, source, "-c", "COPY people TO STDOUT"], stdout=subprocess.PIPE)
    subprocess.run([*psql, target, "-c", "COPY people FROM STDIN"], stdin=out.stdout, check=True,
                   stdout=subprocess.DEVNULL)
    assert out.stdout is not None
    out.stdout.close()
    if out.wait() != 0:
        raise SystemExit("COPY TO STDOUT failed")
    subprocess.run([*psql, target, "-c", "ALTER TABLE people ADD PRIMARY KEY (id)"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def window_delta(rows: int, chunk_rows: int, churn: float) -> None:
    """database.sync with the changed keys given (change tracking's shape) against the range compare."""
    from migrator.providers.database.base import ChangedKeys
    from migrator.providers.database.postgresql import PostgresDatabase
    from migrator.steps.database import Sync

    tag = uuid.uuid4().hex[:8]
    names = {k: f"bench_{k}_{tag}" for k in ("src", "mig")}
    for name in names.values():
        admin(f'CREATE DATABASE "{name}"')
    every = max(1, round(1 / churn))
    changed = [[g] for g in range(every, rows + 1, every)]
    # PostgreSQL stands in for a change-tracking source: a version recorded by the backup, the keys given.
    PostgresDatabase.change_version = lambda self: 1  # type: ignore[method-assign]
    try:
        size = make_source(names["src"], rows)
        print(f"table: {rows} rows, {size} in PostgreSQL; {len(changed)} rows changed ({churn:.1%})")
        with tempfile.TemporaryDirectory() as tmp:
            backup = {"kind": "folder", "path": str(Path(tmp) / "backup")}
            source = {"dialect": "postgresql", "connection": odbc(names["src"])}
            target = {"dialect": "postgresql", "connection": odbc(names["mig"])}
            run_step(Backup("backup", Backup.Params.model_validate(
                {"database": source, "to": backup, "chunk_rows": chunk_rows})), MemoryContext())
            run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": target})),
                     MemoryContext())
            with psycopg.connect(host=HOST, port=PORT, user=USER, dbname=names["src"], autocommit=True) as conn:
                conn.execute(f"UPDATE people SET note = note || ' changed' WHERE id % {every} = 0")
            params = {"source": source, "database": target, "backup": backup}

            def timed_sync(keys: list[list[int]] | None) -> tuple[float, dict[str, object]]:
                PostgresDatabase.changed_keys = (  # type: ignore[method-assign]
                    lambda self, table, since: ChangedKeys(keys, "keys given") if keys is not None
                    else ChangedKeys(None, "ranges compared"))
                start = time.perf_counter()
                # a run of its own each: a sync finds the delta its run wrote done
                _, out = run_step(Sync("db_sync", Sync.Params.model_validate(params)),
                                  MemoryContext(run_id=f"window-{keys is not None}"))
                return time.perf_counter() - start, dict(out)

            # The keys-given sync first; the range compare then writes the same rows (same values) again.
            tracked, out = timed_sync(changed)
            assert out["mismatches"] == [] and out["tables_by_change_tracking"] == ["people"], out
            ranged, out = timed_sync(None)
            assert out["mismatches"] == [] and out["tables_by_change_tracking"] == [], out
            print(f"database.sync, changed keys given (change tracking): {tracked:.2f} s")
            print(f"database.sync, every range read again (range compare): {ranged:.2f} s "
                  f"({out['changed_ranges']} of {out['ranges']} ranges changed)")
            print(f"ratio (range compare / keys given): {ranged / tracked:.1f}x")
    finally:
        for name in names.values():
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--mode", choices=("dump", "window-delta"), default="dump")
    parser.add_argument("--churn", type=float, default=0.01, help="window-delta: share of rows changed")
    args = parser.parse_args()
    if args.mode == "window-delta":
        window_delta(args.rows, args.chunk_rows, args.churn)
        return

    tag = uuid.uuid4().hex[:8]
    names = {k: f"bench_{k}_{tag}" for k in ("src", "dump", "psql", "pipe", "mig")}
    for name in names.values():
        admin(f'CREATE DATABASE "{name}"')
    try:
        size = make_source(names["src"], args.rows)
        print(f"table: {args.rows} rows, {size} in PostgreSQL")
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "people.dump"
            t0 = time.perf_counter()
            subprocess.run(["pg_dump", "-h", HOST, "-U", USER, "-Fc", "-t", "people", "-f", str(dump),
                            names["src"]], check=True)
            t1 = time.perf_counter()
            subprocess.run(["pg_restore", "-h", HOST, "-U", USER, "-d", names["dump"], str(dump)], check=True)
            t2 = time.perf_counter()
            baseline = t2 - t0
            print(f"pg_dump -Fc: {t1 - t0:.1f} s, pg_restore: {t2 - t1:.1f} s, total {baseline:.1f} s "
                  f"({dump.stat().st_size / 1e6:.0f} MB)")
            plain = dump_to_psql(names["src"], names["psql"])
            print(f"pg_dump | psql: {plain:.1f} s")
            pipe = copy_pipe(names["src"], names["pipe"])
            print(f"COPY TO STDOUT | COPY FROM STDIN, primary key after: {pipe:.1f} s")

            backup = {"kind": "folder", "path": str(Path(tmp) / "backup")}
            source = {"dialect": "postgresql", "connection": odbc(names["src"])}
            target = {"dialect": "postgresql", "connection": odbc(names["mig"])}
            t3 = time.perf_counter()
            _, out = run_step(Backup("backup", Backup.Params.model_validate(
                {"database": source, "to": backup, "chunk_rows": args.chunk_rows})), MemoryContext())
            t4 = time.perf_counter()
            run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": target})),
                     MemoryContext())
            t5 = time.perf_counter()
            ours = t5 - t3
            print(f"database.backup: {t4 - t3:.1f} s ({out['bytes'] / 1e6:.0f} MB in {out['chunks']} chunks), "
                  f"database.restore: {t5 - t4:.1f} s, total {ours:.1f} s")
            print(f"ratio (migrator / pg_dump+pg_restore): {ours / baseline:.2f}x (target <= 1.5x)")
            print(f"ratio (migrator / pg_dump | psql): {ours / plain:.2f}x")
            print(f"ratio (migrator / COPY pipe): {ours / pipe:.2f}x (target <= 2.5x)")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"peak RSS of this process: {peak:.0f} MB")
    finally:
        for name in names.values():
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
