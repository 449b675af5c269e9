"""Personal data planted in rows, blob names and the environment file never reaches an artefact.

One run of a small tenant fails on purpose at every place a value or a name could slip into a message: a
database backup of a SQLite source with a text value that is not UTF-8, a restore into PostgreSQL that breaks a
unique key (whose DETAIL line quotes the value), a database sync that breaks it again, a database verify, a blob
sync whose write fails on the file system (whose error quotes the path), and a blob verify that finds missing and
changed blobs (and rolls the run back). Then every artefact is read: the plan, stderr and stdout, the log file,
the state store (all of it but the item keys and the environment file as given, which the README says it holds),
``status --json``, the report in every format and the unzipped support bundle. None holds a marker.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrator.secrets import blob_label
from tests.support.engine import Cli
from tests.support.postgres import PostgresServer, ScratchDatabase

pytestmark = [pytest.mark.integration]

FIRST, SURNAME, JOB = "Qzfirstname", "Qzsurname", "Qzjobtitle"
LATIN = "Qzlatinvalue"  # inside the text that is not UTF-8
DUP_SURNAME = "Qzdupsurname"  # the value a unique key refuses twice
BLOB_FIRST, BLOB_SURNAME, BLOB_JOB = "Qzblobfirst", "Qzblobsurname", "Qzblobjob"
ENV_FREE_TEXT = ("Qzenvnotes", "Qzenvowner")
SECRET = "Qzsecretpassword"
MARKERS = (FIRST, SURNAME, JOB, LATIN, DUP_SURNAME, BLOB_FIRST, BLOB_SURNAME, BLOB_JOB, *ENV_FREE_TEXT, SECRET)

PEOPLE = "CREATE TABLE people (id INTEGER PRIMARY KEY, first_name TEXT, surname TEXT, email TEXT, job_title TEXT)"
BLOBS = {  # name -> content; every name but the last is copied by the presync
    f"hr/{BLOB_FIRST} {BLOB_SURNAME} - {BLOB_JOB}.pdf": b"cv one",
    f"hr/{BLOB_FIRST}2 {BLOB_SURNAME}2.pdf": b"cv two",
    f"hr/contracts/{BLOB_SURNAME}3 contract.pdf": b"contract",
    "icons/logo.png": b"png",
}
MISSING, CHANGED, BLOCKED = (f"hr/{BLOB_FIRST}2 {BLOB_SURNAME}2.pdf", f"hr/contracts/{BLOB_SURNAME}3 contract.pdf",
                             f"hr/{BLOB_FIRST}4 {BLOB_SURNAME}4 - {BLOB_JOB}4.pdf")


def sqlite_people(path: Path, rows: list[tuple[Any, ...]]) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute(PEOPLE)
        conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()
    return str(path)


def person(i: int, surname: str = SURNAME) -> tuple[Any, ...]:
    return (i, f"{FIRST}{i}", f"{surname}{i}" if surname == SURNAME else surname,
            f"{FIRST.lower()}{i}@contoso.example", f"{JOB} {i}")


def pg_endpoint(db: ScratchDatabase) -> dict[str, str]:
    return {"dialect": "postgresql", "connection": db.odbc + ";Pwd=${env:QZ_DB_PASSWORD}"}


def write_inputs(tmp: Path, postgres: PostgresServer) -> tuple[ScratchDatabase, ScratchDatabase]:
    bad = sqlite_people(tmp / "bad.db", [person(1), person(2)])
    with sqlite3.connect(bad) as conn:  # legacy Latin-1 bytes in a text column
        conn.execute("UPDATE people SET job_title = CAST(? AS TEXT) WHERE id = 2",
                     [f"Chief {LATIN} Officer, Z\xfcrich".encode("latin-1")])
    conn.close()
    dup = sqlite_people(tmp / "dup.db", [person(1, DUP_SURNAME), person(2, DUP_SURNAME)])
    good = sqlite_people(tmp / "good.db", [person(i) for i in range(1, 6)])
    refusing, synced = postgres.create_database(), postgres.create_database()
    refusing.sql("CREATE TABLE people (id bigint PRIMARY KEY, first_name text, surname text UNIQUE, email text, "
                 "job_title text)")
    source = tmp / "files"
    (tmp / "copies").mkdir()  # so that the plan lists both sides of every blob step
    for name, content in BLOBS.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)

    def folder(name: str) -> dict[str, str]:
        return {"kind": "folder", "path": str(tmp / name)}

    env = {
        "tenant": {"name": "contoso", "reference": "SUP-4711", "environments": ["contoso-prod"],
                   "contacts": ["j.admin"]},
        "source": {"bad_db": {"dialect": "sqlite", "connection": bad},
                   "dup_db": {"dialect": "sqlite", "connection": dup},
                   "good_db": {"dialect": "sqlite", "connection": good},
                   "blobs": folder("files"), "owner": f"{ENV_FREE_TEXT[1]} (HR)"},
        "target": {"refusing_db": pg_endpoint(refusing), "db": pg_endpoint(synced), "blobs": folder("copies")},
        "settings": {"notes": f"call {ENV_FREE_TEXT[0]} before the window", "bk_bad": folder("bk-bad"),
                     "bk_dup": folder("bk-dup"), "bk_good": folder("bk-good")},
    }
    (tmp / "env.yaml").write_text(yaml.safe_dump(env))
    # The changes the failures need, made by the run itself between its steps (values read from the files).
    (tmp / "break_db.py").write_text(textwrap.dedent(f"""
        import sqlite3, psycopg
        with psycopg.connect({_pg_kwargs(synced)!r}) as pg:
            pg.execute("CREATE UNIQUE INDEX people_surname ON people (surname)")
        with sqlite3.connect({good!r}) as conn:
            conn.execute("UPDATE people SET surname = (SELECT surname FROM people WHERE id = 1) WHERE id = 2")
    """))
    (tmp / "break_blobs.py").write_text(textwrap.dedent(f"""
        import json, pathlib, sys
        tmp = pathlib.Path({str(tmp)!r})
        names = json.loads((tmp / "names.json").read_text())
        if sys.argv[1] == "before-sync":  # a new blob the destination cannot take: a folder holds its name
            (tmp / "files" / names["blocked"]).write_bytes(b"new cv")
            (tmp / "copies" / names["blocked"]).mkdir(parents=True)
        else:  # copies lost and changed behind the sync's back
            (tmp / "copies" / names["missing"]).unlink()
            (tmp / "copies" / names["changed"]).write_bytes(b"CONTRACT")
    """))
    (tmp / "names.json").write_text(json.dumps({"blocked": BLOCKED, "missing": MISSING, "changed": CHANGED}))
    continue_ = {"on_failure": "continue"}
    python = sys.executable
    steps = [
        {"id": "backup_bad", "uses": "database.backup", "needs": [], **continue_,
         "with": {"database": "${source.bad_db}", "to": "${settings.bk_bad}"}},
        {"id": "backup_dup", "uses": "database.backup", "needs": [],
         "with": {"database": "${source.dup_db}", "to": "${settings.bk_dup}"}},
        {"id": "restore_dup", "uses": "database.restore", "needs": ["backup_dup"], **continue_,
         "with": {"backup": "${settings.bk_dup}", "database": "${target.refusing_db}"}},
        {"id": "backup_good", "uses": "database.backup", "needs": [],
         "with": {"database": "${source.good_db}", "to": "${settings.bk_good}"}},
        {"id": "restore_good", "uses": "database.restore", "needs": ["backup_good"],
         "with": {"backup": "${settings.bk_good}", "database": "${target.db}"}},
        {"id": "break_db", "uses": "shell", "needs": ["restore_good"],
         "with": {"run": f"{python} break_db.py", "undo": "true", "cwd": str(tmp)}},
        {"id": "db_sync", "uses": "database.sync", "needs": ["break_db"], **continue_,
         "with": {"source": "${source.good_db}", "database": "${target.db}", "backup": "${settings.bk_good}"}},
        {"id": "db_verify", "uses": "database.verify", "needs": ["break_db"], **continue_,
         "with": {"source": "${source.good_db}", "database": "${target.db}"}},
        {"id": "presync", "uses": "blobs.presync", "needs": [],
         "with": {"source": "${source.blobs}", "destination": "${target.blobs}"}},
        {"id": "break_blobs", "uses": "shell", "needs": ["presync"],
         "with": {"run": f"{python} break_blobs.py before-sync", "undo": "true", "cwd": str(tmp)}},
        {"id": "blobs_sync", "uses": "blobs.sync", "needs": ["break_blobs"], **continue_,
         "with": {"source": "${source.blobs}", "destination": "${target.blobs}"}},
        {"id": "break_copies", "uses": "shell", "needs": ["break_blobs"],
         "with": {"run": f"{python} break_blobs.py after-sync", "undo": "true", "cwd": str(tmp)}},
        {"id": "blobs_verify", "uses": "blobs.verify", "needs": ["break_copies"],
         "on_failure": "rollback", "with": {"source": "${source.blobs}", "destination": "${target.blobs}"}},
    ]
    (tmp / "playbook.yaml").write_text(yaml.safe_dump(
        {"name": "privacy", "concurrency": 1, "retry": {"attempts": 1}, "steps": steps}, sort_keys=False))
    return refusing, synced


def _pg_kwargs(db: ScratchDatabase) -> str:
    from tests.support.postgres import HOST, PORT, USER

    return f"host={HOST} port={PORT} user={USER} dbname={db.name}"


def state_dump(path: Path) -> str:
    """Every value of the state store, but the item keys and the environment file as given (see README)."""
    out = []
    with sqlite3.connect(path) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            keep = [c for c in columns if (table, c) not in (("items", "key"), ("runs", "environment_text"))]
            for row in conn.execute(f"SELECT {', '.join(keep)} FROM {table}"):
                out.append(" ".join(str(v) for v in row))
    conn.close()
    return "\n".join(out)


def test_personal_data_in_rows_blob_names_and_environment_reaches_no_artefact(
        tmp_path: Path, postgres: PostgresServer, plugin_path: Path) -> None:
    write_inputs(tmp_path, postgres)
    cli = Cli(tmp_path, str(tmp_path / "state"), plugin_path, {"QZ_DB_PASSWORD": SECRET})
    artefacts: dict[str, str] = {}

    plan = cli("plan", "playbook.yaml", "-e", "env.yaml", "--out", "plan")
    artefacts["plan output"] = plan.stdout + plan.stderr
    for file in (tmp_path / "plan").glob("*"):
        artefacts[f"plan/{file.name}"] = file.read_text()

    run = cli("run", "playbook.yaml", "-e", "env.yaml", "--run-id", "r1", timeout=300)
    artefacts["run output"] = run.stdout + run.stderr
    assert run.returncode == 4, artefacts["run output"]

    status = cli("status", "r1", "--json")
    assert status.returncode == 0, status.stderr
    artefacts["status --json"] = status.stdout + status.stderr
    steps = {s["id"]: s for s in json.loads(status.stdout)["steps"]}
    report = cli("report", "r1", "--format", "markdown", "--out", "report")
    assert report.returncode == 0, report.stderr
    artefacts["report output"] = report.stdout + report.stderr
    for file in (tmp_path / "report").glob("*"):
        artefacts[f"report/{file.name}"] = file.read_text()
    bundle = cli("support-bundle", "r1", "-o", "bundle.zip")
    assert bundle.returncode == 0, bundle.stderr
    artefacts["bundle output"] = bundle.stdout + bundle.stderr
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        for name in zf.namelist():
            artefacts[f"bundle {name}"] = zf.read(name).decode()
    artefacts["log"] = (tmp_path / "state" / "logs" / "r1.log").read_text()
    artefacts["state store"] = state_dump(tmp_path / "state" / "state.db")

    found = {f"{marker} in {where}" for where, text in artefacts.items() for marker in MARKERS if marker in text}
    assert not found, "\n".join(sorted(found))
    # Every failure happened, and each names what to look at: table, column and key; blob folder and label.
    errors = {step: steps[step]["error"] or "" for step in
              ("backup_bad", "restore_dup", "db_sync", "db_verify", "blobs_sync", "blobs_verify")}
    assert all(errors.values()), errors
    assert "people" in errors["backup_bad"] and "job_title" in errors["backup_bad"] \
        and "id=2" in errors["backup_bad"], errors["backup_bad"]
    assert "people" in errors["restore_dup"] and "surname" in errors["restore_dup"], errors["restore_dup"]
    assert "people" in errors["db_sync"], errors["db_sync"]
    assert blob_label(BLOCKED) in errors["blobs_sync"], errors["blobs_sync"]
    assert blob_label(MISSING) in errors["blobs_verify"] and blob_label(CHANGED) in errors["blobs_verify"], \
        errors["blobs_verify"]
    environment = yaml.safe_load(artefacts["bundle support-r1/environment.yaml"])
    assert environment["tenant"]["reference"] == "SUP-4711"
    assert environment["source"]["good_db"]["dialect"] == "sqlite"
