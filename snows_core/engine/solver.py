"""Hessian-free Newton on the free weights: curvature products, conjugate gradient, Armijo backtracking.

Everything here works on tensors and callables, never on modules (SNOWS, Lucas & Mazumder 2025,
Alg. 1). The objective for one mini-batch is

    L(w) = sum_t mean((f_t(w) - y_t)^2),   f_t = tap t of the window, y_t its reference value,

with w the flat vector of free (unmasked) weights. A Newton step solves (H + damping I) d = -g by CG
from d = 0 and then backtracks along d (alpha0 = 1, shrink 0.9, c = 1e-5, at most 50 tries; no step
if none passes).

Three curvature products, exact where it matters:
- ``exact``: H v by double backpropagation through the gradient graph, built once per Newton step.
- ``tangent_curvature``: J^T D J v through the window's tangent program (`snows_core.engine.tangent`); for a
  piecewise-linear window (ReLU CNNs) this is the exact H v, and the engine runs it for both curvature
  options there: nothing differentiated twice.
- ``gauss-newton``: J^T D J v, D = diag(2 / numel(y_t)). The window is z -> taps with z = layer(x, W)
  linear in W, so J v = J_g (layer(x, V) - layer(x, 0)) and J^T u = layer-vjp(J_g^T u). J_g is
  linearised once per Newton step (torch.func.linearize), so each product costs one tangent pass and
  one backward pass of the window, with no fresh forward. For piecewise-linear windows (ReLU, BN in
  eval mode, residual adds) this is the exact Hessian almost everywhere; elsewhere it is its PSD part.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "CGResult",
    "CG_STOPS",
    "TRACE_POINTS",
    "cg_trace",
    "LineSearch",
    "Curvature",
    "conjugate_gradient",
    "armijo_backtracking",
    "tap_loss",
    "loss_and_gradient",
    "exact_curvature",
    "tangent_curvature",
    "gauss_newton_curvature",
]

Taps = Sequence[torch.Tensor]


CG_STOPS = ("tolerance", "cap", "negative curvature", "zero gradient")  # why a CG solve ended
TRACE_POINTS = 64  # CG iterations a Newton step's event keeps (a 500-iteration official solve is thinned)


@dataclass
class CGResult:
    """Solution of (A + damping I) x = b; `residual` is ||b - (A + damping I) x|| / ||b||.

    The trace of the solve, one entry per iteration k = 1..iters: `residuals` (relative, as `residual`)
    and `decrease`, how far the quadratic model m(x) = x'(A + damping I)x / 2 - b'x has fallen from
    m(0) = 0 (a Newton step's predicted loss decrease); `stop` is one of CG_STOPS.
    """

    x: torch.Tensor
    iters: int
    residual: float
    residuals: list[float] = field(default_factory=list)
    decrease: list[float] = field(default_factory=list)
    stop: str = "cap"


def cg_trace(result: CGResult, points: int = TRACE_POINTS) -> list[list[float]]:
    """[iteration, residual, decrease] rows of a solve, 4 significant digits, at most `points` of them
    (evenly spaced, the last iteration always kept)."""
    n = len(result.residuals)
    keep = range(n) if n <= points else sorted({round(i * (n - 1) / (points - 1)) for i in range(points)})
    return [[i + 1, float(f"{result.residuals[i]:.4g}"), float(f"{result.decrease[i]:.4g}")] for i in keep]


class LineSearch(NamedTuple):
    """The accepted step (0 when none passed), the loss there, and every trial as (alpha, loss, accepted)."""

    alpha: float
    loss: float
    trials: list[tuple[float, float, bool]]


@dataclass
class Curvature:
    """Loss, gradient and a Hessian-vector product at one point, on the free weights."""

    loss: float
    grad: torch.Tensor  # (n_free,)
    hvp: Callable[[torch.Tensor], torch.Tensor]


def tap_loss(taps: Taps, reference: Taps) -> torch.Tensor:
    """Sum over taps of each tap's mean squared error (each normalised by its own element count)."""
    return sum(F.mse_loss(t, y) for t, y in zip(taps, reference, strict=True))


def conjugate_gradient(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    max_iters: int,
    tol: float,
    damping: float,
    relative: bool = True,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> CGResult:
    """Solve (A + damping I) x = b by CG from x = 0, A given by its products; preconditioned CG when
    `precondition` applies M^-1 (M symmetric positive definite, M ~ A + damping I).

    Stops when ||r|| <= tol ||b|| (||r|| < tol when not `relative`, the official code's rule), after
    `max_iters` products, or on non-positive curvature (then the iterate so far is returned, or b itself
    if no step was taken: a steepest-descent direction). The residual r = b - (A + damping I) x is the
    unpreconditioned one either way, so a preconditioner changes how soon the rule is met, not the rule.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    z = r if precondition is None else precondition(r)
    p = z.clone()
    b_norm = b.norm().item()
    if b_norm == 0.0:
        return CGResult(x, 0, 0.0, stop="zero gradient")
    threshold = tol * b_norm if relative else tol
    rz = r.dot(z)
    residuals: list[float] = []
    decrease: list[float] = []
    for iters in range(1, max_iters + 1):
        ap = hvp(p) + damping * p
        curvature = p.dot(ap)
        if curvature <= 0:
            x = b.clone() if iters == 1 else x
            return CGResult(x, iters, r.norm().item() / b_norm, residuals, decrease, "negative curvature")
        alpha = rz / curvature
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        z = r if precondition is None else precondition(r)
        rz_new = r.dot(z)
        residual = (rz_new if precondition is None else r.dot(r)).sqrt().item()
        residuals.append(residual / b_norm)
        decrease.append(0.5 * x.dot(b + r).item())  # m(0) - m(x), as r = b - (A + damping I) x
        if residuals[-1] * b_norm <= threshold:
            return CGResult(x, iters, residuals[-1], residuals, decrease, "tolerance")
        p = z + (rz_new / rz) * p
        rz = rz_new
    return CGResult(x, max_iters, r.norm().item() / b_norm, residuals, decrease, "cap")


def armijo_backtracking(
    loss_at: Callable[[float], float],
    loss0: float,
    slope: float,
    *,
    alpha0: float = 1.0,
    shrink: float = 0.9,
    c: float = 1e-5,
    max_tries: int = 50,
) -> LineSearch:
    """Largest alpha0 * shrink^i with loss_at(alpha) <= loss0 + c alpha slope; alpha 0 and loss0 if none passes."""
    alpha, trials = alpha0, []
    for _ in range(max_tries):
        loss = loss_at(alpha)
        accepted = loss <= loss0 + c * alpha * slope
        trials.append((alpha, loss, accepted))
        if accepted:
            return LineSearch(alpha, loss, trials)
        alpha *= shrink
    return LineSearch(0.0, loss0, trials)


def loss_and_gradient(
    taps_of: Callable[[torch.Tensor], Taps], reference: Taps, free: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """The loss and its gradient on the free weights, first order only (no graph kept)."""
    free = free.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = tap_loss(taps_of(free), reference)
        (grad,) = torch.autograd.grad(loss, free)
    return loss.item(), grad


def exact_curvature(
    taps_of: Callable[[torch.Tensor], Taps], reference: Taps, free: torch.Tensor, **_: object
) -> Curvature:
    """Exact Hessian products by double backprop; the gradient graph is built once and reused."""
    free = free.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = tap_loss(taps_of(free), reference)
        (grad,) = torch.autograd.grad(loss, free, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return torch.autograd.grad(grad, free, v, retain_graph=True)[0]

    return Curvature(loss.item(), grad.detach(), hvp)


def tangent_curvature(
    taps_of: Callable[[torch.Tensor], Taps],
    reference: Taps,
    free: torch.Tensor,
    *,
    layer_of: Callable[[torch.Tensor], torch.Tensor],
    linear_layer_of: Callable[[torch.Tensor], torch.Tensor],
    window_at: Callable[[torch.Tensor], tuple[Taps, Callable[[torch.Tensor], Taps]]],
    **_: object,
) -> Curvature:
    """Exact products for piecewise-linear windows: H v = J^T D J v, D = diag(2 / numel(y_t)).

    Args:
        taps_of: free weights -> taps (unused here, kept for the common signature).
        reference: the reference taps.
        free: the point (n_free,).
        layer_of: free weights -> the layer's output z.
        linear_layer_of: free weights -> the layer's output without its bias (J_layer v).
        window_at: z -> (taps, the window's tangent map at z), see `snows_core.engine.tangent`.
    """
    free = free.detach().requires_grad_(True)
    with torch.enable_grad():
        taps, tangent = window_at(layer_of(free))
        loss = tap_loss(taps, reference)
        (grad,) = torch.autograd.grad(loss, free)
    scales = [2.0 / t.numel() for t in taps]
    common = max(scales)  # taps of one size (most of a CNN window's) share it: their D J v needs no multiply
    relative = [s / common for s in scales]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            jv = tangent(linear_layer_of(v))
            weighted = [j if r == 1.0 else r * j for r, j in zip(relative, jv, strict=True)]
            return common * torch.autograd.grad(jv, v, weighted)[0]

    return Curvature(loss.item(), grad, hvp)


def gauss_newton_curvature(
    taps_of: Callable[[torch.Tensor], Taps],
    reference: Taps,
    free: torch.Tensor,
    *,
    layer_of: Callable[[torch.Tensor], torch.Tensor],
    window_of: Callable[[torch.Tensor], Taps],
    **_: object,
) -> Curvature:
    """Gauss-Newton products J^T D J v through a window linearised once per Newton step.

    Args:
        taps_of: free weights -> taps (unused here, kept for the common signature).
        reference: the reference taps (the values to reconstruct), one per tap.
        free: the point (n_free,).
        layer_of: free weights -> the layer's output z (linear in the weights, plus a constant bias).
        window_of: z -> taps.
    """
    with torch.enable_grad():
        z0, layer_vjp = torch.func.vjp(layer_of, free.detach())
    z_bias = layer_of(torch.zeros_like(free))  # layer(x, 0): the bias alone
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*get_attr Node with no underlying reference")
        _, window_jvp = torch.func.linearize(window_of, z0)
    taps, window_vjp = torch.func.vjp(window_of, z0)
    scales = [2.0 / t.numel() for t in taps]
    residual = tuple(s * (t - y) for s, t, y in zip(scales, taps, reference, strict=True))
    grad = layer_vjp(window_vjp(residual)[0])[0]
    loss = sum(F.mse_loss(t, y).item() for t, y in zip(taps, reference, strict=True))

    def hvp(v: torch.Tensor) -> torch.Tensor:
        jv = window_jvp(layer_of(v) - z_bias)
        return layer_vjp(window_vjp(tuple(s * j for s, j in zip(scales, jv, strict=True)))[0])[0]

    return Curvature(loss, grad.detach(), hvp)
