"""Per-layer allocation: how many weights each pruned layer keeps for an overall sparsity.

An allocation turns the layers' scores (and, for ``sensitivity``, a scan of each layer's loss against
its sparsity) into a kept count per layer; the mask method then chooses which weights within a layer.
Registered (`register_allocation`, one factory `get_allocation`, `list_allocations`):

- ``uniform``: every layer at the target sparsity.
- ``global``: one ranking of the scores across layers; no layer is pruned beyond the cap (water-filling).
- ``lamp``: Lee et al., ICLR 2021, "Layer-adaptive sparsity for the magnitude-based pruning". Within a
  layer, weights sorted by ascending score s_(1) <= ... <= s_(n) get the score
  s_(u)^2 / sum_{v >= u} s_(v)^2; these are ranked globally (with the cap).
- ``sensitivity``: each layer alone pruned at a grid of sparsities, its K-window loss measured (see
  `snows_core.scan`); then the counts that minimise the summed loss at the overall target, by
  greedy purchase of weights along each layer's lower convex hull of loss against kept weights
  (optimal for the piecewise-linear interpolation of the scan), never above the cap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from snows_core.registry import Registry

__all__ = [
    "AllocationInputs",
    "SensitivityScan",
    "register_allocation",
    "get_allocation",
    "list_allocations",
    "kept_count",
    "global_counts",
    "lamp_scores",
    "sensitivity_counts",
]


@dataclass
class SensitivityScan:
    """Each layer's loss when it alone is pruned at each sparsity of the grid (others dense)."""

    sparsities: list[float]
    losses: dict[str, list[float]]  # layer -> one loss per sparsity
    numel: dict[str, int]
    measure: str = "K-window loss"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsities": self.sparsities,
            "losses": self.losses,
            "numel": self.numel,
            "measure": self.measure,
            **self.extra,
        }


@dataclass
class AllocationInputs:
    """What an allocation may read: one score tensor per layer (shaped like its weight), the targets,
    and for a scanning allocation the scan (computed on demand: it costs a pass over the layers)."""

    scores: dict[str, torch.Tensor]
    sparsity: float
    cap: float
    scan: Callable[[], SensitivityScan] | None = None


@dataclass(frozen=True)
class Allocation:
    name: str
    counts: Callable[[AllocationInputs], dict[str, int]]
    needs_scan: bool = False
    summary: str = ""


_ALLOCATIONS: Registry[Allocation] = Registry("allocation", ordered=True)


def register_allocation(name: str, *, needs_scan: bool = False, summary: str = "") -> Callable:
    """Decorator registering `fn(inputs: AllocationInputs) -> {layer: kept count}` under `name`."""
    return _ALLOCATIONS.decorator(name, lambda fn: Allocation(name, fn, needs_scan, summary))


get_allocation = _ALLOCATIONS.get
list_allocations = _ALLOCATIONS.names  # in registration order (simplest first)


def kept_count(numel: int, sparsity: float) -> int:
    """Weights kept of `numel` at `sparsity` (rounded to the nearest count)."""
    return round((1.0 - sparsity) * numel)


def cap_floor(numel: int, cap: float) -> int:
    """The fewest weights a layer of `numel` keeps under the cap (rounded up: never sparser than the cap)."""
    return math.ceil((1.0 - cap) * numel - 1e-9)


@register_allocation("uniform", summary="every layer at the target sparsity")
def uniform_counts(inputs: AllocationInputs) -> dict[str, int]:
    return {name: kept_count(s.numel(), inputs.sparsity) for name, s in inputs.scores.items()}


@register_allocation("global", summary="one ranking of the scores across layers, capped per layer")
def global_allocation(inputs: AllocationInputs) -> dict[str, int]:
    return global_counts(inputs.scores, inputs.sparsity, inputs.cap)


@register_allocation("lamp", summary="LAMP: scores normalised by the layer's larger scores, ranked globally")
def lamp_allocation(inputs: AllocationInputs) -> dict[str, int]:
    return global_counts({name: lamp_scores(s) for name, s in inputs.scores.items()}, inputs.sparsity, inputs.cap)


@register_allocation("sensitivity", needs_scan=True, summary="least summed scan loss at the target, capped")
def sensitivity_allocation(inputs: AllocationInputs) -> dict[str, int]:
    return sensitivity_counts(inputs.scan(), inputs.sparsity, inputs.cap)


