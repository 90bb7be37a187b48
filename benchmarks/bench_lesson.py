"""The guided lesson's steps, timed as a class would meet them: each step's runs submitted through the queue
(as the page's "Run this step" does) and waited for, in step order, on a cold store; then every step again on
the now warm store (each run reused), which is what "Prepare the whole lesson" buys before class.

    .venv/bin/python benchmarks/bench_lesson.py [--home DIR]

--home keeps the store (for `scripts/screenshots.py --pages lesson`); by default a temporary one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snows_core.dashboard.lesson import LESSON, step_runs  # noqa: E402
from snows_core.runs import RunStore  # noqa: E402
from snows_core.runs.executor import submit  # noqa: E402


def run_step(store: RunStore, index: int) -> tuple[float, list[float]]:
    """Submit the step's missing runs, wait until all are final: (wall seconds, each run's top-1)."""
    step = LESSON[index]
    tic = time.perf_counter()
    ids = [run_id or submit(store, step.runs[label]) for label, run_id in step_runs(store, step).items()]
    while any(store.get(r)["status"] in ("queued", "running") for r in ids):
        time.sleep(0.2)
    seconds = time.perf_counter() - tic
    return seconds, [(store.result(r) or {}).get("top1_final", float("nan")) for r in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="snows-lesson-"))
    store = RunStore(home)
    print(f"store: {home}\n")
    print("| step | runs | cold store s | warm store s | top-1 |")
    print("|---|---|---|---|---|")
    for index, step in enumerate(LESSON):
        cold, top1 = run_step(store, index)
        warm, _ = run_step(store, index)
        shown = ", ".join(f"{t:.1%}" for t in top1)
        print(f"| {index + 1}. {step.title} | {len(step.runs)} | {cold:.1f} | {warm:.2f} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
