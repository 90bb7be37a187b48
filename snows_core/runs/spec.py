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
from pathlib import Path
from typing import Any

from snows_core.config import PruneConfig, pop_schema_version

__all__ = ["RunSpec", "SPEC_SCHEMA_VERSION"]

SPEC_SCHEMA_VERSION = 1


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
    """

    model: str
    config: PruneConfig = field(default_factory=PruneConfig)
    dataset: str | None = None
    eval_size: int | None = 1000
    trajectory: bool = False
    checkpoint: str | None = None
    data_root: str | None = None

    def __post_init__(self) -> None:
        from snows_core.data import list_datasets
        from snows_core.models import default_dataset, model_info

        if not isinstance(self.config, PruneConfig):
            raise ValueError(f"config must be a PruneConfig; got {type(self.config).__name__}")
        if self.config.reconstruction != "snows" and self.config.k != 0:
            # K only matters to SNOWS: one spelling per piece of work, so every entry point hashes it alike
            object.__setattr__(self, "config", dataclasses.replace(self.config, k=0))
        hub, _, name = self.model.partition(":") if isinstance(self.model, str) else ("", "", "")
        if not (hub in ("timm", "torchvision") and name):
            model_info(self.model)  # raises ValueError naming "model" and the known names
        if self.dataset is None:
            object.__setattr__(self, "dataset", default_dataset(self.model))
        if self.dataset not in list_datasets():
            raise ValueError(f"dataset must be one of {', '.join(map(repr, list_datasets()))}; got {self.dataset!r}")
        if self.eval_size is not None and (
            isinstance(self.eval_size, bool) or not isinstance(self.eval_size, int) or self.eval_size < 1
        ):
            raise ValueError(f"eval_size must be a positive integer or None; got {self.eval_size!r}")
        if not isinstance(self.trajectory, bool):
            raise ValueError(f"trajectory must be true or false; got {self.trajectory!r}")

    def check_inputs(self) -> None:
        """Refuse, before anything is stored, a run that cannot start on this machine: a device it does not
        have, a hub model it cannot build, a checkpoint that is not weights of this architecture (read
        weights-only, keys and shapes checked), shipped weights that are missing, data that is not there
        or smaller than the calibration sample."""
        from snows_core.data import load_dataset
        from snows_core.models import check_hub_name, create_model, model_info
        from snows_core.prune import resolve_device

        resolve_device(self.config.device)
        check_hub_name(self.model)
        if self.checkpoint is not None:
            if not Path(self.checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint {self.checkpoint} does not exist")
            create_model(self.model, pretrained=False, checkpoint=self.checkpoint)  # raises naming the bad key
        elif ":" not in self.model and model_info(self.model).weights is None:
            hint = model_info(self.model).checkpoint_hint
            raise ValueError(f"model {self.model} ships no weights: give a checkpoint. {hint}".strip())
        train = load_dataset(self.dataset, "train", self.data_root)  # raises naming what to install or where
        if self.config.n_calib > len(train):
            raise ValueError(f"n_calib is {self.config.n_calib} but the {self.dataset} train split holds {len(train)}")

    def inputs_key(self) -> tuple[Any, ...]:
        """What `check_inputs` reads: specs with equal keys pass or fail it together (a sweep checks one each)."""
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        data = pop_schema_version(data, SPEC_SCHEMA_VERSION)
        data["config"] = PruneConfig.from_dict(data.get("config", {}))
        return cls(**data)

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON: equal specs hash alike on any machine."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
