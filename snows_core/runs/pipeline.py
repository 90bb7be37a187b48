"""One run, start to end: load the model and data of a RunSpec, prune, evaluate, write the artifacts.

`run_spec` is the one way a pruning spec runs: `python -m snows_core prune` calls it in-process, and
`execute` (what a worker process or a Dask task calls) runs the spec's kind (`RUNNERS`: "prune" is
`run_spec` plus the artifacts, "sensitivity" is `run_sensitivity`) and writes its artifacts. All report
only through `on_event`.
Top-1 is measured on the same test images three times: dense, mask only (the dense weights times the
final masks), and final; each once per store for the same weights and images (`runs.cache`, inside the
worker's `store_cache`): the dense network once for a whole sweep, a mask alone once for the runs that share
it (K = 0 and K = 3 with one mask method and sparsity), a final network that is the mask alone not again.
With `spec.trajectory` it is also measured after each pruned layer: SNOWS changes only the layer being solved,
so the network after layer i is the dense one with the final weights of layers 0..i, rebuilt here without
touching the solve (with stages: the last pass's weights).
With `spec.measure_speed` the pruned model is also timed against its dense execution on the run's
device (`snows_core.measure.speed.measure_speed`, on the first SPEED_BATCH test images).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from snows_core.engine.device import resolve_device
from snows_core.events import Evaluation, EventSink
from snows_core.io.checkpoint import first_line
from snows_core.io.data import calibration_indices, load_dataset, stack_images
from snows_core.measure.metrics import evaluate
from snows_core.models import create_model
from snows_core.prune import prune_model, sensitivity_analysis
from snows_core.registry import Registry
from snows_core.report import PruneResult
from snows_core.runs.cache import cached_evaluation
from snows_core.runs.environment import environment
from snows_core.runs.spec import RunSpec

__all__ = ["RUNNERS", "register_runner", "run_spec", "run_sensitivity", "execute"]

SPEED_BATCH = 64  # test images per timed forward when a run measures speed
Runner = Callable[[RunSpec, Path, EventSink], dict[str, Any]]
RUNNERS: Registry[Runner] = Registry("kind", ordered=True)  # RunSpec.kind -> runner (a test checks RUN_KINDS)


def register_runner(kind: str) -> Callable[[Runner], Runner]:
    """Decorator registering `fn(spec, out_dir, on_event) -> result row` as the runner of `kind`."""
    return RUNNERS.decorator(kind)


def execute(spec: RunSpec, out_dir: Path, on_event: EventSink) -> dict[str, Any]:
    """Run `spec` by its kind, write its artifacts into `out_dir` and return the result row."""
    return RUNNERS.get(spec.kind)(spec, out_dir, on_event)


@register_runner("prune")
def _execute_prune(spec: RunSpec, out_dir: Path, on_event: EventSink) -> dict[str, Any]:
    """Prune: weights, masks and report.json (see PruneResult.save)."""
    result, summary = run_spec(spec, on_event)
    result.save(out_dir, {**summary, "spec": spec.to_dict()})
    return summary


def run_spec(spec: RunSpec, on_event: EventSink) -> tuple[PruneResult, dict[str, Any]]:
    """Load the spec's model and data, prune, evaluate: the pruned result and its summary (the result row)."""
    tic = time.perf_counter()
    config = spec.config
    device, model, calib, test, calib_ids = _load(spec)
    dense = _evaluation(spec, model, test, device)
    result = prune_model(model, calib, config, on_event)
    mask_only = _evaluation(spec, _with_masks(model, result.masks), test, device)
    final = _evaluation(spec, result.model, test, device)
    trajectory = _trajectory(model, result, test, device, spec.eval_size, on_event) if spec.trajectory else []
    summary = {
        "top1_dense": dense["top1"],
        "top1_mask_only": mask_only["top1"],
        "top1_final": final["top1"],
        **_provenance(spec, calib_ids, final["images"], device),
        "sparsity": result.sparsity,
        "layer_sparsity": {r.name: r.sparsity for r in result.layers},
        "allocation": result.allocation,
        "trajectory": trajectory,
        "prune_seconds": result.seconds,
        "seconds": time.perf_counter() - tic,
        "peak_mem": max((r.peak_mem for r in result.layers), default=0),
        **({"speed": _speed(result, test, device)} if spec.measure_speed else {}),
    }
    return result, summary


