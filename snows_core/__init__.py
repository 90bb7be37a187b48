"""snows_core: one-shot pruning of vision networks with SNOWS K-deep Newton-CG reconstruction.

Lucas & Mazumder, "Preserving Deep Representations in One-Shot Pruning: A Hessian-Free Second-Order
Optimization Framework", ICLR 2025 (arXiv 2411.18376).

The package by floor (each imports only the floors below it):
- `engine`: one layer's problem and its solution (graph, window, problem, columns, tangent, solver, reconstruct);
- `masks`: which weights each layer keeps (the method registry, scored methods, SparseGPT, OBC, allocations);
- `prune` and `scan`: the loops over the network (prune_model, sensitivity_analysis);
- `models`, `io` (checkpoints, datasets, the catalog) and `measure` (speed, memory, accuracy) beside them;
- `runs` (the run store, queue and workers), `dashboard` (what the pages compute) and `cli` on top;
- `config`, `events`, `report` and `registry`: the plumbing every floor shares.
"""

import importlib
import importlib.abc
import importlib.util
import sys
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
    "list_reconstructions": "snows_core.engine.reconstruct",
    "register_reconstruction": "snows_core.engine.reconstruct",
}

#: Modules that moved into the subpackages, under their old import paths (`import snows_core.reconstruct` and
#: `from snows_core.data import load_dataset` keep working). Each old path is the new module itself; the old
#: lookahead module, split in two, is served by a module that reads both.
MOVED = {
    "snows_core.lookahead": ("snows_core.engine.graph", "snows_core.engine.window"),
    "snows_core.reconstruct": ("snows_core.engine.reconstruct", "snows_core.engine.problem"),
    "snows_core.tangent": ("snows_core.engine.tangent",),
    "snows_core.solver": ("snows_core.engine.solver",),
    "snows_core.columns": ("snows_core.engine.columns",),
    "snows_core.sparsegpt": ("snows_core.masks.sparsegpt", "snows_core.masks.obs"),
    "snows_core.obc": ("snows_core.masks.obc",),
    "snows_core.allocation": ("snows_core.masks.allocation",),
    "snows_core.sensitivity": ("snows_core.scan",),
    "snows_core.checkpoint": ("snows_core.io.checkpoint",),
    "snows_core.data": ("snows_core.io.data",),
    "snows_core.datafiles": ("snows_core.io.datafiles",),
    "snows_core.catalog": ("snows_core.io.catalog",),
    "snows_core.speed": ("snows_core.measure.speed",),
    "snows_core.speed_report": ("snows_core.measure.speed_report",),
    "snows_core.memory": ("snows_core.measure.memory",),
    "snows_core.metrics": ("snows_core.measure.metrics",),
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path of `MOVED`: one new module is served as it is, several through one that
    reads each name from the first of them that has it."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: Any) -> Any:
        targets = [importlib.import_module(name) for name in MOVED[spec.name]]
        if len(targets) == 1:
            self.spec_of_target = targets[0].__spec__  # the import system sets the old path's spec on it next
            return targets[0]
        return _Merged(spec.name, targets)

    def exec_module(self, module: Any) -> None:
        if not isinstance(module, _Merged):
            module.__spec__ = self.spec_of_target  # the module keeps its own name, spec and loader


class _Merged(type(sys)):
    def __init__(self, name: str, targets: list[Any]) -> None:
        super().__init__(name, f"moved to {', '.join(t.__name__ for t in targets)}")
        self._targets = targets

    def __getattr__(self, name: str) -> Any:
        for target in self._targets:
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'snows_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*_EXPORTS, "__version__"]
