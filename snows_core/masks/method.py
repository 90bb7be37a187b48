"""The mask-method registry: how a method is registered, looked up and listed.

A method is either *scored* (it scores every weight of a layer as the pass starts; selection keeps the best
under the pass's target) or *in-loop* (it runs just before the layer is reconstructed, on the layer problem's
pruned-path inputs, and returns the mask together with weights it moved). Both take the `LayerProblem`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from snows_core.config import PruneConfig
from snows_core.engine.columns import columns_unsupported
from snows_core.engine.problem import LayerProblem
from snows_core.registry import Registry

__all__ = [
    "MaskMethod",
    "MaskChoice",
    "register_mask_method",
    "get_mask_method",
    "list_mask_methods",
    "layer_refusal",
]


@dataclass
class MaskChoice:
    """A layer's mask (True = kept) and, for methods that move weights, the weights they leave."""

    mask: torch.Tensor
    weight: torch.Tensor | None = None


@dataclass(frozen=True)
class MaskMethod:
    """A registered mask method: a scoring function (chosen up front) or a layer-loop chooser."""

    name: str
    score: Callable[[LayerProblem], torch.Tensor] | None
    needs_activations: bool = False
    user_supplied: bool = False
    summary: str = ""
    choose: Callable[[LayerProblem], MaskChoice] | None = None
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
    """Decorator registering `fn(problem: LayerProblem) -> scores` under `name`, or with `in_loop` a chooser
    `fn(problem: LayerProblem) -> MaskChoice` run in the layer loop (`unsupported(module)` says why it refuses
    a layer, checked before any work)."""

    def make(fn: Callable) -> MaskMethod:
        text = summary or (fn.__doc__ or "")
        if in_loop:
            return MaskMethod(name, None, True, summary=text, choose=fn, unsupported=unsupported)
        return MaskMethod(name, fn, needs_activations, user_supplied, text)

    return _MASK_METHODS.decorator(name, make)


get_mask_method = _MASK_METHODS.get
list_mask_methods = _MASK_METHODS.names


def layer_refusal(config: PruneConfig, layers: dict[str, nn.Module]) -> str | None:
    """Why `config` cannot prune one of `layers` ({name: module}): its in-loop mask method refuses it, or the
    method or the reconstruction needs input columns the layer has none of; None when every layer is fine."""
    method = get_mask_method(config.mask)
    needs = [("mask", config.mask)] if method.in_loop else []
    if config.reconstruction == "lstsq" or (config.reconstruction == "snows" and config.warm_start):
        needs.append(("reconstruction", config.reconstruction))
    for name, module in layers.items() if needs else []:
        reason = columns_unsupported(module) or (method.unsupported and method.unsupported(module))
        if reason:
            field_name, value = needs[0]
            return f"{field_name} {value!r} cannot handle layer {name}: {reason}"
    return None
