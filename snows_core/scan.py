"""Per-layer sensitivity: each layer pruned alone at a grid of sparsities, the rest of the network dense.

For layer l and sparsity s, the run's mask method chooses l's mask at s on the dense network's input.
The layer then gets the method's own weights when the method moves them (SparseGPT), else the
closed-form least-squares fit on that mask when the run reconstructs (lstsq or snows), else the
masked dense weights: a cheap stand-in for the run's reconstruction, so the scan measures what the
reconstruction leaves rather than the raw damage of the mask.

The measure is the layer's lookahead loss with the window reaching the network's output: the mean
squared error of the logits against the dense network's on the calibration set (`build_tail`). A
K-window loss (K=3) is not comparable across layers: its taps differ in kind and scale from layer to
layer (the last block's window ends at the logits, the others at activations): on ResNet-20 at 90%
(SNOWS K=3, one pass) an allocation from K=3 window losses scored 64.8% top-1 against 74.3% for
uniform, where this output measure scores 74.4%. The `sensitivity` allocation
(`snows_core.masks.allocation`) turns this table into per-layer sparsities.

`sensitivity_grid` is the analysis a user reads (the `sensitivity` run kind, the Sensitivity page): on
the same grid and masks it also applies the run's own update (none, lstsq or SNOWS on the layer's
K-window) and measures the K-window loss and the network's top-1 on a test subset, while its output
losses are exactly the allocation's scan (so the sparsities it suggests are those a `sensitivity` run
allocates). A cell whose pruning leaves the logits bit-identical is not reported as robust: it is
checked, by whether the mask removed any nonzero weight and by zeroing the whole layer (does the layer
reach the output at all?), and the verdict is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx

from snows_core.config import PruneConfig
from snows_core.engine.graph import PrunedPath
from snows_core.engine.problem import LayerProblem, load_inputs
from snows_core.engine.reconstruct import get_reconstruction, lstsq_weight
from snows_core.engine.window import build_tail, build_window
from snows_core.events import EventSink, LayerScanned, LayerSensitivity
from snows_core.masks.allocation import SensitivityScan, kept_count
from snows_core.masks.method import MaskChoice

__all__ = ["SCAN_SPARSITIES", "MEASURE", "TestSubset", "scan_sparsities", "sensitivity_scan", "sensitivity_grid"]

SCAN_SPARSITIES = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
MEASURE = "output MSE (logits vs dense), layer alone pruned"

ChooseMask = Callable[[LayerProblem], MaskChoice]
"""The layer's dense problem, its `keep` set to the scanned count -> the mask method's choice."""


def scan_sparsities(cap: float) -> list[float]:
    """The grid: SCAN_SPARSITIES below the cap, and the cap itself."""
    return sorted({s for s in SCAN_SPARSITIES if s < cap} | {cap})


def sensitivity_scan(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    path: PrunedPath,
    config: PruneConfig,
    choose: ChooseMask,
    emit: EventSink | None = None,
) -> SensitivityScan:
    """The output loss of the network with each layer of `nodes` pruned alone at each sparsity of the grid.

    `path` must hold the dense network (nothing pruned yet); its cached values are released as the
    scan moves past each layer.
    """
    grid = scan_sparsities(config.layer_sparsity_cap)
    losses, numel = {}, {}
    for index, node in enumerate(nodes):
        dense = _output_problem(gm, node, path, config)
        numel[node.target] = dense.dense_weight.numel()
        losses[node.target] = [_scan_loss(dense, _choice_at(choose, dense, s), config) for s in grid]
        path.release_before(node)
        if emit is not None:
            emit(LayerScanned(node.target, index, len(nodes), grid, losses[node.target]))
    return SensitivityScan(grid, losses, numel, MEASURE)


def _output_problem(gm: fx.GraphModule, node: fx.Node, path: PrunedPath, config: PruneConfig) -> LayerProblem:
    """The layer's dense problem with the window reaching the logits (the scan's measure)."""
    module = gm.get_submodule(node.target)
    problem = LayerProblem(node.target, module, module.weight.detach().clone(), batch_size=config.batch_size)
    load_inputs(problem, gm, node, path, window=build_tail(gm, node))
    return problem.set_mask(torch.ones_like(module.weight, dtype=torch.bool))


def _choice_at(choose: ChooseMask, dense: LayerProblem, sparsity: float) -> MaskChoice:
    """The method's choice for the layer alone at `sparsity`."""
    dense.keep = kept_count(dense.dense_weight.numel(), sparsity)
    return choose(dense)


def _scan_loss(dense: LayerProblem, choice: MaskChoice, config: PruneConfig) -> float:
    """The output loss with the layer's weights after the method (and a least-squares stand-in for the
    reconstruction)."""
    return dense.loss(_scan_weight(dense, choice, config) * choice.mask)


