"""A model's facts for the catalog snapshot: its card, state-dict shapes and memory footprint.

The footprint comes from one forward pass of one image with hooks on every leaf module: the sum and the
largest of their output sizes, the parameter bytes, and how many layers are pruned by default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from snows_core.models._registry import ModelInfo

__all__ = ["measure_footprint", "describe_model"]


def measure_footprint(network: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """The footprint of `network` (as `catalog.Footprint` fields) from one forward pass of one image."""
    from snows_core.engine.graph import default_layers, trace

    device = next(network.parameters()).device
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size()))
        for m in network.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            network(torch.zeros(1, *input_size, device=device))  # (1, C, H, W)
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "activation_bytes_per_image": sum(sizes),
        "largest_activation_per_image": max(sizes, default=0),
        "param_bytes": sum(p.numel() * p.element_size() for p in network.parameters()),
        "layers": len(default_layers(trace(network))),
    }


def describe_model(info: ModelInfo) -> dict[str, Any]:
    """What the door needs about a registered model: its card fields, state-dict shapes and footprint."""
    network = info.factory().eval()
    return {
        "dataset": info.dataset,
        "input_size": list(info.input_size),
        "weights": info.weights,
        "checkpoint_hint": info.checkpoint_hint,
        "state": {key: list(value.shape) for key, value in network.state_dict().items()},
        "footprint": measure_footprint(network, info.input_size),
    }
