"""The layer problem: one layer in one pass of the prune loop, from its mask to its reconstruction.

SNOWS (Lucas & Mazumder, ICLR 2025) re-fits a masked layer so that its K-window reproduces the dense
network's values at the window's taps:

    L(W) = sum_{t=0..K} mean((o_t(W) - o_t(W_dense))^2),   W = 0 outside the mask,

on the calibration set, with the layer's input x taken from the pruned path (every earlier layer already
pruned and reconstructed). A `LayerProblem` carries every fact about the layer that a mask method or a
reconstruction reads, under one name each, built once per layer and pass (sparsegpt's one object per
layer: ``add_batch`` -> ``fasterprune`` -> ``free``). Its life cycle in `prune_model`:

1. **built** when the pass starts: the layer (name, module), its dense weight, the pass (``stage``), the
   previous passes' mask (``prior``); a scored mask method scores it then (``weight``, the current weights;
   ``column_sq_norms``, the input statistics as the pass starts; ``generator``; ``custom``);
2. **targeted**: ``keep`` (unstructured) or ``nm``, this pass's target from the allocation and schedule;
3. **loaded** (`load_inputs`) when the loop reaches the layer: the pruned-path input ``x``, the input that
   produced the targets ``x_reference``, the window (``window``, ``externals``) and the reference taps
   ``reference``; an in-loop mask method (SparseGPT, OBC) reads these and ``grams`` to choose;
4. **masked** (`set_mask`): the mask and the starting point (the mask method's weights, or the dense
   ones); the inputs move to the layout the solver runs fastest in and the reference taps are computed
   when the targets are the dense window's own; the objective is then fixed;
5. **reconstructed**: a reconstruction (`snows_core.engine.reconstruct`) reads the objective and its
   window's tangent program (built lazily: a scored mask method never pays for a window it does not read);
6. **freed** (`free`): its tensors are dropped once the layer is written back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from snows_core.engine.columns import KeptFactors, input_grams, linear_part, row_groups
from snows_core.engine.graph import PrunedPath
from snows_core.engine.solver import tap_loss
from snows_core.engine.tangent import TangentProgram, tangent_program
from snows_core.engine.window import Window, build_window

__all__ = ["LayerProblem", "load_inputs", "layer_problem"]


@dataclass(eq=False)
class LayerProblem:
    """One layer in one pass: its weights and target, its inputs and reference taps, its mask and start.

    Fields are filled in the order of the life cycle in the module docstring; a field not yet filled is None
    (or empty). ``x_reference is x`` when the reference taps come from the pruned path's own input.
    """

    # 1. the layer and the pass
    name: str
    module: nn.Module
    dense_weight: torch.Tensor  # (out, in, kh, kw) or (out, in): what the reference taps are computed with
    stage: int = 1
    batch_size: int = 256
    prior: torch.Tensor | None = None  # bool like the weight: earlier passes' mask; pruned stays pruned
    generator: torch.Generator | None = None  # the run's seeded generator (random scores)
    custom: torch.Tensor | None = None  # the user's bool mask, for "custom"
    column_sq_norms: torch.Tensor | None = None  # squared input-column norms as the pass starts, like the weight
    # 2. this pass's target
    keep: int = 0  # weights to keep (unstructured)
    nm: tuple[int, int] | None = None  # keep N of every M instead
    # 3. the inputs
    x: torch.Tensor | None = None  # (N, ...) the layer's input on the pruned path
    x_reference: torch.Tensor | None = None  # (N, ...) the input that produced the reference taps
    window: fx.GraphModule | None = None  # (z, *externals) -> taps
    externals: list[object] = field(default_factory=list)  # the window's other inputs, on the pruned path
    reference: list[torch.Tensor] = field(default_factory=list)  # (N, ...) each: the values to reconstruct

    # 4. the mask and the starting point
    mask: torch.Tensor | None = None  # bool like the weight; True = kept
    free_index: torch.Tensor | None = None  # (n_free,) flat positions of the kept weights: what the solver moves
    start_weight: torch.Tensor | None = None  # where reconstruction starts, zero outside the mask
    moved: bool = False  # the start is not the plain masked dense weight
    _grams: tuple[torch.Tensor, torch.Tensor, int] | None = None
    _factors: tuple[float, KeptFactors] | None = None  # (ridge, the kept systems' factors) under this mask
    _tangent: TangentProgram | str | None = None
    _mask_loss: float | None = None
    _start_loss: float | None = None
    _solver_layout: bool = False

    # 1. what a mask method reads before the inputs
    @property
    def weight(self) -> torch.Tensor:
        """The layer's weights as they stand: the dense ones in the first pass, the previous pass's after."""
        return self.module.weight.detach()

    @property
    def start(self) -> torch.Tensor | None:
        """A later pass's reconstructed weights, for an in-loop method to start from (None in the first pass)."""
        return self.module.weight.detach().clone() if self.stage > 1 else None

    # 3. inputs
    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def grams(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The layer's input Gram matrix and cross moment (see `input_grams`), computed once."""
        if self._grams is None:
            self._grams = input_grams(self.module, self.x, self.x_reference, self.dense_weight, self.batch_size)
        return self._grams

    @property
    def has_full_gram(self) -> bool:
        """Whether the Gram on every image is computed (`grams`), so that reading it costs nothing."""
        return self._grams is not None

    def input_gram(self, limit: int) -> tuple[torch.Tensor, int]:
        """The input Gram matrix (groups, d, d) and its output numel: the cached one on all images when at hand,
        else one on the first `limit` images (what a preconditioner needs: its shape, not every image)."""
        if self.has_full_gram or limit >= self.n:
            gram, _, numel = self.grams
            return gram, numel
        x = self.x[:limit]
        gram, _, numel = input_grams(self.module, x, x, self.dense_weight, self.batch_size)
        return gram, numel

    def kept_factors(self, ridge: float) -> KeptFactors:
        """Per output row, G_SS + ridge I on its kept inputs S (G the input Gram on every image) factored by
        Cholesky, once per mask and ridge: the least-squares warm start and the Gram preconditioner solve the
        same systems (up to the scale 2 / numel)."""
        if self._factors is None or self._factors[0] != ridge:
            gram = self.grams[0]  # (groups, d, d)
            keep = self.mask.reshape(self.mask.shape[0], -1).to(gram.dtype)  # (rows, d)
            groups = row_groups(keep.shape[0], gram.shape[0], keep.device)  # (rows,)
            self._factors = (ridge, KeptFactors(gram, groups, keep, ridge))
        return self._factors[1]

    # 4. the mask
    def set_mask(self, mask: torch.Tensor, start_weight: torch.Tensor | None = None) -> LayerProblem:
        """Fix the objective's mask and starting point (None: the dense weight times the mask)."""
        self._to_solver_layout()
        self.mask = mask
        self.free_index = mask.flatten().nonzero().squeeze(1)  # (n_free,)
        masked = self.dense_weight * mask
        start = masked if start_weight is None else start_weight * mask
        self.moved = not torch.equal(start, masked)
        self.start_weight = start
        self._mask_loss = self._start_loss = self._factors = None
        return self

    def with_mask(self, mask: torch.Tensor, start_weight: torch.Tensor | None = None) -> LayerProblem:
        """The same layer, inputs and reference taps under another mask (and starting point)."""
        return copy.copy(self).set_mask(mask, start_weight)

    def prefer_start(self, start_weight: torch.Tensor) -> None:
        """Start from `start_weight` (times the mask) instead when its loss is lower; a tie keeps the start."""
        other = self.with_mask(self.mask, start_weight)
        if other.start_loss < self.start_loss:
            self.start_weight, self.moved, self._start_loss = other.start_weight, other.moved, other.start_loss

    def with_window(self, window: Window, externals: list[object]) -> LayerProblem:
        """The same layer and inputs with another window (its reference taps computed by the dense weight)."""
        other = copy.copy(self)
        other.window, other.externals, other.reference = window.module, externals, []
        other._tangent, other._solver_layout = None, False
        return other

    def _to_solver_layout(self) -> None:
        """Inputs in the layout the window maths runs fastest in, and the reference taps, once."""
        if self._solver_layout:
            return
        self._solver_layout = True
        same = self.x_reference is self.x  # a dense-path input stays as it is: only the cross moment reads it
        self.x = _channels_last(self.x, self.module)
        self.x_reference = self.x if same else self.x_reference
        self.externals = [_channels_last(e, self.module) for e in self.externals]
        self.reference = [_channels_last(t, self.module) for t in self.reference]
        if not self.reference:
            with torch.no_grad():
                self.reference = _cat_taps([self.taps(self.dense_weight, b) for b in self.batches()])

    # 5. the objective
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
        """The window's tangent program (`snows_core.engine.tangent`), or why it has none; built once."""
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
    def start_loss(self) -> float:
        """The objective at the starting point (the mask-only loss unless the start moved)."""
        if self._start_loss is None:
            self._start_loss = self.loss(self.start_weight) if self.moved else self.mask_loss
        return self._start_loss

    def loss(self, weight: torch.Tensor) -> float:
        """The objective on the whole calibration set (tap means weighted by batch size)."""
        return sum(self.batch_loss(weight, b) * (b.stop - b.start) for b in self.batches()) / self.n

    # 6.
    def free(self) -> None:
        """Drop the tensors (inputs, taps, moments) once the layer is written back."""
        self.x = self.x_reference = self.window = self._grams = self._factors = self._tangent = None
        self.externals, self.reference = [], []


def load_inputs(
    problem: LayerProblem,
    gm: fx.GraphModule,
    node: fx.Node,
    path: PrunedPath,
    *,
    window: Window,
    dense_path: PrunedPath | None = None,
    tap_path: PrunedPath | None = None,
) -> LayerProblem:
    """Fill the problem's inputs: x and the window's external inputs from `path` (the network being pruned),
    the reference taps from `dense_path` (the dense network's own values at the taps) or, without it, the
    dense window on the same inputs (computed when the mask is set). `tap_path`, when given, supplies the
    reference taps instead of `dense_path` (which still supplies the layer's dense input)."""
    problem.x = path.value(node.args[0])
    problem.x_reference = problem.x
    if dense_path is not None:
        problem.x_reference = dense_path.value(dense_path.node(node.args[0].name))
        tap_path = tap_path or dense_path
        problem.reference = [tap_path.value(tap_path.node(n.name)) for n in window.taps]
    problem.window, problem.externals = window.module, path.values(window.externals)
    return problem


def layer_problem(
    gm: fx.GraphModule,
    node: fx.Node,
    path: PrunedPath,
    *,
    k: int,
    mask: torch.Tensor | None = None,
    batch_size: int = 256,
    dense_path: PrunedPath | None = None,
) -> tuple[LayerProblem, Window]:
    """Layer `node`'s problem over its K-window, loaded from `path` (and `dense_path`), with its current weight
    as the dense one and `mask` set when given: the one-call form for a single layer outside the loop."""
    module = gm.get_submodule(node.target)
    problem = LayerProblem(node.target, module, module.weight.detach().clone(), batch_size=batch_size)
    window = build_window(gm, node, k)
    load_inputs(problem, gm, node, path, window=window, dense_path=dense_path)
    return (problem if mask is None else problem.set_mask(mask)), window


def _channels_last(value: object, module: nn.Module) -> object:
    """A conv layer's 4-d values on the CPU in channels-last layout, where this CPU's convolutions and their
    backward passes run 1.5-4x faster (measured on ResNet-20's 16-channel maps); anything else as it is."""
    if isinstance(module, nn.Conv2d) and torch.is_tensor(value) and value.dim() == 4 and value.device.type == "cpu":
        return value.contiguous(memory_format=torch.channels_last)
    return value


def _batch_of(value: object, batch: slice, n: int) -> object:
    """An external input's part for `batch`: a tensor's rows; an int equal to the image count is the batch
    size a traced reshape read off its input (a ViT's ``B, N, C = x.shape``), so it becomes the batch's."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n:
        return value[batch]
    if type(value) is int and value == n:
        return batch.stop - batch.start
    return value


def _cat_taps(per_batch: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    return [torch.cat(parts) for parts in zip(*per_batch, strict=True)]
