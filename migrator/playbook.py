"""Playbooks and environment files: YAML → typed models, references, and validation before anything runs.

A *playbook* lists steps (``id``, ``uses``, ``with``, ``needs``, ``retry``, ``timeout``, ``on_failure``).
An *environment file* describes one tenant: ``tenant`` (name, reference, time zone), ``source``, ``target``,
``settings`` and ``dayparts``.

References inside string values:

``${source.a.b}``, ``${target.x}``, ``${settings.x}``, ``${tenant.name}``, ``${dayparts...}``
    values of the environment file, substituted when the playbook loads. A reference that is the whole value
    keeps its type (a mapping stays a mapping); inside a longer string it is interpolated.
``${steps.ID.outputs.NAME}``, ``${run.id}``
    resolved just before the step runs. ``ID`` must be a step this one needs (directly or not).
``${env:NAME}``
    a secret. Only fields typed :class:`~migrator.secrets.Secret` accept it; the variable must be set when the
    playbook is validated, but its value is read only at the moment of use and never stored.

Everything is checked at load: unknown keys, types, unknown kinds, duplicate ids, unknown or cyclic ``needs``,
unresolvable, unterminated or malformed references, missing environment variables, numbers that are not finite
(``.nan``, ``.inf``) or are ``true``/``false``, and literal secrets: a field whose name says it holds a secret
(``password``, ``*_key``, ``token``, ``secret``, ``authorization``...), and a ``Pwd=``/``Password=``/``AccountKey=``
part of a connection string or the password of a URL, must be a ``${env:NAME}`` reference (or a template holding
one), never the value itself. Each failure is one line naming file, line and field.

The checks of values that the models do not make are in :mod:`migrator.playbook_checks`; the models, references
and loading stay here together, one module, because loading is one pass that uses all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from migrator.errors import InputError, ValidationError
from migrator.playbook_checks import (
    ENV_NAME,
    REF,
    bools_as_numbers,
    literal_secrets,
    non_finite,
    reference_problem,
    secret_leaks,
)
from migrator.registry import Registry
from migrator.secrets import ENV_REF
from migrator.step import Params, Step
from migrator.window import daypart_from_clock, daypart_name_problem
from migrator.yamlsrc import Path_, SourceDoc, load_yaml_file, parse_yaml

STEP_ID = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
LATE_ROOTS = ("steps", "run")
ENV_ROOTS = ("tenant", "source", "target", "settings", "dayparts")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Nothing in a migration waits or runs for longer; a bigger figure is a typo (and overflows date arithmetic).
MAX_DURATION_SECONDS = 30 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"``: finite, not negative, at most 30 days."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m or 2h")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is None:
        raise ValueError(f"expected a duration such as 30s, 15m or 2h, not {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a duration such as 30s, 15m or 2h, not {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is longer than 30 days")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Model):
    """How often and how long a step's transient failures are retried (exponential backoff with jitter)."""

    attempts: int = Field(3, ge=1, le=100, description="tries in all, the first included")
    budget: Duration | None = Field(None, description="give up retrying after this long (e.g. 30m)")
    initial: Duration = Field(1.0, description="first backoff")
    max: Duration = Field(60.0, description="longest backoff")
    jitter: Duration = Field(1.0, description="random extra wait, up to this")

    @pydantic.model_validator(mode="after")
    def _initial_within_max(self) -> RetryPolicy:
        if self.initial > self.max:
            raise ValueError(f"initial backoff ({self.initial:g} s) is longer than max ({self.max:g} s)")
        if self.budget is not None and self.budget <= 0:
            raise ValueError("budget must be longer than 0 s")
        return self


class StepSpec(_Model):
    """One step of a playbook."""

    id: str = Field(pattern=STEP_ID)
    uses: str = Field(min_length=1, description="the step kind, e.g. blobs.presync")
    name: str | None = None
    description: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    needs: list[str] | None = Field(
        None, description="steps that must be done first; omitted: the step before this one; []: none")
    retry: RetryPolicy | None = None
    timeout: Duration | None = Field(None, gt=0)
    on_failure: Literal["rollback", "stop", "continue"] | None = None


