"""Accuracy and sparsity measurements."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["top1", "layer_sparsity"]


@torch.no_grad()
def top1(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> float:
    """Fraction of images whose arg-max logit is the label."""
    model = model.eval().to(device)
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size].to(device))  # (B, classes)
        correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
        if on_progress:
            on_progress(min(start + batch_size, images.shape[0]), images.shape[0])
    return correct / images.shape[0]


def layer_sparsity(model: nn.Module, names: list[str]) -> dict[str, float]:
    """Fraction of exactly-zero weights in each named layer."""
    modules = dict(model.named_modules())
    return {n: float((modules[n].weight == 0).float().mean()) for n in names}