@register_runner("sensitivity")
def run_sensitivity(spec: RunSpec, out_dir: Path, on_event: EventSink) -> dict[str, Any]:
    """Each layer pruned alone at each sparsity of the grid with the spec's mask method and reconstruction,
    scored on the test subset (`prune.sensitivity_analysis`); report.json holds the result row, whose
    `suggested_sparsities` are what a run with allocation "sensitivity" at `config.sparsity` allocates."""
    tic = time.perf_counter()
    device, model, calib, test, calib_ids = _load(spec)
    test_x, test_y = stack_images(test, list(range(min(spec.eval_size or len(test), len(test)))))  # (N, C, H, W), (N,)
    suggested = sensitivity_analysis(model, calib, test_x, test_y, spec.config, on_event)
    summary = {
        "kind": "sensitivity",
        "top1_dense": _evaluation(spec, model, test, device)["top1"],
        "suggested_sparsities": suggested,
        **_provenance(spec, calib_ids, len(test_y), device),
        "seconds": time.perf_counter() - tic,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps({**summary, "spec": spec.to_dict()}, indent=2))
    return summary


def _evaluation(spec: RunSpec, model: torch.nn.Module, test: Dataset, device: torch.device) -> dict[str, Any]:
    """The network's evaluation on the test subset: once per store for the same weights and images
    (`runs.cache`): the dense network's for every run of a sweep, a mask's alone for the runs sharing it."""
    compute = lambda: evaluate(model, test, device=device, limit=spec.eval_size)  # noqa: E731
    return cached_evaluation(model, test, device, spec.eval_size, compute)


def _load(spec: RunSpec) -> tuple[torch.device, torch.nn.Module, torch.Tensor, Dataset, torch.Tensor]:
    """The spec's device, model, calibration images (n_calib, C, H, W), test split and calibration ids."""
    config = spec.config
    device = resolve_device(config.device)
    model = create_model(spec.model, checkpoint=spec.checkpoint)
    train = load_dataset(spec.dataset, "train", spec.data_root)
    calib_ids = calibration_indices(len(train), config.n_calib, config.seed)  # (n_calib,)
    test = load_dataset(spec.dataset, "test", spec.data_root)
    return device, model, stack_images(train, calib_ids)[0], test, calib_ids


def _provenance(spec: RunSpec, calib_ids: torch.Tensor, eval_images: int, device: torch.device) -> dict[str, Any]:
    """What makes two results comparable: the calibration images, the evaluation subset, the environment."""
    ids = calib_ids.tolist()
    return {
        "eval_images": eval_images,
        "eval_subset": f"{spec.dataset}:test[:{eval_images}]",
        "calib_ids": ids,
        "calib_digest": hashlib.sha256(f"{spec.dataset}:{ids}".encode()).hexdigest()[:12],
        "device": str(device),
        "environment": environment(device),
    }


def _trajectory(
    dense: torch.nn.Module, result: PruneResult, test, device: torch.device, limit: int | None, on_event: EventSink
) -> list[dict[str, Any]]:
    """Top-1 after each pruned layer, with SNOWS weights and with the mask alone; one Evaluation event each."""
    final_state = result.model.state_dict()
    current, masked = copy.deepcopy(dense), copy.deepcopy(dense)
    points = []
    for index, report in enumerate(result.layers):
        prefix = report.name + "."
        current.load_state_dict({k: v for k, v in final_state.items() if k.startswith(prefix)}, strict=False)
        masked = _with_masks(masked, {report.name: result.masks[report.name]}, copy_model=False)
        scored = evaluate(current, test, device=device, limit=limit)
        event = Evaluation(
            report.name,
            index,
            scored["top1"],
            evaluate(masked, test, device=device, limit=limit)["top1"],
            scored["images"],
        )
        on_event(event)
        points.append({k: v for k, v in event.to_dict().items() if k != "kind"})
    return points


def _speed(result: PruneResult, test: Dataset, device: torch.device) -> dict[str, Any]:
    """The measured speed (`SpeedReport.to_dict()`), or {"error": why} when timing failed (out of memory, say):
    a run keeps its pruned weights whatever becomes of the timing."""
    from snows_core.measure.speed import measure_speed

    batch, _ = stack_images(test, list(range(min(SPEED_BATCH, len(test)))))  # (B, C, H, W)
    try:
        return measure_speed(result.model, result.masks, device, batch).to_dict()
    except (RuntimeError, MemoryError) as err:
        return {"error": f"speed not measured: {first_line(err)}"}


def _with_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor], copy_model: bool = True) -> torch.nn.Module:
    masked = copy.deepcopy(model) if copy_model else model
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, keep in masks.items():
            modules[name].weight.mul_(keep.to(modules[name].weight.device))
    return masked
