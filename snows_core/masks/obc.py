"""Optimal Brain Compression (Frantar & Alistarh, NeurIPS 2022): exact OBS, one weight at a time per row.

A layer's output rows are independent under the loss (w - w*) H (w - w*)^T, H = 2 X X^T + lambda I, X the
layer's input columns. For one row, pruning input p with the others re-fitted optimally costs

    L_p = w_p^2 / [H^-1]_pp,   and the re-fit is   w -= w_p / [H^-1]_pp  [H^-1]_{p,:}

(Optimal Brain Surgeon, Hassibi & Stork 1993). OBC prunes each row greedily, cheapest weight first, and
takes p out of the inverse by a rank-one downdate, H^-1 -= [H^-1]_{:,p} [H^-1]_{p,:} / [H^-1]_pp: no
matrix is re-inverted, and every step sees the exact inverse of what is left. SparseGPT
(`snows_core.masks.sparsegpt`) fixes the column order instead so that all rows share one inverse; OBC pays
O(d^3) per row for choosing freely.

Here: rows run as a batch, (rows, a, a), the a inputs still alive gathered to the front whenever a quarter
of them have gone (the work shrinks with the square of what is left: about d^3 / 3 per row, not d^3).
How many weights each row loses is OBC's global selection within the layer: every row is pruned all
the way with its step losses recorded, the layer's prune count goes to the smallest step losses over all
rows, and a row loses as many weights as it has steps among them. For N:M a row prunes M - N of every
group of M, a weight no longer eligible once its group has lost M - N. Weights pruned by an earlier pass
(`prior`) are removed first, jointly, and take no part in the selection.

Once a row's mask is known its weights are the exact minimiser on it, w_K = [H_KK]^-1 (w* H)_K (K the
kept inputs): where the greedy trajectory ends in exact arithmetic, without storing the trajectory.

The objective, its start w* (the dense-target fit on the pruned path; in a later pass of a gradual
schedule, the reconstructed weights) and the damping (lambda = 1% of the mean diagonal) are SparseGPT's,
as are the im2col columns per group and the N:M column order for convs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from snows_core.engine.columns import solve_on_kept
from snows_core.engine.problem import LayerProblem
from snows_core.masks.method import MaskChoice, register_mask_method
from snows_core.masks.obs import RELATIVE_DAMPING, column_order, damped_hessian, layer_start

__all__ = ["obc_prune", "obc_layer", "obc_choice", "obc_unsupported", "MAX_COLUMNS"]

MAX_COLUMNS = 1024  # O(d^3) per row: a layer with more input columns per group is SparseGPT's job
_CHUNK_BYTES = 2**28  # the batched inverses of one chunk of rows, (c, d, d) float64, stay under 256 MB


def obc_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    prune: int | None = None,
    nm: tuple[int, int] | None = None,
    prior: torch.Tensor | None = None,
    relative_damping: float = RELATIVE_DAMPING,
    row_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune `prune` weights of `weight` (rows, d) (or N of every M columns per row) by exact OBS per row.

    Args:
        weight: (rows, d), w*: the weights to start from.
        hessian: (d, d), H = 2 X X^T of the layer's input columns (undamped; scale does not matter), or
            (groups, d, d), the rows split evenly over the groups in order (a grouped conv's).
        prune: how many weights to zero in all (unstructured); exactly this many are.
        nm: (N, M) to keep N of every M consecutive columns in each row instead (d a multiple of M).
        prior: bool (rows, d), True = still kept: weights already pruned stay pruned.
        relative_damping: lambda as a fraction of each group's mean diagonal of H.
        row_weights: (rows,) > 0, what a unit of each row's loss costs in the global selection (None: 1 each;
            `snows_core.masks.window_obc` weighs rows by the K-window's curvature).

    Returns:
        (mask, weight): bool (rows, d) with True = kept, and the re-fitted weights, zero where pruned.
    """
    if (prune is None) == (nm is None):
        raise ValueError("give exactly one of prune (a count) or nm (an N:M pattern)")
    rows, d = weight.shape
    h, dead = damped_hessian(hessian.reshape(-1, d, d), relative_damping)  # (groups, d, d), (groups, d)
    groups = h.shape[0]
    group_of_row = torch.arange(rows, device=weight.device) // (rows // groups)  # (rows,)
    w = weight.detach().to(torch.float64) * ~dead[group_of_row]  # (rows, d)
    target = (w.view(groups, rows // groups, d) @ h).view(rows, d)  # w* H, so that w_K = [H_KK]^-1 (w* H)_K
    kept = torch.ones(rows, d, dtype=torch.bool, device=w.device) if prior is None else prior.clone()
    order, losses = _greedy_removals(target, h, group_of_row, kept, nm)  # (rows, steps), (rows, steps)
    if nm is None:
        extra = prune - int((~kept).sum())
        if not 0 <= extra <= int(torch.isfinite(losses).sum()):
            raise ValueError(f"cannot prune {prune} of {rows * d} weights with {int((~kept).sum())} pruned before")
        chosen = torch.zeros(losses.numel(), dtype=torch.bool, device=w.device)
        costs = losses if row_weights is None else losses * row_weights.to(losses)[:, None]  # (rows, steps)
        chosen[torch.topk(costs.flatten(), extra, largest=False).indices] = True
        counts = chosen.view(losses.shape).sum(1)  # (rows,)
    else:
        counts = torch.isfinite(losses).sum(1)  # (rows,): every eligible weight goes
    steps = torch.arange(order.shape[1], device=w.device)
    taken = steps[None] < counts[:, None]  # (rows, steps); a row's padding (order -1) is never taken
    removed = torch.zeros(rows, d + 1, dtype=torch.bool, device=w.device).scatter_(1, order + 1, taken)[:, 1:]
    kept &= ~removed
    return kept, solve_on_kept(h, group_of_row, kept.double(), target).to(weight.dtype)


def _greedy_removals(
    target: torch.Tensor, h: torch.Tensor, group_of_row: torch.Tensor, kept: torch.Tensor, nm: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row pruned greedily, cheapest OBS loss first, after its `kept`-False weights went jointly (rows
    given by `target` = w* H): (order, losses), the column removed at each step and its loss (-1 and inf once a
    row has nothing left)."""
    rows, d = target.shape
    chunk = max(1, _CHUNK_BYTES // (8 * d * d))
    parts = [
        _greedy_chunk(target[i : i + chunk], h[group_of_row[i : i + chunk]], kept[i : i + chunk], nm)
        for i in range(0, rows, chunk)
    ]
    steps = max(order.shape[1] for order, _ in parts)
    pad = lambda t, value: torch.nn.functional.pad(t, (0, steps - t.shape[1]), value=value)  # noqa: E731
    return torch.cat([pad(o, -1) for o, _ in parts]), torch.cat([pad(loss, float("inf")) for _, loss in parts])


def _greedy_chunk(
    target: torch.Tensor, h: torch.Tensor, kept: torch.Tensor, nm: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_greedy_removals` for a chunk of rows, each with its own H (c, d, d)."""
    c, d = target.shape
    rows = torch.arange(c, device=target.device)
    cols, live = _compact(kept, kept)  # (c, a): each row's alive inputs first
    sub = _principal(h, cols)  # (c, a, a)
    both = live[:, :, None] & live[:, None, :]  # (c, a, a)
    sub = torch.where(both, sub, torch.diag_embed((~live).double()))  # pruned-before inputs decouple
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(sub)) * both  # (c, a, a): the inverse on the alive inputs
    w = (hinv @ target.gather(1, cols)[:, :, None])[..., 0]  # (c, a): the re-fit on them, [H_AA]^-1 (w* H)_A
    pruned_in_group = None if nm is None else (~kept).view(c, d // nm[1], nm[1]).sum(2)  # (c, d/M)
    orders, losses = [], []
    while True:
        candidate = live if nm is None else live & (pruned_in_group.gather(1, cols // nm[1]) < nm[1] - nm[0])
        diag = hinv.diagonal(dim1=1, dim2=2)  # (c, a)
        score = torch.where(candidate, w.pow(2) / diag, torch.full_like(w, float("inf")))  # OBS loss, x2
        best, p = score.min(1)  # (c,), (c,)
        active = torch.isfinite(best)
        if not active.any():
            break
        orders.append(torch.where(active, cols[rows, p], -1))
        losses.append(best)
        column = hinv[rows, :, p]  # (c, a): [H^-1]_{:,p}
        step = torch.where(active, 1.0 / diag[rows, p], 0.0)  # a row with nothing left stands still
        w -= (w[rows, p] * step)[:, None] * column
        hinv.baddbmm_(column[:, :, None], (column * step[:, None])[:, None, :], alpha=-1.0)
        w[rows, p] = torch.where(active, 0.0, w[rows, p])
        live[rows, p] &= ~active
        if pruned_in_group is not None:
            pruned_in_group[rows, cols[rows, p] // nm[1]] += active.long()
        if int(live.sum(1).max()) <= 3 * live.shape[1] // 4:
            cols, w, hinv, live = _shrink(cols, w, hinv, live)
    if not orders:
        return torch.empty(c, 0, dtype=torch.long, device=w.device), torch.empty(c, 0, dtype=w.dtype, device=w.device)
    return torch.stack(orders, 1), torch.stack(losses, 1)


def _compact(keep: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's positions with `keep` first, as many as the fullest row has: (positions, values there)."""
    width = max(1, int(keep.sum(1).max()))
    positions = torch.argsort(keep.to(torch.uint8), dim=1, descending=True, stable=True)[:, :width]  # (c, width)
    return positions, values.gather(1, positions)


def _shrink(
    cols: torch.Tensor, w: torch.Tensor, hinv: torch.Tensor, live: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop the removed inputs: the alive ones of every row gathered to the front, (c, a) -> (c, a')."""
    slots, live = _compact(live, live)  # (c, a')
    return cols.gather(1, slots), w.gather(1, slots), _principal(hinv, slots), live


def _principal(m: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Each row's principal submatrix: m (c, d, d) at rows and columns idx (c, a) -> (c, a, a)."""
    a = idx.shape[1]
    return m.gather(1, idx[:, :, None].expand(-1, -1, m.shape[2])).gather(2, idx[:, None, :].expand(-1, a, -1))


def obc_unsupported(module: nn.Module) -> str | None:
    """Why OBC will not take this layer (None when it will): too many input columns per group."""
    d = module.weight[0].numel()  # in/groups x kh x kw for a conv, in for a Linear
    if d > MAX_COLUMNS:
        return f"it has {d} input columns per group; obc costs O(d^3) per row and takes at most {MAX_COLUMNS}"
    return None


@register_mask_method(
    "obc",
    in_loop=True,
    unsupported=obc_unsupported,
    summary="OBC: exact OBS one weight at a time per row on the pruned path (moves weights; small layers)",
)
def obc_choice(problem: LayerProblem) -> MaskChoice:
    return MaskChoice(*obc_layer(problem))


def obc_layer(
    problem: LayerProblem, row_weights: torch.Tensor | None = None, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """OBC on one Linear/Conv2d layer of the loop, on the pruned path's input columns, with the global
    selection over all the layer's rows (each row's losses times `row_weights`, (out,), when given), from
    `rows` (W*, `layer_start`'s (groups, out/g, d), when the caller has it): (keep-mask, weights), both shaped
    like the layer's weight."""
    weight = problem.dense_weight
    gram, cross, _ = problem.grams  # (groups, d, d), (groups, d, out/g)
    rows = layer_start(problem, gram, cross) if rows is None else rows  # (groups, out/g, d)
    order = column_order(weight) if problem.nm else torch.arange(rows.shape[-1], device=weight.device)  # (d,)
    prior = None if problem.prior is None else problem.prior.reshape(weight.shape[0], -1)[:, order]
    keep, solved = obc_prune(
        rows.reshape(weight.shape[0], -1)[:, order],
        2 * gram[:, order][:, :, order],
        prune=weight.numel() - problem.keep if problem.nm is None else None,
        nm=problem.nm,
        prior=prior,
        row_weights=row_weights,
    )
    inverse = torch.argsort(order)
    return keep[:, inverse].reshape(weight.shape), solved[:, inverse].reshape(weight.shape).to(weight.dtype)
