"""prune_model: the SNOWS loop over layers (Lucas & Mazumder, ICLR 2025, Sec. 3), in one pass or several.

1. Copy and trace the model; pick the layers (default: every Conv2d/Linear but the first layer that
   sees the input and the final classifier).
2. Allocate each layer's final kept count (uniform, global, lamp or sensitivity; see
   `snows_core.allocation`), from the mask method's scores on the dense network (|W| for in-loop
   methods) or from a sensitivity scan.
3. For each pass s = 1..S (S = `config.stages`, 1 by default) every layer keeps
   numel - round(pruned_final * (1 - (1 - s/S)^3)) weights, the cubic schedule of Zhu & Gupta (2017)
   (N:M: N_s = M - round((M - N) * (1 - (1 - s/S)^3))). Scored mask methods score every layer at
   the start of the pass, from the current (reconstructed) weights and, for Wanda, the current
   network's inputs; in-loop methods (SparseGPT) choose just before the layer is reconstructed, on its
   pruned-path input. Masks nest: a weight pruned in one pass stays pruned.
4. In topological order, for each layer: read its input and its window's external inputs from the
   pruned path and the targets from the dense network (with targets="official": the dense network
   run from the pruned path at the input of the block holding the layer), choose the mask (in-loop methods),
   reconstruct from the starting point, write the weight, and advance the pruned path past it.

With one pass and a scored mask this is exactly the one-shot SNOWS loop.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx
import torch.nn as nn

from snows_core.allocation import AllocationInputs, SensitivityScan, get_allocation, sensitivity_counts
from snows_core.columns import columns_unsupported, input_grams
from snows_core.config import PruneConfig
from snows_core.events import (
    Allocated,
    EventSink,
    LayerDone,
    LayerSkipped,
    LayerStarted,
    NewtonStep,
    RunDone,
    RunStarted,
)
from snows_core.lookahead import (
    OFFICIAL_KINDS,
    PrunedPath,
    Window,
    block_inputs,
    build_window,
    prunable_nodes,
    trace,
)
from snows_core.masks import (
    LayerInputs,
    MaskChoice,
    MaskMethod,
    ScoreInputs,
    get_mask_method,
    holds_nm,
    input_column_sq_norms,
    nm_mask,
    nm_skip_reason,
    top_count_mask,
)
from snows_core.memory import PeakMemory
from snows_core.reconstruct import LayerProblem, get_reconstruction, layer_problem
from snows_core.report import LayerReport, PruneResult
from snows_core.sensitivity import ChooseMask, TestSubset, sensitivity_grid, sensitivity_scan

__all__ = ["prune_model", "sensitivity_analysis", "resolve_device", "default_layers"]


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
        PruneResult with the pruned copy, the masks and one LayerReport per pruned layer (the last
        pass), every pass's reports and the allocation.
    """
    emit = on_event or (lambda event: None)
    tic = time.perf_counter()
    _check_calibration(calib_images, config)
    device = resolve_device(config.device)
    pruned = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    gm = trace(pruned)
    nodes, skipped = _select_layers(gm, config, custom_masks)
    calib = calib_images[: config.n_calib].to(device, torch.float32)
    path = PrunedPath(gm, calib, config.batch_size)
    dense_path = (
        PrunedPath(trace(copy.deepcopy(pruned)), calib, config.batch_size) if config.targets != "pruned-input" else None
    )
    loop = _Loop(gm, nodes, path, dense_path, config, get_mask_method(config.mask), emit, custom_masks)
    emit(RunStarted([n.target for n in nodes], str(device), config.stages))
    for report in skipped:
        emit(LayerSkipped(report.name, report.skipped))
    scores = None if loop.method.in_loop else _scores(loop)
    counts, allocation = _allocate(loop, scores)
    emit(Allocated(config.allocation, allocation["sparsities"], allocation["scan"]))
    passes = []
    for stage in range(1, config.stages + 1):
        planned = _planned_masks(loop, counts, stage, scores if stage == 1 else None)
        passes += [_prune_layer(loop, node, planned.get(node.target), counts, stage, i) for i, node in enumerate(nodes)]
    pruned = pruned.to(_device_of(model))
    masks = {name: mask.cpu() for name, mask in loop.masks.items()}
    seconds = time.perf_counter() - tic
    result = PruneResult(pruned, masks, passes[-len(nodes) :], config, seconds, skipped, passes, allocation)
    emit(RunDone(result.seconds, result.sparsity))
    return result


