"""Model registry (timm style): `@register_model` on a factory, one `create_model`, `list_models`.

Three kinds of names:
- zoo models trained by this project, weights shipped in assets/ with a model card (offline);
- architectures that take a checkpoint file (``resnet20_cifar10`` and its deeper siblings);
- ``timm:NAME`` and ``torchvision:NAME`` for ImageNet models: pretrained weights download when
  online; offline a clear error says so, and ``pretrained=False`` still builds the architecture.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from snows_core.io.catalog import ASSETS, default_dataset, hub_of
from snows_core.io.checkpoint import first_line, load_weights
from snows_core.registry import Registry

__all__ = [
    "ASSETS",
    "ModelInfo",
    "register_model",
    "create_model",
    "check_hub_name",
    "list_models",
    "model_info",
    "default_dataset",
    "input_size",
]

HUB_INPUT_SIZE = (3, 224, 224)


@dataclass(frozen=True)
class ModelInfo:
    """Metadata shown next to a model's name; `card` is the shipped model card, if any."""

    name: str
    factory: Callable[..., nn.Module] = field(repr=False)
    input_size: tuple[int, int, int]
    dataset: str
    source: str = ""
    weights: str | None = None  # file in assets/ holding the trained weights
    checkpoint_hint: str = ""  # where to get weights when none ship

    @property
    def card(self) -> dict[str, Any]:
        path = ASSETS / f"{self.name}.json"
        return json.loads(path.read_text()) if self.weights and path.is_file() else {}

    @property
    def top1(self) -> float | None:
        """Dense top-1 on the dataset's test set, from the model card (None when unknown)."""
        return self.card.get("test_top1")

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.factory().parameters())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "dataset": self.dataset,
            "top1": self.top1,
            "params": self.params,
            "source": self.source,
            "pretrained": self.weights is not None,
        }


_MODELS: Registry[ModelInfo] = Registry("model", hint=", or timm:NAME / torchvision:NAME")


def register_model(
    name: str,
    *,
    input_size: tuple[int, int, int],
    dataset: str,
    source: str = "",
    weights: str | None = None,
    checkpoint_hint: str = "",
) -> Callable:
    """Decorator registering a factory `fn(**kwargs) -> nn.Module` under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> ModelInfo:
        return ModelInfo(name, fn, input_size, dataset, source, weights=weights, checkpoint_hint=checkpoint_hint)

    return _MODELS.decorator(name, wrap)


def model_info(name: str) -> ModelInfo:
    return _MODELS.get(name)


def input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) a model takes: its registered size, or ImageNet's 224 x 224 RGB for hub names."""
    return HUB_INPUT_SIZE if hub_of(name) else model_info(name).input_size


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern."""
    return [n for n in _MODELS.names() if fnmatch.fnmatch(n, pattern)]


def create_model(name: str, pretrained: bool = True, checkpoint: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build `name` in eval mode with its trained weights.

    Args:
        name: a registered name, or "timm:NAME" / "torchvision:NAME".
        pretrained: load the shipped (or, for hub names, downloaded) weights; False = random init.
        checkpoint: a safetensors file or state_dict to load instead (never unpickles code).
    """
    hub = hub_of(name)
    if hub:
        model = _hub_model(hub, name.partition(":")[2], pretrained and checkpoint is None, **kwargs)
    else:
        info = model_info(name)
        model = info.factory(**kwargs)
        if checkpoint is None and pretrained:
            if info.weights is None:
                raise ValueError(f"{name} ships no weights: pass checkpoint=PATH. {info.checkpoint_hint}".strip())
            checkpoint = ASSETS / info.weights
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def check_hub_name(name: str) -> None:
    """Refuse a timm:NAME / torchvision:NAME that the installed library does not know (nothing downloads)."""
    hub, hub_name = hub_of(name), name.partition(":")[2]
    if hub == "timm":
        import timm

        known = timm.is_model(hub_name)
    elif hub == "torchvision":
        import torchvision

        known = hub_name in torchvision.models.list_models()
    else:
        return
    if not known:
        raise ValueError(f"model {name!r}: {hub} {_installed_version(hub)} has no model {hub_name!r}")


def _installed_version(hub: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(hub)


def _hub_model(hub: str, name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    try:
        if hub == "timm":
            import timm

            return timm.create_model(name, pretrained=pretrained, **kwargs)
        import torchvision

        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        if not pretrained:
            raise ValueError(f"{hub} has no model {name!r}: {err}") from err
        raise ValueError(
            f"could not download pretrained weights for {hub}:{name} (offline?): {first_line(err)}. "
            f"Use pretrained=False to explore the architecture with random weights."
        ) from err
