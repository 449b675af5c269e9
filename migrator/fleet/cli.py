"""``migrator fleet``: validate, plan, start and steer campaigns; run a worker host. Thin, like the main CLI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import typer

from migrator.console import err, out
from migrator.console import guard as _guard
from migrator.errors import ExitCode, InputError
from migrator.fleet.client import DEFAULT_ADDRESS, Connection

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Campaigns of many tenants on Temporal: waves, windows, caps, host failover.")
T = TypeVar("T")
#: Tenants ``fleet plan`` plans at once.
PLAN_THREADS = 8

CampaignArg = typer.Argument(..., help="campaign file (YAML)")
InstanceArg = typer.Argument(..., help="the campaign's name (or the --id it was started with)")
TemporalOpt = typer.Option(DEFAULT_ADDRESS, "--temporal", envvar="MIGRATOR_TEMPORAL", help="Temporal HOST:PORT")
NamespaceOpt = typer.Option("default", "--namespace", envvar="MIGRATOR_TEMPORAL_NAMESPACE")
TlsOpt = typer.Option(False, "--tls", help="connect with TLS (implied by --api-key)")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="MIGRATOR_TEMPORAL_API_KEY",
                         help="Temporal Cloud API key as a reference: '${env:NAME}' (never the key itself)")


_temporal_used = False


def temporal_used() -> bool:
    """Whether this process talked to Temporal (its SDK's runtime threads then outlive the command)."""
    return _temporal_used


def _run(coro: Coroutine[Any, Any, T]) -> T:
    global _temporal_used
    _temporal_used = True
    return asyncio.run(coro)


def _connection(temporal: str, namespace: str, tls: bool, api_key: str | None) -> Connection:
    return Connection(temporal, namespace, tls, api_key)


@app.command()
def validate(campaign: Path = CampaignArg) -> None:
    """Check a campaign file, its playbook and every tenant's environment file. Starts nothing."""

    def body() -> None:
        from migrator.fleet.campaign import load_campaign
        from migrator.fleet.schedule import wave_sizes

        loaded = load_campaign(campaign)
        c = loaded.campaign
        sizes = wave_sizes(len(loaded.tenants), c.waves.canary, c.waves.sizes)
        out.print(f"{campaign}: ok — {len(loaded.tenants)} tenants in {len(sizes)} waves "
                  f"({', '.join(str(n) for n in sizes)}), playbook {loaded.playbook_path.name}", markup=False)

    _guard(body)


@app.command()
def plan(campaign: Path = CampaignArg,
         out_dir: Path | None = typer.Option(None, "--out", help="write fleet-plan.md/.json/.html and each "
                                                                  "tenant's plan here"),
         as_json: bool = typer.Option(False, "--json", help="print JSON instead of Markdown"),
         start: str | None = typer.Option(None, "--start", help="when the campaign starts (ISO 8601; default now, "
                                                             "on the campaign's clock)"),
         assume: str | None = typer.Option(None, "--assume", help="PRESYNC/READONLY seconds for every tenant "
                                                                   "instead of each tenant's `migrator plan`")) -> None:
    """Dry-run of the campaign: every tenant's forecast and the schedule it implies under caps and windows."""

    def body() -> None:
        from migrator.fleet.campaign import load_campaign
        from migrator.fleet.report import schedule_data, schedule_markdown, write_plan
        from migrator.fleet.schedule import TenantForecast, assign_waves, simulate
        from migrator.window import Daypart

        loaded = load_campaign(campaign)
        c = loaded.campaign
        try:
            begin = datetime.fromisoformat(start) if start else datetime.now(UTC) + timedelta(seconds=c.clock_offset)
        except ValueError:
            raise InputError(f"--start {start!r} is not an ISO 8601 time") from None
        if begin.tzinfo is None:
            begin = begin.replace(tzinfo=UTC)
        waves = assign_waves([t.name for t in loaded.tenants], c.waves.canary, c.waves.sizes)
        if assume:
            forecasts = {t.name: _assumed(assume) for t in loaded.tenants}
        else:
            # Each tenant's `migrator plan` mostly waits (its services, the commands its checks run): side by side.
            with ThreadPoolExecutor(max_workers=min(PLAN_THREADS, len(loaded.tenants))) as pool:
                planned = pool.map(lambda t: _forecast(t.loaded, out_dir, t.name), loaded.tenants)
                forecasts = dict(zip([t.name for t in loaded.tenants], planned, strict=True))
        tenants = [TenantForecast(t.name, waves[t.name], t.region, t.site, t.window, t.time_zone,
                                  {n: Daypart(n, a, b) for n, (a, b) in t.dayparts.items()},
                                  forecasts[t.name]["presync_seconds"], forecasts[t.name]["read_only_seconds"])
                   for t in loaded.tenants]
        schedule = simulate(tenants, begin, cap_global=c.caps.global_, cap_region=c.caps.per_region,
                            cap_site=c.caps.per_site)
        data = schedule_data(c.name, schedule, forecasts)
        if out_dir is not None:
            write_plan(data, out_dir)
        out.print(json.dumps(data, indent=2) if as_json else schedule_markdown(data), markup=False)
        if not data["fits"]:
            raise typer.Exit(int(ExitCode.FAILED))

    _guard(body)


def _assumed(text: str) -> dict[str, Any]:
    try:
        presync, read_only = (float(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--assume {text!r}: expected PRESYNC/READONLY seconds, e.g. 600/300") from None
    return {"presync_seconds": presync, "read_only_seconds": read_only, "basis": "--assume"}


class _NoStore:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the dry-run must not use the state store ({name})")


def _forecast(loaded: Any, out_dir: Path | None, name: str) -> dict[str, Any]:
    """One tenant's ``migrator plan``: the time before read-only and the read-only part."""
    from migrator.reports.plan import render_plan, timeline
    from migrator.runner import Runner

    views = Runner(_NoStore()).plan(loaded)  # type: ignore[arg-type]
    if out_dir is not None:
        render_plan(loaded, views, "json", out_dir=out_dir / "tenants" / name)
    tl = timeline(loaded, views)
    window = tl["read_only_window"] or {"start": tl["total_seconds"], "seconds": 0.0}
    return {"presync_seconds": float(window["start"]), "read_only_seconds": float(window["seconds"]),
            "total_seconds": float(tl["total_seconds"]), "unestimated": tl["unestimated"],
            "errors": [v.step_id for v in views if v.status == "error"], "basis": "migrator plan"}


@app.command()
def start(campaign: Path = CampaignArg,
          instance: str | None = typer.Option(None, "--id", help="name this start of the campaign (default: the "
                                                                  "campaign's name); tenants' run ids derive from it"),
          wait: bool = typer.Option(False, "--wait", help="wait until the campaign ends, then print its status"),
          temporal: str = TemporalOpt, namespace: str = NamespaceOpt, tls: bool = TlsOpt,
          api_key: str | None = ApiKeyOpt) -> None:
    """Start a campaign on the Temporal cluster (validated first: a bad file starts nothing)."""

    def body() -> None:
        from migrator.fleet.campaign import load_campaign
        from migrator.fleet.client import campaign_workflow_id, connect, start_campaign

        loaded = load_campaign(campaign)
        name = instance or loaded.campaign.name
        if not all(ch.isalnum() or ch in "._-" for ch in name):
            raise InputError(f"--id {name!r}: letters, digits, . _ - only")
        connection = _connection(temporal, namespace, tls, api_key)

        async def go() -> Any:
            client = await connect(connection)
            workflow_id = await start_campaign(client, loaded, name)
            err.print(f"campaign {name} started: workflow {workflow_id} on {connection.address} "
                      f"(task queue {loaded.campaign.task_queue})", markup=False)
            if wait:
                await client.get_workflow_handle(campaign_workflow_id(name)).result()
                return await _status(client, name)
            return None

        data = _run(go())
        if data is not None:
            out.print(_render_status(data), markup=False)
            raise typer.Exit(0 if data["state"] == "completed" and not data["reason"] else int(ExitCode.FAILED))

    _guard(body)


async def _status(client: Any, name: str) -> dict[str, Any]:
    from migrator.fleet.client import campaign_status
    from migrator.fleet.report import status_data

    return status_data(await campaign_status(client, name))


def _render_status(data: dict[str, Any]) -> str:
    from migrator.fleet.report import status_table

    return status_table(data)


@app.command()
def status(instance: str = InstanceArg, as_json: bool = typer.Option(False, "--json"),
           temporal: str = TemporalOpt, namespace: str = NamespaceOpt, tls: bool = TlsOpt,
           api_key: str | None = ApiKeyOpt) -> None:
    """Per tenant: wave, state, current step, read-only since, forecast vs actual, run id; the campaign's counts."""

    def body() -> None:
        from migrator.fleet.client import connect

        connection = _connection(temporal, namespace, tls, api_key)

        async def go() -> dict[str, Any]:
            return await _status(await connect(connection), instance)

        data = _run(go())
        out.print(json.dumps(data, indent=2) if as_json else _render_status(data), markup=False)

    _guard(body)


def _signal(instance: str, connection: Connection, signal: str, *args: Any) -> None:
    from migrator.fleet.client import connect, signal_campaign

    async def go() -> None:
        await signal_campaign(await connect(connection), instance, signal, *args)

    _run(go())


@app.command()
def pause(instance: str = InstanceArg, temporal: str = TemporalOpt, namespace: str = NamespaceOpt,
          tls: bool = TlsOpt, api_key: str | None = ApiKeyOpt) -> None:
    """Start no new tenant and no new read-only part until `fleet resume`; running parts go on."""
    _guard(lambda: _signal(instance, _connection(temporal, namespace, tls, api_key), "pause"))
    err.print(f"campaign {instance}: paused")


@app.command()
def resume(instance: str = InstanceArg, temporal: str = TemporalOpt, namespace: str = NamespaceOpt,
           tls: bool = TlsOpt, api_key: str | None = ApiKeyOpt) -> None:
    """Go on after `fleet pause`."""
    _guard(lambda: _signal(instance, _connection(temporal, namespace, tls, api_key), "resume"))
    err.print(f"campaign {instance}: resumed")


@app.command()
def abort(instance: str = InstanceArg, reason: str = typer.Option("", "--reason", help="said in `fleet status`"),
          temporal: str = TemporalOpt, namespace: str = NamespaceOpt, tls: bool = TlsOpt,
          api_key: str | None = ApiKeyOpt) -> None:
    """Start nothing more; roll back every tenant that has not passed its DNS transfer; finish the others."""
    _guard(lambda: _signal(instance, _connection(temporal, namespace, tls, api_key), "abort", reason))
    err.print(f"campaign {instance}: abort requested")


@app.command()
def approve(instance: str = InstanceArg, tenants: list[str] = typer.Argument(None, help="default: every tenant "
                                                                                         "awaiting approval"),
            temporal: str = TemporalOpt, namespace: str = NamespaceOpt, tls: bool = TlsOpt,
            api_key: str | None = ApiKeyOpt) -> None:
    """Let tenants waiting for approval go on to their DNS transfer (campaigns with `approval: cutover`)."""

    def body() -> list[str]:
        from migrator.fleet.client import approve_tenants, connect

        connection = _connection(temporal, namespace, tls, api_key)

        async def go() -> list[str]:
            return await approve_tenants(await connect(connection), instance, list(tenants or []))

        return _run(go())

    chosen = _guard(body)
    err.print(f"campaign {instance}: approved {', '.join(chosen) if chosen else 'no tenant (none awaiting approval)'}")


@app.command()
def worker(task_queue: str = typer.Option("migrator-fleet", "--task-queue", help="the campaign's task_queue"),
           identity: str | None = typer.Option(None, "--identity", help="this host's name in Temporal and the runs "
                                                                        "(default HOST:PID)"),
           max_tenants: int = typer.Option(4, "--max-tenants", min=1, help="tenant phases run at once here"),
           log_dir: Path = typer.Option(Path(".migrator/logs"), "--log-dir", help="run logs of this host"),
           temporal: str = TemporalOpt, namespace: str = NamespaceOpt, tls: bool = TlsOpt,
           api_key: str | None = ApiKeyOpt) -> None:
    """Run a worker host: it takes tenants of any campaign on its task queue until SIGINT/SIGTERM."""

    def body() -> None:
        import logging

        from migrator.fleet.worker import run_worker

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        connection = _connection(temporal, namespace, tls, api_key)
        _run(run_worker(connection, task_queue=task_queue, identity=identity or f"{socket.gethostname()}:"
                        f"{os.getpid()}", max_tenants=max_tenants, log_dir=log_dir))

    _guard(body)
