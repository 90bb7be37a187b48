"""SparseGPT (Frantar & Alistarh, ICML 2023): choose a layer's mask and update its kept weights together.

For a layer with weight rows w and input columns X, SparseGPT approximately solves the sparse
regression min ||W X - W_0 X||^2 over masked W, column by column, with the Optimal Brain Surgeon
update: pruning (or keeping) column j's weights and compensating the error on the columns not yet
processed, F = {j, ..., d-1},

    W[:, F] -= (w_j - q_j) / [H_F^-1]_jj  [H_F^-1]_{j, F},     H = 2 X X^T + lambda I,

where q_j is w_j with the pruned entries zeroed. Every [H_F^-1] row it needs is a row of the upper
Cholesky factor of H^-1 (divided by its diagonal), so one factorisation serves all columns. Columns
go in blocks of 128: inside a block the updates are applied column by column, to the rest of the
matrix once per block (lazy batch updates). The mask of a block is chosen when the block starts, by
the OBS saliency w^2 / [H_F^-1]_jj = w^2 / U_jj^2 (U the upper Cholesky factor of H^-1) over all its
rows (adaptive mask selection); for N:M, within each group of M columns. lambda is 1% of the mean
diagonal of H.

Here: counts are exact (the layer keeps exactly the weights its allocation gives it: the prune count
is split over blocks by cumulative rounding); weights pruned by an earlier pass (`prior`) are pruned
first; convs use their im2col columns per group, reordered to (kernel row, kernel column, input
channel) for N:M so that groups run along input channels like every N:M mask of this library.

In the layer loop the objective is the layer's part of the SNOWS objective, ||W X - W_dense X_t||^2
with X the pruned path's columns and X_t the dense path's, plus SparseGPT's damping as a ridge
toward the dense weights, lambda ||W - W_dense||^2. With G = X X^T and C = X_t X^T this equals
(W - W*)(G + lambda I)(W - W*)^T plus a constant for W* = W_dense (C + lambda I)(G + lambda I)^-1, so
SparseGPT starts from W* with the same damped Hessian. When the two paths agree (X_t = X), W* is
W_dense: exactly the paper's problem. In a later pass of a gradual schedule (`LayerProblem.start`) it
starts from the weights the pass before reconstructed instead, with the same Hessian: the objective
||W X - W_prev X||^2 re-scores the reconstructed weights, which SNOWS fitted to the deeper targets,
rather than going back to the layer-local least-squares fit.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from snows_core.engine.problem import LayerProblem
from snows_core.masks.method import MaskChoice, register_mask_method
from snows_core.masks.obs import RELATIVE_DAMPING, column_order, damped_hessian, layer_start

__all__ = ["sparsegpt_prune", "sparsegpt_layer", "sparsegpt_choice", "BLOCK_SIZE"]

BLOCK_SIZE = 128


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    prune: int | None = None,
    nm: tuple[int, int] | None = None,
    prior: torch.Tensor | None = None,
    block_size: int = BLOCK_SIZE,
    relative_damping: float = RELATIVE_DAMPING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune `prune` weights of `weight` (rows, d) (or keep N of every M columns), SparseGPT-style.

    Args:
        weight: (rows, d), the weights to start from.
        hessian: (d, d), H = 2 X X^T of the layer's input columns (undamped; scale does not matter).
        prune: how many weights to zero in all (unstructured); exactly this many are.
        nm: (N, M) to keep N of every M consecutive columns instead (d a multiple of M).
        prior: bool (rows, d), True = still kept: weights already pruned stay pruned (and go first).
        block_size: columns per lazy batch update.
        relative_damping: lambda as a fraction of the mean diagonal of H.

    Returns:
        (mask, weight): bool (rows, d) with True = kept, and the updated weights, zero where pruned.
    """
    if (prune is None) == (nm is None):
        raise ValueError("give exactly one of prune (a count) or nm (an N:M pattern)")
    rows, d = weight.shape
    h, dead = damped_hessian(hessian, relative_damping)  # (d, d), (d,)
    w = weight.detach().to(torch.float64) * ~dead  # (rows, d)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (d, d)
    kept = torch.ones(rows, d, dtype=torch.bool, device=w.device) if prior is None else prior.clone()
    for start in range(0, d, block_size):
        end = min(start + block_size, d)
        block, block_inv = w[:, start:end].clone(), hinv[start:end, start:end]  # (rows, b), (b, b)
        if nm is None:
            count = _block_count(prune, d, start, end)
            kept[:, start:end] &= _lowest_pruned(block, block_inv.diagonal(), kept[:, start:end], count)
        errors = torch.zeros_like(block)  # (rows, b)
        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:
                local, group = slice(i, i + nm[1]), slice(start + i, start + i + nm[1])
                kept[:, group] &= _nm_keep(block[:, local], block_inv.diagonal()[local], kept[:, group], nm)
            column = block[:, i]  # (rows,)
            target = column * kept[:, start + i]
            errors[:, i] = (column - target) / block_inv[i, i]
            block[:, i:] -= errors[:, i : i + 1] * block_inv[i, i:][None]
            block[:, i] = target
        w[:, start:end] = block
        w[:, end:] -= errors @ hinv[start:end, end:]
    return kept, (w * kept).to(weight.dtype)


