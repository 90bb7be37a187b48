"""RunSpec: one pruning run, frozen and validated, with a JSON round-trip and a stable content hash.

It is the only thing that crosses from the UI or CLI to a worker and to disk. Validation happens when
it is built, so a bad submission is refused before anything is stored; K is 0 for reconstructions that have
no depth (none, lstsq), so the same work has one hash whichever entry point built it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from snows_core.config import PruneConfig, pop_schema_version
from snows_core.io import catalog

__all__ = ["RunSpec", "SPEC_SCHEMA_VERSION", "RUN_KINDS"]

SPEC_SCHEMA_VERSION = 1
RUN_KINDS = ("prune", "sensitivity")  # what a run computes; `runs.pipeline` registers one runner for each


@dataclass(frozen=True)
class RunSpec:
    """A model, a dataset, a PruneConfig and how to evaluate the result.

    Attributes:
        model: a zoo name, or timm:NAME / torchvision:NAME.
        dataset: a registered dataset; None means the model's own.
        config: how to prune.
        eval_size: test images scored (None: the whole test split).
        trajectory: also score the network after every pruned layer (the pruning trajectory).
        checkpoint: weights to load instead of the shipped ones.
        data_root: where the dataset lives (an .npz or a folder), when not the default.
        kind: "prune" (prune, reconstruct, evaluate), or "sensitivity": each layer pruned alone at a grid of
            sparsities with the config's mask method and reconstruction, measured (`config.sparsity` is the
            target its suggested per-layer sparsities reach). Stored only when not "prune", so every spec
            from before kinds existed keeps its hash.
        measure_speed: after pruning, time the dense and the pruned model and size their weights
            (`snows_core.measure.speed.measure_speed`); stored only when true, for the same reason.
    """

    model: str
    config: PruneConfig = field(default_factory=PruneConfig)
    dataset: str | None = None
    eval_size: int | None = 1000
    trajectory: bool = False
    checkpoint: str | None = None
    data_root: str | None = None
    kind: str = "prune"
    measure_speed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.config, PruneConfig):
            raise ValueError(f"config must be a PruneConfig; got {type(self.config).__name__}")
        if self.config.reconstruction != "snows" and self.config.k != 0:
            # K only matters to SNOWS: one spelling per piece of work, so every entry point hashes it alike
            object.__setattr__(self, "config", dataclasses.replace(self.config, k=0))
        if not isinstance(self.model, str):
            raise ValueError(f"model must be a name; got {self.model!r}")
        if catalog.hub_of(self.model) is None:
            catalog.entry("model", self.model)  # raises ValueError naming "model" and the known names
        if self.dataset is None:
            object.__setattr__(self, "dataset", catalog.default_dataset(self.model))
        datasets = catalog.names("dataset")
        if self.dataset not in datasets:
            raise ValueError(f"dataset must be one of {', '.join(map(repr, datasets))}; got {self.dataset!r}")
        if self.eval_size is not None and (
            isinstance(self.eval_size, bool) or not isinstance(self.eval_size, int) or self.eval_size < 1
        ):
            raise ValueError(f"eval_size must be a positive integer or None; got {self.eval_size!r}")
        if not isinstance(self.trajectory, bool):
            raise ValueError(f"trajectory must be true or false; got {self.trajectory!r}")
        if self.kind not in RUN_KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, RUN_KINDS))}; got {self.kind!r}")
        if not isinstance(self.measure_speed, bool):
            raise ValueError(f"measure_speed must be true or false; got {self.measure_speed!r}")
        if self.measure_speed and self.kind != "prune":
            raise ValueError(f"measure_speed needs kind 'prune' (a {self.kind} run keeps no pruned model)")
        if self.kind == "sensitivity" and (self.config.nm or catalog.entry("mask", self.config.mask)["user_supplied"]):
            raise ValueError(
                "kind 'sensitivity' needs pattern 'unstructured' and a mask method that chooses masks; "
                f"got pattern {self.config.pattern!r}, mask {self.config.mask!r}"
            )

    def inputs_key(self) -> tuple[Any, ...]:
        """What `door.check_runnable` reads: specs with equal keys pass or fail it together (a sweep checks one
        each; the memory forecast is checked for every spec)."""
        c = self.config
        return (self.model, self.checkpoint, self.dataset, self.data_root, c.n_calib, c.device)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SPEC_SCHEMA_VERSION,
            "model": self.model,
            "dataset": self.dataset,
            "config": self.config.to_dict(),
            "eval_size": self.eval_size,
            "trajectory": self.trajectory,
            "checkpoint": self.checkpoint,
            "data_root": self.data_root,
            **({"kind": self.kind} if self.kind != "prune" else {}),
            **({"measure_speed": True} if self.measure_speed else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Inverse of `to_dict`; a dict of the wrong shape (unknown or missing fields, a config that is no
        object) is refused with one line naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a run spec must be an object; got {type(data).__name__}")
        data = pop_schema_version(data, SPEC_SCHEMA_VERSION)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run spec field(s) {unknown}; known fields: {sorted(known)}")
        if "model" not in data:
            raise ValueError("a run spec needs a model")
        config = data.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"a run spec's config must be an object; got {type(config).__name__}")
        data["config"] = PruneConfig.from_dict(config)
        return cls(**data)

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON: equal specs hash alike on any machine."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