def _scan_weight(dense: LayerProblem, choice: MaskChoice, config: PruneConfig) -> torch.Tensor:
    """The method's weights, or the least-squares fit on the mask when the run reconstructs, or the masked
    dense weights."""
    if choice.weight is not None or config.reconstruction == "none":
        return choice.weight if choice.weight is not None else dense.dense_weight * choice.mask
    return lstsq_weight(dense, choice.mask, config.damping)


@dataclass(frozen=True)
class TestSubset:
    """The test images a sensitivity analysis scores the network on, already on the model's device."""

    images: torch.Tensor  # (N, C, H, W)
    labels: torch.Tensor  # (N,)
    batch_size: int = 256

    def logits(self, gm: fx.GraphModule) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [gm(self.images[i : i + self.batch_size]) for i in range(0, len(self.images), self.batch_size)]
            )

    def top1(self, logits: torch.Tensor) -> float:
        return (logits.argmax(1) == self.labels).float().mean().item()


def sensitivity_grid(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    path: PrunedPath,
    config: PruneConfig,
    choose: ChooseMask,
    *,
    test: TestSubset,
    emit: EventSink,
) -> SensitivityScan:
    """Each layer of `nodes` pruned alone at each sparsity of the grid with the run's mask method and
    update, measured (one `LayerSensitivity` event per layer); returns the allocation's scan of it.

    `path` must hold the dense network; every layer's weight is dense again when this returns.
    """
    grid = scan_sparsities(config.layer_sparsity_cap)
    dense_logits = test.logits(gm)  # (N, classes)
    top1_dense = test.top1(dense_logits)
    losses, numel = {}, {}
    for index, node in enumerate(nodes):
        tail = _output_problem(gm, node, path, config)
        numel[node.target] = tail.dense_weight.numel()
        cells = [
            _cell(
                gm, node, path, tail, _choice_at(choose, tail, s), config=config, test=test, dense_logits=dense_logits
            )
            for s in grid
        ]
        losses[node.target] = [cell["output_loss"] for cell in cells]
        path.release_before(node)
        columns = {key: [cell[key] for cell in cells] for key in cells[0]}
        emit(
            LayerSensitivity(
                node.target, index, len(nodes), grid, **columns, top1_dense=top1_dense, numel=numel[node.target]
            )
        )
    return SensitivityScan(grid, losses, numel, MEASURE)


STAND_IN_IS_THE_UPDATE = ("none", "lstsq")  # reconstructions the allocation's stand-in computes exactly


def _cell(
    gm: fx.GraphModule,
    node: fx.Node,
    path: PrunedPath,
    tail: LayerProblem,
    choice: MaskChoice,
    *,
    config: PruneConfig,
    test: TestSubset,
    dense_logits: torch.Tensor,
) -> dict[str, float | int | str]:
    """One layer at one sparsity: the update, then the measures (the layer's weight is restored). For none
    and lstsq the update is the allocation's stand-in itself (computed once); SNOWS solves its K-window."""
    stand_in = _scan_weight(tail, choice, config)
    weight = stand_in
    window = build_window(gm, node, config.k)
    problem = tail.with_window(window, path.values(window.externals)).set_mask(choice.mask, choice.weight)
    if config.reconstruction not in STAND_IN_IS_THE_UPDATE:
        weight = get_reconstruction(config.reconstruction)(problem, config, lambda event: None).weight
    module = gm.get_submodule(node.target)
    logits = _logits_with(gm, module, weight * choice.mask, test)  # (N, classes)
    removed = int((~choice.mask & (tail.dense_weight != 0)).sum())
    change = (logits - dense_logits).abs().max().item()
    return {
        "window_loss_mask": problem.mask_loss,
        "window_loss": problem.loss(weight * choice.mask),
        "output_loss": tail.loss(stand_in * choice.mask),  # the allocation's measure, exactly
        "top1": test.top1(logits),
        "logit_change": change,
        "removed": removed,
        "checks": "" if change > 0 else _why_no_effect(gm, module, removed, test, dense_logits),
    }


def _logits_with(gm: fx.GraphModule, module: torch.nn.Module, weight: torch.Tensor, test: TestSubset) -> torch.Tensor:
    """The network's test logits with `module` holding `weight` (its own weight is put back after)."""
    kept = module.weight.detach().clone()
    try:
        module.weight.copy_(weight)
        return test.logits(gm)
    finally:
        module.weight.copy_(kept)


def _why_no_effect(
    gm: fx.GraphModule, module: torch.nn.Module, removed: int, test: TestSubset, dense_logits: torch.Tensor
) -> str:
    """A cell left the logits unchanged: say why, after checking, instead of calling the layer robust."""
    if removed == 0:
        return "no effect: the mask removed only weights that were already zero"
    zeroed = (_logits_with(gm, module, torch.zeros_like(module.weight), test) - dense_logits).abs().max().item()
    if zeroed == 0:
        return "no effect: the layer does not reach the logits (zeroing all of it changes nothing)"
    return f"no effect on these images, checked: zeroing the whole layer moves the logits by {zeroed:.3g}"
