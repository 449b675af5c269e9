"""Plan estimates: the engine's measured cost per step, the read-only window on the timeline (steps side by side
sharing the cores), database.sync's sum, blob listings projected to what the containers will hold."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import pytest

from migrator.estimator import RATES
from migrator.playbook import load
from migrator.providers.blob.folder import FolderBlobStore
from migrator.providers.database import Table
from migrator.registry import Registry
from migrator.reports.calibrate import TRANSACTIONS_PER_STEP, EngineCost, measure_transaction
from migrator.reports.plan import schedule, step_seconds, timeline
from migrator.runner import StepPlanView
from migrator.step import Params, Step, StepContext
from migrator.steps.blobs import (
    Compact,
    Diff,
    ListingSides,
    PutLiveParams,
    SyncParams,
    hash_probe,
    listings_overlap,
    transfer_estimate,
)
from migrator.steps.database import DbCosts, SourceProfile, TargetCosts, chunk_count
from migrator.steps.database_delta import sync_seconds
from migrator.testing import MemoryContext

#: The assumed rates the estimates below are priced at (seconds a unit).
AZURE_LIST = RATES["blob.list.azure"].assumed
READ_BACK = RATES["blob.read_back"].assumed
PER_COPY = RATES["blob.copy"].assumed
PER_BYTE = RATES["blob.bytes"].assumed


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
def test_sync_reads_every_source_row_and_with_verify_full_the_whole_target(fetch: float, target_read: float) -> None:
    source = _profile(100_000, 50_000.0)
    target = TargetCosts("postgresql", connect=0.02, catalog=0.01, lookup=0.001, load_workers=2,
                         fetch_rows_per_second=fetch)
    fixed = sync_seconds(_profile(0, 50_000.0), target, blob=0.005, ranges=4)
    seconds = sync_seconds(source, target, blob=0.005, ranges=4)
    assert seconds - fixed == pytest.approx(100_000 / 50_000)  # verify: changed reads no unchanged target row
    full = sync_seconds(source, target, blob=0.005, ranges=4, full=True)
    fixed_full = sync_seconds(_profile(0, 50_000.0), target, blob=0.005, ranges=4, full=True)
    assert full - fixed_full == pytest.approx(100_000 / 50_000 + target_read)
    assert fixed > 0  # connections, catalogs, manifests and counts cost something even for no rows


def test_sync_costs_one_count_sized_query_per_key_range() -> None:
    source = _profile(1000, 50_000.0)
    target = TargetCosts("sqlite", 0.0, 0.0, 0.0, 1)
    assert sync_seconds(source, target, 0.0, 10) - sync_seconds(source, target, 0.0, 4) == pytest.approx(6 * 0.001)


# -- the timeline: steps side by side share the cores --------------------------------------------------------


@pytest.mark.parametrize(("lanes", "work", "needs", "expected_ends"), [
    # two steps side by side on two cores: the longer of the two
    (2, {"a": 1.0, "b": 3.0}, {}, {"a": 1.0, "b": 3.0}),
    # on one core: they share it, each at half speed while both run
    (1, {"a": 1.0, "b": 3.0}, {}, {"a": 2.0, "b": 4.0}),
    # three on two cores: 2/3 speed while all three run
    (2, {"a": 1.0, "b": 1.0, "c": 1.0}, {}, {"a": 1.5, "b": 1.5, "c": 1.5}),
    # a step waits for the steps it needs
    (2, {"a": 1.0, "b": 2.0, "c": 0.5}, {"c": ["a", "b"]}, {"a": 1.0, "b": 2.0, "c": 2.5}),
])
def test_steps_running_at_once_share_the_cores(lanes: int, work: dict[str, float], needs: dict[str, list[str]],
                                               expected_ends: dict[str, float]) -> None:
    spans = schedule(list(work), needs, work, slots=4, lanes=lanes)
    assert {k: end for k, (_, end) in spans.items()} == pytest.approx(expected_ends)


def test_the_runners_concurrency_limit_queues_steps_beyond_it() -> None:
    spans = schedule(["a", "b", "c"], {}, {"a": 1.0, "b": 1.0, "c": 1.0}, slots=2, lanes=4)
    assert spans["c"] == pytest.approx((1.0, 2.0))


def _view(status: str, estimate: float | None, **details: object) -> StepPlanView:
    return StepPlanView("s", "blobs.sync", [], status, "", estimate_seconds=estimate, details=dict(details))


@pytest.mark.parametrize(("view", "expected"), [
    (_view("change", 1.5), 1.5),
    (_view("deferred", None), None),
    (_view("done", 0.0), 0.0),                      # done now and nothing said about the run: free
    (_view("done", 0.0, run_seconds=0.4), 0.4),     # done now, yet check and verify list again in the run
])
def test_a_step_done_at_plan_time_still_costs_what_the_run_spends_on_it(view: StepPlanView,
                                                                        expected: float | None) -> None:
    assert step_seconds(view) == expected


# -- blob listings projected to what the containers will hold ----------------------------------------------


def _azure(container: str) -> dict[str, str]:
    return {"kind": "azure", "account_url": "http://127.0.0.1:1", "credential": "default", "container": container}


def _source(count: int, size: int = 1000) -> dict[str, Compact]:
    return {f"b{i}": Compact(size, None, 0.0) for i in range(count)}


def test_a_sync_after_a_presync_is_planned_with_the_destination_as_the_presync_fills_it() -> None:
    params = SyncParams.model_validate({"source": {"kind": "folder", "path": "/src"},
                                        "destination": _azure("backup"), "planned_change": 0.01})
    source = _source(1000)
    sides = ListingSides("folder", 1000, 0.015, "azure", 0, 0.004)
    diff = Diff(to_copy=1000, to_copy_bytes=1_000_000)
    estimate, _, holds = transfer_estimate(params, diff, sides, source)
    per_blob = AZURE_LIST
    # check lists the folder beside the (then full) destination: the longer of the two; verify reads back the
    # 10 copies instead of listing the destination again
    listings = max(0.015, 0.004 + 1000 * per_blob) + 10 * READ_BACK
    copies = 10 * PER_COPY + 10_000 * PER_BYTE
    assert estimate.seconds == pytest.approx(listings + copies)
    assert estimate.items == 10 and holds == (1000, 1_000_000)
    assert "assumed for azure" in estimate.basis and "10 of 1000" in estimate.basis
    assert "10 copies read back" in estimate.basis


def test_a_put_live_from_a_backup_an_earlier_step_fills_lists_what_it_will_hold() -> None:
    params = PutLiveParams.model_validate({"source": _azure("backup"), "destination": _azure("live"),
                                           "planned_change": 0.01})
    sides = ListingSides("azure", 0, 0.004, "azure", 0, 0.004)
    estimate, diff, _ = transfer_estimate(params, Diff(), sides, {}, will_hold=(1000, 1_000_000))
    per_blob = AZURE_LIST
    # two containers of one account: the listings add up (one service answers both); the copies read back
    listings = 2 * (0.004 + 1000 * per_blob) + 10 * READ_BACK
    assert diff.to_copy == 1000 and estimate.items == 10
    assert estimate.seconds == pytest.approx(listings + 10 * PER_COPY + 10_000 * PER_BYTE)
    assert "will hold 1000" in estimate.basis


def test_a_full_copy_is_verified_by_listing_the_destination_once_more() -> None:
    params = PutLiveParams.model_validate({"source": _azure("backup"), "destination": _azure("live")})
    sides = ListingSides("azure", 1000, 0.1, "azure", 0, 0.004)
    estimate, _, _ = transfer_estimate(params, Diff(to_copy=1000, to_copy_bytes=1_000_000), sides, _source(1000))
    per_blob = 0.1 / 1000  # timed on the source, a container of the same kind
    listings = 0.1 + 0.004 + (0.004 + 1000 * per_blob)  # check: both sides; verify: the destination, now full
    assert estimate.seconds == pytest.approx(listings + 1000 * PER_COPY + 1_000_000 * PER_BYTE)
    assert "1000 destination blob(s) listed again" in estimate.basis


@pytest.mark.parametrize(("source", "destination", "overlap"), [
    ({"kind": "folder", "path": "/src"}, _azure("backup"), True),
    (_azure("backup"), _azure("live"), False),  # one account: one service answers both
    (_azure("backup"), {**_azure("live"), "account_url": "http://127.0.0.2:1"}, True),
    ({"kind": "folder", "path": "/src"}, {"kind": "folder", "path": "/dst"}, False),
])
def test_listings_side_by_side_overlap_only_on_different_services(
        source: dict[str, str], destination: dict[str, str], overlap: bool) -> None:
    params = PutLiveParams.model_validate({"source": source, "destination": destination})
    assert listings_overlap(params.source, params.destination) is overlap


@pytest.mark.parametrize(("sides", "side", "expected", "how"), [
    (ListingSides("folder", 1000, 0.02, "azure", 0, 0.004), "src", 20e-6, "timed on the source"),
    (ListingSides("folder", 1000, 0.02, "azure", 0, 0.004), "dst", AZURE_LIST, "assumed"),
    (ListingSides("azure", 1000, 0.1, "azure", 3, 0.004), "dst", 100e-6, "timed on the source"),
    (ListingSides("azure", 50, 0.01, "azure", 0, 0.004), "src", AZURE_LIST, "assumed"),
])
def test_the_listing_cost_of_a_blob_is_timed_on_a_store_of_the_same_kind_when_one_holds_enough(
        sides: ListingSides, side: Literal["src", "dst"], expected: float, how: str) -> None:
    rate, basis = sides.per_blob(side)
    assert rate == pytest.approx(expected) and how in basis


def test_the_hash_probe_reads_a_bounded_sample_of_the_blobs(tmp_path: Path) -> None:
    for i in range(200):
        (tmp_path / f"b{i:03d}").write_bytes(b"x" * 100)
    store = FolderBlobStore(tmp_path)
    blobs = list(store.list(metadata=False))
    seconds, sampled = hash_probe(MemoryContext(), store, blobs, concurrency=4, sample=20)
    assert sampled == 20 and seconds > 0
    assert hash_probe(MemoryContext(), store, [], concurrency=4) == (0.0, 0)


# -- the read-only window of the plan: estimates in, the window's seconds out (no timing) -------------------------


class _Work(Step[Params]):
    kind = "test.work"
    Params = Params

    def apply(self, ctx: StepContext) -> None:
        return None


class _ReadOnly(_Work):
    kind = "test.read_only"


_WINDOW_PLAYBOOK = """
name: window
concurrency: 4
steps:
  - {id: presync, uses: test.work}
  - {id: read_only, uses: test.read_only, needs: [presync]}
  - {id: sync, uses: test.work, needs: [read_only]}
  - {id: verify, uses: test.work, needs: [read_only]}
  - {id: cutover, uses: test.work, needs: [sync, verify]}