def sensitivity_analysis(
    model: nn.Module,
    calib_images: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    config: PruneConfig,
    on_event: EventSink | None = None,
) -> dict[str, float]:
    """Each layer `prune_model` would prune, pruned alone at each sparsity of the scan grid (the rest dense)
    with `config`'s mask method and reconstruction, and measured (see `snows_core.sensitivity`).

    Emits RunStarted, then one LayerSensitivity per layer. Returns the per-layer sparsities the
    `sensitivity` allocation chooses from this scan at `config.sparsity` (what a run with
    allocation="sensitivity" and the same config allocates). `model` is never modified.
    """
    emit = on_event or (lambda event: None)
    _check_calibration(calib_images, config)
    if config.nm or get_mask_method(config.mask).user_supplied:
        raise ValueError("a sensitivity analysis scans unstructured sparsities of a scored or in-loop mask method")
    device = resolve_device(config.device)
    dense = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    gm = trace(dense)
    nodes, skipped = _select_layers(gm, config, None)
    path = PrunedPath(gm, calib_images[: config.n_calib].to(device, torch.float32), config.batch_size)
    loop = _Loop(gm, nodes, path, None, config, get_mask_method(config.mask), emit, None)
    emit(RunStarted([n.target for n in nodes], str(device), 1))
    for report in skipped:
        emit(LayerSkipped(report.name, report.skipped))
    scores = {} if loop.method.in_loop else _scores(loop)  # an in-loop method chooses without scores
    test = TestSubset(test_images.to(device, torch.float32), test_labels.to(device), config.batch_size)
    scan = sensitivity_grid(gm, nodes, path, config, _scan_choice(loop, scores), test, emit)
    counts = sensitivity_counts(scan, config.sparsity, config.layer_sparsity_cap)
    return {name: 1.0 - counts[name] / scan.numel[name] for name in scan.numel}


@dataclass
class _Loop:
    """What every step of the layer loop reads, and the masks chosen so far (the latest pass's)."""

    gm: fx.GraphModule
    nodes: list[fx.Node]
    path: PrunedPath
    dense_path: PrunedPath | None
    config: PruneConfig
    method: MaskMethod
    emit: EventSink
    custom_masks: dict[str, torch.Tensor] | None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        staged = self.config.stages > 1  # later passes overwrite the weights: keep the dense ones aside
        self.dense_weights = {n.target: self.module(n).weight.detach().clone() for n in self.nodes if staged}
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def dense_weight(self, node: fx.Node) -> torch.Tensor:
        """The layer's dense weight (its current one until the layer is first pruned)."""
        kept = self.dense_weights.get(node.target)
        return kept if kept is not None else self.module(node).weight.detach().clone()

    def dense_input(self, node: fx.Node) -> torch.Tensor:
        """The layer's input in the dense network (the pruned path's when targets are "pruned-input")."""
        if self.dense_path is None:
            return self.path.value(node.args[0])
        return self.dense_path.value(self.dense_path.node(node.args[0].name))


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
    _check_layer_support(gm, chosen, config)
    if not chosen:
        raise ValueError(
            f"no layer can be pruned with pattern {config.pattern!r}: "
            + "; ".join(f"{r.name}: {r.skipped}" for r in skipped)
            if skipped
            else "no layer selected"
        )
    return chosen, skipped


def _check_layer_support(gm: fx.GraphModule, nodes: list[fx.Node], config: PruneConfig) -> None:
    """Refuse, before any work, a layer the mask method or the reconstruction cannot handle (both read its
    input columns)."""
    method = get_mask_method(config.mask)
    needs = [("mask", config.mask)] if method.in_loop else []
    if config.reconstruction == "lstsq" or (config.reconstruction == "snows" and config.warm_start):
        needs.append(("reconstruction", config.reconstruction))
    for node in nodes if needs else []:
        module = gm.get_submodule(node.target)
        reason = columns_unsupported(module) or (method.unsupported and method.unsupported(module))
        if reason:
            field_name, value = needs[0]
            raise ValueError(f"{field_name} {value!r} cannot handle layer {node.target}: {reason}")


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


