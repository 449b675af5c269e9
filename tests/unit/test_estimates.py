"""Plan estimates: the engine's measured cost per step, the read-only window on the timeline, database.sync's sum."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from migrator.providers.database import Table
from migrator.reports.calibrate import TRANSACTIONS_PER_STEP, EngineCost, measure_transaction
from migrator.steps.database import DbCosts, SourceProfile, TargetCosts, chunk_count
from migrator.steps.database_delta import sync_seconds


def test_the_engine_probe_measures_a_transaction_and_leaves_no_file_behind(tmp_path: Path) -> None:
    seconds = measure_transaction(3, directory=tmp_path)
    assert 0 < seconds < 5
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone


def test_the_engine_probe_uses_the_system_temporary_directory_by_default() -> None:
    before = set(Path(tempfile.gettempdir()).glob("migrator-calibrate-*"))
    measure_transaction(2)
    assert set(Path(tempfile.gettempdir()).glob("migrator-calibrate-*")) == before


def test_the_engine_cost_of_a_step_is_its_transactions_times_one_transaction() -> None:
    cost = EngineCost(0.004)
    assert cost.step_seconds == pytest.approx(0.004 * TRANSACTIONS_PER_STEP)
    assert cost.as_dict()["seconds_per_step"] == pytest.approx(cost.step_seconds)
    assert "4.0 ms" in cost.basis()


@pytest.mark.parametrize(("rows", "per_row", "expected"), [
    (0, 100.0, 1),            # an empty table still makes one chunk
    (50_000, 100.0, 1),
    (50_001, 100.0, 2),       # by rows
    (10, 10 << 20, 2),        # by bytes: 100 MiB over 64 MiB chunks
])
def test_chunk_count_follows_the_backups_row_and_byte_limits(rows: int, per_row: float, expected: int) -> None:
    assert chunk_count(rows, per_row) == expected


def _profile(rows: int, rate: float) -> SourceProfile:
    tables = [Table("a", (), (), ()), Table("b", (), (), ())]
    costs = DbCosts(connect=0.01, catalog=0.002, count=0.001, tables=tables, rows={"a": rows // 2, "b": rows // 2})
    return SourceProfile(costs, rows_per_second=rate, bytes_per_row=100.0, probed_rows=1000)


@pytest.mark.parametrize(("fetch", "target_read"), [
    (0.0, 100_000 / 50_000),        # not measured: the target read at the source's rate
    (200_000.0, 100_000 / 200_000),  # measured: at the target's fetch rate
])
def test_sync_reads_every_source_row_and_the_whole_target_once(fetch: float, target_read: float) -> None:
    source = _profile(100_000, 50_000.0)
    target = TargetCosts("postgresql", connect=0.02, catalog=0.01, lookup=0.001, load_workers=2,
                         fetch_rows_per_second=fetch)
    fixed = sync_seconds(_profile(0, 50_000.0), target, blob=0.005, ranges=4)
    seconds = sync_seconds(source, target, blob=0.005, ranges=4)
    assert seconds - fixed == pytest.approx(100_000 / 50_000 + target_read)
    assert fixed > 0  # connections, catalogs, manifests and counts cost something even for no rows


def test_sync_costs_one_count_sized_query_per_key_range() -> None:
    source = _profile(1000, 50_000.0)
    target = TargetCosts("sqlite", 0.0, 0.0, 0.0, 1)
    assert sync_seconds(source, target, 0.0, 10) - sync_seconds(source, target, 0.0, 4) == pytest.approx(6 * 0.001)