"""


@pytest.mark.parametrize(("cores", "overhead", "window"), [
    (2, 0.0, 5.0),      # sync (4 s) beside verify (2 s) on their own cores, then the cutover (1 s)
    (1, 0.0, 7.0),      # on one core verify ends at 4 s (half speed), sync at 6 s, then the cutover
    (2, 0.001, 5.0 + 3 * 0.001 * TRANSACTIONS_PER_STEP),  # each step in the window also costs its transactions
])
def test_the_plans_read_only_window_runs_from_the_read_only_step_to_the_end_of_the_run(
        monkeypatch: pytest.MonkeyPatch, cores: int, overhead: float, window: float) -> None:
    registry = Registry()
    registry.add(_Work)
    registry.add(_ReadOnly)
    loaded = load("pb.yaml", registry=registry, playbook_text=_WINDOW_PLAYBOOK)
    estimates = {"presync": 10.0, "read_only": 0.0, "sync": 4.0, "verify": 2.0, "cutover": 1.0}
    views = [StepPlanView(sid, "test.work", [], "change", "", estimate_seconds=s) for sid, s in estimates.items()]
    monkeypatch.setattr("migrator.reports.plan.lanes", lambda: cores)
    planned = timeline(loaded, views, EngineCost(overhead))
    assert planned["read_only_window"]["seconds"] == pytest.approx(window)
    assert planned["read_only_window"]["start"] == pytest.approx(10.0 + overhead * TRANSACTIONS_PER_STEP)
    assert planned["unestimated"] == []
