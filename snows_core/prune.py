"""prune_model: the SNOWS loop over layers (Lucas & Mazumder, ICLR 2025, Sec. 3), in one pass or several.

1. Copy and trace the model; pick the layers (default: every Conv2d/Linear but the first layer that
   sees the input and the final classifier).
2. For each pass s = 1..S (S = `config.stages`, 1 by default) build every layer's `LayerProblem`
   (`snows_core.engine.problem`); a scored mask method scores them now, from the current (reconstructed)
   weights and, for Wanda, the current network's inputs.
3. Before the first pass, allocate each layer's final kept count (uniform, global, lamp or sensitivity;
   see `snows_core.masks.allocation`) from those scores (|W| for in-loop methods) or from a sensitivity scan.
   In pass s every layer keeps numel - round(pruned_final * (1 - (1 - s/S)^3)) weights, the cubic schedule
   of Zhu & Gupta (2017) (N:M: N_s = M - round((M - N) * (1 - (1 - s/S)^3))). Masks nest: a weight pruned
   in one pass stays pruned.
4. In topological order, for each layer: load its problem (its input and its window's external inputs
   from the pruned path, the targets from the dense network; with targets="official": the dense network
   run from the pruned path at the input of the block holding the layer), choose the mask (in-loop methods
   choose now, on the pruned-path input), reconstruct from the starting point, write the weight, advance
   the pruned path past it and report.

With one pass and a scored mask this is exactly the one-shot SNOWS loop.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
import torch.nn as nn

from snows_core.config import PruneConfig
from snows_core.engine.device import resolve_device
from snows_core.engine.graph import PrunedPath, default_layers, prunable_nodes, trace
from snows_core.engine.problem import LayerProblem, load_inputs
from snows_core.engine.reconstruct import get_reconstruction
from snows_core.engine.window import OFFICIAL_KINDS, Window, block_inputs, build_window
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
from snows_core.masks import MaskChoice, MaskMethod, get_mask_method, holds_nm, input_column_sq_norms
from snows_core.masks.allocation import AllocationInputs, SensitivityScan, get_allocation, sensitivity_counts
from snows_core.masks.method import layer_refusal
from snows_core.masks.select import keep_mask, nm_skip_reason
from snows_core.measure.memory import PeakMemory
from snows_core.report import LayerReport, PruneResult
from snows_core.scan import ChooseMask, TestSubset, sensitivity_grid, sensitivity_scan

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
    emit = on_event or _ignore
    tic = time.perf_counter()
    net = _Network.set_up(model, calib_images, config, custom_masks)
    emit(RunStarted([n.target for n in net.nodes], str(net.device), config.stages))
    for report in net.skipped:
        emit(LayerSkipped(report.name, report.skipped))
    masks: dict[str, torch.Tensor] = {}
    reports: list[LayerReport] = []
    for stage in range(1, config.stages + 1):
        problems, scores = net.problems(stage, masks)
        if stage == 1:
            counts, allocation = _allocate(net, scores, emit)
            emit(Allocated(config.allocation, allocation["sparsities"], allocation["scan"]))
        for index, (node, problem) in enumerate(zip(net.nodes, problems, strict=True)):
            _set_target(problem, counts[node.target], config)
            tic_layer = time.perf_counter()
            with PeakMemory(problem.module.weight.device) as memory:
                window = net.load(node, problem)
                _choose_mask(net, problem, scores.get(node.target))
                ops = [f"{op}:{kind}" for op, kind in window.ops]
                emit(LayerStarted(node.target, index, len(net.nodes), ops, problem.mask_loss, stage))
                solution = get_reconstruction(config.reconstruction)(problem, config, _staged(emit, stage))
                problem.module.weight.copy_(solution.weight * problem.mask)
            masks[node.target] = problem.mask
            net.advance(node)
            report = LayerReport(
                node.target,
                problem.mask_loss,
                solution.loss,
                solution.newton_steps,
                solution.cg_iters,
                seconds=time.perf_counter() - tic_layer,
                peak_mem=memory.peak,
                kept=int(problem.mask.sum()),
                numel=problem.mask.numel(),
                window=ops,
                loss_warm=solution.loss_warm,
                stage=stage,
            )
            emit(LayerDone(node.target, index, len(net.nodes), report.to_dict(), stage))
            reports.append(report)
            problem.free()
    result = PruneResult(
        net.model.to(_device_of(model)),
        {name: mask.cpu() for name, mask in masks.items()},
        reports[-len(net.nodes) :],
        config,
        seconds=time.perf_counter() - tic,
        skipped=net.skipped,
        passes=reports,
        allocation=allocation,
    )
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
    with `config`'s mask method and reconstruction, and measured (see `snows_core.scan`).

    Emits RunStarted, then one LayerSensitivity per layer. Returns the per-layer sparsities the
    `sensitivity` allocation chooses from this scan at `config.sparsity` (what a run with
    allocation="sensitivity" and the same config allocates). `model` is never modified.
    """
    emit = on_event or _ignore
    if config.nm or get_mask_method(config.mask).user_supplied:
        raise ValueError("a sensitivity analysis scans unstructured sparsities of a scored or in-loop mask method")
    net = _Network.set_up(model, calib_images, config, None, dense_targets=False)
    emit(RunStarted([n.target for n in net.nodes], str(net.device), 1))
    for report in net.skipped:
        emit(LayerSkipped(report.name, report.skipped))
    _, scores = net.problems(1, {})
    test = TestSubset(test_images.to(net.device, torch.float32), test_labels.to(net.device), config.batch_size)
    choose = _scan_choice(net.method, scores)
    scan = sensitivity_grid(net.gm, net.nodes, net.path, config, choose, test=test, emit=emit)
    counts = sensitivity_counts(scan, config.sparsity, config.layer_sparsity_cap)
    return {name: 1.0 - counts[name] / scan.numel[name] for name in scan.numel}