def _scores(loop: _Loop) -> dict[str, torch.Tensor]:
    """The mask method's score of every weight, from the current weights (and the current network's inputs)."""
    scores = {}
    for node in loop.nodes:
        module = loop.module(node)
        norms = input_column_sq_norms(module, loop.path.value(node.args[0])) if loop.method.needs_activations else None
        custom = _checked_custom(node.target, module.weight, loop.custom_masks) if loop.method.user_supplied else None
        scores[node.target] = loop.method.score(ScoreInputs(node.target, module.weight, norms, loop.generator, custom))
    return scores


def _allocate(loop: _Loop, scores: dict[str, torch.Tensor] | None) -> tuple[dict[str, int], dict]:
    """Each layer's final kept count, and the record of it (final sparsities, the scan if one ran)."""
    config, numel = loop.config, {n.target: loop.module(n).weight.numel() for n in loop.nodes}
    scans = []
    if loop.method.user_supplied:
        counts = {name: int(_check_pattern(name, score.bool(), config).sum()) for name, score in scores.items()}
    elif config.nm:
        counts = {name: size * config.nm[0] // config.nm[1] for name, size in numel.items()}
    else:
        allocation = get_allocation(config.allocation)
        scores = scores or {n.target: loop.module(n).weight.detach().abs() for n in loop.nodes}

        def scan() -> SensitivityScan:
            scans.append(
                sensitivity_scan(loop.gm, loop.nodes, loop.path, config, _scan_choice(loop, scores), loop.emit)
            )
            return scans[-1]

        inputs = AllocationInputs(scores, config.sparsity, config.layer_sparsity_cap, scan)
        counts = allocation.counts(inputs)
    sparsities = {name: 1.0 - counts[name] / numel[name] for name in numel}
    return counts, {
        "allocation": config.allocation,
        "sparsities": sparsities,
        "scan": scans[0].to_dict() if scans else None,
    }


def _scan_choice(loop: _Loop, scores: dict[str, torch.Tensor]) -> ChooseMask:
    """How the sensitivity scan chooses a layer's mask: the method's own choice, on the dense network."""

    def choose(node: fx.Node, keep: int, dense: LayerProblem) -> MaskChoice:
        if not loop.method.in_loop:
            return MaskChoice(top_count_mask(scores[node.target], keep))
        inputs = LayerInputs(
            node.target,
            dense.module,
            dense.dense_weight,
            dense.x,
            dense.x,
            keep,
            None,
            None,
            dense.batch_size,
            dense.grams,
        )
        return loop.method.choose(inputs)

    return choose


def _schedule(stage: int, stages: int) -> float:
    """Fraction of the final pruning reached after pass `stage` of `stages` (cubic, Zhu & Gupta 2017)."""
    return 1.0 - (1.0 - stage / stages) ** 3


def _stage_keep(numel: int, final_keep: int, stage: int, stages: int) -> int:
    return numel - round((numel - final_keep) * _schedule(stage, stages))


def _stage_nm(nm: tuple[int, int], stage: int, stages: int) -> tuple[int, int]:
    n, m = nm
    return m - round((m - n) * _schedule(stage, stages)), m


def _planned_masks(
    loop: _Loop, counts: dict[str, int], stage: int, scores: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """A scored method's masks for pass `stage` (nested in the previous pass's); none for in-loop methods."""
    config = loop.config
    if loop.method.in_loop:
        return {}
    scores = scores if scores is not None else _scores(loop)
    if loop.method.user_supplied:
        return {name: score.bool() for name, score in scores.items()}
    masks = {}
    for name, score in scores.items():
        prior = loop.masks.get(name)
        if prior is not None:
            score = score.masked_fill(~prior, float("-inf"))  # pruned stays pruned
        if config.nm:
            masks[name] = nm_mask(score, *_stage_nm(config.nm, stage, config.stages))
        else:
            masks[name] = top_count_mask(score, _stage_keep(score.numel(), counts[name], stage, config.stages))
    return masks


def _checked_custom(name: str, weight: torch.Tensor, custom_masks: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = torch.as_tensor(custom_masks[name])
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"custom mask for {name} has shape {tuple(mask.shape)}; the weight is {tuple(weight.shape)}")
    return mask.to(weight.device).bool()


def _check_pattern(name: str, mask: torch.Tensor, config: PruneConfig) -> torch.Tensor:
    if config.nm and not holds_nm(mask, *config.nm):
        n, m = config.nm
        raise ValueError(f"custom mask for {name} keeps more than {n} of some group of {m}: not {config.pattern}")
    return mask


def _prune_layer(
    loop: _Loop, node: fx.Node, planned: torch.Tensor | None, counts: dict[str, int], stage: int, index: int
) -> LayerReport:
    config, name, n_layers = loop.config, node.target, len(loop.nodes)
    emit = _staged(loop.emit, stage)
    tic = time.perf_counter()
    module = loop.module(node)
    with PeakMemory(module.weight.device) as memory:
        problem, window = _layer_problem(loop, node, planned, counts[name], stage)
        ops = [f"{op}:{kind}" for op, kind in window.ops]
        emit(LayerStarted(name, index, n_layers, ops, problem.mask_loss, stage))
        solution = get_reconstruction(config.reconstruction)(problem, config, emit)
        module.weight.copy_(solution.weight * problem.mask)
    loop.masks[name] = problem.mask
    loop.path.invalidate(node)
    for p in (loop.path, loop.dense_path) if loop.dense_path is not None else (loop.path,):
        p.release_before(p.node(node.name))
    report = LayerReport(
        name,
        problem.mask_loss,
        solution.loss,
        solution.newton_steps,
        solution.cg_iters,
        time.perf_counter() - tic,
        memory.peak,
        int(problem.mask.sum()),
        problem.mask.numel(),
        ops,
        solution.loss_warm,
        stage=stage,
    )
    emit(LayerDone(name, index, n_layers, report.to_dict(), stage))
    return report


def _layer_problem(
    loop: _Loop, node: fx.Node, planned: torch.Tensor | None, final_keep: int, stage: int
) -> tuple[LayerProblem, Window]:
    """The layer's objective under this pass's mask, starting from the method's weights or the current ones."""
    config = loop.config
    current = loop.module(node).weight.detach().clone()
    choice, grams = (MaskChoice(planned), None) if planned is not None else _choose(loop, node, final_keep, stage)
    start = current if choice.weight is None else choice.weight
    window, tap_path = None, None
    if config.targets == "official":
        window = build_window(loop.gm, node, config.k, OFFICIAL_KINDS)
        tap_path = loop.dense_path.seeded({b.name: loop.path.value(b) for b in block_inputs(loop.gm, node)})
    problem, window = layer_problem(
        loop.gm,
        node,
        loop.path,
        config.k,
        choice.mask,
        config.batch_size,
        loop.dense_path,
        loop.dense_weight(node),
        start,
        grams,
        window,
        tap_path,
    )
    if choice.weight is not None and stage > 1:  # the previous pass's weights may be the better start
        problem = min(problem, problem.with_mask(choice.mask, current), key=lambda p: p.start_loss)
    return problem, window


def _choose(
    loop: _Loop, node: fx.Node, final_keep: int, stage: int
) -> tuple[MaskChoice, tuple[torch.Tensor, torch.Tensor, int]]:
    """An in-loop method's choice for this layer and pass, on the pruned path's input (and its Gram matrices)."""
    config, module = loop.config, loop.module(node)
    x, x_reference = loop.path.value(node.args[0]), loop.dense_input(node)
    grams = input_grams(module, x, x_reference, loop.dense_weight(node), config.batch_size)
    inputs = LayerInputs(
        node.target,
        module,
        loop.dense_weight(node),
        x,
        x_reference,
        _stage_keep(module.weight.numel(), final_keep, stage, config.stages),
        _stage_nm(config.nm, stage, config.stages) if config.nm else None,
        loop.masks.get(node.target),
        config.batch_size,
        grams,
        module.weight.detach().clone() if stage > 1 else None,
    )
    return loop.method.choose(inputs), grams


def _staged(emit: EventSink, stage: int) -> EventSink:
    """`emit`, stamping Newton steps with the pass they belong to."""
    if stage == 1:
        return emit
    return lambda event: emit(replace(event, stage=stage) if isinstance(event, NewtonStep) else event)
