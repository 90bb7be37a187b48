"""Benchmark: the accuracy frontier on ResNet-20 / CIFAR-10, mask method x update x recipe, as Markdown tables.

1. For every sparsity (unstructured, and 2:4) and mask method (magnitude, wanda, sparsegpt, obc): top-1 on
   all the shared test images and seconds, with no update, layer-wise least squares, SNOWS K=3 in one
   pass, and SNOWS K=3 in `--stages` gradual passes.
2. At `--recipe-sparsity`, `--recipe-mask` (obc) + SNOWS K=3 in `--stages` passes under every allocation.
3. The same recipe with `--n-calib` and `--big-calib` calibration images, the big set in mini-batches of
   `--n-calib` (one Newton step each) and as one batch whose curvature products are taken on `--n-calib`
   of its images (`curvature_fraction`).
Every run prunes the same 18 block convs; calibration images are the first n of train_x (with `--samples S`,
each config also runs on the next S - 1 disjoint sets of n, and a cell is the mean [lowest-highest]).

    .venv/bin/python benchmarks/bench_frontier.py [--shared ../shared] [--sparsity 0.7,0.8,0.9,0.95,2:4]
        [--masks magnitude,wanda,sparsegpt,obc] [--stages 5] [--recipe-sparsity 0.9] [--recipe-mask obc]
        [--big-calib 1024]
        [--tables 1,2,3] [--samples 1] [--out frontier.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core import PruneConfig, prune_model
from snows_core.io.data import load_npz
from snows_core.masks import list_allocations
from snows_core.measure.metrics import top1
from snows_core.models import create_model

COLUMNS = {  # table 1: name -> PruneConfig overrides (the gradual column adds the stages)
    "none": dict(reconstruction="none"),
    "lstsq": dict(reconstruction="lstsq"),
    "snows K=3": dict(reconstruction="snows", k=3),
    "snows K=3, gradual": dict(reconstruction="snows", k=3),
}


def config(sparsity: str, mask: str, n_calib: int, **overrides) -> PruneConfig:
    pattern = sparsity if ":" in sparsity else "unstructured"
    value = None if ":" in sparsity else float(sparsity)
    return PruneConfig(sparsity=value, pattern=pattern, mask=mask, n_calib=n_calib, device="cpu", **overrides)


class Bench:
    """Runs configs on the shared ResNet-20 and remembers every measurement. With `samples` > 1 each config runs
    on that many disjoint calibration sets (train_x[0:n], [n:2n], ...) and a cell is their mean and range:
    at 90% the calibration sample alone moves top-1 by up to 3 points."""

    def __init__(self, shared: Path, samples: int = 1) -> None:
        self.samples = samples
        self.model = create_model("resnet20_cifar10", checkpoint=shared / "models" / "resnet20-cifar10.th")
        self.model.requires_grad_(False)
        self.train_x, _ = load_npz(shared / "data" / "cifar10-subset.npz", "train")
        self.test_x, self.test_y = load_npz(shared / "data" / "cifar10-subset.npz", "test")
        self.rows: list[dict] = []

    def run(self, cfg: PruneConfig, **labels) -> str:
        accuracies, times = [], []
        for sample in range(self.samples):
            calib = self.train_x[sample * cfg.n_calib : (sample + 1) * cfg.n_calib]
            tic = time.perf_counter()
            result = prune_model(self.model, calib, cfg)
            times.append(time.perf_counter() - tic)
            accuracies.append(top1(result.model, self.test_x, self.test_y))
            row = {**labels, "config": cfg.to_dict(), "sample": sample, "top1": accuracies[-1], "seconds": times[-1]}
            self.rows.append(row)
        mean, seconds = sum(accuracies) / len(accuracies), sum(times) / len(times)
        spread = f" [{min(accuracies):.4f}-{max(accuracies):.4f}]" if len(accuracies) > 1 else ""
        return f"{mean:.4f}{spread} ({seconds:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("SNOWS_SHARED", "../shared")))
    parser.add_argument("--sparsity", default="0.7,0.8,0.9,0.95,2:4")
    parser.add_argument("--masks", default="magnitude,wanda,sparsegpt,obc")
    parser.add_argument("--n-calib", type=int, default=256)
    parser.add_argument("--stages", type=int, default=5, help="passes of the gradual recipe")
    parser.add_argument("--recipe-sparsity", default="0.9", help="where tables 2 and 3 are measured")
    parser.add_argument("--recipe-mask", default="obc", help="the mask method of tables 2 and 3")
    parser.add_argument("--big-calib", type=int, default=1024)
    parser.add_argument("--tables", default="1,2,3")
    parser.add_argument("--samples", type=int, default=1, help="disjoint calibration sets per config: mean [range]")
    parser.add_argument("--out", type=Path, default=None, help="also write every measurement here as JSON")
    args = parser.parse_args()

    bench = Bench(args.shared, args.samples)
    tables = args.tables.split(",")
    needed = args.samples * max(args.n_calib, args.big_calib if "3" in tables else 0)
    if args.samples < 1 or needed > len(bench.train_x):
        parser.error(f"--samples {args.samples} needs {needed} calibration images; train_x holds {len(bench.train_x)}")
    gradual = dict(reconstruction="snows", k=3, stages=args.stages)
    dense = top1(bench.model, bench.test_x, bench.test_y)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu; dense top-1 {dense:.4f}")
    print(f"{len(bench.test_y)} test images, {args.n_calib} calibration images; gradual: {args.stages} stages\n")
    if "1" in tables:
        print("| sparsity | mask | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 2) + "|")
        for sparsity in args.sparsity.split(","):
            for mask in args.masks.split(","):
                cells = []
                for column, overrides in COLUMNS.items():
                    extra = {"stages": args.stages} if column.endswith("gradual") else {}
                    cfg = config(sparsity, mask, args.n_calib, **overrides, **extra)
                    cells.append(bench.run(cfg, table=1, column=column))
                print(f"| {sparsity} | {mask} | " + " | ".join(cells) + " |", flush=True)
    if "2" in tables:
        print(f"\nAllocations at {args.recipe_sparsity}, {args.recipe_mask} + SNOWS K=3, {args.stages} stages\n")
        print("| allocation | top-1 (seconds) |\n|---|---|")
        for allocation in list_allocations():
            cfg = config(args.recipe_sparsity, args.recipe_mask, args.n_calib, allocation=allocation, **gradual)
            print(f"| {allocation} | {bench.run(cfg, table=2, column=allocation)} |", flush=True)
    if "3" in tables:
        print(f"\nCalibration images at {args.recipe_sparsity}, {args.recipe_mask} + SNOWS K=3, {args.stages} stages\n")
        print("| calibration images | top-1 (seconds) |\n|---|---|")
        small, big = args.n_calib, args.big_calib
        rows = {  # row label -> (images, Newton step batch, curvature fraction)
            f"{small}": (small, small, 1.0),
            f"{big} in mini-batches of {small}": (big, small, 1.0),
            f"{big} in one batch, curvature products on {small}": (big, big, small / big),
        }
        for label, (n, batch, fraction) in rows.items():
            cfg = config(
                args.recipe_sparsity, args.recipe_mask, n, batch_size=batch, curvature_fraction=fraction, **gradual
            )
            print(f"| {label} | {bench.run(cfg, table=3, column=label)} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(bench.rows, indent=1))


if __name__ == "__main__":
    main()
