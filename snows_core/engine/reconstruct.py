"""Reconstruction of one masked layer: none, closed-form least squares, or SNOWS Newton-CG.

A reconstruction reads a masked `LayerProblem` (`snows_core.engine.problem`): the objective

    L(W) = sum_{t=0..K} mean((o_t(W) - o_t(W_dense))^2),   W = 0 outside the mask,

over the layer's K-window on the calibration set, and its starting point: the dense weight times the mask,
or the weights the mask method left (SparseGPT's, or an earlier pass's reconstruction under the new,
nested mask).

Registered methods (`register_reconstruction`, one factory `get_reconstruction`):
- ``none``: the starting point (W = W_dense * Z for scored masks).
- ``lstsq``: the K=0 problem in closed form, per output channel: (G_SS + lambda I) w_S = (G w_dense)_S
  with G the Gram matrix of the layer's input columns. lambda = damping * numel(o_0) / 2 is the same
  damping SNOWS adds to its Hessian, in the same units.
- ``snows``: optional lstsq warm start ("MP+"; when the starting point is not the plain masked dense
  weight, whichever of the two has the lower loss), then Newton steps on mini-batches: CG on the free
  weights for the direction (preconditioned, with `preconditioner="gram"`, by the exact Hessian of the
  layer's own output term: `gram_preconditioner`), Armijo backtracking for the step; stop after
  `newton_passes` passes or when each of 3 successive steps improves the loss by under 0.5%; keep the best
  iterate.

No method ends above the lower of the mask-only loss and the starting point's loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from snows_core.engine.columns import KeptFactors, row_groups, solve_on_kept
from snows_core.engine.problem import LayerProblem
from snows_core.engine.solver import (
    CGResult,
    LineSearch,
    armijo_backtracking,
    cg_trace,
    conjugate_gradient,
    exact_curvature,
    gauss_newton_curvature,
    loss_and_gradient,
    tangent_curvature,
)
from snows_core.engine.tangent import TangentProgram
from snows_core.events import EventSink, NewtonStep
from snows_core.registry import Registry

if TYPE_CHECKING:  # the config validates names against this module's registry: no import at run time
    from snows_core.config import PruneConfig

__all__ = [
    "Solution",
    "register_reconstruction",
    "get_reconstruction",
    "list_reconstructions",
    "lstsq_weight",
]

STALL_IMPROVEMENT = 0.005  # a step improving the loss by less than 0.5% ...
STALL_STEPS = 3  # ... this many times in a row ends the layer
CURVATURE_PRODUCTS = {"exact": exact_curvature, "gauss-newton": gauss_newton_curvature}
PRECONDITIONER_IMAGES = 64  # images whose input Gram shapes the CG preconditioner (when no Gram is at hand)
FACTOR_BYTES = 1 << 28  # past this much of Cholesky factors, the preconditioner keeps their diagonals only


@dataclass
class Solution:
    """A reconstructed weight and what it took."""

    weight: torch.Tensor
    loss: float
    newton_steps: int = 0
    cg_iters: int = 0
    loss_warm: float | None = None


Reconstruction = Callable[[LayerProblem, "PruneConfig", EventSink], Solution]
_RECONSTRUCTIONS: Registry[Reconstruction] = Registry("reconstruction", ordered=True)


def register_reconstruction(name: str) -> Callable[[Reconstruction], Reconstruction]:
    """Decorator registering `fn(problem, config, emit) -> Solution` under `name`."""
    return _RECONSTRUCTIONS.decorator(name)


get_reconstruction = _RECONSTRUCTIONS.get
list_reconstructions = _RECONSTRUCTIONS.names  # in registration order (simplest first)


@register_reconstruction("none")
def mask_only(problem: LayerProblem, config: PruneConfig, emit: EventSink) -> Solution:
    return Solution(problem.start_weight, problem.start_loss)


@register_reconstruction("lstsq")
def least_squares(problem: LayerProblem, config: PruneConfig, emit: EventSink) -> Solution:
    weight = lstsq_weight(problem, problem.mask, config.damping)
    return _no_worse_than_start(problem, Solution(weight, problem.loss(weight)))


@register_reconstruction("snows")
def snows(problem: LayerProblem, config: PruneConfig, emit: EventSink) -> Solution:
    start = mask_only(problem, config, emit)
    if config.warm_start:
        warm = least_squares(problem, config, emit)
        start = min(warm, start, key=lambda s: s.loss) if problem.moved else warm
    solution = newton_cg(problem, config, start, emit)
    solution.loss_warm = start.loss if config.warm_start or problem.moved else None
    return _no_worse_than_start(problem, solution)


def _no_worse_than_start(problem: LayerProblem, solution: Solution) -> Solution:
    """The solution, or the better of the mask-only and starting weights when it is worse than both."""
    fallback = min(
        (problem.start_loss, problem.start_weight),
        (problem.mask_loss, problem.dense_weight * problem.mask),
        key=lambda pair: pair[0],
    )
    if solution.loss > fallback[0]:
        return Solution(fallback[1], fallback[0], solution.newton_steps, solution.cg_iters, solution.loss_warm)
    return solution


def newton_cg(problem: LayerProblem, config: PruneConfig, start: Solution, emit: EventSink) -> Solution:
    """Alg. 1 of SNOWS: Newton-CG passes over mini-batches with Armijo steps, keeping the best iterate."""
    curvature = CURVATURE_PRODUCTS[config.curvature]
    if isinstance(problem.tangent, TangentProgram):
        curvature = tangent_curvature  # J^T D J, here both the Gauss-Newton and the exact products
    precondition = gram_preconditioner(problem, config.damping) if config.preconditioner == "gram" else None
    free = start.weight[problem.mask]  # (n_free,)
    best = Solution(start.weight, start.loss)
    generator = torch.Generator().manual_seed(config.seed)
    n_batches = len(problem.batches())
    steps, cg_total, stalled = 0, 0, 0
    for _ in range(config.newton_passes):
        for batch in problem.batches(torch.randperm(n_batches, generator=generator)):
            tic = time.perf_counter()
            curvature_batch = _curvature_batch(batch, config.curvature_fraction, generator)
            free, loss, cg, search = _newton_step(
                problem, config, curvature, free, batch, curvature_batch, precondition=precondition
            )
            new_loss = search.loss
            steps, cg_total = steps + 1, cg_total + cg.iters
            emit(
                NewtonStep(
                    problem.name,
                    steps,
                    loss,
                    new_loss,
                    cg.iters,
                    cg_residual=cg.residual,
                    step_size=search.alpha,
                    seconds=time.perf_counter() - tic,
                    cg_stop=cg.stop,
                    cg_trace=cg_trace(cg),
                    line_search=[[float(f"{a:.4g}"), float(f"{v:.6g}"), int(ok)] for a, v, ok in search.trials],
                )
            )
            stalled = stalled + 1 if loss - new_loss < STALL_IMPROVEMENT * loss else 0
            if stalled >= STALL_STEPS:
                break
        pass_loss = new_loss if n_batches == 1 else problem.loss(problem.weight_of(free))
        if pass_loss < best.loss:
            best = Solution(problem.weight_of(free), pass_loss)
        if stalled >= STALL_STEPS:
            break
    return Solution(best.weight, best.loss, steps, cg_total)


# Fused attention kernels have no second derivative; the math kernel is made of differentiable ops.
@sdpa_kernel([SDPBackend.MATH])
def _newton_step(
    problem: LayerProblem,
    config: PruneConfig,
    curvature: Callable,
    free: torch.Tensor,
    batch: slice,
    curvature_batch: slice | torch.Tensor,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, float, CGResult, LineSearch]:
    """One Newton step on `batch`: gradient there, curvature products on `curvature_batch` (the batch
    itself, or a sub-sample of its images: Martens 2010), (preconditioned) CG for the direction, Armijo for
    the step. Returns the new free weights, the loss before, the CG solve and the line search."""
    curv = curvature(
        lambda w: problem.taps(problem.weight_of(w), curvature_batch),
        [t[curvature_batch] for t in problem.reference],
        free,
        layer_of=lambda w: problem.layer_output(problem.weight_of(w), curvature_batch),
        window_of=lambda z: problem.window_taps(z, curvature_batch),
        linear_layer_of=lambda w: problem.linear_output(problem.weight_of(w), curvature_batch),
        window_at=lambda z: problem.window_at(z, curvature_batch),
    )
    loss, grad = curv.loss, curv.grad
    if curvature_batch is not batch:
        wanted = [t[batch] for t in problem.reference]
        loss, grad = loss_and_gradient(lambda w: problem.taps(problem.weight_of(w), batch), wanted, free)
    cg = conjugate_gradient(
        curv.hvp,
        -grad,
        max_iters=config.cg_iters,
        tol=config.cg_tol,
        damping=config.damping,
        relative=config.targets != "official",
        precondition=precondition,
    )
    direction = cg.x.detach()
    search = armijo_backtracking(
        lambda a: problem.batch_loss(problem.weight_of(free + a * direction), batch),
        loss,
        grad.dot(direction).item(),
    )
    return free + search.alpha * direction, loss, cg, search


def gram_preconditioner(problem: LayerProblem, damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """M^-1 for CG on the free weights: per output row, (s G_SS + damping I)^-1 on the row's kept inputs S.

    s G (s = 2 / numel of the layer's output, G its input Gram) is the exact Hessian of the objective's first
    term, the layer's own output, and block-diagonal by output rows; the window's later taps add coupling
    between rows that CG handles. With the Gram on every image at hand (the warm start computed it) the rows'
    factors are the warm start's: s G_SS + damping I = s (G_SS + lambda I), lambda = damping / s, its ridge.
    Otherwise the Gram comes from at most PRECONDITIONER_IMAGES images, factored here. Past FACTOR_BYTES of
    factors (a ViT's wide layers at low sparsity) only their diagonals are used (Jacobi).
    """
    gram, numel = problem.input_gram(PRECONDITIONER_IMAGES)  # (groups, d, d) float64
    mask, index = problem.mask, problem.free_index
    keep = mask.reshape(mask.shape[0], -1).to(gram.dtype)  # (rows, d)
    group_of_row = row_groups(keep.shape[0], gram.shape[0], keep.device)  # (rows,)
    scale = 2.0 / numel
    if KeptFactors.footprint(keep) > FACTOR_BYTES:
        diagonal = scale * gram.diagonal(dim1=1, dim2=2)[group_of_row] + damping  # (rows, d)
        solve = lambda full: full / diagonal  # noqa: E731
    elif problem.has_full_gram and damping > 0:
        factors = problem.kept_factors(damping / scale)
        solve = lambda full: factors.solve(full) / scale  # noqa: E731
    else:
        solve = KeptFactors(gram * scale, group_of_row, keep, damping).solve

    def precondition(r: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(mask.numel(), dtype=gram.dtype, device=r.device).scatter(0, index, r.to(gram.dtype))
        return solve(full.view(keep.shape)).reshape(-1)[index].to(r.dtype)  # (n_free,)

    return precondition


def _curvature_batch(batch: slice, fraction: float, generator: torch.Generator) -> slice | torch.Tensor:
    """The images of `batch` that curvature products use: all of them, or a seeded random `fraction`."""
    size = batch.stop - batch.start
    keep = max(1, math.ceil(fraction * size))
    if keep >= size:
        return batch
    picked = torch.randperm(size, generator=generator)[:keep].sort().values  # (keep,)
    return picked + batch.start


def lstsq_weight(problem: LayerProblem, mask: torch.Tensor, damping: float) -> torch.Tensor:
    """Per output channel, ridge least squares on the kept inputs matching the dense layer's output.

    Minimises ||X w_S - X_t w_dense||^2 + lambda ||w_S||^2 for every output row, X the input columns
    on the pruned path and X_t those that produced the target (the same X, or the dense path's):
    (G_SS + lambda I) w_S = (C w_dense)_S with G = X^T X, C = X^T X_t (im2col columns for a conv,
    per group; the problem's `grams`) and lambda = damping * numel(output) / 2.
    """
    gram, cross, numel_out = problem.grams
    dense_weight = problem.dense_weight
    rows = dense_weight.reshape(dense_weight.shape[0], -1).to(gram.dtype)  # (out, d)
    keep = mask.reshape(rows.shape).to(gram.dtype)  # (out, d)
    ridge = damping * numel_out / 2
    target = cross.transpose(1, 2).reshape(rows.shape)  # (out, d): C w, per group
    if mask is problem.mask and ridge > 0 and KeptFactors.footprint(keep) <= FACTOR_BYTES:
        solved = problem.kept_factors(ridge).solve(target)  # (out, d): factors the preconditioner reuses
    else:  # chunk by chunk, nothing kept; a singular system (no ridge) by its pseudo-inverse
        solved = solve_on_kept(gram, row_groups(rows.shape[0], gram.shape[0], rows.device), keep, target, ridge)
    return solved.reshape(dense_weight.shape).to(dense_weight.dtype)
