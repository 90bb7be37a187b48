"""snows_core: one-shot pruning of vision networks with SNOWS K-deep Newton-CG reconstruction.

Lucas & Mazumder, "Preserving Deep Representations in One-Shot Pruning: A Hessian-Free Second-Order
Optimization Framework", ICLR 2025 (arXiv 2411.18376).
"""

from snows_core.config import SCHEMA_VERSION, PruneConfig
from snows_core.events import Event, LayerDone, LayerSkipped, LayerStarted, NewtonStep, RunDone, RunStarted
from snows_core.masks import list_mask_methods, register_mask_method
from snows_core.prune import prune_model
from snows_core.reconstruct import list_reconstructions, register_reconstruction
from snows_core.report import LayerReport, PruneResult

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "PruneConfig",
    "prune_model",
    "PruneResult",
    "LayerReport",
    "Event",
    "RunStarted",
    "LayerStarted",
    "NewtonStep",
    "LayerDone",
    "LayerSkipped",
    "RunDone",
    "list_mask_methods",
    "register_mask_method",
    "list_reconstructions",
    "register_reconstruction",
]
