"""Benchmark: what a SNOWS run costs at the paper's ViT sizes, and whether 2:4 makes the model faster.

Models: timm `vit_base_patch16_224` (86M parameters) and `vit_large_patch16_224` (304M), built without
downloading (pretrained=False: random weights with the real shapes, which is all cost depends on;
--checkpoint loads trained ones). Pruned as the paper prunes ViTs: 2:4 on every block's attn.qkv,
attn.proj, mlp.fc1 and mlp.fc2, magnitude mask, the engine's defaults otherwise (least-squares warm
start, one Newton pass of 10 CG iterations). Calibration images: an ImageFolder (--images DIR, resized
and centre-cropped to 224, ImageNet normalisation) or a seeded random tensor.

1. Per layer, for each n_calib in --n-calib and K in --ks, on the first --blocks blocks: seconds, peak
   memory (the CUDA allocator's peak on a GPU, the process's resident high-water mark on CPU, so it
   includes the model's two copies) and the exact HVP / window-forward ratio on that layer's problem.
2. The projection of a full run: a ViT's blocks are identical, so a full run is `depth` times one block's
   four layers, each the least over the measured blocks (identical layers: the figure least disturbed by
   other load). Each layer's seconds are fitted as a + b * n_calib over the measured n_calib: the warm
   start's per-row Cholesky solves (out x (d/2)^3 / 3 for 2:4) do not depend on n_calib; the Gram
   matrices, window forwards and HVPs grow linearly with it.
3. With --full: the whole model pruned (every block) at --full-at's n_calib and K: seconds and peak memory.
4. With --speed: `measure.speed.measure_speed` on the 2:4 model (dense vs 2:4 kernel on CUDA; 1.0x elsewhere).
5. With --mask-shapes: the best recipe's mask (`obc`, blocked beyond 1024 input columns) at every distinct
   layer shape of ViT-B/16 and ResNet-50 (rows x input columns per group, from the models themselves), at 90%
   and 2:4: seconds and peak memory of `obc_prune` on a Gram of 2d random columns, each shape in a fresh
   process (on CPU its resident high-water mark above its size at the start, Linux only; the CUDA allocator's
   peak on a GPU). Rows are
   independent in OBC's greedy passes, so --mask-rows rows (at least one chunk of rows held at once, so that
   the peak is the whole layer's) are timed and the seconds scaled to the layer's rows (0: every row).

Memory does not grow with the number of layers pruned: activations live in `PrunedPath` (one for the
pruned network, one for the dense targets), each holding only the live frontier on all calibration
images, the values some later node still reads; after each layer `release_before` drops everything
before it, and the window's autograd buffers are freed when the layer's solve returns. The per-layer
peaks of block 2 match block 1's (see the table).

    .venv/bin/python benchmarks/bench_scale.py [--models vit_base_patch16_224] [--n-calib 16,64] [--ks 0,3]
        [--blocks 2] [--device cpu] [--images DIR] [--full [--full-at 64,3]] [--speed] [--json out.json]
    .venv/bin/python benchmarks/bench_scale.py --n-calib "" --models "" --mask-shapes [--mask-rows 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_solver import layer_costs

from snows_core import PruneConfig, prune_model
from snows_core.engine.device import resolve_device
from snows_core.engine.graph import PrunedPath, prunable_nodes, trace
from snows_core.engine.problem import layer_problem
from snows_core.masks import nm_mask
from snows_core.masks.obc import MAX_COLUMNS, obc_prune, rows_per_chunk
from snows_core.measure.speed import measure_speed

BLOCK_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def vit(name: str, checkpoint: Path | None) -> torch.nn.Module:
    import timm

    model = timm.create_model(name, pretrained=False)
    if checkpoint is not None:
        from snows_core.io.checkpoint import load_weights

        load_weights(model, checkpoint)
    return model.eval().requires_grad_(False)


def calibration(n: int, images: Path | None, seed: int = 0) -> torch.Tensor:
    """(n, 3, 224, 224): the first n of a seeded shuffle of an ImageFolder, or seeded N(0, 1) pixels."""
    generator = torch.Generator().manual_seed(seed)
    if images is None:
        return torch.randn(n, 3, 224, 224, generator=generator)
    from torchvision import datasets, transforms

    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    folder = datasets.ImageFolder(str(images), preprocess)
    order = torch.randperm(len(folder), generator=generator)[:n]
    return torch.stack([folder[int(i)][0] for i in order])


def layer_names(blocks: range) -> tuple[str, ...]:
    return tuple(f"blocks.{b}.{layer}" for b in blocks for layer in BLOCK_LAYERS)


def prune_blocks(
    model: torch.nn.Module, calib: torch.Tensor, blocks: range, k: int, device: str
) -> tuple[list[dict[str, Any]], float, int]:
    """Prune the blocks' four layers at 2:4: each layer's report, the total seconds and the run's peak bytes."""
    config = PruneConfig(
        pattern="2:4", n_calib=len(calib), batch_size=len(calib), k=k, layers=layer_names(blocks), device=device
    )
    on_gpu = resolve_device(device).type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    result = prune_model(model, calib, config)
    seconds = time.perf_counter() - tic
    peak = torch.cuda.max_memory_allocated() if on_gpu else 0
    return [r.to_dict() for r in result.layers], seconds, max(peak, *(r.peak_mem for r in result.layers))


