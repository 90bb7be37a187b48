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
of them have gone (the work shrinks with the square of what is left: about d^3 / 3 per row, not d^3). The
rank-one downdates are gathered 32 at a time (H^-1 - V V^T, one step's column read through V) and applied as
one batched product: the same arithmetic, a 32nd of the passes over the inverses (2.3x faster on 576 columns).
How many weights each row loses is OBC's global selection within the layer: every row is pruned all
the way with its step losses recorded, the layer's prune count goes to the smallest step losses over all
rows, and a row loses as many weights as it has steps among them. For N:M a row prunes M - N of every
group of M, a weight no longer eligible once its group has lost M - N. Weights pruned by an earlier pass
(`prior`) are removed first, jointly, and take no part in the selection.

Once a row's mask is known its weights are the exact minimiser on it, w_K = [H_KK]^-1 (w* H)_K (K the
kept inputs): where the greedy trajectory ends in exact arithmetic, without storing the trajectory.

A layer wider than `MAX_COLUMNS` input columns per group (ResNet-50's 3x3x512 convs: 4608; a ViT-B MLP's
fc2: 3072) goes in blocks of columns, in order: exact OBC on each block with the later columns re-fitted to
its choices through the upper Cholesky factor of H^-1, as SparseGPT does column by column (`_obc_blocked`).

The objective, its start w* (the dense-target fit on the pruned path; in a later pass of a gradual
schedule, the reconstructed weights) and the damping (lambda = 1% of the mean diagonal) are SparseGPT's,
as are the im2col columns per group and the N:M column order for convs.
"""

from __future__ import annotations

import itertools

import torch

from snows_core.engine.columns import row_groups, solve_on_kept
from snows_core.engine.problem import LayerProblem
from snows_core.masks.method import MaskChoice, register_mask_method
from snows_core.masks.obs import RELATIVE_DAMPING, column_order, damped_hessian, layer_start

__all__ = ["obc_prune", "obc_layer", "obc_choice", "rows_per_chunk", "MAX_COLUMNS"]

MAX_COLUMNS = 1024  # O(d^3) per row: a wider layer goes in blocks of at most this many columns
_CHUNK_BYTES = 2**28  # the batched inverses of one chunk of rows, (c, d, d) float64, stay under 256 MB
_LAZY = 32  # rank-one downdates gathered before they touch the inverses (memory traffic / 32, same flops)


def obc_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    prune: int | None = None,
    nm: tuple[int, int] | None = None,
    prior: torch.Tensor | None = None,
    relative_damping: float = RELATIVE_DAMPING,
    row_weights: torch.Tensor | None = None,
    max_columns: int = MAX_COLUMNS,
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
        max_columns: the widest d solved with one inverse per row; a wider layer goes in blocks of columns
            (`_obc_blocked`).

    Returns:
        (mask, weight): bool (rows, d) with True = kept, and the re-fitted weights, zero where pruned.
    """
    if (prune is None) == (nm is None):
        raise ValueError("give exactly one of prune (a count) or nm (an N:M pattern)")
    rows, d = weight.shape
    h, dead = damped_hessian(hessian.reshape(-1, d, d), relative_damping)  # (groups, d, d), (groups, d)
    groups = h.shape[0]
    group_of_row = row_groups(rows, groups, weight.device)  # (rows,)
    w = weight.detach().to(torch.float64) * ~dead[group_of_row]  # (rows, d)
    kept = torch.ones(rows, d, dtype=torch.bool, device=w.device) if prior is None else prior.clone()
    extra = None  # N:M: every row prunes M - N of each group, no count to share out
    if nm is None:
        extra = prune - int((~kept).sum())
        if not 0 <= extra <= int(kept.sum()):
            raise ValueError(f"cannot prune {prune} of {rows * d} weights with {int((~kept).sum())} pruned before")
    if d <= max_columns:
        kept, w = _obc_exact(w, h, group_of_row, kept, extra, nm=nm, row_weights=row_weights)
    else:
        kept, w = _obc_blocked(w, h, group_of_row, kept, extra, nm=nm, row_weights=row_weights, max_columns=max_columns)
    return kept, w.to(weight.dtype)


