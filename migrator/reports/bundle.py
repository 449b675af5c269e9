"""The support bundle: one zip with what the provider's support process asks for when something fails.

The provider asks for: a reference number, the customer environment names, the usernames involved, the date
and time of the issue, a detailed description, error messages and log files, steps to reproduce, and any
additional information. Everything passes the redactor (secrets, and personal data such as e-mail addresses
and phone numbers) before it is written; the bundle itself is re-read to prove no known secret is in it. The
environment file is not copied: ``environment.yaml`` is rebuilt from the parsed file with every secret-bearing and
free-text value redacted (:func:`~migrator.secrets.redacted_environment`). Blob names appear only as labels
(:func:`~migrator.secrets.blob_label`), and database errors carry no row values, from where they are raised.
"""

from __future__ import annotations

import json
import platform
import sys
import zipfile
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pydantic
import yaml

from migrator.errors import StateError
from migrator.playbook import Environment
from migrator.reports.jsontext import strict_dumps
from migrator.reports.run import report_data
from migrator.reports.status import run_summary
from migrator.secrets import Redactor, redacted_environment
from migrator.state import StateStore
from migrator.yamlsrc import parse_yaml

_PACKAGES = ("migrator", "azure-identity", "azure-storage-blob", "azure-mgmt-sql", "azure-mgmt-dns", "pyodbc",
             "tenacity", "dnspython", "psycopg")


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def build_bundle(store: StateStore, run_id: str, out: Path, *, log_dir: Path | None,
                 redactor: Redactor | None = None, description: str | None = None) -> Path:
    """Writes the bundle zip for ``run_id`` to ``out`` and returns its path."""
    redactor = redactor or Redactor()
    run = store.require_run(run_id)
    summary = run_summary(store, run_id)
    events = store.events(run_id)
    environment = _environment(run.environment_text)
    tenant: dict[str, Any] = environment.get("tenant") or {} if environment is not None else {}
    failure = next((e for e in reversed(events) if e.type in ("step.failed", "watchdog.abort",
                                                              "step.compensation_failed")), None)
    failed_step = failure.step_id if failure else None
    commands = [e.data.get("command") for e in events if e.type == "command" and e.data.get("command")]
    when = _iso(failure.ts) if failure else _iso(run.updated_at)
    lines = [
        f"# Support bundle — run {run_id}",
        "",
        f"- Reference number: {tenant.get('reference') or '(none given in the environment file)'}",
        f"- Customer environment names: {', '.join(tenant.get('environments') or []) or tenant.get('name', '?')}",
        f"- Usernames involved: {', '.join(tenant.get('contacts') or []) or '(none given)'}",
        f"- Date and time of the issue (UTC): {when}",
        f"- Run status: {run.status}",
        "",
        "## Detailed description",
        "",
        description or (f"Step `{failed_step}` failed: {failure.message}" if failure else
                        f"The run is {run.status}; no step failed."),
        "",
        f"Run error: {run.error or '—'}",
        "",
        "## Error messages",
        "",
        *[f"- {_iso(e.ts)} [{e.step_id or 'run'}] {e.message}" for e in events
          if e.type.endswith(("failed", "abort", "retry", "interrupted"))],
        "",
        "## Steps to reproduce",
        "",
        "The exact commands, in order (secrets are passed by environment variable, not shown):",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Playbook `{run.playbook_name}` ({run.playbook_path}) and the environment file are in this bundle.",
        "",
        "## Additional information",
        "",
        "See versions.json, status.json (every step with attempts, timings and errors), report.json (forecast "
        "against actual), events.jsonl (the audit log) and logs/.",
    ]
    files: dict[str, str] = {
        "README.md": "\n".join(lines) + "\n",
        "status.json": strict_dumps(summary),
        "report.json": strict_dumps(report_data(store, run_id)),
        "events.jsonl": "".join(json.dumps({"id": e.id, "ts": _iso(e.ts), "step": e.step_id, "type": e.type,
                                            "message": e.message, "data": e.data}, default=str) + "\n"
                                for e in events),
        "versions.json": json.dumps(_versions(), indent=2),
        "playbook.yaml": run.playbook_text,
    }
    if environment is not None:
        files["environment.yaml"] = ("# The environment file of the run, rebuilt with every secret-bearing and "
                                     "free-text value redacted.\n"
                                     + yaml.safe_dump(redacted_environment(environment), sort_keys=False,
                                                      allow_unicode=True))
    if log_dir is not None:
        log = log_dir / f"{run_id}.log"
        if log.exists():
            files[f"logs/{log.name}"] = log.read_text(encoding="utf-8", errors="replace")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(f"support-{run_id}/{name}", redactor.redact(text))
    _prove_clean(out, redactor)
    return out


def _environment(text: str | None) -> dict[str, Any] | None:
    """The run's environment file as parsed (and validated, where it still is), or None without one."""
    if not text:
        return None
    try:
        data = parse_yaml(text, "environment").data
    except Exception:  # a bundle is made even from a broken environment file
        return {}
    if not isinstance(data, dict):
        return {}
    try:
        return Environment.model_validate(data).model_dump(exclude_none=True)
    except pydantic.ValidationError:  # no longer valid (an older migrator wrote it): redacted all the same
        return data


def _prove_clean(path: Path, redactor: Redactor) -> None:
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            text = zf.read(name).decode("utf-8", "replace")
            if redactor.redact(text) != text:
                path.unlink()
                raise StateError(f"the support bundle would have held unredacted data in {name}; not written")