def hvp_ratio(model: torch.nn.Module, calib: torch.Tensor, name: str, k: int, device: str) -> float:
    """Exact HVP / window forward on the layer's problem at 2:4 (fastest of 3 each), the dense network's."""
    target = resolve_device(device)
    gm = trace(model.to(target))
    node = next(n for n in prunable_nodes(gm) if n.target == name)
    mask = nm_mask(gm.get_submodule(name).weight.abs(), 2, 4)
    path = PrunedPath(gm, calib.to(target), len(calib))
    problem, _ = layer_problem(gm, node, path, k=k, mask=mask, batch_size=len(calib))
    v = torch.randn(int(mask.sum()), generator=torch.Generator().manual_seed(0)).to(target)
    with sdpa_kernel([SDPBackend.MATH]):  # as the engine solves: fused attention has no second derivative
        forward, product = layer_costs(problem, v, repeats=3)
    return product / forward


def fit(points: dict[int, float]) -> tuple[float, float]:
    """(a, b) of seconds = a + b * n_calib by least squares over two or more n_calib, a >= 0 (else b alone)."""
    ns = sorted(points)
    mean_n, mean_t = sum(ns) / len(ns), sum(points.values()) / len(ns)
    b = sum((n - mean_n) * (points[n] - mean_t) for n in ns) / sum((n - mean_n) ** 2 for n in ns)
    if mean_t - b * mean_n < 0:
        return 0.0, sum(n * points[n] for n in ns) / sum(n * n for n in ns)
    return mean_t - b * mean_n, b