def _obc_exact(
    w: torch.Tensor,
    h: torch.Tensor,
    group_of_row: torch.Tensor,
    kept: torch.Tensor,
    extra: int | None,
    nm: tuple[int, int] | None,
    row_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OBC on all of `w` (rows, d) at once under the damped `h` (groups, d, d): `extra` more weights pruned by
    the global selection (None: N:M), (kept, re-fitted weights in float64)."""
    rows, d = w.shape
    groups = h.shape[0]
    target = (w.view(groups, rows // groups, d) @ h).view(rows, d)  # w* H, so that w_K = [H_KK]^-1 (w* H)_K
    kept = kept.clone()
    order, losses = _greedy_removals(target, h, group_of_row, kept, nm)  # (rows, steps), (rows, steps)
    if nm is None:
        if extra > int(torch.isfinite(losses).sum()):
            raise ValueError(f"cannot prune {extra} more of {int(kept.sum())} kept weights")
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
    return kept, solve_on_kept(h, group_of_row, kept.double(), target)


def _obc_blocked(
    w: torch.Tensor,
    h: torch.Tensor,
    group_of_row: torch.Tensor,
    kept: torch.Tensor,
    extra: int | None,
    nm: tuple[int, int] | None,
    row_weights: torch.Tensor | None,
    max_columns: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked OBC for a layer too wide for one inverse per row: exact OBC on one block of columns at a time,
    in order, the later columns re-fitted to every choice (SparseGPT's order, over blocks of columns).

    With the earlier blocks fixed and F = (block b, later columns L) free, the loss of a change d_b of the
    block, the later columns re-fitted, is d_b ([H_F^-1]_bb)^-1 d_b^T, and the re-fit is d_L = d_b U_bb^-1 U_bL,
    U the upper Cholesky factor of H^-1 (H_F^-1 = U_FF^T U_FF, so its blocks are U's). So block b is exactly
    OBC with the inverse Hessian [H_F^-1]_bb = U_bb^T U_bb. How many weights each block loses is chosen first,
    globally (`_block_shares`). One block (d <= max_columns) is `_obc_exact`.
    """
    rows, d = w.shape
    groups = h.shape[0]
    step = nm[1] if nm else 1  # blocks hold whole N:M groups
    n_blocks = -(-d // (max_columns // step * step))
    width = -(-d // (n_blocks * step)) * step  # as equal as whole groups allow, at most max_columns
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))  # (groups, d, d)
    u = torch.linalg.cholesky(hinv, upper=True)  # (groups, d, d): H^-1 = U^T U
    w, kept = w.clone(), kept.clone()
    bounds = [*range(0, d, width), d]
    shares = (
        None
        if extra is None
        else _block_shares(w, hinv, group_of_row, kept, extra, bounds=bounds, row_weights=row_weights)
    )
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        u_bb = u[:, a:b, a:b]  # (groups, bw, bw)
        eye = torch.eye(b - a, dtype=u.dtype, device=u.device)
        u_inv = torch.linalg.solve_triangular(u_bb, eye, upper=True)  # (groups, bw, bw): U_bb^-1
        h_block = u_inv @ u_inv.mT  # (groups, bw, bw): ([H_F^-1]_bb)^-1
        share = None if extra is None else shares[i]
        kept[:, a:b], solved = _obc_exact(
            w[:, a:b], h_block, group_of_row, kept[:, a:b], share, nm=nm, row_weights=row_weights
        )
        change = (solved - w[:, a:b]).view(groups, rows // groups, b - a)  # (groups, rows/g, bw)
        w[:, a:b] = solved
        if b < d:
            w[:, b:] += (change @ u_inv @ u[:, a:b, b:]).view(rows, d - b)  # the later columns' re-fit
    return kept, w * kept


def _block_shares(
    w: torch.Tensor,
    hinv: torch.Tensor,
    group_of_row: torch.Tensor,
    kept: torch.Tensor,
    extra: int,
    bounds: list[int],
    row_weights: torch.Tensor | None,
) -> list[int]:
    """How many of `extra` each block of columns loses: OBC's global selection over every block's greedy
    trajectory with all other columns free (under ([H^-1]_bb)^-1, so that a step's loss counts what the whole
    row can re-fit, comparable across blocks); `hinv` is H^-1 (groups, d, d), as `_obc_blocked` has it."""
    rows = w.shape[0]
    costs = []
    for a, b in itertools.pairwise(bounds):
        h_free = torch.linalg.inv(hinv[:, a:b, a:b])  # (groups, bw, bw)
        target = (w[:, a:b].view(hinv.shape[0], rows // hinv.shape[0], b - a) @ h_free).view(rows, b - a)
        _, losses = _greedy_removals(target, h_free, group_of_row, kept[:, a:b].clone(), None)  # (rows, steps)
        costs.append((losses if row_weights is None else losses * row_weights.to(losses)[:, None]).flatten())
    if extra > int(sum(torch.isfinite(c).sum() for c in costs)):
        raise ValueError(f"cannot prune {extra} more of {int(kept.sum())} kept weights")
    block_of = torch.cat([torch.full((len(c),), i, device=w.device) for i, c in enumerate(costs)])
    chosen = block_of[torch.topk(torch.cat(costs), extra, largest=False).indices]
    return torch.bincount(chosen, minlength=len(costs)).tolist()


def rows_per_chunk(d: int) -> int:
    """How many rows of d alive inputs OBC's greedy pass holds at once: their inverses stay under 256 MB."""
    return max(1, _CHUNK_BYTES // (8 * d * d))


def _greedy_removals(
    target: torch.Tensor, h: torch.Tensor, group_of_row: torch.Tensor, kept: torch.Tensor, nm: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row pruned greedily, cheapest OBS loss first, after its `kept`-False weights went jointly (rows
    given by `target` = w* H): (order, losses), the column removed at each step and its loss (-1 and inf once a
    row has nothing left)."""
    rows, d = target.shape
    chunk = rows_per_chunk(d)
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
    diag = hinv.diagonal(dim1=1, dim2=2).clone()  # (c, a): [H^-1]_pp, kept current step by step
    pending = hinv.new_zeros(c, hinv.shape[1], _LAZY)  # (c, a, B): downdates v v^T not yet applied to hinv
    j = 0
    while True:
        candidate = live if nm is None else live & (pruned_in_group.gather(1, cols // nm[1]) < nm[1] - nm[0])
        score = torch.where(candidate, w.pow(2) / diag, torch.full_like(w, float("inf")))  # OBS loss, x2
        best, p = score.min(1)  # (c,), (c,)
        active = torch.isfinite(best)
        if not active.any():
            break
        orders.append(torch.where(active, cols[rows, p], -1))
        losses.append(best)
        column = hinv[rows, :, p] - (pending[:, :, :j] @ pending[rows, p, :j, None])[..., 0]  # (c, a): [H^-1]_{:,p}
        step = torch.where(active, 1.0 / diag[rows, p], 0.0)  # a row with nothing left stands still
        w -= (w[rows, p] * step)[:, None] * column
        v = column * step.sqrt()[:, None]  # (c, a): H^-1 -= v v^T, the rank-one downdate
        diag -= v.pow(2)
        pending[:, :, j] = v
        j += 1
        w[rows, p] = torch.where(active, 0.0, w[rows, p])
        live[rows, p] &= ~active
        if pruned_in_group is not None:
            pruned_in_group[rows, cols[rows, p] // nm[1]] += active.long()
        shrink = int(live.sum(1).max()) <= 3 * live.shape[1] // 4
        if j == _LAZY or shrink:  # B downdates at once: one batched product instead of B passes over hinv
            hinv.baddbmm_(pending[:, :, :j], pending[:, :, :j].mT, alpha=-1.0)
            diag, j = hinv.diagonal(dim1=1, dim2=2).clone(), 0
        if shrink:
            cols, w, hinv, live = _shrink(cols, w, hinv, live)
            diag, pending = hinv.diagonal(dim1=1, dim2=2).clone(), hinv.new_zeros(c, hinv.shape[1], _LAZY)
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


@register_mask_method(
    "obc",
    in_loop=True,
    summary="OBC: exact OBS one weight at a time per row on the pruned path (moves weights; wide layers in blocks "
    "of columns)",
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