def _block_count(prune: int, d: int, start: int, end: int) -> int:
    """The block's share of the prune count, by cumulative rounding (the shares sum to `prune`)."""
    return round(prune * end / d) - round(prune * start / d)


def _saliency(block: torch.Tensor, inv_diag: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """OBS saliency w^2 / U_jj^2 (U_jj^2 = [H_F^-1]_jj); weights pruned before score -1 so they go first."""
    return torch.where(kept, block.pow(2) / inv_diag.pow(2)[None], torch.full_like(block, -1.0))


def _lowest_pruned(block: torch.Tensor, inv_diag: torch.Tensor, kept: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask of a block with its `count` lowest-saliency weights (over all rows) pruned."""
    keep = torch.ones_like(kept)
    if count > 0:
        lowest = torch.topk(_saliency(block, inv_diag, kept).flatten(), count, largest=False).indices
        keep.view(-1)[lowest] = False
    return keep


def _nm_keep(group: torch.Tensor, inv_diag: torch.Tensor, kept: torch.Tensor, nm: tuple[int, int]) -> torch.Tensor:
    """Keep-mask of one group of M columns: the M - N lowest-saliency weights of each row pruned."""
    n, m = nm
    keep = torch.ones_like(kept)
    if m > n:
        keep.scatter_(1, torch.topk(_saliency(group, inv_diag, kept), m - n, dim=1, largest=False).indices, False)
    return keep


@register_mask_method(
    "sparsegpt", in_loop=True, summary="SparseGPT: OBS updates column by column on the pruned path (moves weights)"
)
def sparsegpt_choice(problem: LayerProblem) -> MaskChoice:
    return MaskChoice(*sparsegpt_layer(problem))


def sparsegpt_layer(problem: LayerProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one Linear/Conv2d layer of the loop, per group, on the pruned path's input columns:
    (keep-mask, weights), both shaped like the layer's weight."""
    module, weight = problem.module, problem.dense_weight
    groups = module.groups if isinstance(module, nn.Conv2d) else 1
    gram, cross, _ = problem.grams  # (groups, d, d), (groups, d, out/g)
    rows = layer_start(problem, gram, cross)  # (groups, out/g, d)
    prior = None if problem.prior is None else problem.prior.reshape(rows.shape)
    order = column_order(weight) if problem.nm else torch.arange(rows.shape[-1], device=weight.device)  # (d,)
    prune = weight.numel() - problem.keep if problem.nm is None else None
    masks, weights = [], []
    for g in range(groups):
        share = None if prune is None else round(prune * (g + 1) / groups) - round(prune * g / groups)
        keep, solved = sparsegpt_prune(
            rows[g][:, order],
            2 * gram[g][order][:, order],
            prune=share,
            nm=problem.nm,
            prior=None if prior is None else prior[g][:, order],
        )
        inverse = torch.argsort(order)
        masks.append(keep[:, inverse])
        weights.append(solved[:, inverse])
    mask = torch.stack(masks).reshape(weight.shape)
    return mask, torch.stack(weights).reshape(weight.shape).to(weight.dtype)
