"""Model registry (timm style): `@register_model` on a factory, one `create_model`, `list_models`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from snows_core.models.checkpoint import load_weights

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata shown next to a model's name."""

    name: str
    factory: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    dataset: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, input_size: tuple[int, int, int], dataset: str, source: str = "", **extra: Any):
    """Decorator registering a factory `fn(**kwargs) -> nn.Module` under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = ModelInfo(name, fn, input_size, dataset, source, extra)
        return fn

    return wrap


def model_info(name: str) -> ModelInfo:
    if name not in _MODELS:
        raise ValueError(f"model must be one of {', '.join(map(repr, list_models()))}; got {name!r}")
    return _MODELS[name]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, pretrained: bool = False, checkpoint: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model in eval mode, loading `checkpoint` (safetensors or a state_dict) if given."""
    model = model_info(name).factory(**kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()