def global_counts(scores: dict[str, torch.Tensor], sparsity: float, cap: float) -> dict[str, int]:
    """Kept counts of one ranking over all layers keeping (1 - sparsity) of all weights, none sparser than `cap`.

    Water-filling: layers that the global threshold would prune beyond the cap are fixed at the cap,
    and the rest of the budget is ranked again over the other layers until no layer exceeds it.
    """
    total = sum(s.numel() for s in scores.values())
    budget = kept_count(total, sparsity)
    floor = {name: cap_floor(s.numel(), cap) for name, s in scores.items()}
    capped: set[str] = set()
    while True:
        free = [name for name in scores if name not in capped]
        left = budget - sum(floor[name] for name in capped)
        pooled = torch.cat([scores[name].flatten().double().cpu() for name in free])  # exact for any float scores
        if left <= 0:
            counts = dict.fromkeys(free, 0)
        else:
            threshold = torch.topk(pooled, min(left, pooled.numel())).values.min()
            counts = {name: int((scores[name].double().cpu() >= threshold).sum()) for name in free}
        newly = {name for name in free if counts[name] < floor[name]}
        if not newly:
            break
        capped |= newly
    counts.update({name: floor[name] for name in capped})
    _trim_ties(counts, free, left)
    return counts


def _trim_ties(counts: dict[str, int], free: list[str], budget: int) -> None:
    """Scores tied at the threshold may overshoot the budget: take the excess from the largest layers."""
    excess = sum(counts[name] for name in free) - max(budget, 0)
    for name in sorted(free, key=lambda n: -counts[n]):
        if excess <= 0:
            break
        take = min(excess, counts[name])
        counts[name] -= take
        excess -= take


def lamp_scores(scores: torch.Tensor) -> torch.Tensor:
    """LAMP score of every entry: s_u^2 / (sum of s_v^2 over the entries scored at least s_u, itself included)."""
    squared = scores.detach().flatten().double().pow(2)  # (n,)
    values, order = torch.sort(squared)  # ascending; ties keep index order
    suffix = values.flip(0).cumsum(0).flip(0)  # (n,) sum over v >= u
    lamp = torch.empty_like(squared)
    lamp[order] = torch.where(suffix > 0, values / suffix, torch.zeros_like(values))
    return lamp.view_as(scores)


def sensitivity_counts(scan: SensitivityScan, sparsity: float, cap: float) -> dict[str, int]:
    """Kept counts minimising the summed (interpolated) scan loss with exactly (1 - sparsity) of all weights kept.

    Every layer starts at the cap; weights are bought back along the steepest remaining segment of
    any layer's lower convex hull of (kept, loss) until the budget is spent.
    """
    budget = kept_count(sum(scan.numel.values()), sparsity)
    hulls = {name: _lower_hull(_points(scan, name, cap)) for name in scan.numel}
    counts = {name: hull[0][0] for name, hull in hulls.items()}
    left = budget - sum(counts.values())
    segments = sorted(
        (slope, name, a[0], b[0])
        for name, hull in hulls.items()
        for a, b in itertools.pairwise(hull)
        if (slope := (b[1] - a[1]) / (b[0] - a[0])) < 0
    )  # the hull's slopes rise along a layer, so this order buys each layer's segments in sequence
    for _, name, start, end in segments:
        if left <= 0:
            break
        take = min(left, end - start)
        counts[name] += take
        left -= take
    for name in scan.numel:  # flat hulls: spend what is left on any layer with room
        take = min(max(left, 0), scan.numel[name] - counts[name])
        counts[name] += take
        left -= take
    return counts


def _points(scan: SensitivityScan, name: str, cap: float) -> list[tuple[int, float]]:
    """(kept, loss) of layer `name` from the cap up to dense (loss 0), in ascending kept order."""
    numel = scan.numel[name]
    losses = dict(zip(scan.sparsities, scan.losses[name], strict=True))
    points = {kept_count(numel, s): loss for s, loss in losses.items() if s <= cap}
    floor = cap_floor(numel, cap)
    points = {kept: loss for kept, loss in points.items() if kept >= floor}
    if floor not in points:  # the cap itself: the loss of the sparsest scanned point at or beyond it
        beyond = [s for s in scan.sparsities if s >= cap]
        points[floor] = losses[min(beyond)] if beyond else max(losses.values(), default=0.0)
    points[numel] = 0.0
    return sorted(points.items())


def _lower_hull(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The lower convex hull of points sorted by x (Andrew's monotone chain, lower half)."""
    hull: list[tuple[int, float]] = []
    for p in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(o: tuple[int, float], a: tuple[int, float], b: tuple[int, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
