"""The queue's speed, cold and warm, and the Launch page's preset sweep with and without the warm spare and caches.

1. A tiny run (zoo mlp, 50%, K=0, 64 calibration images, 200 test images): submit -> first event and submit
   -> done on a cold queue (a new store: no dispatcher, no spare, empty caches) and on a warm one (the same
   store once its dispatcher says the spare is ready), `--tiny` times each (distinct seeds: no run is reused).
2. The preset "Magnitude vs Wanda at K = 0 and 3 (resnet20)" (12 runs, the default recipe, 1,000 test
   images), each sweep from a cold queue in a new store: "before" with ``SNOWS_SPARE=off SNOWS_CACHE=off``,
   "after" with both on; wall time from the first submit to the last run done, side by side, `--sweeps` pairs
   (alternating, so a drift in the machine's load hits both), and whether every run's results agree.
3. The sweep submitted again: every run reused.

    .venv/bin/python benchmarks/bench_queue.py [--tiny 5] [--sweeps 1] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from bench_frontier import machine  # noqa: E402

from snows_core import PruneConfig  # noqa: E402
from snows_core.recipes import get_recipe  # noqa: E402
from snows_core.runs import RunSpec, RunStore  # noqa: E402
from snows_core.runs.executor import submit  # noqa: E402
from snows_core.runs.local import dispatcher_state  # noqa: E402
from snows_core.runs.process import pid_alive  # noqa: E402
from snows_core.runs.sweep import grid_specs, submit_all  # noqa: E402

PRESET_AXES = {"mask": ["magnitude", "wanda"], "k": [0, 3], "sparsity": [0.5, 0.7, 0.9]}
OFF = {"SNOWS_SPARE": "off", "SNOWS_CACHE": "off"}
ON = {"SNOWS_SPARE": "on", "SNOWS_CACHE": "on"}


def new_store() -> RunStore:
    home = Path(tempfile.mkdtemp(prefix="snows-bench-queue-"))
    os.environ["SNOWS_HOME"] = str(home)
    return RunStore(home)


def until(predicate, timeout: float = 3600.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the queue did not get there")
        time.sleep(every)


def finished(store: RunStore, runs: list[str]) -> bool:
    return all(store.get(run)["status"] not in ("queued", "running") for run in runs)


def stop_queue(store: RunStore) -> None:
    """End the store's dispatcher (its spare follows: their pipe closes) so that it loads nothing next."""
    state = dispatcher_state(store.home) or {}
    pids = [pid for pid in (state.get("pid"), state.get("spare")) if pid]
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    until(lambda: not any(pid_alive(pid) for pid in pids), timeout=60)


def tiny_spec(seed: int) -> RunSpec:
    return RunSpec(model="mlp", config=PruneConfig(sparsity=0.5, k=0, n_calib=64, seed=seed), eval_size=200)


def timed_run(store: RunStore, spec: RunSpec) -> tuple[float, float]:
    """(submit -> first event, submit -> done) in seconds, the clock read just before `submit`."""
    tic = time.time()
    run = submit(store, spec)
    until(lambda: finished(store, [run]))
    row, events = store.get(run), store.events(run)
    if row["status"] != "done":
        raise RuntimeError(f"run {run} ended {row['status']}: {row['error']}")
    return events[0]["time"] - tic, row["finished"] - tic


def describe(label: str, samples: list[tuple[float, float]]) -> str:
    first, done = ([s[i] for s in samples] for i in (0, 1))
    return (
        f"| {label} | {statistics.median(first):.2f} ({min(first):.2f}-{max(first):.2f}) | "
        f"{statistics.median(done):.2f} ({min(done):.2f}-{max(done):.2f}) | {len(samples)} |"
    )


def tiny_runs(times: int) -> None:
    cold, warm, seed = [], [], 0
    for _ in range(times):
        store = new_store()
        cold.append(timed_run(store, tiny_spec(seed)))
        seed += 1
        until(lambda home=store.home: (dispatcher_state(home) or {}).get("spare_ready"), timeout=300)
        time.sleep(0.5)  # the machine settles: nothing but the idle dispatcher and spare
        warm.append(timed_run(store, tiny_spec(seed)))
        seed += 1
        stop_queue(store)
    print("\n## A tiny run (mlp, 50%, K=0, 64 calibration images, 200 test images)\n")
    print("| queue | submit -> first event, s (range) | submit -> done, s (range) | runs |")
    print("|---|---|---|---|")
    print(describe("cold (new store: dispatcher, worker and caches start from nothing)", cold))
    print(describe("warm (its spare ready)", warm))


def preset_specs() -> list[RunSpec]:
    return grid_specs(RunSpec(model="resnet20", config=get_recipe("default"), eval_size=1000), PRESET_AXES)


def one_sweep(settings: dict[str, str]) -> tuple[float, RunStore, list[str]]:
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)  # the dispatcher the first submit starts inherits them
    try:
        store = new_store()
        tic = time.perf_counter()
        _, runs = submit_all(store, preset_specs())
        until(lambda: finished(store, runs), every=0.2)
        wall = time.perf_counter() - tic
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    stop_queue(store)
    return wall, store, runs


def results(store: RunStore, runs: list[str]) -> list[tuple]:
    rows = [store.result(run) or {} for run in runs]
    return [(r.get("top1_dense"), r.get("top1_mask_only"), r.get("top1_final")) for r in rows]


def sweeps(pairs: int) -> None:
    before, after = [], []
    for _ in range(pairs):
        before.append(one_sweep(OFF))
        after.append(one_sweep(ON))
    print("\n## The preset sweep: Magnitude vs Wanda at K = 0 and 3 (resnet20), 12 runs, one at a time\n")
    print("| | wall time, s (each sweep) | median |")
    print("|---|---|---|")
    for label, done in (("before: SNOWS_SPARE=off SNOWS_CACHE=off", before), ("after: warm spare and caches", after)):
        walls = [wall for wall, _, _ in done]
        print(f"| {label} | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(walls):.1f} |")
    ratio = statistics.median(w for w, _, _ in after) / statistics.median(w for w, _, _ in before)
    print(f"\nafter / before: {ratio:.2f}")
    same = all(results(*b[1:]) == results(*a[1:]) for b, a in zip(before, after, strict=True))
    print(f"every run's dense, mask-only and final top-1 identical before and after: {'yes' if same else 'NO'}")
    _, store, runs = after[-1]
    print("\n| sparsity | mask | K | mask only | SNOWS | run seconds |")
    print("|---|---|---|---|---|---|")
    for spec, run in zip(preset_specs(), runs, strict=True):
        r = store.result(run) or {}
        c = spec.config
        print(
            f"| {c.sparsity} | {c.mask} | {c.k} | {r['top1_mask_only']:.4f} | {r['top1_final']:.4f} | "
            f"{r['seconds']:.1f} |"
        )
    tic = time.perf_counter()
    _, again = submit_all(store, preset_specs())
    print(
        f"\nresubmitted: {sum(a == r for a, r in zip(again, runs, strict=True))}/{len(runs)} reused in "
        f"{time.perf_counter() - tic:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=int, default=5, help="tiny runs, cold and warm each")
    parser.add_argument("--sweeps", type=int, default=1, help="before/after pairs of the preset sweep")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    workers = os.environ.get("SNOWS_CPU_WORKERS", "1")
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    print(f"machine: {machine()}, {versions}; commit {commit.stdout.strip()}; SNOWS_CPU_WORKERS={workers}")
    tiny_runs(args.tiny)
    if not args.skip_sweep:
        sweeps(args.sweeps)


if __name__ == "__main__":
    main()
