"""Benchmark: what one curvature product costs, and what the solver costs end to end, on ResNet-20 / CIFAR-10.

1. For every pruned layer of the shared ResNet-20 (90% magnitude mask, all 256 calibration images in one
   batch) and every K in `--ks`: one window forward and one exact Hessian-vector product two ways, by
   double backprop (BatchNorms frozen to their affine maps) and through the window's tangent program (what
   the engine runs for these piecewise-linear windows), with their ratios to the forward; values in the
   layout the engine holds them (channels-last on the CPU). Each time is the fastest of `--repeats`
   calls, the figure least disturbed by other load on the machine.
2. End to end at 90%: the engine's defaults and the official code's settings (targets="official", K=3,
   CG 20, 2 passes, no warm start), each at every `--fractions` value of `curvature_fraction`: top-1 on
   the 1,017 test images, seconds and DFE (seconds / one dense forward over the 256 images; DFE-CL: over
   a forward of the model converted to channels-last, the faster layout here).

    .venv/bin/python benchmarks/bench_solver.py [--shared ../shared] [--ks 0,3,6] [--fractions 1,0.5,0.25]
        [--tables 1,2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core import PruneConfig, prune_model
from snows_core.engine.graph import PrunedPath, default_layers, prunable_nodes, trace
from snows_core.engine.problem import LayerProblem, layer_problem
from snows_core.engine.solver import exact_curvature, tangent_curvature
from snows_core.io.data import load_npz
from snows_core.masks import unstructured_mask
from snows_core.measure.metrics import top1
from snows_core.models import create_model

OFFICIAL = dict(targets="official", k=3, cg_iters=20, newton_passes=2, warm_start=False)


def fastest(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call (on a GPU, the work waited for)."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        tic = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - tic)
    return best


def layer_costs(problem: LayerProblem, v: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Seconds of one window forward, one exact HVP by double backprop and one through the window's tangent
    program (what the engine runs for these piecewise-linear windows), on all of the problem's images."""
    batch = slice(0, problem.n)
    start = problem.start_weight
    targets = [t[batch] for t in problem.reference]
    free = start[problem.mask]
    double = exact_curvature(lambda w: problem.taps(problem.weight_of(w), batch), targets, free)
    tangent = tangent_curvature(
        None,
        targets,
        free,
        layer_of=lambda w: problem.layer_output(problem.weight_of(w), batch),
        linear_layer_of=lambda w: problem.linear_output(problem.weight_of(w), batch),
        window_at=lambda z: problem.window_at(z, batch),
    )
    forward = fastest(lambda: problem.taps(start, batch), repeats)
    return forward, fastest(lambda: double.hvp(v), repeats), fastest(lambda: tangent.hvp(v), repeats)


def hvp_table(model: torch.nn.Module, calib: torch.Tensor, ks: list[int], repeats: int) -> None:
    gm = trace(model)
    path = PrunedPath(gm, calib, calib.shape[0])
    nodes = {n.target: n for n in prunable_nodes(gm)}
    print("| layer | K | free weights | window forward ms | double-backprop HVP ms (ratio) | tangent HVP ms (ratio) |")
    print("|---|---|---|---|---|---|")
    ratios: dict[int, list[tuple[float, float]]] = {k: [] for k in ks}
    for name in default_layers(gm):
        mask = unstructured_mask(gm.get_submodule(name).weight.detach().abs(), 0.9)
        v = torch.randn(int(mask.sum()), generator=torch.Generator().manual_seed(0))
        for k in ks:
            problem, _ = layer_problem(gm, nodes[name], path, k=k, mask=mask, batch_size=calib.shape[0])
            forward, double, tangent = layer_costs(problem, v, repeats)
            ratios[k].append((double / forward, tangent / forward))
            products = f"{double * 1e3:.1f} ({double / forward:.2f}) | {tangent * 1e3:.1f} ({tangent / forward:.2f})"
            print(f"| {name} | {k} | {v.numel()} | {forward * 1e3:.1f} | {products} |")
    for k, values in ratios.items():
        for label, column in (("double backprop", 0), ("tangent", 1)):
            r = [pair[column] for pair in values]
            print(f"K={k}, {label}: HVP / forward from {min(r):.2f} to {max(r):.2f}, mean {sum(r) / len(r):.2f}")


def end_to_end(model: torch.nn.Module, calib: torch.Tensor, shared: Path, fractions: list[float]) -> None:
    test_x, test_y = load_npz(shared / "data" / "cifar10-subset.npz", "test")
    with torch.no_grad():
        forward = fastest(lambda: model(calib), 5)
        channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        forward_cl = fastest(lambda: channels_last(calib.contiguous(memory_format=torch.channels_last)), 5)
    print(f"\nOne dense forward, {calib.shape[0]} images: {forward * 1e3:.1f} ms; channels-last {forward_cl * 1e3:.1f}")
    print("(DFE: seconds / the first; DFE-CL: seconds / the second, the layout the engine runs conv windows in)\n")
    print("| settings | curvature_fraction | top-1 | seconds | DFE | DFE-CL |")
    print("|---|---|---|---|---|---|")
    for label, overrides in (("defaults", {}), ("official", OFFICIAL)):
        for fraction in fractions:
            config = PruneConfig(sparsity=0.9, curvature_fraction=fraction, device="cpu", **overrides)
            tic = time.perf_counter()
            result = prune_model(model, calib, config)
            seconds = time.perf_counter() - tic
            accuracy = top1(result.model, test_x, test_y)
            dfe = f"{seconds / forward:.0f} | {seconds / forward_cl:.0f}"
            print(f"| {label} | {fraction:g} | {accuracy:.4f} | {seconds:.1f} | {dfe} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("SNOWS_SHARED", "../shared")))
    parser.add_argument("--ks", default="0,3,6")
    parser.add_argument("--fractions", default="1,0.5,0.25")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tables", default="1,2")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = create_model("resnet20_cifar10", checkpoint=args.shared / "models" / "resnet20-cifar10.th")
    model.requires_grad_(False).eval()
    calib = load_npz(args.shared / "data" / "cifar10-subset.npz", "train")[0][:256]
    tables = args.tables.split(",")
    if "1" in tables:
        hvp_table(model, calib, [int(k) for k in args.ks.split(",")], args.repeats)
    if "2" in tables:
        end_to_end(model, calib, args.shared, [float(f) for f in args.fractions.split(",")])


if __name__ == "__main__":
    main()
