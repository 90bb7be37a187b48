"""Benchmark: the accuracy frontier on ResNet-20 / CIFAR-10, as Markdown tables of means with 95% intervals.

The protocol (so that a figure survives another sample and another machine):
- every cell is the mean over `--samples` (default 5) disjoint calibration sets, train_x[0:n], [n:2n], ..., with
  the half-width of its two-sided 95% Student-t interval: "mean ± half-width";
- the last `--validation` (1,000) training images are neither calibration nor test images: a cell shows top-1 on
  them (val) and on the test images (test); recipes and settings are chosen on val, never on test;
- `--tables rounding` re-runs a config with its calibration images in another order (the same set): what that
  moves is chaos, not method, and a difference below it means nothing.

Tables (`--tables`, comma-separated):
1. sparsity x mask method (magnitude, wanda, sparsegpt, obc, window-obc): no update, layer-wise least squares,
   SNOWS K=3 in one pass, SNOWS K=3 in `--stages` gradual passes;
2. allocations at `--recipe-sparsity` for `--recipe-mask` + SNOWS K=3 in `--stages` passes;
3. calibration images: `--n-calib`, and `--big-calib` in mini-batches and as one batch;
recipes. `snows_core.recipes`: every named recipe at each sparsity of `--sparsity`;
parts. window-obc part by part at each sparsity: obc, + rows weighed by the window, + the joint re-fit, both;
rounding. `--recipe` at `--recipe-sparsity` on each sample as given and with its images permuted;
solver. `--recipe` at `--recipe-sparsity` with plain CG of 10 products, Gram-preconditioned CG of 10, 5 and 3, and
        2 Newton passes, each paired by sample with the recipe as it is (rows equal to it are skipped).

    .venv/bin/python benchmarks/bench_frontier.py [--shared ../shared] [--sparsity 0.7,0.8,0.9,0.95,2:4]
        [--masks magnitude,wanda,sparsegpt,obc,window-obc] [--stages 5] [--recipe best] [--recipe-sparsity 0.9]
        [--recipe-mask obc] [--big-calib 1024] [--tables 1,2,3,recipes,parts,rounding,solver] [--samples 5]
        [--validation 1000] [--out frontier.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core import PruneConfig, prune_model
from snows_core.io.data import load_npz
from snows_core.masks import MaskChoice, list_allocations, register_mask_method
from snows_core.masks.window_obc import window_obc_layer
from snows_core.measure.metrics import mean_interval, top1
from snows_core.models import create_model
from snows_core.recipes import get_recipe, list_recipes

COLUMNS = {  # table 1: name -> PruneConfig overrides (the gradual column adds the stages)
    "none": dict(reconstruction="none"),
    "lstsq": dict(reconstruction="lstsq"),
    "snows K=3": dict(reconstruction="snows", k=3),
    "snows K=3, gradual": dict(reconstruction="snows", k=3),
}
PARTS = {  # the parts table: mask name -> (rows weighed by the window, joint re-fit)
    "obc": None,
    "window-obc (rows only)": (True, False),
    "window-obc (re-fit only)": (False, True),
    "window-obc": None,
}


def register_parts() -> None:
    """window-obc with one part switched off, as plug-in mask methods (the config validates them by name)."""
    for name, parts in PARTS.items():
        if parts is not None:
            choose = lambda p, parts=parts: MaskChoice(*window_obc_layer(p, *parts))  # noqa: E731
            register_mask_method(name, in_loop=True)(choose)


def target(sparsity: str) -> dict:
    """PruneConfig's fields for a table's sparsity: "0.9" or an N:M pattern such as "2:4" (which implies it)."""
    return {"pattern": sparsity, "sparsity": None} if ":" in sparsity else {"sparsity": float(sparsity)}


def config(sparsity: str, mask: str, n_calib: int, **overrides) -> PruneConfig:
    return PruneConfig(**target(sparsity), mask=mask, n_calib=n_calib, device="cpu", **overrides)


def machine() -> str:
    """The processor, as /proc/cpuinfo names it where there is one."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