class Playbook(_Model):
    """A named list of steps."""

    name: str = Field(min_length=1)
    description: str | None = None
    version: Literal[1] = 1
    on_failure: Literal["rollback", "stop"] = "stop"
    concurrency: int = Field(4, ge=1, le=64)
    checkpoint_batch: int = Field(500, ge=1, le=100_000, description="item checkpoints written per transaction")
    retry: RetryPolicy = Field(default_factory=lambda: RetryPolicy())
    steps: list[StepSpec] = Field(min_length=1)


_CLOCK_TEXT = re.compile(r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")


def _clock_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads an unquoted 06:00 as 360
        raise ValueError('write the time in quotes, as "HH:MM" (e.g. "06:00")')
    if not isinstance(value, str) or not _CLOCK_TEXT.match(value):
        raise ValueError(f'{value!r:.40} is not a time of day: write "HH:MM", from "00:00" to "24:00"')
    return value


class Daypart(_Model):
    """A part of the day, ``start`` to ``end`` (``"HH:MM"``, up to ``"24:00"``) on the tenant's wall clock.

    An ``end`` before ``start`` (``22:00`` to ``06:00``) crosses midnight: the daypart ends the next morning, and
    ``--window 2026-12-05/late`` is the night from the 5th to the 6th. Windows and the gate handle such a daypart
    already (a window's end may be on the next day); refusing it would force a night into two dayparts and the
    read-only window into one of them. ``end`` equal to ``start`` is refused: empty, or a whole day by mistake.
    """

    start: Annotated[str, BeforeValidator(_clock_text)]
    end: Annotated[str, BeforeValidator(_clock_text)]

    @pydantic.model_validator(mode="after")
    def _a_part_of_a_day(self) -> Daypart:
        try:
            daypart_from_clock("daypart", self.start, self.end, where="daypart")
        except InputError as exc:
            raise ValueError(exc.one_line().removeprefix("daypart: ")) from None
        return self


def _check_daypart_names(value: Any) -> Any:
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("no dayparts: name at least one, or leave dayparts out for the standard four")
        for name in value:
            problem = daypart_name_problem(str(name))
            if problem:
                raise ValueError(problem)
    return value


# Tenant names go into run ids and so into log and bundle file names: short, and only safe characters.
TENANT_NAME_MAX = 63


class Tenant(_Model):
    name: str = Field(min_length=1, max_length=TENANT_NAME_MAX, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    reference: str | None = Field(None, description="support reference number")
    timezone: str = "UTC"
    environments: list[str] = Field(default_factory=list, description="customer environment names")
    contacts: list[str] = Field(default_factory=list, description="usernames involved (for support)")

    @pydantic.field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Environment(_Model):
    """One tenant's source, target and settings."""

    tenant: Tenant
    source: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    dayparts: Annotated[dict[str, Daypart] | None, BeforeValidator(_check_daypart_names)] = None


# --------------------------------------------------------------------------------------------------------- errors


def _loc_to_path(loc: tuple[Any, ...]) -> Path_:
    return tuple(p for p in loc if isinstance(p, (str, int)))


def _field_name(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _invalid(doc: SourceDoc, path: Path_, message: str) -> ValidationError:
    """The error for what is wrong at ``path`` of ``doc``: file, line and field named."""
    return ValidationError(message, file=doc.file, line=doc.line_of(path), field=_field_name(path))


def _raise_model_error(exc: pydantic.ValidationError, doc: SourceDoc, prefix: Path_ = ()) -> None:
    _raise_error_detail(exc.errors()[0], doc, prefix, exc)


def _raise_error_detail(err: Any, doc: SourceDoc, prefix: Path_, cause: Exception) -> None:
    path = (*prefix, *_loc_to_path(err["loc"]))
    # pydantic reports the alias "with" in loc already
    msg = err["msg"]
    if err["type"] == "value_error" and err.get("ctx", {}).get("error") is not None:
        msg = str(err["ctx"]["error"])  # our own words, without pydantic's "Value error, "
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required but missing"
    raise _invalid(doc, path, msg) from cause


def _validate(model: type[BaseModel], doc: SourceDoc) -> Any:
    if not isinstance(doc.data, dict):
        raise ValidationError("expected a mapping at the top level", file=doc.file, line=1)
    try:
        return model.model_validate(doc.data)
    except pydantic.ValidationError as exc:
        _raise_model_error(exc, doc)


#: Public names for other YAML files validated the same way (campaign files: ``migrator.fleet.campaign``).
StrictModel = _Model
load_yaml_model = _validate


# ----------------------------------------------------------------------------------------------------- references


def walk_strings(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from walk_strings(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from walk_strings(v, (*path, i))


def _lookup(root: Any, dotted: list[str]) -> Any:
    cur = root
    for part in dotted:
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(part)
    return cur


class _Unresolved(Exception):
    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(reason)
        self.ref = ref
        self.reason = reason
        self.path: Path_ | None = None


def substitute(value: Any, resolve: Any, path: Path_ = ()) -> Any:
    """Replaces ``${...}`` references in every string of ``value`` using ``resolve(expr) -> value``.

    ``resolve`` returns :data:`KEEP` to leave a reference as written (secrets, late references). A reference
    that cannot be resolved raises ``_Unresolved`` carrying the path of the string that holds it.
    """
    try:
        if isinstance(value, str):
            stripped = value.strip()
            whole = REF.fullmatch(stripped)
            if whole:
                got = resolve(whole.group(1))
                return value if got is KEEP else got

            def sub(m: re.Match[str]) -> str:
                got = resolve(m.group(1))
                if got is KEEP:
                    return m.group(0)
                if isinstance(got, (Mapping, list)):
                    raise _Unresolved(m.group(1), "a mapping or list cannot be interpolated into a string")
                return "" if got is None else str(got)

            return REF.sub(sub, value)
    except _Unresolved as exc:
        if exc.path is None:
            exc.path = path
        raise
    if isinstance(value, Mapping):
        return {k: substitute(v, resolve, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, resolve, (*path, i)) for i, v in enumerate(value)]
    return value


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


def params_hash(params: Params) -> str:
    """The identity of a step's resolved params: secrets count only as their references."""
    canonical = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- value checks


def _check_reference_syntax(value: Any, doc: SourceDoc, prefix: Path_) -> None:
    for path, text in walk_strings(value, prefix):
        problem = reference_problem(text)
        if problem:
            raise _invalid(doc, path, problem)


def _refuse_literal_secrets(value: Any, doc: SourceDoc, prefix: Path_) -> None:
    for path, what in literal_secrets(value, prefix):
        raise _invalid(doc, path, f"{what} written as its value; write ${{env:NAME}} and set NAME in the "
                       "environment of the command (secrets are never kept in files)")


def _refuse_odd_numbers(raw: Any, parsed: Any, doc: SourceDoc, prefix: Path_) -> None:
    for path in non_finite(parsed):
        raise _invalid(doc, (*prefix, *path), "not a finite number (.nan and .inf mean nothing here)")
    for path in bools_as_numbers(raw, parsed):
        raise _invalid(doc, (*prefix, *path), "expected a number, not true or false")


# ------------------------------------------------------------------------------------------------ loaded playbook


@dataclass
class PlannedStep:
    """A step of a loaded playbook: its spec, its kind and its params with environment references resolved."""

    spec: StepSpec
    kind: type[Step[Any]]
    raw_params: dict[str, Any]  # environment references substituted; late references and secrets kept
    needs: list[str]
    late_fields: set[str] = field(default_factory=set)
    index: int = 0

    @property
    def id(self) -> str:
        return self.spec.id

    def retry_policy(self, playbook: Playbook) -> RetryPolicy:
        return self.spec.retry or playbook.retry

    def on_failure(self, playbook: Playbook) -> str:
        return self.spec.on_failure or playbook.on_failure


@dataclass
class LoadedPlaybook:
    playbook: Playbook
    environment: Environment | None
    steps: list[PlannedStep]
    playbook_doc: SourceDoc
    environment_doc: SourceDoc | None
    env_var_names: set[str]

    @property
    def by_id(self) -> dict[str, PlannedStep]:
        return {s.id: s for s in self.steps}

    def environment_values(self) -> dict[str, Any]:
        if self.environment is None:
            return {}
        return self.environment.model_dump(mode="json")

    def ancestors(self, step_id: str) -> set[str]:
        return _ancestors({s.id: s.needs for s in self.steps}, step_id)

    def resolve_params(self, step: PlannedStep, outputs: Mapping[str, Mapping[str, Any]], run_id: str) -> Params:
        """The step's params with late references resolved: what ``apply`` receives."""

        def resolve(expr: str) -> Any:
            expr = expr.strip()
            if expr.startswith("env:"):
                return KEEP
            parts = expr.split(".")
            if parts[0] == "run" and parts[1:] == ["id"]:
                return run_id
            if parts[0] == "steps" and len(parts) >= 4 and parts[2] == "outputs":
                if parts[1] not in outputs:
                    raise _Unresolved(expr, f"step {parts[1]} has no outputs (not done yet)")
                try:
                    return _lookup(outputs[parts[1]], parts[3:])
                except KeyError:
                    raise _Unresolved(expr, f"step {parts[1]} has no output {'.'.join(parts[3:])}") from None
            raise _Unresolved(expr, "unknown reference")

        try:
            values = substitute(step.raw_params, resolve)
        except _Unresolved as exc:
            raise _invalid(self.playbook_doc, ("steps", step.index, "with"),
                           f"cannot resolve ${{{exc.ref}}}: {exc.reason}") from None
        try:
            return step.kind.Params.model_validate(values)
        except pydantic.ValidationError as exc:
            _raise_model_error(exc, self.playbook_doc, ("steps", step.index, "with"))
            raise  # unreachable

    def try_resolve_params(self, step: PlannedStep, outputs: Mapping[str, Mapping[str, Any]],
                           run_id: str) -> Params | None:
        """Like :meth:`resolve_params`, but None when an earlier step's outputs are not known yet (dry-run)."""
        missing = {p for p in _late_step_refs(step.raw_params) if p not in outputs}
        if missing:
            return None
        return self.resolve_params(step, outputs, run_id)


def _late_step_refs(value: Any) -> set[str]:
    found: set[str] = set()
    for _, text in walk_strings(value):
        for m in REF.finditer(text):
            parts = m.group(1).strip().split(".")
            if parts[0] == "steps" and len(parts) > 1:
                found.add(parts[1])
    return found


def _check_needs(playbook: Playbook, doc: SourceDoc) -> dict[str, list[str]]:
    """What each step needs, checked: ids unique, needs known and not the step itself, no cycle."""
    ids = _step_indexes(playbook, doc)
    needs = _declared_needs(playbook, ids, doc)
    _refuse_cycles(needs, ids, doc)
    return needs


def _step_indexes(playbook: Playbook, doc: SourceDoc) -> dict[str, int]:
    """Each step id's index in the playbook; a duplicate id is refused."""
    ids: dict[str, int] = {}
    for i, spec in enumerate(playbook.steps):
        if spec.id in ids:
            raise _invalid(doc, ("steps", i, "id"), f"duplicate step id {spec.id!r} (first at step {ids[spec.id] + 1})")
        ids[spec.id] = i
    return ids


def _declared_needs(playbook: Playbook, ids: Mapping[str, int], doc: SourceDoc) -> dict[str, list[str]]:
    """What each step needs: the steps it names (each once), or the step before it when it names none."""
    needs: dict[str, list[str]] = {}
    for i, spec in enumerate(playbook.steps):
        if spec.needs is None:
            needs[spec.id] = [playbook.steps[i - 1].id] if i else []
            continue
        for j, dep in enumerate(spec.needs):
            if dep not in ids:
                raise _invalid(doc, ("steps", i, "needs", j), f"needs unknown step {dep!r}")
            if dep == spec.id:
                raise _invalid(doc, ("steps", i, "needs", j), "a step cannot need itself")
        needs[spec.id] = list(dict.fromkeys(spec.needs))
    return needs


def _refuse_cycles(needs: Mapping[str, list[str]], ids: Mapping[str, int], doc: SourceDoc) -> None:
    """Refuses the first cycle in ``needs`` found by an iterative depth-first search (colour 1: on the trail,
    2: done)."""
    colour: dict[str, int] = {}
    for start in needs:
        if colour.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = []
        while stack:
            node, idx = stack.pop()
            if idx == 0:
                colour[node] = 1
                trail.append(node)
            deps = needs[node]
            if idx < len(deps):
                stack.append((node, idx + 1))
                dep = deps[idx]
                if colour.get(dep) == 1:
                    cycle = [*trail[trail.index(dep):], dep]
                    raise _invalid(doc, ("steps", ids[node], "needs"), f"cycle in needs: {' -> '.join(cycle)}")
                if not colour.get(dep):
                    stack.append((dep, 0))
            else:
                colour[node] = 2
                trail.pop()


def load(playbook_path: str | Path, environment_path: str | Path | None = None, *,
         registry: Registry, playbook_text: str | None = None, environment_text: str | None = None,
         environ: Mapping[str, str] | None = None) -> LoadedPlaybook:
    """Loads and validates a playbook and its environment file. Raises :class:`PlaybookError` (exit 2)."""
    environ = os.environ if environ is None else environ
    pdoc = (parse_yaml(playbook_text, str(playbook_path)) if playbook_text is not None
            else load_yaml_file(playbook_path))
    playbook: Playbook = _validate(Playbook, pdoc)
    _refuse_odd_numbers(pdoc.data, playbook, pdoc, ())
    edoc, environment = _load_environment(environment_path, environment_text, environ)
    env_values = environment.model_dump(mode="json") if environment else {}

    needs = _check_needs(playbook, pdoc)
    env_names = _env_var_names(edoc.data) if edoc is not None else set()
    loaded_steps: list[PlannedStep] = []
    for i, spec in enumerate(playbook.steps):
        refs = _LoadTimeRefs(environ, environment, env_values, needs, _ancestors(needs, spec.id), env_names)
        loaded_steps.append(_plan_step(pdoc, i, spec, registry, refs, needs[spec.id]))
    return LoadedPlaybook(playbook, environment, loaded_steps, pdoc, edoc, env_names)


def _load_environment(environment_path: str | Path | None, environment_text: str | None,
                      environ: Mapping[str, str]) -> tuple[SourceDoc | None, Environment | None]:
    """The environment file and its model, checked (None, None when there is none)."""
    if environment_path is None and environment_text is None:
        return None, None
    name = str(environment_path or "environment")
    edoc = parse_yaml(environment_text, name) if environment_text is not None else load_yaml_file(name)
    environment: Environment = _validate(Environment, edoc)
    _check_reference_syntax(edoc.data, edoc, ())
    _check_env_refs_in(edoc, environ)
    _refuse_odd_numbers(edoc.data, edoc.data, edoc, ())
    _refuse_literal_secrets(edoc.data, edoc, ())
    return edoc, environment


def _env_var_names(value: Any) -> set[str]:
    """The environment variables named by the ``${env:NAME}`` references in ``value``."""
    names: set[str] = set()
    for _, text in walk_strings(value):
        names.update(ENV_REF.findall(text))
    return names


@dataclass
class _LoadTimeRefs:
    """Resolves the references in one step's ``with`` as the playbook loads: environment file values are
    substituted; secrets, step outputs and the run id are checked and kept for when the step runs."""

    environ: Mapping[str, str]
    environment: Environment | None
    env_values: dict[str, Any]
    needs: Mapping[str, list[str]]
    ancestors: set[str]  # the steps this one needs, directly or not
    env_names: set[str]  # shared by all steps: the secrets' variable names are added as they are found

    def __call__(self, expr: str) -> Any:
        expr = expr.strip()
        if expr.startswith("env:"):
            return self._secret(expr)
        parts = expr.split(".")
        root = parts[0]
        if root == "steps":
            return self._step_output(expr, parts)
        if root == "run":
            if parts[1:] != ["id"]:
                raise _Unresolved(expr, "expected ${run.id}")
            return KEEP
        if root in ENV_ROOTS:
            return self._environment_value(expr, parts)
        raise _Unresolved(expr, "unknown reference (use env:, steps., run., " + ", ".join(ENV_ROOTS) + ")")

    def _secret(self, expr: str) -> Any:
        name = expr[4:]
        if not ENV_NAME.fullmatch(name):
            raise _Unresolved(expr, "not a valid environment variable name")
        if name not in self.environ:
            raise _Unresolved(expr, f"environment variable {name} is not set")
        self.env_names.add(name)
        return KEEP

    def _step_output(self, expr: str, parts: list[str]) -> Any:
        if len(parts) < 4 or parts[2] != "outputs":
            raise _Unresolved(expr, "expected ${steps.ID.outputs.NAME}")
        if parts[1] not in self.needs:
            raise _Unresolved(expr, f"no step {parts[1]!r}")
        if parts[1] not in self.ancestors:
            raise _Unresolved(expr, f"step {parts[1]!r} is not among this step's needs")
        return KEEP

    def _environment_value(self, expr: str, parts: list[str]) -> Any:
        if self.environment is None:
            raise _Unresolved(expr, "needs an environment file (-e)")
        try:
            return _lookup(self.env_values, parts)
        except KeyError as exc:
            raise _Unresolved(expr, f"the environment file has no {exc.args[0]!r} there") from None


def _plan_step(doc: SourceDoc, index: int, spec: StepSpec, registry: Registry, refs: _LoadTimeRefs,
               needs: list[str]) -> PlannedStep:
    """One step of the playbook: its kind known, its ``with`` resolved as far as loading can, and validated."""
    where = ("steps", index)
    if spec.uses not in registry:
        known = ", ".join(registry.names())
        raise _invalid(doc, (*where, "uses"), f"unknown step kind {spec.uses!r} (known: {known})")
    kind = registry.get(spec.uses)
    _check_reference_syntax(spec.with_, doc, (*where, "with"))
    raw: dict[str, Any] = {}
    for key, value in spec.with_.items():
        try:
            raw[key] = substitute(value, refs)
        except _Unresolved as exc:
            raise _invalid(doc, (*where, "with", key, *(exc.path or ())),
                           f"cannot resolve ${{{exc.ref}}}: {exc.reason}") from None
    _refuse_literal_secrets(raw, doc, (*where, "with"))
    late = {k for k, v in raw.items() if _late_step_refs(v) or _has_run_ref(v)}
    _validate_params(kind, raw, late, doc, where)
    return PlannedStep(spec=spec, kind=kind, raw_params=raw, needs=needs, late_fields=late, index=index)


def _has_run_ref(value: Any) -> bool:
    return any("${run." in text for _, text in walk_strings(value))


def _check_env_refs_in(doc: SourceDoc, environ: Mapping[str, str]) -> None:
    for path, text in walk_strings(doc.data):
        for name in ENV_REF.findall(text):
            if name not in environ:
                raise _invalid(doc, path, f"environment variable {name} is not set")
        for m in REF.finditer(text):
            if not m.group(1).startswith("env:"):
                raise _invalid(doc, path, f"only ${{env:NAME}} references are allowed in an environment file, "
                                          f"not ${{{m.group(1)}}}")


def _ancestors(needs: Mapping[str, list[str]], step_id: str) -> set[str]:
    seen: set[str] = set()
    stack = list(needs[step_id])
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(needs[cur])
    return seen


def _validate_params(kind: type[Step[Any]], raw: dict[str, Any], late: set[str], doc: SourceDoc,
                     where: Path_) -> None:
    """Validates params now; fields fed by later step outputs are type-checked when the step runs."""
    try:
        model = kind.Params.model_validate(raw)
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            loc = err["loc"]
            if loc and loc[0] in late:
                continue
            _raise_error_detail(err, doc, (*where, "with"), exc)
        return
    _refuse_odd_numbers(raw, model, doc, (*where, "with"))
    for path in secret_leaks(model):
        raise _invalid(doc, (*where, "with", *path), "holds a ${env:...} secret, but this field is not a secret "
                       "field; secrets may only go where the step kind expects one")


def schemas() -> dict[str, Any]:
    """JSON Schemas of playbooks and environment files, for editors."""
    return {
        "playbook": Playbook.model_json_schema(by_alias=True),
        "environment": Environment.model_json_schema(by_alias=True),
    }
