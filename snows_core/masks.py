"""Mask methods: score every weight, then keep the best-scored ones under a sparsity pattern.

Convention: a mask is a bool tensor shaped like the weight, True = weight kept (torchao's convention;
sparsegpt's ``mask1`` marks the opposite).

Scoring and selection are separate. A registered mask method only scores (higher = more important):
- ``magnitude``: |W|.
- ``random``: uniform noise from the run's seed (a baseline).
- ``wanda``: |W_ij| * ||X_j||_2, X_j the j-th input column seen by the layer on the calibration data
  (Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs"); for a conv the columns are
  the im2col columns (input channel, kernel row, kernel column). Scores are ranked per layer.
- ``custom``: masks supplied by the user, checked for shape (and for the N:M pattern if one is set).

Methods chosen *in the layer loop* see the pruned path and move the weights while they choose: they
run just before the layer's reconstruction, on its pruned-path input, and return the mask together
with their own weights, which become the reconstruction's starting point:
- ``sparsegpt``: Frantar & Alistarh 2023, OBS updates column by column (see `snows_core.sparsegpt`).
- ``obc``: Frantar & Alistarh 2022, exact OBS one weight at a time per row, the layer's prune count split
  over rows by their step losses (see `snows_core.obc`); for layers of up to 1024 input columns per group.

How many weights each layer keeps is the allocation's business (`snows_core.allocation`:
uniform, global, lamp, sensitivity; `list_allocations()`); in-loop methods are allocated by |W|.

Selection:
- unstructured, "uniform": each layer keeps its top round((1 - s) * numel) scores.
- unstructured, "global": one ranking across layers, with no layer pruned beyond a cap.
- N:M: in every group of M consecutive input channels (per output channel and kernel position,
  weight (out, in, kh, kw) grouped along ``in``; for Linear along input features) keep the top N.
  This is the layout that sparse tensor cores accelerate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.allocation import global_counts, kept_count, list_allocations
from snows_core.obc import obc_layer, obc_unsupported
from snows_core.registry import Registry
from snows_core.sparsegpt import sparsegpt_layer

__all__ = [
    "MaskMethod",
    "ScoreInputs",
    "LayerInputs",
    "MaskChoice",
    "list_allocations",
    "register_mask_method",
    "get_mask_method",
    "list_mask_methods",
    "unstructured_mask",
    "nm_mask",
    "holds_nm",
    "global_masks",
    "top_count_mask",
    "nm_skip_reason",
    "input_column_sq_norms",
]


@dataclass
class ScoreInputs:
    """What a scorer may read for one layer."""

    name: str
    weight: torch.Tensor  # (out, in, kh, kw) or (out, in)
    column_sq_norms: torch.Tensor | None = None  # squared input-column norms, broadcast like weight
    generator: torch.Generator | None = None
    custom: torch.Tensor | None = None  # the user's bool mask, for "custom"


@dataclass
class LayerInputs:
    """What an in-loop mask method reads for one layer, just before the layer is reconstructed."""

    name: str
    module: nn.Module
    weight: torch.Tensor  # the layer's dense weight (what its targets are computed with)
    x: torch.Tensor  # (N, ...) the layer's input on the pruned path
    x_reference: torch.Tensor  # (N, ...) the input that produced the targets (the dense path's, or x itself)
    keep: int  # weights to keep in all (unstructured)
    nm: tuple[int, int] | None = None  # keep N of every M instead
    prior: torch.Tensor | None = None  # bool like the weight: the previous pass's mask; pruned stays pruned
    batch_size: int = 256
    grams: tuple[torch.Tensor, torch.Tensor, int] | None = None  # columns.input_grams(module, x, x_reference, weight)
    start: torch.Tensor | None = None  # a later pass's reconstructed weights, to start from instead of the dense fit


@dataclass
class MaskChoice:
    """A layer's mask (True = kept) and, for methods that move weights, the weights they leave."""

    mask: torch.Tensor
    weight: torch.Tensor | None = None


@dataclass(frozen=True)
class MaskMethod:
    """A registered mask method: a scoring function (chosen up front) or a layer-loop chooser."""

    name: str
    score: Callable[[ScoreInputs], torch.Tensor] | None
    needs_activations: bool = False
    user_supplied: bool = False
    summary: str = ""
    choose: Callable[[LayerInputs], MaskChoice] | None = None
    unsupported: Callable[[nn.Module], str | None] | None = None  # why an in-loop method refuses a layer

    @property
    def in_loop(self) -> bool:
        """Chosen in the layer loop on the pruned path (and moves the weights), not scored up front."""
        return self.choose is not None


_MASK_METHODS: Registry[MaskMethod] = Registry("mask")


def register_mask_method(
    name: str,
    *,
    needs_activations: bool = False,
    user_supplied: bool = False,
    in_loop: bool = False,
    summary: str = "",
    unsupported: Callable[[nn.Module], str | None] | None = None,
) -> Callable:
    """Decorator registering `fn(inputs: ScoreInputs) -> scores` under `name`, or with `in_loop`
    a chooser `fn(inputs: LayerInputs) -> MaskChoice` run in the layer loop (`unsupported(module)` says
    why it refuses a layer, checked before any work)."""

    def wrap(fn: Callable) -> Callable:
        summary_text = summary or (fn.__doc__ or "")
        if in_loop:
            _MASK_METHODS.add(
                name, MaskMethod(name, None, True, False, summary_text, choose=fn, unsupported=unsupported)
            )
        else:
            _MASK_METHODS.add(name, MaskMethod(name, fn, needs_activations, user_supplied, summary_text))
        return fn

    return wrap