class Bench:
    """Runs configs on the shared ResNet-20 over disjoint calibration samples and remembers every measurement."""

    def __init__(self, shared: Path, samples: int = 5, validation: int = 1000) -> None:
        self.samples = samples
        self.model = create_model("resnet20_cifar10", checkpoint=shared / "models" / "resnet20-cifar10.th")
        self.model.requires_grad_(False)
        train_x, train_y = load_npz(shared / "data" / "cifar10-subset.npz", "train")
        self.calib_x, self.val_x, self.val_y = train_x[:-validation], train_x[-validation:], train_y[-validation:]
        self.test_x, self.test_y = load_npz(shared / "data" / "cifar10-subset.npz", "test")
        self.rows: list[dict] = []

    def calibration(self, sample: int, n: int, permuted: bool = False) -> torch.Tensor:
        images = self.calib_x[sample * n : (sample + 1) * n]
        return images[torch.randperm(n, generator=torch.Generator().manual_seed(sample))] if permuted else images

    def run(self, cfg: PruneConfig, permuted: bool = False, **labels) -> dict:
        """Every sample's val and test top-1 and seconds, and their means with 95% half-widths."""
        vals, tests, times = [], [], []
        for sample in range(self.samples):
            tic = time.perf_counter()
            result = prune_model(self.model, self.calibration(sample, cfg.n_calib, permuted), cfg)
            times.append(time.perf_counter() - tic)
            vals.append(top1(result.model, self.val_x, self.val_y))
            tests.append(top1(result.model, self.test_x, self.test_y))
            row = {**labels, "config": cfg.to_dict(), "sample": sample, "permuted": permuted}
            self.rows.append({**row, "val": vals[-1], "test": tests[-1], "seconds": times[-1]})
        return {"val": vals, "test": tests, "seconds": sum(times) / len(times)}

    def cell(self, cfg: PruneConfig, **labels) -> str:
        measured = self.run(cfg, **labels)
        return f"{interval(measured['val'])} / {interval(measured['test'])} ({measured['seconds']:.0f} s)"