@dataclass(frozen=True)
class _Network:
    """The traced copy being pruned, its layers and activation caches: set up once per run, read by every pass."""

    model: nn.Module
    gm: fx.GraphModule
    nodes: list[fx.Node]
    skipped: list[LayerReport]
    path: PrunedPath  # the network as it is being pruned
    dense_path: PrunedPath | None  # the dense network's own values (None: targets from the pruned path)
    device: torch.device
    config: PruneConfig
    method: MaskMethod
    custom_masks: dict[str, torch.Tensor] | None
    generator: torch.Generator
    dense_weights: dict[str, torch.Tensor]  # kept aside when later passes overwrite the weights

    @classmethod
    def set_up(
        cls,
        model: nn.Module,
        calib_images: torch.Tensor,
        config: PruneConfig,
        custom_masks: dict[str, torch.Tensor] | None,
        *,
        dense_targets: bool = True,
    ) -> _Network:
        """Copy and trace `model`, select its layers and open the pruned (and dense) paths on the calibration
        images; `dense_targets=False` never opens the dense network's path (the scan reads the pruned one)."""
        _check_calibration(calib_images, config)
        device = resolve_device(config.device)
        pruned = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        gm = trace(pruned)
        nodes, skipped = _select_layers(gm, config, custom_masks)
        calib = calib_images[: config.n_calib].to(device, torch.float32)
        dense = dense_targets and config.targets != "pruned-input"
        staged = config.stages > 1
        return cls(
            model=pruned,
            gm=gm,
            nodes=nodes,
            skipped=skipped,
            path=PrunedPath(gm, calib, config.batch_size),
            dense_path=PrunedPath(trace(copy.deepcopy(pruned)), calib, config.batch_size) if dense else None,
            device=device,
            config=config,
            method=get_mask_method(config.mask),
            custom_masks=custom_masks,
            generator=torch.Generator().manual_seed(config.seed),
            dense_weights={n.target: gm.get_submodule(n.target).weight.detach().clone() for n in nodes if staged},
        )

    def problems(
        self, stage: int, masks: dict[str, torch.Tensor]
    ) -> tuple[list[LayerProblem], dict[str, torch.Tensor]]:
        """Every layer's problem for pass `stage` (`masks`: the previous pass's), and a scored method's scores
        of them, taken now: from the current weights and the network's inputs as the pass starts."""
        problems = [self._problem(node, stage, masks.get(node.target)) for node in self.nodes]
        if self.method.in_loop:
            return problems, {}
        return problems, {p.name: self.method.score(p) for p in problems}

    def _problem(self, node: fx.Node, stage: int, prior: torch.Tensor | None) -> LayerProblem:
        module = self.gm.get_submodule(node.target)
        dense = self.dense_weights.get(node.target)
        problem = LayerProblem(
            node.target,
            module,
            dense if dense is not None else module.weight.detach().clone(),
            stage=stage,
            batch_size=self.config.batch_size,
            prior=prior,
            generator=self.generator,
        )
        if self.method.needs_activations and not self.method.in_loop:
            problem.column_sq_norms = input_column_sq_norms(module, self.path.value(node.args[0]))
        if self.method.user_supplied:
            problem.custom = _checked_custom(node.target, module.weight, self.custom_masks)
        return problem

    def load(self, node: fx.Node, problem: LayerProblem) -> Window:
        """Load the layer's inputs and reference taps into its problem; returns its window."""
        config, tap_path = self.config, None
        kinds = OFFICIAL_KINDS if config.targets == "official" else None
        window = build_window(self.gm, node, config.k, kinds)
        if config.targets == "official":
            seeds = {b.name: self.path.value(b) for b in block_inputs(self.gm, node)}
            tap_path = self.dense_path.seeded(seeds)
        load_inputs(problem, self.gm, node, self.path, window=window, dense_path=self.dense_path, tap_path=tap_path)
        return window

    def advance(self, node: fx.Node) -> None:
        """The layer's weight changed: recompute the pruned path past it, and forget what no later layer reads."""
        self.path.invalidate(node)
        for path in (self.path, self.dense_path) if self.dense_path is not None else (self.path,):
            path.release_before(path.node(node.name))


