"""Benchmark: every named recipe on the zoo's other architectures, as a Markdown table of means with 95% intervals.

For each model of --models (default: mobilenet_v2, depthwise + SE-free inverted residuals, and vit_tiny, a
ViT) and each target of --targets (90% unstructured and 2:4), every recipe of `snows_core.recipes` on
--samples disjoint calibration sets of the model's own training split (sample i: the recipe's n_calib images
from train[i * 1024]); each cell "val / test (seconds)": top-1 on the last --validation training images (never
calibration) and on the first --test test images, mean ± the half-width of the two-sided 95% Student-t
interval. Recipes are compared on val.

    .venv/bin/python benchmarks/bench_zoo_recipes.py [--models mobilenet_v2,vit_tiny] [--targets 0.9,2:4]
        [--recipes default,teaching,best,official] [--samples 3] [--validation 1000] [--test 2000] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_frontier import interval, machine, target

from snows_core import prune_model
from snows_core.io.data import load_dataset, normalise
from snows_core.measure.metrics import top1
from snows_core.models import create_model, model_info
from snows_core.recipes import get_recipe, list_recipes

STRIDE = 1024  # sample i starts at train[i * STRIDE]: disjoint for any recipe's n_calib up to 1,024


def images(dataset, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images and labels of `dataset` (a zoo dataset's uint8 tensors) in [start, stop)."""
    return normalise(dataset.images[start:stop], dataset.mean, dataset.std), dataset.labels[start:stop]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,vit_tiny")
    parser.add_argument("--targets", default="0.9,2:4")
    parser.add_argument("--recipes", default=",".join(list_recipes()))
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(f"{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples} samples\n")
    rows = []
    for name in args.models.split(","):
        model = create_model(name).requires_grad_(False)
        train = load_dataset(model_info(name).dataset, "train")
        test_x, test_y = images(load_dataset(model_info(name).dataset, "test"), 0, args.test)
        val_x, val_y = images(train, len(train.images) - args.validation, len(train.images))
        print(f"### {name} ({model_info(name).dataset}): val / test top-1 (%), mean ± 95% half-width\n")
        print("| recipe | " + " | ".join(args.targets.split(",")) + " |")
        print("|---|" + "---|" * len(args.targets.split(",")))
        for recipe in args.recipes.split(","):
            cells = []
            for goal in args.targets.split(","):
                cfg = get_recipe(recipe, **target(goal), device="cpu")
                vals, tests, times = [], [], []
                for sample in range(args.samples):
                    calib, _ = images(train, sample * STRIDE, sample * STRIDE + cfg.n_calib)
                    tic = time.perf_counter()
                    pruned = prune_model(model, calib, cfg).model
                    times.append(time.perf_counter() - tic)
                    vals.append(top1(pruned, val_x, val_y))
                    tests.append(top1(pruned, test_x, test_y))
                    rows.append(
                        {"model": name, "recipe": recipe, "target": goal, "sample": sample}
                        | {"val": vals[-1], "test": tests[-1], "seconds": times[-1]}
                    )
                cells.append(f"{interval(vals)} / {interval(tests)} ({sum(times) / len(times):.0f} s)")
            print(f"| {recipe} | " + " | ".join(cells) + " |", flush=True)
        print(f"\ndense: val {100 * top1(model, val_x, val_y):.2f} / test {100 * top1(model, test_x, test_y):.2f}\n")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
