"""The zoo table for the README: dense top-1 (full test set), size, and a default SNOWS run's time.

    .venv/bin/python benchmarks/bench_zoo.py

The default run is `python -m snows_core prune --model NAME`: 50% unstructured magnitude masks, SNOWS
with K=3, 256 calibration images from the train split; top-1 after pruning on the full test set.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core import PruneConfig, prune_model
from snows_core.io.data import calibration_images, load_dataset
from snows_core.measure.metrics import evaluate
from snows_core.models import create_model, list_models, model_info
from snows_core.models._registry import ASSETS


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu\n")
    print("| model | parameters | weights file | dense top-1 (10k test) | default SNOWS run | top-1 after (50%) |")
    print("|---|---|---|---|---|---|")
    for name in [n for n in list_models() if model_info(n).weights]:
        info = model_info(name)
        model = create_model(name)
        train, test = load_dataset(info.dataset, "train"), load_dataset(info.dataset, "test")
        config = PruneConfig()
        calib = calibration_images(train, config.n_calib, config.seed)
        tic = time.perf_counter()
        result = prune_model(model, calib, config)
        seconds = time.perf_counter() - tic
        after = evaluate(result.model, test)["top1"]
        size_kb = (ASSETS / info.weights).stat().st_size / 1024
        print(
            f"| `{name}` | {info.params:,} | {size_kb:,.0f} KB | {info.top1:.4f} | {seconds:.1f} s | {after:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
