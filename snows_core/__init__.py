"""snows_core: one-shot pruning of vision networks with SNOWS K-deep Newton-CG reconstruction.

Lucas & Mazumder, "Preserving Deep Representations in One-Shot Pruning: A Hessian-Free Second-Order
Optimization Framework", ICLR 2025 (arXiv 2411.18376).
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {  # name -> module; imported on first use, so `python -m snows_core list` never imports torch
    "SCHEMA_VERSION": "snows_core.config",
    "PruneConfig": "snows_core.config",
    "prune_model": "snows_core.prune",
    "PruneResult": "snows_core.report",
    "LayerReport": "snows_core.report",
    "Event": "snows_core.events",
    "RunStarted": "snows_core.events",
    "LayerStarted": "snows_core.events",
    "NewtonStep": "snows_core.events",
    "LayerDone": "snows_core.events",
    "LayerSkipped": "snows_core.events",
    "RunDone": "snows_core.events",
    "list_mask_methods": "snows_core.masks",
    "register_mask_method": "snows_core.masks",
    "list_reconstructions": "snows_core.reconstruct",
    "register_reconstruction": "snows_core.reconstruct",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'snows_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*_EXPORTS, "__version__"]