def _ignore(event: object) -> None:
    return None


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
    """Refuse, before any work, a layer the mask method or the reconstruction cannot handle."""
    reason = layer_refusal(config, {node.target: gm.get_submodule(node.target) for node in nodes})
    if reason:
        raise ValueError(reason)


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


def _allocate(net: _Network, scores: dict[str, torch.Tensor], emit: EventSink) -> tuple[dict[str, int], dict]:
    """Each layer's final kept count, and the record of it (final sparsities, the scan if one ran)."""
    config = net.config
    numel = {n.target: net.gm.get_submodule(n.target).weight.numel() for n in net.nodes}
    scans = []
    if net.method.user_supplied:
        counts = {name: int(_check_pattern(name, score.bool(), config).sum()) for name, score in scores.items()}
    elif config.nm:
        counts = {name: size * config.nm[0] // config.nm[1] for name, size in numel.items()}
    else:
        scores = scores or {n.target: net.gm.get_submodule(n.target).weight.detach().abs() for n in net.nodes}

        def scan() -> SensitivityScan:
            choose = _scan_choice(net.method, scores)
            scans.append(sensitivity_scan(net.gm, net.nodes, net.path, config, choose, emit))
            return scans[-1]

        inputs = AllocationInputs(scores, config.sparsity, config.layer_sparsity_cap, scan)
        counts = get_allocation(config.allocation).counts(inputs)
    sparsities = {name: 1.0 - counts[name] / numel[name] for name in numel}
    return counts, {
        "allocation": config.allocation,
        "sparsities": sparsities,
        "scan": scans[0].to_dict() if scans else None,
    }


def _scan_choice(method: MaskMethod, scores: dict[str, torch.Tensor]) -> ChooseMask:
    """How the sensitivity scan chooses a layer's mask on its dense problem: the method's own choice."""
    if method.in_loop:
        return method.choose
    return lambda problem: MaskChoice(keep_mask(scores[problem.name], problem.keep))


def _schedule(stage: int, stages: int) -> float:
    """Fraction of the final pruning reached after pass `stage` of `stages` (cubic, Zhu & Gupta 2017)."""
    return 1.0 - (1.0 - stage / stages) ** 3


def _set_target(problem: LayerProblem, final_keep: int, config: PruneConfig) -> None:
    """This pass's target: the kept count on the cubic schedule to `final_keep` (N:M: N on the same schedule)."""
    fraction = _schedule(problem.stage, config.stages)
    numel = problem.dense_weight.numel()
    problem.keep = numel - round((numel - final_keep) * fraction)
    if config.nm:
        n, m = config.nm
        problem.nm = m - round((m - n) * fraction), m


def _choose_mask(net: _Network, problem: LayerProblem, scores: torch.Tensor | None) -> None:
    """Set the problem's mask and start: a scored method's selection from its scores, the user's mask, or an
    in-loop method's choice (in a later pass, from whichever of its weights and the current ones is better)."""
    current = problem.weight.clone()
    if net.method.in_loop:
        choice = net.method.choose(problem)
    elif net.method.user_supplied:
        choice = MaskChoice(scores.bool())
    else:
        choice = MaskChoice(keep_mask(scores, problem.keep, problem.nm, problem.prior))
    problem.set_mask(choice.mask, current if choice.weight is None else choice.weight)
    if choice.weight is not None and problem.stage > 1:  # the previous pass's weights may be the better start
        problem.prefer_start(current)


def _checked_custom(name: str, weight: torch.Tensor, custom_masks: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = torch.as_tensor(custom_masks[name])
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"custom mask for {name} has shape {tuple(mask.shape)}; the weight is {tuple(weight.shape)}")
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"custom mask for {name} must hold only True/False (or 1/0); it holds other values")
    return mask.to(weight.device).bool()


def _check_pattern(name: str, mask: torch.Tensor, config: PruneConfig) -> torch.Tensor:
    if config.nm and not holds_nm(mask, *config.nm):
        n, m = config.nm
        raise ValueError(f"custom mask for {name} keeps more than {n} of some group of {m}: not {config.pattern}")
    return mask


def _staged(emit: EventSink, stage: int) -> EventSink:
    """`emit`, stamping Newton steps with the pass they belong to."""
    if stage == 1:
        return emit
    return lambda event: emit(replace(event, stage=stage) if isinstance(event, NewtonStep) else event)
