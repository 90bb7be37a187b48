"""Benchmark: the accuracy frontier on ResNet-20 / CIFAR-10, mask method x update x recipe, as Markdown tables.

For every sparsity (unstructured, and 2:4) and mask method (magnitude, wanda, sparsegpt): top-1 on all
the shared test images and seconds, with no update, layer-wise least squares, SNOWS K=3 in one pass,
and SNOWS K=3 with the gradual and allocation options of the best recipe; then the best recipe with
more calibration images. Every run prunes the same 18 block convs from the same seeded calibration
sample (the first n images of train_x).

    .venv/bin/python benchmarks/bench_frontier.py [--shared ../shared] [--sparsity 0.7,0.8,0.9,0.95,2:4]
        [--masks magnitude,wanda,sparsegpt] [--stages 5] [--allocation uniform] [--big-calib 1024]
        [--columns none,lstsq,snows,gradual] [--out frontier.json]
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
from snows_core.data import load_npz
from snows_core.metrics import top1
from snows_core.models import create_model

COLUMNS = {  # name: PruneConfig overrides (the recipe's stages and allocation are filled in)
    "none": dict(reconstruction="none"),
    "lstsq": dict(reconstruction="lstsq"),
    "snows": dict(reconstruction="snows", k=3),
    "gradual": dict(reconstruction="snows", k=3),
}


def config(sparsity: str, mask: str, n_calib: int, **overrides) -> PruneConfig:
    pattern = sparsity if ":" in sparsity else "unstructured"
    value = None if ":" in sparsity else float(sparsity)
    return PruneConfig(sparsity=value, pattern=pattern, mask=mask, n_calib=n_calib, device="cpu", **overrides)


def measure(model, calib, test_x, test_y, cfg: PruneConfig) -> dict:
    tic = time.perf_counter()
    result = prune_model(model, calib[: cfg.n_calib], cfg)
    return {"top1": top1(result.model, test_x, test_y), "seconds": time.perf_counter() - tic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("SNOWS_SHARED", "../shared")))
    parser.add_argument("--sparsity", default="0.7,0.8,0.9,0.95,2:4")
    parser.add_argument("--masks", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--columns", default=",".join(COLUMNS))
    parser.add_argument("--n-calib", type=int, default=256)
    parser.add_argument("--stages", type=int, default=5, help="the gradual recipe's passes")
    parser.add_argument("--allocation", default="uniform", help="the gradual recipe's allocation")
    parser.add_argument("--big-calib", type=int, default=1024, help="the gradual recipe again with this many (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="also write every measurement here as JSON")
    args = parser.parse_args()

    model = create_model("resnet20_cifar10", checkpoint=args.shared / "models" / "resnet20-cifar10.th")
    model.requires_grad_(False)
    train_x, _ = load_npz(args.shared / "data" / "cifar10-subset.npz", "train")
    test_x, test_y = load_npz(args.shared / "data" / "cifar10-subset.npz", "test")
    calib = train_x[: max(args.n_calib, args.big_calib)]
    columns = args.columns.split(",")
    recipe = dict(stages=args.stages, allocation=args.allocation)
    dense = top1(model, test_x, test_y)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu; dense top-1 {dense:.4f}")
    print(f"{len(test_y)} test images, {args.n_calib} calibration images; gradual = SNOWS K=3, {recipe}\n")
    print("| sparsity | mask | " + " | ".join(f"{c} top-1 (s)" for c in columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    rows = []
    for sparsity in args.sparsity.split(","):
        for mask in args.masks.split(","):
            cells = []
            for column in columns:
                extra = recipe if column == "gradual" else {}
                if ":" in sparsity and extra.get("allocation", "uniform") != "uniform":
                    extra = {**extra, "allocation": "uniform"}  # N:M fixes every layer's share
                r = measure(
                    model, calib, test_x, test_y, config(sparsity, mask, args.n_calib, **COLUMNS[column], **extra)
                )
                rows.append(
                    {"sparsity": sparsity, "mask": mask, "column": column, "n_calib": args.n_calib, **extra, **r}
                )
                cells.append(f"{r['top1']:.4f} ({r['seconds']:.0f})")
            print(f"| {sparsity} | {mask} | " + " | ".join(cells) + " |", flush=True)
    if args.big_calib:
        print(f"\nThe gradual recipe with {args.big_calib} calibration images\n")
        print("| sparsity | mask | top-1 | seconds |\n|---|---|---|---|")
        for sparsity in args.sparsity.split(","):
            extra = {**recipe, "allocation": "uniform"} if ":" in sparsity else recipe
            cfg = config(sparsity, "magnitude", args.big_calib, **COLUMNS["gradual"], **extra)
            r = measure(model, calib, test_x, test_y, cfg)
            rows.append(
                {
                    "sparsity": sparsity,
                    "mask": "magnitude",
                    "column": "gradual",
                    "n_calib": args.big_calib,
                    **extra,
                    **r,
                }
            )
            print(f"| {sparsity} | magnitude | {r['top1']:.4f} | {r['seconds']:.0f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
