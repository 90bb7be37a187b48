"""Benchmark: SNOWS on ResNet-20 / CIFAR-10 (the paper's benchmark), printed as Markdown tables.

For each sparsity and method: top-1 on the test subset, seconds, cost in dense-forward-equivalents
(seconds / one dense forward over the calibration images, measured in the same process) and peak
memory. What one curvature product costs is `bench_solver.py`'s first table.

    .venv/bin/python benchmarks/bench_resnet20.py [--shared ../shared] [--sparsity 0.5,0.7,0.9] [--ablations]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core import PruneConfig, prune_model
from snows_core.io.data import load_npz
from snows_core.measure.metrics import top1
from snows_core.models import create_model

METHODS = {
    "mask only": dict(reconstruction="none"),
    "lstsq": dict(reconstruction="lstsq"),
    "snows K=0": dict(reconstruction="snows", k=0),
    "snows K=3": dict(reconstruction="snows", k=3),
    "snows K=6": dict(reconstruction="snows", k=6),
}
ABLATIONS = {
    "snows K=3, no warm start": dict(reconstruction="snows", k=3, warm_start=False),
    "snows K=3, pruned-input targets": dict(reconstruction="snows", k=3, targets="pruned-input"),
    "snows K=3, gauss-newton": dict(reconstruction="snows", k=3, curvature="gauss-newton"),
    "snows K=3, 3 passes x 25 CG": dict(reconstruction="snows", k=3, newton_passes=3, cg_iters=25),
}


def timed(fn, repeats: int = 5) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def dense_forward_seconds(model: torch.nn.Module, calib: torch.Tensor) -> float:
    with torch.no_grad():
        return timed(lambda: model(calib))


def run_method(model, calib, test_x, test_y, sparsity: float, overrides: dict) -> dict:
    cfg = PruneConfig(sparsity=sparsity, mask="magnitude", n_calib=calib.shape[0], device="cpu", **overrides)
    tic = time.perf_counter()
    result = prune_model(copy.deepcopy(model), calib, cfg)
    seconds = time.perf_counter() - tic
    peak = max((r.peak_mem for r in result.layers), default=0)
    return {"top1": top1(result.model, test_x, test_y), "seconds": seconds, "peak_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("SNOWS_SHARED", "../shared")))
    parser.add_argument("--sparsity", default="0.5,0.7,0.9")
    parser.add_argument("--n-calib", type=int, default=256)
    parser.add_argument("--ablations", action="store_true", help="also run the ablations at the last sparsity")
    args = parser.parse_args()

    model = create_model("resnet20_cifar10", checkpoint=args.shared / "models" / "resnet20-cifar10.th").requires_grad_(
        False
    )
    train_x, _ = load_npz(args.shared / "data" / "cifar10-subset.npz", "train")
    test_x, test_y = load_npz(args.shared / "data" / "cifar10-subset.npz", "test")
    calib = train_x[: args.n_calib]
    forward = dense_forward_seconds(model, calib)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(
        f"dense top-1 {top1(model, test_x, test_y):.4f} on {len(test_y)} test images; "
        f"dense forward over {len(calib)} calibration images: {forward * 1e3:.1f} ms (median of 5)\n"
    )
    print("| sparsity | method | top-1 | seconds | dense-forward-equivalents | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    sparsities = [float(s) for s in args.sparsity.split(",")]
    for sparsity in sparsities:
        methods = {**METHODS, **(ABLATIONS if args.ablations and sparsity == sparsities[-1] else {})}
        for name, overrides in methods.items():
            r = run_method(model, calib, test_x, test_y, sparsity, overrides)
            print(
                f"| {sparsity:.0%} | {name} | {r['top1']:.4f} | {r['seconds']:.1f} | {r['seconds'] / forward:.0f} "
                f"| {r['peak_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