def get_mask_method(name: str) -> MaskMethod:
    """The registered method called `name`; ValueError listing the known ones otherwise."""
    return _MASK_METHODS.get(name)


def list_mask_methods() -> list[str]:
    """Names of the registered mask methods."""
    return _MASK_METHODS.names()


@register_mask_method("magnitude", summary="|W|: keep the largest weights")
def magnitude_scores(inputs: ScoreInputs) -> torch.Tensor:
    return inputs.weight.abs()


@register_mask_method("random", summary="uniform noise from the seed: a baseline")
def random_scores(inputs: ScoreInputs) -> torch.Tensor:
    return torch.rand(inputs.weight.shape, generator=inputs.generator).to(inputs.weight.device)


@register_mask_method("wanda", needs_activations=True, summary="|W| times the input column norm (Wanda)")
def wanda_scores(inputs: ScoreInputs) -> torch.Tensor:
    return inputs.weight.abs() * inputs.column_sq_norms.sqrt()


@register_mask_method("custom", user_supplied=True, summary="masks you supply, one per layer")
def custom_scores(inputs: ScoreInputs) -> torch.Tensor:
    return inputs.custom.float()


@register_mask_method(
    "sparsegpt", in_loop=True, summary="SparseGPT: OBS updates column by column on the pruned path (moves weights)"
)
def sparsegpt_choice(inputs: LayerInputs) -> MaskChoice:
    return MaskChoice(*sparsegpt_layer(inputs))


@register_mask_method(
    "obc",
    in_loop=True,
    unsupported=obc_unsupported,
    summary="OBC: exact OBS one weight at a time per row on the pruned path (moves weights; small layers)",
)
def obc_choice(inputs: LayerInputs) -> MaskChoice:
    return MaskChoice(*obc_layer(inputs))


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the top round((1 - sparsity) * numel) scores of one tensor."""
    return top_count_mask(scores, kept_count(scores.numel(), sparsity))


def nm_skip_reason(weight_shape: torch.Size, m: int) -> str | None:
    """Why a weight cannot hold an N:M pattern (its input dimension is not a multiple of M), or None."""
    in_dim = weight_shape[1]
    if in_dim % m:
        return f"input dimension {in_dim} is not a multiple of M={m}"
    return None


def holds_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """Whether `mask` keeps at most n of every m consecutive input channels (per output channel and kernel
    position); False when its input dimension is not a multiple of m."""
    if nm_skip_reason(mask.shape, m):
        return False
    return bool((mask.movedim(1, -1).reshape(-1, m).sum(-1) <= n).all())


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the top n of every m consecutive input channels, per output channel and kernel position."""
    reason = nm_skip_reason(scores.shape, m)
    if reason:
        raise ValueError(f"cannot apply {n}:{m}: {reason}")
    channels_last = scores.movedim(1, -1)  # (out, kh, kw, in)
    groups = channels_last.reshape(*channels_last.shape[:-1], -1, m)  # (out, kh, kw, in/m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(groups, n, dim=-1).indices, True)
    return keep.reshape(channels_last.shape).movedim(-1, 1).contiguous()


def global_masks(scores: dict[str, torch.Tensor], sparsity: float, cap: float) -> dict[str, torch.Tensor]:
    """One ranking over all layers keeping (1 - sparsity) of all weights, no layer sparser than `cap`."""
    counts = global_counts(scores, sparsity, cap)
    return {name: top_count_mask(scores[name], counts[name]) for name in scores}


def top_count_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the `keep` highest scores of one tensor."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.flatten(), keep, sorted=False).indices] = True
    return mask.view_as(scores)


def input_column_sq_norms(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Squared norms of the layer's input columns over a batch, broadcast to the weight's shape.

    Linear: sum over every position of x_j^2 for each input feature j. Conv2d: the im2col column
    (input channel c, kernel offset i, j) summed over images and output positions, taken by strided
    slicing of the padded input rather than materialising im2col.
    """
    if isinstance(module, nn.Conv2d):
        return _conv_column_sq_norms(module, x)
    if isinstance(module, nn.Linear):
        return x.detach().pow(2).reshape(-1, x.shape[-1]).sum(0).expand_as(module.weight)
    raise TypeError(f"no input statistics for {type(module).__name__}")


def _conv_column_sq_norms(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    pads = _conv_pads(conv)
    squared = F.pad(x.detach().pow(2), (pads[1], pads[1], pads[0], pads[0]))  # (N, C, H+2ph, W+2pw)
    out_h = (squared.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (squared.shape[3] - dw * (kw - 1) - 1) // sw + 1
    norms = torch.empty(x.shape[1], kh, kw, dtype=x.dtype, device=x.device)  # (C, kh, kw)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (out_h - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (out_w - 1) + 1, sw)
            norms[:, i, j] = squared[:, :, rows, cols].sum(dim=(0, 2, 3))
    out_per_group, in_per_group = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    group_of_out = torch.arange(conv.out_channels, device=x.device) // out_per_group  # (out,)
    channel = group_of_out[:, None] * in_per_group + torch.arange(in_per_group, device=x.device)  # (out, in/g)
    return norms[channel]  # (out, in/g, kh, kw)


def _conv_pads(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return conv.padding
