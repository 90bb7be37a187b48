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
(`snows_core.allocation`) turns this table into per-layer sparsities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx

from snows_core.allocation import SensitivityScan, kept_count
from snows_core.config import PruneConfig
from snows_core.events import EventSink, LayerScanned
from snows_core.lookahead import PrunedPath, build_tail
from snows_core.masks import MaskChoice
from snows_core.reconstruct import LayerProblem, layer_problem, lstsq_weight

__all__ = ["SCAN_SPARSITIES", "MEASURE", "scan_sparsities", "sensitivity_scan"]

SCAN_SPARSITIES = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
MEASURE = "output MSE (logits vs dense), layer alone pruned"

ChooseMask = Callable[[fx.Node, int, LayerProblem], MaskChoice]
"""(layer node, weights to keep, the layer's dense problem) -> the mask method's choice."""


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
        weight = gm.get_submodule(node.target).weight
        numel[node.target] = weight.numel()
        everything = torch.ones_like(weight, dtype=torch.bool)
        dense, _ = layer_problem(gm, node, path, 0, everything, config.batch_size, window=build_tail(gm, node))
        losses[node.target] = [
            _scan_loss(dense, choose(node, kept_count(weight.numel(), s), dense), config) for s in grid
        ]
        path.release_before(node)
        if emit is not None:
            emit(LayerScanned(node.target, index, len(nodes), grid, losses[node.target]))
    return SensitivityScan(grid, losses, numel, MEASURE)


def _scan_loss(dense: LayerProblem, choice: MaskChoice, config: PruneConfig) -> float:
    """The output loss with the layer's weights after the method (and a least-squares stand-in for the
    reconstruction)."""
    if choice.weight is not None or config.reconstruction == "none":
        weight = choice.weight if choice.weight is not None else dense.dense_weight * choice.mask
    else:
        weight = lstsq_weight(
            dense.module,
            dense.x,
            dense.x,
            dense.dense_weight,
            choice.mask,
            config.damping,
            dense.batch_size,
            dense.grams,
        )
    return dense.loss(weight * choice.mask)
