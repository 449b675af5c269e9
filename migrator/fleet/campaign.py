"""Campaign files: YAML → typed models, validated before anything starts (one-line errors, exit 2).

A campaign names one playbook, the tenants (each an environment file with a target region and a source site),
the waves (a canary, then waves by count or percentage), the failure policy, the concurrency caps, whether the
cutover waits for an operator's approval, and the retry policy of a tenant. Relative paths are relative to the
campaign file. Every tenant's environment file is loaded with the playbook exactly as ``migrator validate``
would, so a campaign that validates has no tenant that would fail to load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import Field

from migrator.errors import InputError, ValidationError
from migrator.playbook import Duration, LoadedPlaybook, StrictModel, load, load_yaml_model
from migrator.window import parse_dayparts
from migrator.yamlsrc import SourceDoc, load_yaml_file

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _wave_size(value: int | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError("expected a count (3) or a percentage of the tenants (\"25%\")")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a wave holds at least one tenant")
        return value
    match = _PERCENT.match(str(value))
    if not match or not 0 < float(match.group(1)) <= 100:
        raise ValueError(f"expected a count (3) or a percentage of the tenants (\"25%\"), not {value!r}")
    return f"{float(match.group(1)):g}%"


class TenantEntry(StrictModel):
    """One tenant of the campaign."""

    environment: str = Field(description="the tenant's environment file (relative to the campaign file)")
    region: str = Field("default", pattern=NAME, description="target region (caps read-only tenants per region)")
    site: str = Field("default", pattern=NAME, description="source site (caps tenants in flight per site)")
    window: str | None = Field(None, description="daypart for the read-only part; default: the campaign's")


class Waves(StrictModel):
    canary: int = Field(1, ge=0, description="tenants migrated first, alone, before any wave")
    sizes: list[int | str] = Field(default_factory=list,
                                   description="each wave's size: a count or a percentage of all tenants; "
                                               "the tenants left over form a last wave")

    @pydantic.field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> object:
        if isinstance(value, list):
            return [_wave_size(v) for v in value]
        return value


class FailurePolicy(StrictModel):
    max_failed: int | None = Field(None, ge=0, description="stop starting tenants when more than this many failed")
    max_failed_percent: float | None = Field(None, ge=0, le=100,
                                             description="... or more than this share (%) of one wave failed")
    running: Literal["finish", "rollback"] = Field(
        "finish", description="what tenants already running do then: finish, or roll back unless past DNS")


class Caps(StrictModel):
    global_: int = Field(4, alias="global", ge=1, le=1000, description="tenants in flight at once")
    per_region: int | None = Field(None, ge=1, description="tenants read-only at once per target region")
    per_site: int | None = Field(None, ge=1, description="tenants in flight at once per source site")


class TenantRetry(StrictModel):
    attempts: int = Field(5, ge=1, le=100, description="tries of one phase of a tenant, the first included")
    initial: Duration = Field(2.0, description="first backoff")
    max: Duration = Field(30.0, description="longest backoff")
    heartbeat_timeout: Duration = Field(30.0, description="a worker silent this long is presumed dead")
    lock_ttl: Duration | None = Field(None, description="the run lock's time to live; default the heartbeat "
                                                        "timeout, so a lost host's run is taken over next")


class Campaign(StrictModel):
    name: str = Field(pattern=NAME)
    description: str | None = None
    playbook: str = Field(description="the playbook every tenant runs (relative to the campaign file)")
    state: str = Field(description="the shared state store: a postgresql:// URL every worker reaches")
    window: str = Field("night", description="default daypart (or DATE/DAYPART) of the read-only part")
    task_queue: str = Field("migrator-fleet", pattern=NAME)
    approval: Literal["none", "cutover"] = Field("none", description="cutover: wait for `fleet approve` before "
                                                                      "the DNS transfer")
    options: dict[str, str | int | bool] = Field(default_factory=dict,
                                                 description="runner options (as `migrator run` takes them)")
    tenants: list[TenantEntry] = Field(min_length=1)
    waves: Waves = Field(default_factory=lambda: Waves())
    failure: FailurePolicy = Field(default_factory=lambda: FailurePolicy())
    caps: Caps = Field(default_factory=lambda: Caps())
    retry: TenantRetry = Field(default_factory=lambda: TenantRetry())
    clock_offset: Duration = Field(0.0, description="how far the campaign's clock runs ahead of the wall clock: "
                                                    "every daypart opens (and ends) that much sooner. 0 but to "
                                                    "rehearse a campaign in the daytime, or in tests")

    @pydantic.field_validator("state")
    @classmethod
    def _shared_state(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("a campaign's state store is shared by every worker host: give a postgresql:// URL")
        if "${" in value or re.search(r"://[^/@]*:[^/@]*@", value):
            raise ValueError("no password in the state URL: use a password file (PGPASSFILE) or trust/cert auth")
        return value


@dataclass
class CampaignTenant:
    """A tenant as the campaign sees it: its names, labels and its loaded playbook."""

    name: str
    index: int
    environment_path: Path
    region: str
    site: str
    window: str
    time_zone: str
    dayparts: dict[str, tuple[int, int]]
    loaded: LoadedPlaybook


@dataclass
class LoadedCampaign:
    campaign: Campaign
    path: Path
    doc: SourceDoc
    playbook_path: Path
    tenants: list[CampaignTenant]

    @property
    def by_name(self) -> dict[str, CampaignTenant]:
        return {t.name: t for t in self.tenants}


def _relative(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (base.parent / path).resolve()


def load_campaign(path: str | Path) -> LoadedCampaign:
    """Loads a campaign and every tenant's environment with the playbook. Raises :class:`PlaybookError`."""
    from migrator.registry import load_registry

    doc = load_yaml_file(path)
    campaign: Campaign = load_yaml_model(Campaign, doc)
    file = doc.file
    base = Path(path).resolve()
    playbook_path = _relative(base, campaign.playbook)
    if not playbook_path.is_file():
        raise ValidationError(f"playbook {playbook_path} not found", file=file, line=doc.line_of(("playbook",)),
                              field="playbook")
    registry = load_registry()
    tenants: list[CampaignTenant] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(campaign.tenants):
        where = ("tenants", i, "environment")
        env_path = _relative(base, entry.environment)
        if not env_path.is_file():
            raise ValidationError(f"environment file {env_path} not found", file=file, line=doc.line_of(where),
                                  field=f"tenants[{i}].environment")
        loaded = load(playbook_path, env_path, registry=registry)
        assert loaded.environment is not None
        name = loaded.environment.tenant.name
        if name in seen:
            raise ValidationError(f"tenant {name!r} is in the campaign twice (also tenants[{seen[name]}])",
                                  file=file, line=doc.line_of(where), field=f"tenants[{i}].environment")
        seen[name] = i
        window = entry.window or campaign.window
        window_path: tuple[str | int, ...] = ("tenants", i, "window") if entry.window else ("window",)
        window_field = f"tenants[{i}].window" if entry.window else "window"
        try:
            dayparts = parse_dayparts({k: v.model_dump() for k, v in (loaded.environment.dayparts or {}).items()})
        except InputError as exc:
            raise ValidationError(exc.message, file=str(env_path), field="dayparts") from None
        part = window.rpartition("/")[2]
        if part not in dayparts:
            raise ValidationError(f"window {window!r}: tenant {name} has no daypart {part!r} "
                                  f"(it has {', '.join(dayparts)})", file=file, line=doc.line_of(window_path),
                                  field=window_field)
        tenants.append(CampaignTenant(
            name=name, index=i, environment_path=env_path, region=entry.region, site=entry.site, window=window,
            time_zone=loaded.environment.tenant.timezone,
            dayparts={n: (d.start, d.end) for n, d in dayparts.items()}, loaded=loaded))
    _check_waves(campaign, doc, len(tenants))
    return LoadedCampaign(campaign, base, doc, playbook_path, tenants)


def _check_waves(campaign: Campaign, doc: SourceDoc, count: int) -> None:
    if campaign.waves.canary >= count and count > 1:
        raise ValidationError(f"a canary of {campaign.waves.canary} leaves no tenant for the waves ({count} "
                              "tenants)", file=doc.file, line=doc.line_of(("waves", "canary")), field="waves.canary")
