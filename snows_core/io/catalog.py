"""The registries' names and facts without importing torch: a snapshot the door reads in milliseconds.

Checking a spec before it is stored (config names, the model's weights and state-dict shapes, its memory
footprint) must stay light: importing torch and timm costs seconds per `submit`. So the facts of every
built-in model, dataset, mask method, allocation and reconstruction are written to ``assets/catalog.json``
by ``python -m snows_core.io.catalog`` (a test fails when the snapshot is stale).

A lookup reads the snapshot for the names it holds and the live registry for any other (a plug-in
registered in this process; an unknown name gets the registry's own "must be one of" error). The list
of names is the live registry's when its module is already imported here, so plug-ins count.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ASSETS",
    "SNAPSHOT",
    "HUBS",
    "KINDS",
    "Footprint",
    "names",
    "entry",
    "hub_of",
    "default_dataset",
    "footprint",
    "build_snapshot",
]

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SNAPSHOT = ASSETS / "catalog.json"
HUBS = ("timm", "torchvision")


@dataclass(frozen=True)
class Footprint:
    """What a model's size says about a run's memory, from one forward pass of one image."""

    activation_bytes_per_image: int  # all leaf-module outputs of one image
    largest_activation_per_image: int
    param_bytes: int
    layers: int  # pruned by default (every Conv2d/Linear but the first and the last)


@dataclass(frozen=True)
class Kind:
    """One registry: the module that fills it, its `names()` and `get(name)` functions, and what the snapshot
    keeps of an entry (a function, or the name of one in that module when describing needs torch)."""

    module: str
    list_fn: str
    get_fn: str
    describe: Callable[[Any], dict[str, Any]] | str

    def describe_entry(self, entry: Any) -> dict[str, Any]:
        describe = getattr(_live(self.module), self.describe) if isinstance(self.describe, str) else self.describe
        return describe(entry)


def _describe_mask(method: Any) -> dict[str, Any]:
    return {"user_supplied": method.user_supplied, "refuses_layers": method.unsupported is not None}


KINDS: dict[str, Kind] = {
    "model": Kind("snows_core.models", "list_models", "model_info", "describe_model"),
    "dataset": Kind("snows_core.io.data", "list_datasets", "dataset_info", lambda d: {"num_classes": d.num_classes}),
    "mask": Kind("snows_core.masks", "list_mask_methods", "get_mask_method", _describe_mask),
    "allocation": Kind("snows_core.masks.allocation", "list_allocations", "get_allocation", lambda a: {}),
    "reconstruction": Kind("snows_core.engine.reconstruct", "list_reconstructions", "get_reconstruction", lambda r: {}),
}


@functools.cache
def _snapshot() -> dict[str, dict[str, dict[str, Any]]]:
    return json.loads(SNAPSHOT.read_text()) if SNAPSHOT.is_file() else {}


def _live(module: str) -> Any:
    return importlib.import_module(module)


def names(kind: str) -> list[str]:
    """The registered names of `kind` ("model", "dataset", "mask", "allocation", "reconstruction")."""
    spec = KINDS[kind]
    if spec.module in sys.modules or kind not in _snapshot():
        return getattr(_live(spec.module), spec.list_fn)()
    return list(_snapshot()[kind])


def entry(kind: str, name: str) -> dict[str, Any]:
    """The snapshot's facts about `name`, or the live registry's; ValueError naming the field when unknown."""
    known = _snapshot().get(kind, {})
    if isinstance(name, str) and name in known:
        return known[name]
    spec = KINDS[kind]
    return spec.describe_entry(getattr(_live(spec.module), spec.get_fn)(name))


def hub_of(model: str) -> str | None:
    """The hub of a name such as timm:resnet18 ("timm" or "torchvision"); None for a registered name."""
    hub, _, name = model.partition(":")
    return hub if hub in HUBS and name else None


def default_dataset(model: str) -> str:
    """The dataset a model is pruned and scored on unless told otherwise: its own, or an image folder for hub names."""
    return "imagefolder" if hub_of(model) else entry("model", model)["dataset"]


def footprint(model: str) -> Footprint:
    """The memory footprint of a registered model (hub models are measured by `runs.door.model_footprint`)."""
    return Footprint(**entry("model", model)["footprint"])


def build_snapshot() -> dict[str, dict[str, dict[str, Any]]]:
    """Every built-in registry's names and facts, read live (imports torch; builds every zoo model)."""
    snapshot = {}
    for kind, spec in KINDS.items():
        module = _live(spec.module)
        snapshot[kind] = {name: spec.describe_entry(getattr(module, spec.get_fn)(name)) for name in names(kind)}
    return snapshot


def dumps(snapshot: dict[str, Any]) -> str:
    """The snapshot as indented JSON with each shape on one line (a reviewable diff when a model changes)."""
    return re.sub(r"\[([-\d,\s]*)\]", _one_line, json.dumps(snapshot, indent=1)) + "\n"


def _one_line(match: re.Match) -> str:
    return "[" + ", ".join(part.strip() for part in match.group(1).split(",")) + "]"


def main() -> None:
    """Write the snapshot (``python -m snows_core.io.catalog``) after adding or changing a registered entry."""
    SNAPSHOT.write_text(dumps(build_snapshot()))
    print(f"wrote {SNAPSHOT}")


if __name__ == "__main__":
    main()
