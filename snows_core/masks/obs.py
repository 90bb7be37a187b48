"""The Optimal Brain Surgeon algebra that SparseGPT and OBC share (Hassibi & Stork 1993; Frantar & Alistarh).

Both minimise a layer's part of the SNOWS objective row by row, (w - w*) H (w - w*)^T with H = 2 X X^T +
lambda I, X the layer's input columns on the pruned path (im2col columns per group for a conv):
- `damped_hessian`: H with lambda = 1% of its mean diagonal (`RELATIVE_DAMPING`, as the papers) and the
  dead inputs (zero diagonal) made invertible;
- `layer_start`: w*, where the rows start: the dense weights when the pruned and dense paths agree, else
  the dense-target least-squares fit `least_squares_start`, or a later pass's reconstructed weights;
- `column_order`: a conv's im2col columns in (kernel row, kernel column, input channel) order, so that N:M
  groups run along input channels like every N:M mask of this library.
"""

from __future__ import annotations

import torch

from snows_core.engine.problem import LayerProblem

__all__ = ["RELATIVE_DAMPING", "damped_hessian", "layer_start", "column_order", "least_squares_start"]

RELATIVE_DAMPING = 0.01  # lambda = 1% of the mean diagonal of H, as the paper


def damped_hessian(hessian: torch.Tensor, relative_damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """H (..., d, d) in float64 with lambda = `relative_damping` x its mean diagonal added, and the dead inputs
    (zero diagonal: always zero, they carry no information), whose diagonal is set to 1 first so H stays
    invertible: (damped H, dead (..., d))."""
    h = hessian.detach().to(torch.float64).clone()
    diagonal = h.diagonal(dim1=-2, dim2=-1)  # (..., d), a view
    dead = diagonal == 0
    diagonal.add_(dead.double())
    diagonal.add_(relative_damping * diagonal.mean(-1, keepdim=True))
    return h, dead


def layer_start(problem: LayerProblem, gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """The weights an in-loop method starts from, (groups, out/g, d) float64: a later pass's reconstructed
    weights, else W* (the dense weights when the two paths agree)."""
    start = problem.start
    weight = problem.dense_weight if start is None else start
    groups = gram.shape[0]
    rows = weight.reshape(groups, weight.shape[0] // groups, -1).double()  # (groups, out/g, d)
    if start is not None or problem.x_reference is problem.x or torch.equal(problem.x_reference, problem.x):
        return rows
    return torch.stack([least_squares_start(rows[g], gram[g], cross[g]) for g in range(groups)])


def column_order(weight: torch.Tensor) -> torch.Tensor:
    """Column permutation putting a conv's im2col columns in (kernel row, kernel column, input channel) order."""
    if weight.dim() == 2:
        return torch.arange(weight.shape[1], device=weight.device)
    c, kh, kw = weight.shape[1:]
    return torch.arange(c * kh * kw, device=weight.device).view(c, kh, kw).permute(1, 2, 0).flatten()  # (d,)


def least_squares_start(rows: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """W* = W_dense (C + lambda I)(G + lambda I)^-1, minimising ||W X - W_dense X_t||^2 + lambda ||W - W_dense||^2
    (C = X_t X^T; `cross` is C^T W_dense^T, (d, out/g))."""
    ridge = RELATIVE_DAMPING * gram.diagonal().mean()  # H = 2G is damped by 2 ridge: the same lambda
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(gram + ridge * eye)  # (d, d)
    if info:
        return rows
    # (G + lambda I) W*^T = X X_t^T W_dense^T + lambda W_dense^T, where X X_t^T W_dense^T is input_grams' cross
    return torch.cholesky_solve(cross + ridge * rows.T, factor).T  # (out/g, d)
