"""Selection: from scores to a keep-mask under a sparsity pattern (True = kept).

- unstructured: a layer keeps its top `keep` scores (`top_count_mask`; `unstructured_mask` for a sparsity).
- N:M: in every group of M consecutive input channels (per output channel and kernel position, weight
  (out, in, kh, kw) grouped along ``in``; for Linear along input features) keep the top N. This is the
  layout that sparse tensor cores accelerate.
"""

from __future__ import annotations

import torch

from snows_core.masks.allocation import kept_count

__all__ = ["keep_mask", "unstructured_mask", "top_count_mask", "nm_mask", "holds_nm", "nm_skip_reason"]


def keep_mask(
    scores: torch.Tensor, keep: int, nm: tuple[int, int] | None = None, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """The best-scored weights under a target: the top `keep` of the layer, or the top N of every M with `nm`;
    weights `prior` (an earlier pass's mask) pruned stay pruned."""
    if prior is not None:
        scores = scores.masked_fill(~prior, float("-inf"))
    return nm_mask(scores, *nm) if nm else top_count_mask(scores, keep)


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the top round((1 - sparsity) * numel) scores of one tensor."""
    return top_count_mask(scores, kept_count(scores.numel(), sparsity))


def top_count_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the `keep` highest scores of one tensor."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.flatten(), keep, sorted=False).indices] = True
    return mask.view_as(scores)


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
