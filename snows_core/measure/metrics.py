"""Accuracy measurements, and the mean with its confidence interval that every figure over samples reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from snows_core.io.data import stack_images

__all__ = ["top1", "evaluate", "mean_interval"]

# Student's t, 97.5% quantile, by degrees of freedom (1..30): a two-sided 95% interval for a mean
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
_T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

Progress = Callable[[int, int], None]


@torch.no_grad()
def top1(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    on_progress: Progress | None = None,
) -> float:
    """Fraction of images whose arg-max logit is the label."""
    return _accuracies(model, images.shape[0], lambda s: (images[s], labels[s]), batch_size, device, on_progress)[0]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    on_progress: Progress | None = None,
) -> dict[str, float]:
    """Top-1 (and top-5 when there are at least 10 classes) on the first `limit` items of `dataset`."""
    n = min(len(dataset), limit) if limit else len(dataset)
    fetch = lambda s: stack_images(dataset, torch.arange(s.start, s.stop))  # noqa: E731
    first, fifth = _accuracies(model, n, fetch, batch_size, device, on_progress)
    return {"top1": first, **({"top5": fifth} if fifth is not None else {}), "images": n}


def _accuracies(model, n, fetch, batch_size, device, on_progress) -> tuple[float, float | None]:
    model = model.eval().to(device)
    correct1 = correct5 = 0
    has_top5 = True
    for start in range(0, n, batch_size):
        x, y = fetch(slice(start, min(start + batch_size, n)))
        logits = model(x.to(device)).cpu()  # (B, classes)
        correct1 += int((logits.argmax(1) == y).sum())
        has_top5 = has_top5 and logits.shape[1] >= 10
        if has_top5:
            correct5 += int((logits.topk(5, dim=1).indices == y[:, None]).any(1).sum())
        if on_progress:
            on_progress(min(start + batch_size, n), n)
    return correct1 / n, (correct5 / n if has_top5 else None)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its two-sided 95% Student-t interval); the half-width is nan for one value."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))
