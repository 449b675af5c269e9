"""What a step costs the engine itself, measured on this machine for the plan's timeline.

Besides a step's own work, the runner records it in the state store: the step saved when it starts (with its
first attempt), saved as running together with the ``step.apply`` event, its item checkpoints flushed, saved as
done together with the ``step.done`` event — each its own SQLite transaction in WAL mode with
``synchronous=FULL``, so each waits for an fsync. On a busy disk those commits, not the step, are most of a
small step's time. The probe makes a handful of such transactions in a temporary directory (deleted afterwards:
the dry-run changes nothing) and reports their median as a sample of the ``state.transaction`` rate
(:mod:`migrator.estimator`); a step's engine cost is that rate, the median of the recent samples on this machine,
times the transactions a step makes.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from migrator.estimator import Rates, Sample

#: State-store transactions the runner makes for a step it applies (migrator/runner/attempt.py ``run_step``: saved when
#: started, saved as running with the ``step.apply`` event, the item flush, saved as done with the ``step.done``
#: event).
TRANSACTIONS_PER_STEP = 4
#: Transactions the probe times (after one to warm the file up): enough for a steady median, a fraction of a
#: second even on a slow disk.
PROBE_TRANSACTIONS = 12


@dataclass(frozen=True)
class EngineCost:
    """What the engine spends on each step, on top of the step's own estimate."""

    transaction_seconds: float
    transactions_per_step: int = TRANSACTIONS_PER_STEP
    #: Where the transaction's figure came from (the estimator's account of the ``state.transaction`` rate).
    source: str = "measured now"

    @property
    def step_seconds(self) -> float:
        return self.transaction_seconds * self.transactions_per_step

    def basis(self) -> str:
        return (f"{self.transactions_per_step} state-store transactions a step at "
                f"{self.transaction_seconds * 1000:.1f} ms each (fsync'd SQLite, WAL, synchronous=FULL; "
                f"{self.source})")

    def as_dict(self) -> dict[str, object]:
        return {"seconds_per_step": self.step_seconds, "transaction_seconds": self.transaction_seconds,
                "transactions_per_step": self.transactions_per_step, "basis": self.basis()}


def measure_transaction(transactions: int = PROBE_TRANSACTIONS, directory: Path | None = None) -> float:
    """Median seconds of one committed transaction like the state store's (an UPDATE and an INSERT of an event
    row), in a new SQLite file under a temporary directory that is deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="migrator-calibrate-", dir=directory) as folder:
        conn = sqlite3.connect(Path(folder) / "probe.db", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE steps (id TEXT PRIMARY KEY, status TEXT, outputs TEXT, updated REAL)")
            conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, step_id TEXT, ts REAL, "
                         "type TEXT, data TEXT)")
            conn.execute("INSERT INTO steps VALUES ('probe', 'pending', '{}', 0)")
            took: list[float] = []
            for n in range(transactions + 1):
                started = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE steps SET status = ?, outputs = ?, updated = ? WHERE id = 'probe'",
                             (f"s{n}", json.dumps({"n": n}), time.time()))
                conn.execute("INSERT INTO events (step_id, ts, type, data) VALUES ('probe', ?, 'probe', '{}')",
                             (time.time(),))
                conn.execute("COMMIT")
                if n:  # the first one creates the WAL file
                    took.append(time.perf_counter() - started)
        finally:
            conn.close()
    return statistics.median(took)


#: The probe's sample, taken once per process; and the engine cost the command's rates last made of it.
_probed: Sample | None = None
_priced: EngineCost | None = None


def engine_cost(rates: Rates | None = None) -> EngineCost:
    """The engine's cost per step: the probe runs once per process, its median a sample of ``state.transaction``
    in ``rates`` (the command's, which hold the samples kept on this machine). Without ``rates``: the cost the
    command's rates last gave, else the probe alone."""
    global _probed, _priced
    if rates is None and _priced is not None:
        return _priced
    if _probed is None:
        _probed = Sample("state.transaction", 1, measure_transaction(), time.time())
    book = rates if rates is not None else Rates()
    book.absorb([_probed])
    value = book.value("state.transaction")
    cost = EngineCost(value.seconds, source=value.source)
    if rates is not None:
        _priced = cost
    return cost
