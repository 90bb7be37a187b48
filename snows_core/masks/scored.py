"""Scored mask methods: each scores every weight of a layer (higher = more important) as the pass starts.

- ``magnitude``: |W|.
- ``random``: uniform noise from the run's seed (a baseline).
- ``wanda``: |W_ij| * ||X_j||_2, X_j the j-th input column seen by the layer on the calibration data
  (Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs"); for a conv the columns are
  the im2col columns (input channel, kernel row, kernel column). Scores are ranked per layer.
- ``custom``: masks supplied by the user, checked for shape (and for the N:M pattern if one is set).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.engine.problem import LayerProblem
from snows_core.masks.method import register_mask_method

__all__ = ["magnitude_scores", "random_scores", "wanda_scores", "custom_scores", "input_column_sq_norms"]


@register_mask_method("magnitude", summary="|W|: keep the largest weights")
def magnitude_scores(problem: LayerProblem) -> torch.Tensor:
    return problem.weight.abs()


@register_mask_method("random", summary="uniform noise from the seed: a baseline")
def random_scores(problem: LayerProblem) -> torch.Tensor:
    return torch.rand(problem.weight.shape, generator=problem.generator).to(problem.weight.device)


@register_mask_method("wanda", needs_activations=True, summary="|W| times the input column norm (Wanda)")
def wanda_scores(problem: LayerProblem) -> torch.Tensor:
    return problem.weight.abs() * problem.column_sq_norms.sqrt()


@register_mask_method("custom", user_supplied=True, summary="masks you supply, one per layer")
def custom_scores(problem: LayerProblem) -> torch.Tensor:
    return problem.custom.float()


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
