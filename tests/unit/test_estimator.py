"""The estimator: counts in, seconds out, with given rates; the samples measured on this machine kept in the
state directory with their age, the median of the recent ones used, stale ones ignored; the basis names every
rate it used and where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrator.estimator import (
    KEEP,
    MAX_AGE,
    RATES,
    RATES_KEY,
    Rates,
    Sample,
    Work,
    estimate,
    priced,
    rates,
    rates_file,
)
from migrator.runner.planning import Planner
from migrator.step import Estimate
from migrator.testing import MemoryContext

NOW = 1_800_000_000.0


def _book(*samples: Sample, given: dict[str, float] | None = None, path: Path | None = None,
          now: float = NOW) -> Rates:
    return Rates(samples, given=given, path=path, now=lambda: now)


def test_counts_times_given_rates_plus_the_fixed_seconds() -> None:
    work = Work(fixed={"a listing timed now": 0.25}).add("blob.list.azure", 5000).add("blob.copy", 50)
    work.add("blob.bytes", 1.2e6)
    book = _book(given={"blob.list.azure": 1e-4, "blob.copy": 0.01, "blob.bytes": 1e-8})
    seconds, basis = book.price(work)
    assert seconds == pytest.approx(5000 * 1e-4 + 50 * 0.01 + 1.2e6 * 1e-8 + 0.25)
    for name in ("blob.list.azure", "blob.copy", "blob.bytes"):
        assert f"{name} " in basis
    assert "(given)" in basis and "a listing timed now 250 ms" in basis


def test_without_samples_each_rate_is_its_assumed_default_and_the_basis_says_so() -> None:
    seconds, basis = _book().price(Work().add("blob.copy", 500))
    assert seconds == pytest.approx(500 * RATES["blob.copy"].assumed)
    assert "blob.copy 2 ms/blob (assumed)" in basis


def test_a_count_of_an_unknown_rate_is_refused() -> None:
    with pytest.raises(KeyError, match=r"blob\.cpy"):
        Work().add("blob.cpy", 1)


def test_parts_side_by_side_cost_the_longest_and_work_done_twice_twice() -> None:
    book = _book(given={"blob.list.azure": 1e-3, "blob.list.folder": 1e-4})
    check = Work().alongside(Work().add("blob.list.azure", 100), Work().add("blob.list.folder", 3000))
    assert book.seconds_of(check) == pytest.approx(0.3)  # the folder walk: 0.3 s beside 0.1 s
    assert book.seconds_of(check.times(2).plus(Work(fixed={"x": 1.0}))) == pytest.approx(1.6)


def test_the_median_of_the_recent_samples_is_used() -> None:
    book = _book(*(Sample("blob.list.azure", 1000, s, NOW - 60) for s in (0.05, 0.09, 0.5)))
    value = book.value("blob.list.azure")
    assert value.seconds == pytest.approx(90e-6)  # 0.09 s for 1,000 blobs: the outlier does not move it
    assert value.source == "measured now, median of 3"


def test_stale_samples_are_ignored_and_only_the_newest_are_kept() -> None:
    stale = Sample("blob.copy", 1, 10.0, NOW - MAX_AGE - 1)
    fresh = [Sample("blob.copy", 1, 0.001 * (i + 1), NOW - 3600 * 3 - i) for i in range(KEEP + 5)]
    book = _book(stale, *fresh)
    recent = book.recent("blob.copy")
    assert stale not in recent and len(recent) == KEEP
    assert set(recent) == set(fresh[:KEEP])  # the newest ones (the smaller i, the later)
    assert book.value("blob.copy").source == f"measured 3 h ago, median of {KEEP}"
    assert _book(stale).value("blob.copy").source == "assumed"


def test_a_derived_rate_follows_its_base_until_measured_itself() -> None:
    read = Sample("db.source.read", 10_000, 0.2, NOW)  # 50,000 rows/s
    insert = _book(read).value("db.rows.insert")
    assert insert.seconds == pytest.approx(2e-5 / 0.35)
    assert insert.source.startswith("2.86 x db.source.read, measured now")
    assert _book().value("db.rows.insert").source == "assumed"
    own = _book(read, Sample("db.rows.insert", 1000, 0.1, NOW)).value("db.rows.insert")
    assert own.seconds == pytest.approx(1e-4)


def test_samples_kept_in_the_state_directory_are_read_back_with_their_age(tmp_path: Path) -> None:
    path = tmp_path / "rates.json"
    book = _book(path=path, now=NOW)
    book.record("state.transaction", 1, 0.004)
    book.record("state.transaction", 1, 0.006)
    book.record("blob.copy", 0, 1.0)  # nothing done: no sample
    book.close()
    kept = json.loads(path.read_text())["samples"]
    assert set(kept) == {"state.transaction"} and len(kept["state.transaction"]) == 2
    later = Rates.load(path, now=lambda: NOW + 2 * 86400)
    value = later.value("state.transaction")
    assert value.seconds == pytest.approx(0.005)
    assert value.source == "measured 2 days ago, median of 2"
    assert Rates.load(path, now=lambda: NOW + MAX_AGE + 60).value("state.transaction").source == "assumed"


def test_the_cache_drops_stale_samples_when_written_and_is_not_written_without_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "rates.json"
    _book(Sample("blob.copy", 1, 0.002, NOW - MAX_AGE - 1), path=path).close()
    assert not path.exists()  # nothing new: no file
    book = _book(Sample("blob.copy", 1, 0.002, NOW - MAX_AGE - 1), path=path)
    book.record("blob.copy", 10, 0.03)
    book.close()
    assert json.loads(path.read_text())["samples"] == {"blob.copy": [[10.0, 0.03, NOW]]}


def test_a_missing_state_directory_is_not_made_and_a_damaged_cache_is_ignored(tmp_path: Path) -> None:
    book = _book(path=tmp_path / "absent" / "rates.json")
    book.record("blob.copy", 1, 0.002)
    assert book.save() is False and not (tmp_path / "absent").exists()
    damaged = tmp_path / "rates.json"
    damaged.write_text("{not json")
    assert Rates.load(damaged).samples() == []


def test_the_basis_names_the_cache_when_it_priced_with_measured_rates(tmp_path: Path) -> None:
    path = tmp_path / "rates.json"
    book = _book(Sample("blob.copy", 1, 0.001, NOW - 30), path=path)
    _, basis = book.price(Work(note="50 blobs").add("blob.copy", 50).add("blob.bytes", 100))
    assert basis.startswith("50 blobs; rates: ")
    assert "blob.copy 1 ms/blob (measured now, median of 1)" in basis
    assert f"blob.bytes {RATES['blob.bytes'].assumed * 1e9:.3g} ns/byte (assumed)" in basis
    assert f"measured rates kept in {path}" in basis


def test_the_samples_a_work_carries_are_taken_into_the_rates_that_price_it() -> None:
    work = Work(samples=[Sample("blob.hash", 48, 0.096, NOW)]).add("blob.hash", 1000)
    book = _book()
    assert book.price(work)[0] == pytest.approx(2.0)
    assert book.samples("blob.hash") == work.samples


def test_an_estimate_is_priced_again_by_the_commands_rates_and_one_without_work_is_left_alone() -> None:
    work = Work(note="copies").add("blob.copy", 100)
    first = estimate(work, items=100)
    assert first.seconds == pytest.approx(100 * RATES["blob.copy"].assumed) and first.items == 100
    again = priced(first, _book(given={"blob.copy": 0.01}))
    assert again.seconds == pytest.approx(1.0) and again.items == 100 and again.basis.startswith("copies; ")
    assert priced(again, _book(given={"blob.copy": 0.01})).basis == again.basis  # pricing twice changes nothing
    plain = Estimate(seconds=3.0, basis="as stated")
    assert priced(plain, _book()) is plain


def test_a_step_prices_with_the_rates_the_engine_put_in_the_run_resources() -> None:
    ctx = MemoryContext()
    book = _book(given={"http.request": 1.0})
    ctx.resources.put(RATES_KEY, book)
    assert rates(ctx) is book
    assert rates(MemoryContext()).value("http.request").source == "assumed"


@pytest.mark.parametrize(("spec", "expected"), [
    ("/var/migrator", Path("/var/migrator/rates.json")),
    ("/var/migrator/runs.db", Path("/var/migrator/rates.json")),
    ("postgresql://migrator@db:5432/state", None),
])
def test_the_rates_live_in_the_state_directory_beside_the_store(spec: str, expected: Path | None) -> None:
    assert rates_file(spec) == expected


def test_without_a_state_option_the_environment_or_the_default_directory_holds_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIGRATOR_STATE", str(tmp_path))
    assert rates_file(None) == tmp_path / "rates.json"
    monkeypatch.delenv("MIGRATOR_STATE")
    assert rates_file(None) == Path(".migrator") / "rates.json"


def test_the_planner_keeps_a_steps_run_seconds_in_step_with_its_priced_estimate() -> None:
    from migrator.step import PlanResult

    class _Core:
        def __init__(self) -> None:
            from migrator.resources import RunResources

            self.resources = RunResources()
            self.resources.put(RATES_KEY, _book(given={"blob.copy": 0.5}))

    first = estimate(Work().add("blob.copy", 2))
    result = PlanResult.nothing("in place", run_seconds=first.seconds)
    result.estimate = first
    planned = Planner(_Core()).priced_result(result)  # type: ignore[arg-type]
    assert planned.estimate.seconds == pytest.approx(1.0) and planned.details["run_seconds"] == pytest.approx(1.0)
