"""The plan's forecast of the read-only window against the window the run then takes, at three tenant sizes.

For each size: stand the demo up (``fixtures.demo.DemoStack``), ``migrator plan --json`` the local playbook (told
that nothing changes before the window: ``settings.planned_change: 0``), ``migrator run`` it, and read the window
the run report measured (the ``read_only.start`` event to the end of the run). Prints forecast, actual and their
ratio per size, and each window step's planned span beside what it took. The forecast is advice for choosing a
window; the rates behind it are this machine's, so the ratio is what to watch (it was 0.80-1.01 on 2 cores at
30,000 rows and 1,000 blobs), not the seconds.

The plans of all sizes share one state directory for their rates (``rates.json``, :mod:`migrator.estimator`): the
first size plans with the samples its own probes take, the later ones with the median of those and the earlier
sizes' too, as repeated plans on one machine do. Printed at the end: the rates measured, and how many samples each.

    .venv/bin/python bench/forecast.py                  # the three sizes below
    .venv/bin/python bench/forecast.py --sizes demo     # one of them
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.demo import PLAYBOOK, DemoSize, DemoStack, drop_database  # noqa: E402

#: The demo's own default tenant, the size the suite's forecast check used to run, and a larger one.
SIZES = {
    "demo": DemoSize(),
    "medium": DemoSize(rows=30_000, blobs=1_000, blob_bytes=20_000_000),
    "large": DemoSize(rows=100_000, blobs=3_000, blob_bytes=100_000_000),
}


def migrator(stack: DemoStack, *args: str, state: Path | None = None) -> str:
    environ = stack.child_environ()
    if state is not None:  # where the plan keeps the rates it measures
        environ["MIGRATOR_STATE"] = str(state)
    result = subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT, env=environ,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"migrator {args[0]} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def measure(name: str, size: DemoSize, workdir: Path) -> dict[str, Any]:
    """Forecast and actual of the read-only window, and each window step's plan against what it took."""
    stack = DemoStack(workdir / name, size, database=f"w365_bench_{uuid.uuid4().hex[:10]}")
    with stack:
        env_file = stack.write_environment(planned_change=0.0)
        plan = json.loads(migrator(stack, "plan", str(PLAYBOOK), "-e", str(env_file), "--json",
                                   "--out", str(workdir / f"{name}-plan"), state=workdir / "rates"))
        migrator(stack, "run", str(PLAYBOOK), "-e", str(env_file), "--state", str(stack.state_dir),
                 "--run-id", "forecast")
        report = json.loads(migrator(stack, "report", "forecast", "--state", str(stack.state_dir),
                                     "--format", "json"))
    drop_database(stack.database)
    timeline = plan["timeline"]
    ran = {s["id"]: s for s in report["steps"]}
    steps = [(s["id"], s["start"], s["seconds"], ran[s["id"]]["actual_seconds"] or 0.0)
             for s in timeline["steps"] if s["id"] in ran]
    return {"forecast": timeline["read_only_window"]["seconds"], "actual": report["read_only_window"]["seconds"],
            "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-forecast-") as tmp:
        (Path(tmp) / "rates").mkdir()
        for name in args.sizes:
            size = SIZES[name]
            print(f"{name}: {size.rows} rows, {size.blobs} blobs, {size.blob_bytes / 1e6:.0f} MB", flush=True)
            results[name] = found = measure(name, size, Path(tmp))
            for step, start, planned, took in found["steps"]:
                print(f"  {step:16s} planned {start:7.2f} + {planned:6.2f}s, took {took:6.2f}s")
        kept = Path(tmp) / "rates" / "rates.json"
        samples = json.loads(kept.read_text())["samples"] if kept.is_file() else {}
    print("rates measured by the plans (samples): "
          + (", ".join(f"{rate} ({len(rows)})" for rate, rows in sorted(samples.items())) or "none"))
    print("read-only window: forecast / actual")
    for name, found in results.items():
        print(f"  {name:8s} forecast {found['forecast']:7.2f}s  actual {found['actual']:7.2f}s  "
              f"ratio {found['forecast'] / found['actual']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
