"""prune_model: the SNOWS loop over layers (Lucas & Mazumder, ICLR 2025, Sec. 3).

1. Copy and trace the model; pick the layers (default: every Conv2d/Linear but the first layer that
   sees the input and the final classifier).
2. Score and select every mask up front from the dense network (Wanda reads dense input statistics;
   "global" allocation needs every layer's scores at once).
3. In topological order, for each layer: read its input and its window's external inputs from the
   pruned path, compute the dense window targets once, reconstruct, write the weight, and advance the
   pruned path past the layer.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.fx as fx
import torch.nn as nn

from snows_core.config import PruneConfig
from snows_core.events import EventSink, LayerDone, LayerSkipped, LayerStarted, RunDone, RunStarted
from snows_core.lookahead import PrunedPath, prunable_nodes, trace
from snows_core.masks import (
    ScoreInputs,
    get_mask_method,
    global_masks,
    input_column_sq_norms,
    nm_mask,
    nm_skip_reason,
    unstructured_mask,
)
from snows_core.memory import PeakMemory
from snows_core.reconstruct import get_reconstruction, layer_problem
from snows_core.report import LayerReport, PruneResult

__all__ = ["prune_model", "resolve_device", "default_layers"]


def prune_model(
    model: nn.Module,
    calib_images: torch.Tensor,
    config: PruneConfig,
    on_event: EventSink | None = None,
    custom_masks: dict[str, torch.Tensor] | None = None,
) -> PruneResult:
    """Prune a copy of `model` with `config`, reconstructing layer by layer on `calib_images`.

    Args:
        model: a trained model; never modified.
        calib_images: (N, C, H, W) calibration inputs (the first `config.n_calib` are used).
        config: what to prune and how.
        on_event: receives typed progress events; an exception it raises stops the run.
        custom_masks: {layer name: bool mask, True = kept}, required when config.mask == "custom".

    Returns:
        PruneResult with the pruned copy, the masks and one LayerReport per pruned layer.
    """
    emit = on_event or (lambda event: None)
    tic = time.perf_counter()
    _check_calibration(calib_images, config)
    device = resolve_device(config.device)
    pruned = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    gm = trace(pruned)
    targets, skipped = _select_layers(gm, config, custom_masks)
    calib = calib_images[: config.n_calib].to(device, torch.float32)
    path = PrunedPath(gm, calib, config.batch_size)
    dense_path = (
        PrunedPath(trace(copy.deepcopy(pruned)), calib, config.batch_size) if config.targets == "dense" else None
    )
    masks = _compute_masks(gm, targets, path, config, custom_masks)
    emit(RunStarted([n.target for n in targets], str(device)))
    for report in skipped:
        emit(LayerSkipped(report.name, report.skipped))
    reports = [
        _prune_layer(gm, node, path, masks[node.target], config, emit, i, len(targets), dense_path)
        for i, node in enumerate(targets)
    ]
    pruned = pruned.to(_device_of(model))
    result = PruneResult(
        pruned, {k: v.cpu() for k, v in masks.items()}, reports, config, time.perf_counter() - tic, skipped
    )
    emit(RunDone(result.seconds, result.sparsity))
    return result


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's `device`: "auto" is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def default_layers(gm: fx.GraphModule) -> list[str]:
    """Every Conv2d/Linear except the first one (it sees the input) and the last (the classifier)."""
    names = [n.target for n in prunable_nodes(gm)]
    return list(dict.fromkeys(names[1:-1]))


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _check_calibration(calib_images: torch.Tensor, config: PruneConfig) -> None:
    if not torch.is_tensor(calib_images) or calib_images.dim() < 2:
        raise ValueError("calib_images must be a tensor shaped (N, C, H, W)")
    if config.n_calib > calib_images.shape[0]:
        raise ValueError(f"n_calib is {config.n_calib} but the calibration data holds {calib_images.shape[0]} images")
    if not torch.isfinite(calib_images[: config.n_calib]).all():
        raise ValueError("calib_images contain NaN or inf values")


def _select_layers(
    gm: fx.GraphModule, config: PruneConfig, custom_masks: dict[str, torch.Tensor] | None
) -> tuple[list[fx.Node], list[LayerReport]]:
    """Nodes to prune in topological order, and reports for those that must stay dense (with the reason)."""
    nodes = prunable_nodes(gm)
    if not nodes:
        raise ValueError(f"{type(gm).__name__} has no prunable layer (Conv2d or Linear)")
    calls: dict[str, list[fx.Node]] = {}
    for node in nodes:
        calls.setdefault(node.target, []).append(node)
    wanted = _wanted_layers(gm, config, custom_masks, set(calls))
    chosen, skipped = [], []
    for name in sorted(wanted, key=lambda n: nodes.index(calls[n][0])):
        weight = gm.get_submodule(name).weight
        reason = _skip_reason(len(calls[name]), weight, config)
        if reason:
            skipped.append(LayerReport(name, kept=weight.numel(), numel=weight.numel(), skipped=reason))
        else:
            chosen.append(calls[name][0])
    if not chosen:
        raise ValueError(
            f"no layer can be pruned with pattern {config.pattern!r}: "
            + "; ".join(f"{r.name}: {r.skipped}" for r in skipped)
            if skipped
            else "no layer selected"
        )
    return chosen, skipped


def _wanted_layers(
    gm: fx.GraphModule, config: PruneConfig, custom_masks: dict[str, torch.Tensor] | None, known: set[str]
) -> list[str]:
    method = get_mask_method(config.mask)
    if method.user_supplied:
        if not custom_masks:
            raise ValueError('mask "custom" needs custom_masks: a {layer name: bool mask} dict')
        wanted = list(custom_masks)
    else:
        wanted = list(config.layers) if config.layers is not None else default_layers(gm)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"layers {unknown} are not prunable layers of the model; prunable: {sorted(known)}")
    if not wanted:
        raise ValueError("no layer to prune: the model has fewer than three Conv2d/Linear layers; name them in layers")
    return wanted


def _skip_reason(n_calls: int, weight: torch.Tensor, config: PruneConfig) -> str | None:
    if n_calls > 1:
        return f"called {n_calls} times in the forward (shared weights)"
    nm = config.nm
    return nm_skip_reason(weight.shape, nm[1]) if nm else None


def _compute_masks(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    path: PrunedPath,
    config: PruneConfig,
    custom_masks: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """Score every layer on the dense network, then select under the pattern and allocation."""
    method = get_mask_method(config.mask)
    generator = torch.Generator().manual_seed(config.seed)
    scores = {}
    for node in nodes:
        module = gm.get_submodule(node.target)
        norms = input_column_sq_norms(module, path.value(node.args[0])) if method.needs_activations else None
        custom = _checked_custom(node.target, module.weight, custom_masks) if method.user_supplied else None
        scores[node.target] = method.score(ScoreInputs(node.target, module.weight, norms, generator, custom))
    if method.user_supplied:
        return {name: _check_pattern(name, score.bool(), config) for name, score in scores.items()}
    if config.nm:
        return {name: nm_mask(score, *config.nm) for name, score in scores.items()}
    if config.allocation == "global":
        return global_masks(scores, config.sparsity, config.layer_sparsity_cap)
    return {name: unstructured_mask(score, config.sparsity) for name, score in scores.items()}


def _checked_custom(name: str, weight: torch.Tensor, custom_masks: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = torch.as_tensor(custom_masks[name])
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"custom mask for {name} has shape {tuple(mask.shape)}; the weight is {tuple(weight.shape)}")
    return mask.to(weight.device).bool()


def _check_pattern(name: str, mask: torch.Tensor, config: PruneConfig) -> torch.Tensor:
    if config.nm:
        n, m = config.nm
        groups = mask.movedim(1, -1).reshape(-1, m)
        if (groups.sum(-1) > n).any():
            raise ValueError(f"custom mask for {name} keeps more than {n} of some group of {m}: not {config.pattern}")
    return mask


def _prune_layer(
    gm: fx.GraphModule,
    node: fx.Node,
    path: PrunedPath,
    mask: torch.Tensor,
    config: PruneConfig,
    emit: EventSink,
    index: int,
    n_layers: int,
    dense_path: PrunedPath | None,
) -> LayerReport:
    tic = time.perf_counter()
    with PeakMemory(mask.device) as memory:
        problem, window = layer_problem(gm, node, path, config.k, mask, config.batch_size, dense_path)
        loss_before = problem.mask_loss
        ops = [f"{name}:{kind}" for name, kind in window.ops]
        emit(LayerStarted(node.target, index, n_layers, ops, loss_before))
        solution = get_reconstruction(config.reconstruction)(problem, config, emit)
        problem.module.weight.copy_(solution.weight * mask)
    path.invalidate(node)
    for p in (path, dense_path) if dense_path is not None else (path,):
        p.release_before(p.node(node.name))
    report = LayerReport(
        node.target,
        loss_before,
        solution.loss,
        solution.newton_steps,
        solution.cg_iters,
        time.perf_counter() - tic,
        memory.peak,
        int(mask.sum()),
        mask.numel(),
        ops,
        solution.loss_warm,
    )
    emit(LayerDone(node.target, index, n_layers, report.to_dict()))
    return report
