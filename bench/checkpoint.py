"""Benchmark: item checkpoints through the step context, against the same loop without checkpoints.

Runs a real playbook through the runner (real state store, real batching), in one process, and prints:
  (1) items/s for N empty items with a checkpoint each, and the same loop bare;
  (2) the overhead of checkpoints for items that each take ~1 ms of work.
Targets: at least 50,000 checkpoints/s; under 5% overhead for 1 ms items.

    python bench/checkpoint.py [--items 100000] [--slow-items 2000] [--state postgresql://...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from migrator.playbook import load
from migrator.registry import Registry
from migrator.runner import Runner
from migrator.state import open_store
from migrator.step import Params, Step, StepContext


class LoopParams(Params):
    count: int
    work_ms: float = 0.0
    checkpoint: bool = True


def _work(ms: float) -> None:
    if ms <= 0:
        return
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:  # busy work: sleep() granularity would blur a 1 ms item
        pass


class Loop(Step[LoopParams]):
    """Processes ``count`` items; records a checkpoint per item unless told not to. Changes nothing."""

    kind = "bench.loop"
    Params = LoopParams

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        started = time.perf_counter()
        for n in range(self.params.count):
            _work(self.params.work_ms)
            if self.params.checkpoint:
                ctx.items.record(f"{n:08d}", "done", bytes=4096, checksum="0" * 32)
        ctx.items.flush()
        return {"seconds": time.perf_counter() - started}


def timed_run(state: str, count: int, work_ms: float, checkpoint: bool, batch: int) -> float:
    registry = Registry()
    registry.add(Loop)
    text = (f"name: bench\ncheckpoint_batch: {batch}\nsteps:\n  - id: loop\n    uses: bench.loop\n"
            f"    with: {{count: {count}, work_ms: {work_ms}, checkpoint: {str(checkpoint).lower()}}}\n")
    loaded = load("bench.yaml", registry=registry, playbook_text=text)
    store = open_store(state)
    runner = Runner(store, options={"no_forecast": True})
    run_id = f"bench-{time.time_ns()}"
    outcome = runner.run(loaded, run_id=run_id)
    assert outcome.status == "succeeded", outcome
    seconds = float(store.get_step(run_id, "loop").outputs["seconds"])
    if checkpoint:
        assert store.count_items(run_id, "loop", "done")[0] == count
    store.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--slow-items", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--state", default=None, help="state store (default: a temporary SQLite directory)")
    args = parser.parse_args()
    state = args.state or tempfile.mkdtemp(prefix="migrator-bench-")

    # best of --repeat, interleaved, so a busy machine blurs both sides alike
    bare = min(timed_run(state, args.items, 0.0, False, args.batch) for _ in range(args.repeat))
    with_cp = min(timed_run(state, args.items, 0.0, True, args.batch) for _ in range(args.repeat))
    rate = args.items / with_cp
    print(f"state store: {open_store(state).describe()}")
    print(f"{args.items} items, no work:   bare {bare:.3f}s, with checkpoints {with_cp:.3f}s "
          f"-> {rate:,.0f} checkpoints/s (target >= 50,000) {'OK' if rate >= 50_000 else 'MISSED'}")

    slow_bare, slow_cp = float("inf"), float("inf")
    for _ in range(args.repeat):
        slow_bare = min(slow_bare, timed_run(state, args.slow_items, 1.0, False, args.batch))
        slow_cp = min(slow_cp, timed_run(state, args.slow_items, 1.0, True, args.batch))
    overhead = slow_cp / slow_bare - 1.0
    print(f"{args.slow_items} items of 1 ms: bare {slow_bare:.3f}s, with checkpoints {slow_cp:.3f}s "
          f"-> overhead {overhead:+.2%} (target < 5%) {'OK' if overhead < 0.05 else 'MISSED'}")
    print(f"ratio with/without checkpoints: no-work {with_cp / max(bare, 1e-9):.1f}x, 1 ms items "
          f"{slow_cp / slow_bare:.3f}x")


if __name__ == "__main__":
    main()
