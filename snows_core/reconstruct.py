"""Reconstruction of one masked layer: none, closed-form least squares, or SNOWS Newton-CG.

A `LayerProblem` holds what a layer's objective needs: the pruned-path input x (all earlier layers
already pruned and reconstructed), the window's external inputs from the same path, and the reference
taps (the values to reconstruct; `PruneConfig.targets` chooses them), by default the window evaluated
with the layer's dense weight on those same inputs, computed once.

    L(W) = sum_{t=0..K} mean((o_t(W) - o_t(W_dense))^2),   W = 0 outside the mask.

Every problem also has a starting point: the dense weight times the mask, or the weights the mask
method left (SparseGPT's, or an earlier pass's reconstruction under the new, nested mask).

Registered methods (`register_reconstruction`, one factory `get_reconstruction`):
- ``none``: the starting point (W = W_dense * Z for scored masks).
- ``lstsq``: the K=0 problem in closed form, per output channel: (G_SS + lambda I) w_S = (G w_dense)_S
  with G the Gram matrix of the layer's input columns. lambda = damping * numel(o_0) / 2 is the same
  damping SNOWS adds to its Hessian, in the same units.
- ``snows``: optional lstsq warm start ("MP+"; when the starting point is not the plain masked dense
  weight, whichever of the two has the lower loss), then Newton steps on mini-batches: CG on the free
  weights for the direction, Armijo backtracking for the step; stop after `newton_passes` passes or
  when each of 3 successive steps improves the loss by under 0.5%; keep the best iterate.

No method ends above the lower of the mask-only loss and the starting point's loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from snows_core.columns import input_grams, linear_part, solve_on_kept
from snows_core.events import EventSink, NewtonStep
from snows_core.lookahead import PrunedPath, Window, build_window
from snows_core.registry import Registry
from snows_core.solver import (
    CGResult,
    LineSearch,
    armijo_backtracking,
    cg_trace,
    conjugate_gradient,
    exact_curvature,
    gauss_newton_curvature,
    loss_and_gradient,
    tangent_curvature,
    tap_loss,
)
from snows_core.tangent import TangentProgram, tangent_program

if TYPE_CHECKING:  # the config validates names against this module's registry: no import at run time
    from snows_core.config import PruneConfig

__all__ = [
    "LayerProblem",
    "layer_problem",
    "Solution",
    "register_reconstruction",
    "get_reconstruction",
    "list_reconstructions",
    "lstsq_weight",
]

STALL_IMPROVEMENT = 0.005  # a step improving the loss by less than 0.5% ...
STALL_STEPS = 3  # ... this many times in a row ends the layer
CURVATURE_PRODUCTS = {"exact": exact_curvature, "gauss-newton": gauss_newton_curvature}


@dataclass
class LayerProblem:
    """One layer's reconstruction objective on the calibration set.

    `reference` holds the reference taps (the values to reconstruct: the option `config.targets` chooses
    them), (N, ...) each, and `x_reference` the layer input that produced them. Without them the reference
    taps are the window evaluated with the dense weight on the pruned-path
    inputs (config targets="pruned-input"), computed once here. `start_weight` is where
    reconstruction starts (None: dense_weight * mask).
    """

    name: str
    module: nn.Module
    x: torch.Tensor  # (N, ...) the layer's input on the pruned path
    externals: list[object]  # the window's other inputs, on the pruned path
    window: fx.GraphModule  # (z, *externals) -> taps
    mask: torch.Tensor  # bool, like the weight; True = kept
    dense_weight: torch.Tensor
    batch_size: int
    reference: list[torch.Tensor] = field(default_factory=list)
    x_reference: torch.Tensor | None = None
    start_weight: torch.Tensor | None = None
    _mask_loss: float | None = None
    _start_loss: float | None = None
    _grams: tuple[torch.Tensor, torch.Tensor, int] | None = None
    _tangent: TangentProgram | str | None = None

    def __post_init__(self) -> None:
        self.free_index = self.mask.flatten().nonzero().squeeze(1)  # (n_free,) positions of kept weights
        if self.x_reference is None or self.x_reference is self.x:
            self.x_reference = self.x = _channels_last(self.x, self.module)
        else:
            self.x = _channels_last(self.x, self.module)
        self.externals = [_channels_last(e, self.module) for e in self.externals]
        self.reference = [_channels_last(t, self.module) for t in self.reference]
        masked = self.dense_weight * self.mask
        start = masked if self.start_weight is None else self.start_weight * self.mask
        self.moved = not torch.equal(start, masked)  # the start is not the plain masked dense weight
        self.start_weight = start
        if not self.reference:
            with torch.no_grad():
                self.reference = _cat_taps([self.taps(self.dense_weight, b) for b in self.batches()])

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def batches(self, order: torch.Tensor | None = None) -> list[slice]:
        starts = range(0, self.n, self.batch_size)
        slices = [slice(s, min(s + self.batch_size, self.n)) for s in starts]
        return slices if order is None else [slices[i] for i in order.tolist()]

    def layer_output(self, weight: torch.Tensor, batch: slice) -> torch.Tensor:
        return torch.func.functional_call(self.module, {"weight": weight}, (self.x[batch],))

    def window_taps(self, z: torch.Tensor, batch: slice) -> tuple[torch.Tensor, ...]:
        return self.window(z, *(_batch_of(e, batch, self.n) for e in self.externals))

    def linear_output(self, weight: torch.Tensor, batch: slice) -> torch.Tensor:
        """The layer's output without its bias: linear in the weight (J_layer applied to it)."""
        return linear_part(self.module, self.x[batch], weight)

    @property
    def tangent(self) -> TangentProgram | str:
        """The window's tangent program (`snows_core.tangent`), or why it has none; built once."""
        if self._tangent is None:
            self._tangent = tangent_program(self.window)
        return self._tangent

    def window_at(self, z: torch.Tensor, batch: slice) -> tuple[tuple[torch.Tensor, ...], Callable]:
        """The taps at z and the window's tangent map there (the window must have a tangent program)."""
        return self.tangent.at(z, *(_batch_of(e, batch, self.n) for e in self.externals))

    def taps(self, weight: torch.Tensor, batch: slice) -> tuple[torch.Tensor, ...]:
        return self.window_taps(self.layer_output(weight, batch), batch)

    def weight_of(self, free: torch.Tensor) -> torch.Tensor:
        """Scatter the free weights into a zero tensor shaped like the weight: pruned entries stay 0."""
        flat = free.new_zeros(self.mask.numel()).scatter(0, self.free_index, free)  # (numel,)
        return flat.view(self.mask.shape)

    def batch_loss(self, weight: torch.Tensor, batch: slice) -> float:
        with torch.no_grad():
            return tap_loss(self.taps(weight, batch), [t[batch] for t in self.reference]).item()

    @property
    def mask_loss(self) -> float:
        """The objective with the mask applied to the dense weight (computed once)."""
        if self._mask_loss is None:
            self._mask_loss = self.loss(self.dense_weight * self.mask)
        return self._mask_loss

    @property
    def grams(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The layer's input Gram matrix and cross moment (see `input_grams`), computed once."""
        if self._grams is None:
            self._grams = input_grams(self.module, self.x, self.x_reference, self.dense_weight, self.batch_size)
        return self._grams

    def with_mask(self, mask: torch.Tensor, start_weight: torch.Tensor | None = None) -> LayerProblem:
        """The same layer, inputs and reference taps under another mask (and starting point)."""
        return replace(self, mask=mask, start_weight=start_weight, _mask_loss=None, _start_loss=None)

    @property
    def start_loss(self) -> float:
        """The objective at the starting point (the mask-only loss unless the start moved)."""
        if self._start_loss is None:
            self._start_loss = self.loss(self.start_weight) if self.moved else self.mask_loss
        return self._start_loss

    def loss(self, weight: torch.Tensor) -> float:
        """The objective on the whole calibration set (tap means weighted by batch size)."""
        return sum(self.batch_loss(weight, b) * (b.stop - b.start) for b in self.batches()) / self.n


def layer_problem(
    gm: fx.GraphModule,
    node: fx.Node,
    path: PrunedPath,
    k: int,
    mask: torch.Tensor,
    batch_size: int,
    dense_path: PrunedPath | None = None,
    dense_weight: torch.Tensor | None = None,
    start_weight: torch.Tensor | None = None,
    grams: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    window: Window | None = None,
    tap_path: PrunedPath | None = None,
) -> tuple[LayerProblem, Window]:
    """Layer `node`'s objective over its K-window: inputs from `path` (the network being pruned), reference
    taps from `dense_path` (the dense network's own values at the taps) or, without it, the dense window on
    the same inputs. `dense_weight` defaults to the layer's current weight, `start_weight` to that
    weight times the mask; `window` replaces the K-window (e.g. `build_tail`: the rest of the network);
    `tap_path`, when given, supplies the reference taps instead of `dense_path` (which still supplies the
    layer's dense input for the least-squares fit)."""
    window = window or build_window(gm, node, k)
    module = gm.get_submodule(node.target)
    reference, x_reference = [], None
    if dense_path is not None:
        x_reference = dense_path.value(dense_path.node(node.args[0].name))
        tap_path = tap_path or dense_path
        reference = [tap_path.value(tap_path.node(n.name)) for n in window.taps]
    problem = LayerProblem(
        node.target,
        module,
        path.value(node.args[0]),
        path.values(window.externals),
        window.module,
        mask,
        module.weight.detach().clone() if dense_weight is None else dense_weight,
        batch_size,
        reference,
        x_reference,
        start_weight,
        _grams=grams,
    )
    return problem, window


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

    def wrap(fn: Reconstruction) -> Reconstruction:
        _RECONSTRUCTIONS.add(name, fn)
        return fn

    return wrap


def get_reconstruction(name: str) -> Reconstruction:
    return _RECONSTRUCTIONS.get(name)


def list_reconstructions() -> list[str]:
    return _RECONSTRUCTIONS.names()


@register_reconstruction("none")
def mask_only(problem: LayerProblem, cfg: PruneConfig, emit: EventSink) -> Solution:
    return Solution(problem.start_weight, problem.start_loss)


@register_reconstruction("lstsq")
def least_squares(problem: LayerProblem, cfg: PruneConfig, emit: EventSink) -> Solution:
    weight = lstsq_weight(
        problem.module,
        problem.x,
        problem.x_reference,
        problem.dense_weight,
        problem.mask,
        cfg.damping,
        cfg.batch_size,
        problem.grams,
    )
    return _no_worse_than_start(problem, Solution(weight, problem.loss(weight)))


@register_reconstruction("snows")
def snows(problem: LayerProblem, cfg: PruneConfig, emit: EventSink) -> Solution:
    start = mask_only(problem, cfg, emit)
    if cfg.warm_start:
        warm = least_squares(problem, cfg, emit)
        start = min(warm, start, key=lambda s: s.loss) if problem.moved else warm
    solution = newton_cg(problem, cfg, start, emit)
    solution.loss_warm = start.loss if cfg.warm_start or problem.moved else None
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


def newton_cg(problem: LayerProblem, cfg: PruneConfig, start: Solution, emit: EventSink) -> Solution:
    """Alg. 1 of SNOWS: Newton-CG passes over mini-batches with Armijo steps, keeping the best iterate."""
    curvature = CURVATURE_PRODUCTS[cfg.curvature]
    if isinstance(problem.tangent, TangentProgram):
        curvature = tangent_curvature  # J^T D J, here both the Gauss-Newton and the exact products
    free = start.weight[problem.mask]  # (n_free,)
    best = Solution(start.weight, start.loss)
    generator = torch.Generator().manual_seed(cfg.seed)
    n_batches = len(problem.batches())
    steps, cg_total, stalled = 0, 0, 0
    for _ in range(cfg.newton_passes):
        for batch in problem.batches(torch.randperm(n_batches, generator=generator)):
            tic = time.perf_counter()
            curvature_batch = _curvature_batch(batch, cfg.curvature_fraction, generator)
            free, loss, cg, search = _newton_step(problem, cfg, curvature, free, batch, curvature_batch)
            new_loss = search.loss
            steps, cg_total = steps + 1, cg_total + cg.iters
            emit(
                NewtonStep(
                    problem.name,
                    steps,
                    loss,
                    new_loss,
                    cg.iters,
                    cg.residual,
                    search.alpha,
                    time.perf_counter() - tic,
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
    cfg: PruneConfig,
    curvature: Callable,
    free: torch.Tensor,
    batch: slice,
    curvature_batch: slice | torch.Tensor,
) -> tuple[torch.Tensor, float, CGResult, LineSearch]:
    """One Newton step on `batch`: gradient there, curvature products on `curvature_batch` (the batch
    itself, or a sub-sample of its images: Martens 2010), CG for the direction, Armijo for the step.
    Returns the new free weights, the loss before, the CG solve and the line search."""
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
        max_iters=cfg.cg_iters,
        tol=cfg.cg_tol,
        damping=cfg.damping,
        relative=cfg.targets != "official",
    )
    direction = cg.x.detach()
    search = armijo_backtracking(
        lambda a: problem.batch_loss(problem.weight_of(free + a * direction), batch),
        loss,
        grad.dot(direction).item(),
    )
    return free + search.alpha * direction, loss, cg, search


def _curvature_batch(batch: slice, fraction: float, generator: torch.Generator) -> slice | torch.Tensor:
    """The images of `batch` that curvature products use: all of them, or a seeded random `fraction`."""
    size = batch.stop - batch.start
    keep = max(1, math.ceil(fraction * size))
    if keep >= size:
        return batch
    picked = torch.randperm(size, generator=generator)[:keep].sort().values  # (keep,)
    return picked + batch.start


def lstsq_weight(
    module: nn.Module,
    x: torch.Tensor,
    x_reference: torch.Tensor,
    dense_weight: torch.Tensor,
    mask: torch.Tensor,
    damping: float,
    batch_size: int = 256,
    grams: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """Per output channel, ridge least squares on the kept inputs matching the dense layer's output.

    Minimises ||X w_S - X_t w_dense||^2 + lambda ||w_S||^2 for every output row, X the input columns
    on the pruned path and X_t those that produced the target (the same X, or the dense path's):
    (G_SS + lambda I) w_S = (C w_dense)_S with G = X^T X, C = X^T X_t (im2col columns for a conv,
    per group) and lambda = damping * numel(output) / 2. `grams` are
    `input_grams(module, x, x_reference, dense_weight)` when already computed.
    """
    gram, cross, numel_out = grams or input_grams(module, x, x_reference, dense_weight, batch_size)
    groups = gram.shape[0]
    rows = dense_weight.reshape(dense_weight.shape[0], -1).to(gram.dtype)  # (out, d)
    keep = mask.reshape(rows.shape).to(gram.dtype)  # (out, d)
    group_of_row = torch.arange(rows.shape[0], device=rows.device) // (rows.shape[0] // groups)  # (out,)
    ridge = damping * numel_out / 2
    target = cross.transpose(1, 2).reshape(rows.shape)  # (out, d): C w, per group
    solved = solve_on_kept(gram, group_of_row, keep, target, ridge)  # (out, d)
    return solved.reshape(dense_weight.shape).to(dense_weight.dtype)


def _channels_last(value: object, module: nn.Module) -> object:
    """A conv layer's 4-d values on the CPU in channels-last layout, where this CPU's convolutions and their
    backward passes run 1.5-4x faster (measured on ResNet-20's 16-channel maps); anything else as it is."""
    if isinstance(module, nn.Conv2d) and torch.is_tensor(value) and value.dim() == 4 and value.device.type == "cpu":
        return value.contiguous(memory_format=torch.channels_last)
    return value


def _batch_of(value: object, batch: slice, n: int) -> object:
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n:
        return value[batch]
    return value


def _cat_taps(per_batch: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    return [torch.cat(parts) for parts in zip(*per_batch, strict=True)]