def per_layer_table(model_name: str, model: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    print(f"\n### {model_name}: per layer, 2:4, first {args.blocks} block(s), on {args.device}\n")
    print("| n_calib | K | layer | seconds | peak MiB | CG iters | HVP / forward |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n_calib:
        calib = calibration(n, args.images)
        for k in args.ks:
            reports, _, _ = prune_blocks(model, calib, range(args.blocks), k, args.device)
            for report in reports:
                block0 = report["name"].startswith("blocks.0.")
                ratio = hvp_ratio(model, calib, report["name"], k, args.device) if block0 else float("nan")
                row = {"model": model_name, "n_calib": n, "k": k, **report, "hvp_ratio": ratio}
                rows.append(row)
                cells = f"{report['seconds']:.1f} | {report['peak_mem'] / 2**20:.0f} | {report['cg_iters']}"
                print(f"| {n} | {k} | {report['name']} | {cells} | {ratio:.2f} |", flush=True)
    return rows


def projection(model_name: str, depth: int, rows: list[dict[str, Any]], ns: list[int]) -> list[str]:
    """Full-run minutes at each n_calib and K: depth x one block's four layers, each layer's seconds the least
    over the measured blocks (identical layers: the figure least disturbed by other load), measured where
    n_calib was run, else from the fit a + b n."""
    lines = []
    for k in sorted({r["k"] for r in rows}):
        least = {}  # (layer, n_calib) -> seconds
        for r in rows:
            if r["k"] == k:
                key = (r["name"].split(".", 2)[2], r["n_calib"])
                least[key] = min(least.get(key, float("inf")), r["seconds"])
        if len(ns) < 2:  # one n_calib cannot separate the warm start's fixed cost from the per-image one
            fits, wanted = [], ns
        else:
            fits = [fit({n: t for (name, n), t in least.items() if name == layer}) for layer in BLOCK_LAYERS]
            wanted = sorted({*ns, 16, 64, 256})
        for n in wanted:
            measured = n in ns
            block = sum(least[layer, n] for layer in BLOCK_LAYERS) if measured else sum(a + b * n for a, b in fits)
            label = "measured" if measured else "projected"
            lines.append(f"| {model_name} | {k} | {n} | {block:.1f} | {depth * block / 60:.1f} | {label} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_base_patch16_224")
    parser.add_argument("--n-calib", default="16,64", type=lambda s: [int(v) for v in s.split(",") if v])
    parser.add_argument("--ks", default="0,3", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--blocks", type=int, default=2, help="blocks pruned in the per-layer table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=Path, default=None, help="an ImageFolder for calibration")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--full", action="store_true", help="also prune every block (at --full-at)")
    parser.add_argument("--full-at", default="64,3", help="n_calib,K of the full run")
    parser.add_argument("--speed", action="store_true", help="also measure dense vs 2:4 latency")
    parser.add_argument("--mask-shapes", action="store_true", help="obc's cost at ViT-B/16 and ResNet-50 shapes")
    parser.add_argument("--mask-rows", type=int, default=32, help="rows timed per shape (0: all)")
    parser.add_argument("--speed-batch", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {
        "device": args.device,
        "layers": [],
        "projection": [],
        "full": [],
        "speed": [],
        "masks": [],
    }
    if resolve_device(args.device).type == "cuda":
        figures["device_name"] = torch.cuda.get_device_name()
    lines = []
    if args.mask_shapes:
        figures["masks"] = mask_table(args)
    for name in filter(None, args.models.split(",")):
        model = vit(name, args.checkpoint)
        rows = per_layer_table(name, model, args) if args.n_calib else []
        figures["layers"] += rows
        lines += projection(name, len(model.blocks), rows, args.n_calib) if rows else []
        if args.full:
            n, k = (int(v) for v in args.full_at.split(","))
            reports, seconds, peak = prune_blocks(
                model, calibration(n, args.images), range(len(model.blocks)), k, args.device
            )
            figures["full"].append({"model": name, "n_calib": n, "k": k, "seconds": seconds, "peak_mem": peak})
            print(f"\n{name} full run: {len(reports)} layers, n_calib {n}, K={k}: ", end="")
            print(f"{seconds:.1f} s, peak {peak / 2**30:.2f} GiB", flush=True)
        if args.speed:
            figures["speed"].append({"model": name, **speed(model, args)})
    if lines:
        print("\n### Projected full runs (a ViT's blocks are identical)\n")
        print("| model | K | n_calib | one block s | full run min | block |")
        print("|---|---|---|---|---|---|")
        print("\n".join(lines))
    figures["projection"] = lines
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))


def layer_shapes() -> dict[tuple[int, int], list[str]]:
    """Every distinct (rows, input columns per group) of ViT-B/16's and ResNet-50's Linear and Conv2d layers, with
    the layers of that shape (built without weights: shapes are all the cost depends on)."""
    import timm
    from torchvision.models import resnet50

    shapes: dict[tuple[int, int], list[str]] = {}
    for model_name, model in (("vit_b16", timm.create_model("vit_base_patch16_224")), ("resnet50", resnet50())):
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                shapes.setdefault((module.weight.shape[0], module.weight[0].numel()), []).append(f"{model_name}.{name}")
    return shapes


def time_mask(rows: int, d: int, target: str, device: str, queue: Any) -> None:
    """In a fresh process: obc_prune on `rows` x `d` at `target` ("0.9" or "2:4"): (seconds, peak bytes)."""
    dev = resolve_device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(d, 2 * d, generator=generator).to(dev)  # (d, 2d): a full-rank Gram
    weight = torch.randn(rows, d, generator=generator).to(dev)
    hessian = 2 * x @ x.T  # (d, d)
    start = _reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    if ":" in target:
        obc_prune(weight, hessian, nm=(2, 4))
    else:
        obc_prune(weight, hessian, prune=round(float(target) * rows * d))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    if dev.type == "cuda":
        queue.put((seconds, torch.cuda.max_memory_allocated()))
    else:
        queue.put((seconds, _status_bytes("VmHWM") - start))


def _reset_peak_rss() -> int:
    """Reset the process's resident high-water mark (Linux: "5" to clear_refs) and return its resident bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) * 1024


def mask_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """obc's seconds and memory at every distinct ViT-B/16 and ResNet-50 layer shape, 90% and 2:4."""
    context = multiprocessing.get_context("spawn")
    figures = []
    print(f"\n### The best recipe's mask (obc) per layer shape, on {args.device}: seconds for the whole layer\n")
    print(f"(rows timed: {args.mask_rows or 'all'}, scaled to the layer's rows; blocks of <= {MAX_COLUMNS} columns)\n")
    print("| rows x columns | blocks | layers (count, first) | 90% s | 90% peak MiB | 2:4 s | 2:4 peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for (rows, d), names in sorted(layer_shapes().items(), key=lambda item: item[0][0] * item[0][1] ** 2):
        blocks = -(-d // MAX_COLUMNS)
        chunk = rows_per_chunk(-(-d // blocks))  # at least one whole chunk of rows: the layer's peak memory
        timed = rows if not args.mask_rows else min(rows, max(args.mask_rows, chunk))
        row = {"rows": rows, "columns": d, "layers": names, "rows_timed": timed}
        for target in ("0.9", "2:4"):
            if target == "2:4" and d % 4:
                row[target] = None  # conv1's 3 x 7 x 7 columns hold no whole groups of 4
                continue
            queue = context.Queue()
            child = context.Process(target=time_mask, args=(timed, d, target, args.device, queue))
            child.start()
            seconds, peak = queue.get()
            child.join()
            row[target] = {"seconds": seconds * rows / timed, "peak_bytes": peak}
        figures.append(row)
        cells = " | ".join(
            f"{row[t]['seconds']:.1f} | {row[t]['peak_bytes'] / 2**20:.0f}" if row[t] else "n/a | n/a"
            for t in ("0.9", "2:4")
        )
        print(f"| {rows} x {d} | {blocks} | {len(names)}, {names[0]} | {cells} |", flush=True)
    return figures


def speed(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """2:4 magnitude masks on every block layer (latency does not depend on the values), then `measure`."""
    pruned = copy.deepcopy(model).cpu()
    masks = {}
    for name in layer_names(range(len(pruned.blocks))):
        layer = pruned.get_submodule(name)
        masks[name] = nm_mask(layer.weight.abs(), 2, 4)
        layer.weight.mul_(masks[name])
    report = measure_speed(pruned, masks, resolve_device(args.device), calibration(args.speed_batch, None)).to_dict()
    print(f"\nspeed at batch {args.speed_batch}: {report['speedup']:.3f}x on {report['device']} ({report['kernel']}): ")
    print(f"dense {report['dense_ms']:.1f} ms, 2:4 {report['pruned_ms']:.1f} ms; {report['reason']}")
    print(f"weights: {report['dense_bytes'] / 2**20:.0f} MiB dense, {report['sparse_bytes'] / 2**20:.0f} MiB sparse")
    return report


if __name__ == "__main__":
    main()