def interval(values: list[float]) -> str:
    mean, half = mean_interval(values)
    return f"{100 * mean:.2f}" + (f" ± {100 * half:.2f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("SNOWS_SHARED", "../shared")))
    parser.add_argument("--sparsity", default="0.7,0.8,0.9,0.95,2:4")
    parser.add_argument("--masks", default="magnitude,wanda,sparsegpt,obc,window-obc")
    parser.add_argument("--n-calib", type=int, default=256)
    parser.add_argument("--stages", type=int, default=5, help="passes of the gradual recipe")
    parser.add_argument("--recipe", default="best", help="the recipe of the rounding table")
    parser.add_argument("--recipe-sparsity", default="0.9", help="where tables 2, 3 and rounding are measured")
    parser.add_argument("--recipe-mask", default="obc", help="the mask method of tables 2 and 3")
    parser.add_argument("--big-calib", type=int, default=1024)
    parser.add_argument("--tables", default="1,2,3,recipes,parts,rounding")
    parser.add_argument("--samples", type=int, default=5, help="disjoint calibration sets per config")
    parser.add_argument("--validation", type=int, default=1000, help="last training images kept for validation")
    parser.add_argument("--out", type=Path, default=None, help="also write every measurement here as JSON")
    args = parser.parse_args()

    register_parts()
    bench = Bench(args.shared, args.samples, args.validation)
    tables = args.tables.split(",")
    sparsities = args.sparsity.split(",")
    recipe_n = [get_recipe(r, **target(s)).n_calib for r in list_recipes() for s in sparsities]
    needed = args.samples * max(args.n_calib, args.big_calib if "3" in tables else 0, *recipe_n)
    if args.samples < 1 or needed > len(bench.calib_x):
        parser.error(f"--samples {args.samples} need {needed} calibration images; {len(bench.calib_x)} are held")
    gradual = dict(reconstruction="snows", k=3, stages=args.stages)
    dense_val, dense_test = top1(bench.model, bench.val_x, bench.val_y), top1(bench.model, bench.test_x, bench.test_y)
    print(f"{machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"dense top-1: val {100 * dense_val:.2f}, test {100 * dense_test:.2f} ({len(bench.test_y)} test images)")
    print(f"cells: val / test top-1 in %, mean ± 95% half-width over {args.samples} calibration sets, mean seconds\n")
    if "1" in tables:
        print(f"{args.n_calib} calibration images; gradual: {args.stages} stages\n")
        print("| sparsity | mask | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 2) + "|")
        for sparsity in sparsities:
            for mask in args.masks.split(","):
                cells = []
                for column, overrides in COLUMNS.items():
                    extra = {"stages": args.stages} if column.endswith("gradual") else {}
                    cfg = config(sparsity, mask, args.n_calib, **overrides, **extra)
                    cells.append(bench.cell(cfg, table=1, column=column))
                print(f"| {sparsity} | {mask} | " + " | ".join(cells) + " |", flush=True)
    if "2" in tables:
        print(f"\nAllocations at {args.recipe_sparsity}, {args.recipe_mask} + SNOWS K=3, {args.stages} stages\n")
        print("| allocation | val / test |\n|---|---|")
        for allocation in list_allocations():
            cfg = config(args.recipe_sparsity, args.recipe_mask, args.n_calib, allocation=allocation, **gradual)
            print(f"| {allocation} | {bench.cell(cfg, table=2, column=allocation)} |", flush=True)
    if "3" in tables:
        print(f"\nCalibration images at {args.recipe_sparsity}, {args.recipe_mask} + SNOWS K=3, {args.stages} stages\n")
        print("| calibration images | val / test |\n|---|---|")
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
            print(f"| {label} | {bench.cell(cfg, table=3, column=label)} |", flush=True)
    if "recipes" in tables:
        print("\nRecipes (`snows_core.recipes.get_recipe(name, sparsity=S)`)\n")
        print("| sparsity | " + " | ".join(list_recipes()) + " |\n" + "|---" * (len(list_recipes()) + 1) + "|")
        for sparsity in sparsities:
            configs = {r: get_recipe(r, device="cpu", **target(sparsity)) for r in list_recipes()}
            cells = [bench.cell(cfg, table="recipes", column=r) for r, cfg in configs.items()]
            print(f"| {sparsity} | " + " | ".join(cells) + " |", flush=True)
    if "parts" in tables:
        print(f"\nWindow-OBC part by part, + SNOWS K=3 in {args.stages} stages\n")
        print("| sparsity | " + " | ".join(PARTS) + " |\n" + "|---" * (len(PARTS) + 1) + "|")
        for sparsity in sparsities:
            cells = [bench.cell(config(sparsity, m, args.n_calib, **gradual), table="parts", column=m) for m in PARTS]
            print(f"| {sparsity} | " + " | ".join(cells) + " |", flush=True)
    if "rounding" in tables:
        cfg = get_recipe(args.recipe, device="cpu", **target(args.recipe_sparsity))
        given, permuted = bench.run(cfg, table="rounding"), bench.run(cfg, permuted=True, table="rounding")
        moved = [abs(a - b) for a, b in zip(given["test"], permuted["test"], strict=True)]
        print(f"\nRounding: recipe {args.recipe!r} at {args.recipe_sparsity}, each sample's images in another order\n")
        print("| sample | test, as given | test, permuted | moved |\n|---|---|---|---|")
        for sample, (a, b) in enumerate(zip(given["test"], permuted["test"], strict=True)):
            print(f"| {sample} | {100 * a:.2f} | {100 * b:.2f} | {100 * abs(a - b):.2f} |")
        print(f"\nmean |moved| {100 * sum(moved) / len(moved):.2f} points, largest {100 * max(moved):.2f}")
    if "solver" in tables:
        solver_table(bench, args.recipe, args.recipe_sparsity)
    if args.out:
        args.out.write_text(json.dumps(bench.rows, indent=1))


SOLVERS = {  # the solver table: label -> overrides of the recipe (a row whose config is the recipe's is skipped)
    "as is": {},
    "plain CG, 10 products (the default before config schema 3)": {"preconditioner": "none", "cg_iters": 10},
    "Gram-preconditioned CG, 10 products": {"preconditioner": "gram", "cg_iters": 10},
    "Gram-preconditioned CG, 5 products (the default)": {"preconditioner": "gram", "cg_iters": 5},
    "Gram-preconditioned CG, 3 products": {"preconditioner": "gram", "cg_iters": 3},
    "Gram-preconditioned, 2 passes": {"preconditioner": "gram", "newton_passes": 2},
}


def solver_table(bench: Bench, recipe: str, sparsity: str) -> None:
    """`recipe` with its Newton steps solved further, each paired by sample with the recipe as it is."""
    print(f"\nSolver: recipe {recipe!r} at {sparsity}, val / test, paired differences against it as is\n")
    print("| solver | mean ± 95% | paired minus as is | seconds |\n|---|---|---|---|")
    base, as_is = None, get_recipe(recipe, device="cpu", **target(sparsity))
    for label, overrides in SOLVERS.items():
        cfg = get_recipe(recipe, device="cpu", **target(sparsity), **overrides)
        if overrides and cfg == as_is:
            continue
        measured = bench.run(cfg, table="solver")
        base = base or measured
        paired = [
            interval([a - b for a, b in zip(measured[split], base[split], strict=True)]) for split in ("val", "test")
        ]
        cells = f"{interval(measured['val'])} / {interval(measured['test'])}"
        print(
            f"| {label} | {cells} | {' / '.join(paired) if measured is not base else ''} | {measured['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
