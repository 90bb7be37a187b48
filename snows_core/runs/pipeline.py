"""One run, start to end: load the model and data of a RunSpec, prune, evaluate, write the artifacts.

`execute` is what a worker process (or a Dask task) calls; it reports only through `on_event`.
Top-1 is measured three times on the same test images: dense, mask only (the dense weights times the
final masks), and final.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from snows_core.data import calibration_images, load_dataset
from snows_core.events import EventSink
from snows_core.metrics import evaluate
from snows_core.models import create_model
from snows_core.prune import prune_model, resolve_device
from snows_core.runs.spec import RunSpec

__all__ = ["execute"]


def execute(spec: RunSpec, out_dir: Path, on_event: EventSink) -> dict[str, Any]:
    """Run `spec`, write its artifacts into `out_dir` (see PruneResult.save) and return the result row."""
    tic = time.perf_counter()
    config = spec.config
    device = resolve_device(config.device)
    model = create_model(spec.model, checkpoint=spec.checkpoint)
    calib = calibration_images(load_dataset(spec.dataset, "train", spec.data_root), config.n_calib, config.seed)
    test = load_dataset(spec.dataset, "test", spec.data_root)
    dense = evaluate(model, test, device=device, limit=spec.eval_size)
    result = prune_model(model, calib, config, on_event)
    mask_only = evaluate(_mask_only(model, result.masks), test, device=device, limit=spec.eval_size)
    final = evaluate(result.model, test, device=device, limit=spec.eval_size)
    summary = {
        "top1_dense": dense["top1"],
        "top1_mask_only": mask_only["top1"],
        "top1_final": final["top1"],
        "eval_images": final["images"],
        "sparsity": result.sparsity,
        "layer_sparsity": {r.name: r.sparsity for r in result.layers},
        "prune_seconds": result.seconds,
        "seconds": time.perf_counter() - tic,
        "peak_mem": max((r.peak_mem for r in result.layers), default=0),
        "device": str(device),
    }
    result.save(out_dir, {**summary, "spec": spec.to_dict()})
    return summary


def _mask_only(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> torch.nn.Module:
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, keep in masks.items():
            modules[name].weight.mul_(keep.to(modules[name].weight.device))
    return masked
