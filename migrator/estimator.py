"""The one place that turns work into seconds: named rates, the counts a plan returns, and the rates this machine
measured, kept in the state directory.

A step's ``plan`` counts what its run will do — blobs listed, blobs and bytes copied, rows read and inserted,
connections opened, requests made — as :class:`Work`: units per rate name (``{"blob.list.azure": 5000,
"blob.copy": 50, "blob.bytes": 1.2e6}``). :class:`Rates` prices that work: each rate is the median of the recent
samples of it, or its assumed default (:data:`RATES`) when none was measured, and the estimate's basis names
every rate it used, its value and where it came from ("assumed", "measured now, median of 3", "measured 3 h
ago, median of 5").

Samples come from the probes a plan makes anyway (a timed listing, the hash probe, the database probes, the
state-store transaction probe): a probe reports ``(units, seconds)`` for a rate instead of turning it into
seconds itself. The engine keeps the samples of a command in ``<state dir>/rates.json`` (:func:`rates_file`), at
most :data:`KEEP` per rate with the time each was measured, and ignores those older than :data:`MAX_AGE`; a
later plan on the same machine starts from them. Nothing in the tenant is touched to keep them: the dry-run
writes only this file, and only where the state directory already exists.

A step adds seconds it measured right now (``Work.fixed``) only where a count cannot express them: a listing it
just made, whose own time is a better figure for it than any rate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrator.resources import ResourceKey

if TYPE_CHECKING:
    from migrator.step import Estimate, StepContext

log = logging.getLogger("migrator")

MiB = 1024 * 1024

#: Samples of one rate kept in the cache (the newest): enough for a steady median, few enough that a machine
#: whose load changed is followed within a few plans.
KEEP = 15
#: Samples older than this are ignored (and dropped when the cache is written): a week covers the rehearsals
#: before a migration on the same machine, while a machine moved to other hardware, or a service that changed
#: tier, no longer speaks through last month's figures.
MAX_AGE = 7 * 24 * 3600.0
#: A sample at most this old is "measured now" in a basis (taken by the command that prices).
NOW = 120.0
#: The cache's file name, beside the state store in the state directory.
RATES_FILE = "rates.json"


@dataclass(frozen=True)
class Rate:
    """A named cost: seconds per ``unit``, its default ``assumed`` before anything was measured (and ``why``).

    A rate ``derived`` from another (``(name, factor)``) without samples of its own is that rate times ``factor``
    when the other was measured: a restore's insert rate follows the source's measured read rate.
    """

    name: str
    assumed: float
    unit: str
    why: str
    derived: tuple[str, float] | None = None


def _rates(*rates: Rate) -> dict[str, Rate]:
    return {r.name: r for r in rates}


#: Every rate a plan prices with, and its assumed default.
RATES: dict[str, Rate] = _rates(
    # Blob copies: a local storage emulator on 2 cores takes a small blob (one Put Blob, or one server-side copy
    # within an account) in about 2 ms with 4 in flight, and large ones in blocks at about 200 MiB/s.
    Rate("blob.copy", 1 / 500.0, "blob", "a local storage emulator on 2 cores: 500 small blobs/s, 4 in flight"),
    Rate("blob.bytes", 1 / (200.0 * MiB), "byte", "a local storage emulator on 2 cores: 200 MiB/s in blocks"),
    # Listing an Azure container, for a container the plan cannot time with blobs in it (a new cloud container a
    # presync fills only in the run): a local storage emulator on 2 cores lists 1,000 blobs (one page) in
    # 60-100 ms, 5,000 in 400-500 ms (its own CPU, serializing the page, is most of it).
    Rate("blob.list.azure", 85e-6, "blob", "a local storage emulator on 2 cores: 1,000 blobs in 60-100 ms"),
    # The same for a folder tree (a directory walk and a stat per file): 1,000 files in 13-16 ms.
    Rate("blob.list.folder", 15e-6, "blob", "a directory walk and a stat a file: 1,000 files in 13-16 ms"),
    # A blob verify reads back (Get Blob Properties, ``concurrency`` at a time): a local storage emulator on 2
    # cores answers 50 in 40-80 ms.
    Rate("blob.read_back", 1.2e-3, "blob", "a local storage emulator on 2 cores: 50 reads back in 40-80 ms"),
    # Reading and hashing a source blob as blobs.verify does; the plan always measures it on a sample of the very
    # blobs it will hash, so the default serves only a plan that could not.
    Rate("blob.hash", 2e-3, "blob", "a small blob read and hashed, 8 at a time"),
    # One request to a backup store (reading the manifest): a local storage emulator answers in a few ms.
    Rate("backup.request", 5e-3, "request", "a local storage emulator: one request in about 5 ms"),
    # A database's basic operations, measured on each side by every database plan: these defaults serve only
    # a step that could not measure (a deferred step's rough figure).
    Rate("db.source.connect", 0.02, "connection", "a local PostgreSQL: 20 ms a connection"),
    Rate("db.source.catalog", 0.01, "read", "a local PostgreSQL: 10 ms a catalog read"),
    Rate("db.source.count", 1e-3, "query", "a count of a small table: 1 ms"),
    # Rows a backup reads (through its own read path) a second, before the plan's probe read the biggest table:
    # the assumed insert rate over the insert-to-read ratio (0.35).
    Rate("db.source.read", 0.35 / 20_000.0, "row", "20,000 / 0.35 rows/s, as the assumed insert rate"),
    Rate("db.target.connect", 0.02, "connection", "a local PostgreSQL: 20 ms a connection"),
    Rate("db.target.catalog", 0.01, "read", "a local PostgreSQL: 10 ms a catalog read"),
    Rate("db.target.lookup", 1e-3, "query", "a local PostgreSQL: 1 ms a table lookup"),
    # Rows the target hands over and the reader hashes (a full verify), measured on rows the engine makes up.
    Rate("db.target.fetch", 0.35 / 20_000.0, "row", "as fast as the source reads",
         derived=("db.source.read", 1.0)),
    # Rows a restore inserts: inserting and committing costs more than reading (measured on the demo:
    # PostgreSQL through psqlODBC from SQLite, about a third of the read rate); 20,000 rows/s before any
    # read rate was measured.
    Rate("db.rows.insert", 1 / 20_000.0, "row", "20,000 rows/s; else 0.35 x the measured read rate",
         derived=("db.source.read", 1 / 0.35)),
    # Switching a database to read-only: one ALTER and ending the open sessions.
    Rate("db.read_only", 2.0, "switch", "one ALTER and ending open sessions: 2 s"),
    # A state-store transaction (fsync'd SQLite, WAL, synchronous=FULL): a few ms on a local SSD.
    Rate("state.transaction", 4e-3, "transaction", "an fsync'd SQLite commit on a local SSD: 4 ms"),
    # One HTTP request of a check, probe or smoke test to a nearby service.
    Rate("http.request", 0.02, "request", "a request to a nearby service: 20 ms"),
    # One DNS query of a smoke test to an authoritative server.
    Rate("dns.query", 0.005, "query", "a query to an authoritative server: 5 ms"),
    # Reading a record set through the DNS provider (its API, or the zone's server): the plan times one read.
    Rate("dns.read", 0.05, "read", "a DNS provider's API: 50 ms a read"),
    # One round of asking every name server of a zone (dns.verify): the plan times one round.
    Rate("dns.round", 0.05, "round", "a few name servers asked at once: 50 ms"),
    # Provisioning in Azure: creating a SQL server or a database takes minutes, an update about one.
    Rate("azure.create", 300.0, "resource", "typical Azure provisioning: 5 min to create a server or database"),
    Rate("azure.update", 60.0, "change", "typical Azure provisioning: 1 min an update"),
)


@dataclass(frozen=True)
class Sample:
    """``units`` of ``rate`` done in ``seconds``, measured at ``at`` (epoch seconds)."""

    rate: str
    units: float
    seconds: float
    at: float

    @property
    def per_unit(self) -> float:
        return self.seconds / self.units


@dataclass
class Work:
    """What a step's run will do: units per rate name, plus seconds measured right now that no count expresses
    (``fixed``, by label), parts that run side by side of which the longest counts (``beside``), the samples its
    probes took (``samples``) and its own account of the counts (``note``, the first part of the basis)."""

    counts: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)
    beside: list[tuple[Work, ...]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    note: str = ""

    def add(self, rate: str, units: float) -> Work:
        """Counts ``units`` more of ``rate`` (unknown names are refused: a typo would price at nothing)."""
        if rate not in RATES:
            raise KeyError(f"no rate named {rate!r}")
        if units:
            self.counts[rate] = self.counts.get(rate, 0.0) + units
        return self

    def plus(self, *others: Work) -> Work:
        """This work and ``others`` one after the other (the notes of the others are theirs to say)."""
        both = Work(dict(self.counts), dict(self.fixed), list(self.beside), list(self.samples), self.note)
        for other in others:
            for name, units in other.counts.items():
                both.add(name, units)
            for label, seconds in other.fixed.items():
                both.fixed[label] = both.fixed.get(label, 0.0) + seconds
            both.beside += other.beside
            both.samples += [s for s in other.samples if s not in both.samples]
        return both

    def times(self, factor: float) -> Work:
        """This work done ``factor`` times (a listing the run makes twice)."""
        return Work({k: v * factor for k, v in self.counts.items()}, {k: v * factor for k, v in self.fixed.items()},
                    [tuple(p.times(factor) for p in group) for group in self.beside], list(self.samples), self.note)

    def alongside(self, *parts: Work) -> Work:
        """Adds ``parts`` that run side by side: the longest of them counts."""
        self.beside.append(tuple(parts))
        self.samples += [s for p in parts for s in p.samples if s not in self.samples]
        return self

    def rate_names(self) -> set[str]:
        return set(self.counts) | {n for group in self.beside for part in group for n in part.rate_names()}

    def fixed_parts(self) -> dict[str, float]:
        found = dict(self.fixed)
        for group in self.beside:
            for part in group:
                found.update(part.fixed_parts())
        return found


@dataclass(frozen=True)
class RateValue:
    """A rate as priced: seconds per unit, and where the figure came from."""

    name: str
    seconds: float
    source: str

    def describe(self) -> str:
        unit = RATES[self.name].unit if self.name in RATES else "unit"
        return f"{self.name} {_fmt(self.seconds)}/{unit} ({self.source})"


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g} us"
    return f"{seconds * 1e9:.3g} ns"


def _age(seconds: float) -> str:
    if seconds < 5400:
        return f"{max(seconds / 60, 1):.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


class Rates:
    """The rates one command prices with: given values, else the median of the recent samples, else assumed.

    ``given`` fixes rates outright (tests, and a caller that knows better); ``samples`` are what was measured,
    now or by earlier commands (read from ``path`` by :meth:`load`). :meth:`close` writes the samples back to
    ``path`` (the engine closes the run's resources when the command ends). Thread-safe.
    """

    def __init__(self, samples: Iterable[Sample] = (), *, given: Mapping[str, float] | None = None,
                 path: Path | None = None, now: Callable[[], float] = time.time, max_age: float = MAX_AGE) -> None:
        self._lock = threading.Lock()
        self._samples: list[Sample] = list(samples)
        self._given = dict(given or {})
        self.path = path
        self._now = now
        self.max_age = max_age
        self._dirty = False

    # -- samples ------------------------------------------------------------------------------------------

    def record(self, rate: str, units: float, seconds: float, at: float | None = None) -> Sample | None:
        """Keeps a sample of ``rate`` (``units`` done in ``seconds``); nothing for an empty or untimed one."""
        if rate not in RATES:
            raise KeyError(f"no rate named {rate!r}")
        if units <= 0 or seconds < 0 or not math.isfinite(seconds / units):
            return None
        sample = Sample(rate, float(units), float(seconds), self._now() if at is None else at)
        self.absorb([sample])
        return sample

    def absorb(self, samples: Iterable[Sample]) -> None:
        """Keeps ``samples`` this book does not hold yet (the samples a step's work carries)."""
        with self._lock:
            for sample in samples:
                if sample not in self._samples:
                    self._samples.append(sample)
                    self._dirty = True

    def samples(self, rate: str | None = None) -> list[Sample]:
        with self._lock:
            return [s for s in self._samples if rate is None or s.rate == rate]

    def recent(self, rate: str) -> list[Sample]:
        """The samples of ``rate`` that count: not older than ``max_age``, the newest :data:`KEEP`."""
        now = self._now()
        kept = sorted((s for s in self.samples(rate) if now - s.at <= self.max_age), key=lambda s: s.at)
        return kept[-KEEP:]

    # -- values -------------------------------------------------------------------------------------------

    def value(self, name: str) -> RateValue:
        """The rate ``name`` as this book prices it, and where the figure came from."""
        if name in self._given:
            return RateValue(name, self._given[name], "given")
        rate = RATES[name]
        measured = self._measured(name)
        if measured is not None:
            return measured
        if rate.derived is not None:
            base_name, factor = rate.derived
            base = self._measured(base_name) if base_name not in self._given else self.value(base_name)
            if base is not None:
                return RateValue(name, base.seconds * factor, f"{factor:.3g} x {base_name}, {base.source}")
        return RateValue(name, rate.assumed, "assumed")

    def _measured(self, name: str) -> RateValue | None:
        recent = self.recent(name)
        if not recent:
            return None
        age = self._now() - recent[-1].at
        when = "measured now" if age <= NOW else f"measured {_age(age)} ago"
        return RateValue(name, statistics.median(s.per_unit for s in recent), f"{when}, median of {len(recent)}")

    def seconds(self, name: str) -> float:
        return self.value(name).seconds

    # -- pricing ------------------------------------------------------------------------------------------

    def price(self, work: Work) -> tuple[float, str]:
        """Seconds of ``work`` and the basis: its note, then each rate used with its value and where it came
        from, then the seconds measured now that it adds."""
        self.absorb(work.samples)
        used = [self.value(name) for name in sorted(work.rate_names())]
        parts = [work.note] if work.note else []
        if used:
            parts.append("rates: " + ", ".join(v.describe() for v in used))
        fixed = work.fixed_parts()
        if fixed:
            parts.append("measured now: " + ", ".join(f"{label} {_fmt(s)}" for label, s in fixed.items()))
        if self.path is not None and self.path.parent.is_dir() and any("measured" in v.source for v in used):
            parts.append(f"measured rates kept in {self.path}")
        return self.seconds_of(work), "; ".join(parts)

    def seconds_of(self, work: Work) -> float:
        """Seconds of ``work`` at these rates: each count times its rate, the fixed seconds, and the longest
        part of each group that runs side by side."""
        seconds = sum(units * self.seconds(name) for name, units in work.counts.items()) + sum(work.fixed.values())
        return seconds + sum(max((self.seconds_of(p) for p in group), default=0.0) for group in work.beside)

    # -- the cache ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | None, *, now: Callable[[], float] = time.time, max_age: float = MAX_AGE) -> Rates:
        """The rates kept at ``path`` (none where there is no file, or one that cannot be read: a cache)."""
        samples: list[Sample] = []
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                for name, rows in dict(data.get("samples", {})).items():
                    if name in RATES:
                        samples += [Sample(name, float(u), float(s), float(at)) for u, s, at in rows
                                    if float(u) > 0 and float(s) >= 0]
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.info("rates cache %s ignored: %s", path, exc)
                samples = []
        return cls(samples, path=path, now=now, max_age=max_age)

    def save(self) -> bool:
        """Writes the recent samples to ``path`` (atomically) when there are new ones and its directory exists
        (the dry-run makes no state directory); True when written."""
        if self.path is None or not self._dirty or not self.path.parent.is_dir():
            return False
        data: dict[str, Any] = {"version": 1, "samples": {}}
        for name in sorted({s.rate for s in self.samples()}):
            rows = [[s.units, s.seconds, s.at] for s in self.recent(name)]
            if rows:
                data["samples"][name] = rows
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:  # a cache: the command goes on without it
            log.info("rates cache %s not written: %s", self.path, exc)
            tmp.unlink(missing_ok=True)
            return False
        self._dirty = False
        return True

    def close(self) -> None:
        self.save()


def rates_file(state: str | os.PathLike[str] | None) -> Path | None:
    """Where the rates of the state store named by ``state`` (``--state``: a directory, a ``.db`` file, or a
    postgresql:// URL; ``MIGRATOR_STATE`` or the default directory when None) are kept: ``rates.json`` in the
    state directory, beside ``state.db``. None for a store in PostgreSQL (rates are a machine's, not a team's:
    they are then measured anew by each command)."""
    from migrator.state import DEFAULT_STATE_DIR

    spec = os.fspath(state) if state is not None else os.environ.get("MIGRATOR_STATE") or DEFAULT_STATE_DIR
    if not spec.strip() or "://" in spec or spec.lower().startswith("postgres"):
        return None
    path = Path(spec)
    folder = path.parent if path.suffix.lower() in (".db", ".sqlite", ".sqlite3") else path
    return folder / RATES_FILE


#: The rates of the command: made by the planner from the state directory's cache, written back when it ends.
RATES_KEY: ResourceKey[Rates] = ResourceKey("estimator.rates")


def rates(ctx: StepContext) -> Rates:
    """The rates the command prices with (assumed ones and this command's samples where the engine set none)."""
    return ctx.resources.obtain(RATES_KEY, Rates)


def estimate(work: Work, rates: Rates | None = None, *, items: int | None = None,
             bytes: int | None = None) -> Estimate:
    """An :class:`~migrator.step.Estimate` of ``work``, priced by ``rates`` (assumed rates and the work's own
    samples when None). The engine prices it again with the command's rates (:func:`priced`)."""
    from migrator.step import Estimate

    seconds, basis = (rates or Rates()).price(work)
    return Estimate(seconds=seconds, items=items, bytes=bytes, basis=basis, work=work)


def priced(value: Estimate, rates: Rates) -> Estimate:
    """``value`` priced by ``rates`` when it carries its work (else as the step gave it)."""
    if value.work is None:
        return value
    seconds, basis = rates.price(value.work)
    return replace(value, seconds=seconds, basis=basis)
