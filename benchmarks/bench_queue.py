"""Queue overhead and a small sweep, for the runs issue's closing note.

1. The same spec run directly (`execute` in this process) and through `submit` (dispatcher + spawned
   worker + SQLite events): submit-to-start latency, events written per second, prune seconds.
2. A sweep on the zoo's resnet20 (sparsity x mask x K), each run's top-1 and seconds, then the same
   sweep again (every run a cache hit).

    .venv/bin/python benchmarks/bench_queue.py [--home DIR] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snows_core import PruneConfig  # noqa: E402
from snows_core.runs import RunSpec, RunStore  # noqa: E402
from snows_core.runs.executor import submit  # noqa: E402
from snows_core.runs.pipeline import execute  # noqa: E402


def wait(store: RunStore, runs: list[str]) -> None:
    while any(store.get(r)["status"] in ("queued", "running") for r in runs):
        time.sleep(0.5)


def overhead(store: RunStore, spec: RunSpec) -> None:
    events: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        direct = execute(spec, Path(tmp), lambda e: events.append(time.perf_counter()))
        direct_wall = time.perf_counter() - tic
    run = submit(store, spec, force=True)
    wait(store, [run])
    row, result = store.get(run), store.result(run)
    stored = store.events(run)
    span = stored[-1]["time"] - stored[0]["time"]
    print(f"\n## Queue overhead: {spec.model}, {spec.config.reconstruction} K={spec.config.k}")
    print(f"direct execute: {direct_wall:.2f} s wall, prune {direct['prune_seconds']:.2f} s, {len(events)} events")
    print(
        f"queued run:     {row['finished'] - row['created']:.2f} s submit-to-finish, prune "
        f"{result['prune_seconds']:.2f} s, {len(stored)} events"
    )
    print(f"submit-to-start latency (created -> worker claimed): {row['started'] - row['created']:.2f} s")
    print(f"first event after submit: {stored[0]['time'] - row['created']:.2f} s (spawned worker imports torch)")
    print(f"events written: {len(stored)} in {span:.2f} s = {len(stored) / span:.1f} events/s sustained")
    n = 2000
    tic = time.perf_counter()
    for i in range(n):
        store.append_event(run, "bench", {"i": i})
    print(f"append_event capacity: {n / (time.perf_counter() - tic):.0f} events/s (one transaction each)")


def sweep(store: RunStore) -> None:
    grid = list(itertools.product((0.5, 0.7, 0.9), ("magnitude", "wanda"), (0, 3)))
    specs = [RunSpec(model="resnet20", config=PruneConfig(sparsity=s, mask=m, k=k)) for s, m, k in grid]
    tic = time.perf_counter()
    runs = [submit(store, spec, sweep_id="bench-sweep") for spec in specs]
    wait(store, runs)
    total = time.perf_counter() - tic
    print("\n## Sweep: resnet20 (Fashion-MNIST zoo), 1,000 test images, defaults otherwise\n")
    print("| sparsity | mask | K | top-1 dense | mask only | SNOWS | run seconds | prune seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for (s, m, k), run in zip(grid, runs, strict=True):
        r = store.result(run) or {}
        status = store.get(run)["status"]
        if status != "done":
            print(f"| {s} | {m} | {k} | {status} | | | | |")
            continue
        print(
            f"| {s} | {m} | {k} | {r['top1_dense']:.4f} | {r['top1_mask_only']:.4f} | {r['top1_final']:.4f} | "
            f"{r['seconds']:.1f} | {r['prune_seconds']:.1f} |"
        )
    print(f"\nsweep wall time: {total:.1f} s for {len(runs)} runs")
    tic = time.perf_counter()
    again = [submit(store, spec, sweep_id="bench-sweep") for spec in specs]
    print(
        f"resubmitted: {sum(a == r for a, r in zip(again, runs, strict=True))}/{len(runs)} reused in "
        f"{time.perf_counter() - tic:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="SNOWS_HOME for the benchmark (default: a temp dir)")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="snows-bench-"))
    os.environ["SNOWS_HOME"] = str(home)
    store = RunStore(home)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    print(f"store: {home}; commit {commit.stdout.strip()}")
    overhead(store, RunSpec(model="mlp", config=PruneConfig(sparsity=0.5, k=1, n_calib=64), eval_size=1000))
    overhead(store, RunSpec(model="resnet20", config=PruneConfig(sparsity=0.7, k=3), eval_size=1000))
    if not args.skip_sweep:
        sweep(store)


if __name__ == "__main__":
    main()
