"""What a pruning run returns: one LayerReport per layer and the PruneResult around them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from snows_core.config import PruneConfig

__all__ = ["LayerReport", "PruneResult"]


@dataclass
class LayerReport:
    """One layer's outcome. Losses are the K-window objective on the whole calibration set.

    Attributes:
        name: the layer's qualified module name.
        loss_before: objective with the mask applied to the dense weights (mask only).
        loss_after: objective with the final weights (never above loss_before).
        newton_steps: Newton steps taken.
        cg_iters: CG iterations summed over the Newton steps.
        seconds: wall time for the layer.
        peak_mem: peak bytes during the layer (GPU allocator on CUDA, process RSS on CPU).
        kept: weights kept; numel: weights in the layer.
        window: the counted operations the objective spans, "node:kind" from the layer on.
        loss_warm: objective at SNOWS's starting point: the least-squares warm start or the mask
            method's own weights, whichever is lower (None without either).
        skipped: why the layer stayed dense (None when pruned).
        stage: the pass over the network this report belongs to (1 of `PruneConfig.stages`).
    """

    name: str
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    newton_steps: int = 0
    cg_iters: int = 0
    seconds: float = 0.0
    peak_mem: int = 0
    kept: int = 0
    numel: int = 0
    window: list[str] = field(default_factory=list)
    loss_warm: float | None = None
    skipped: str | None = None
    stage: int = 1

    @property
    def sparsity(self) -> float:
        """Fraction of the layer's weights that are zero by the mask."""
        return 1.0 - self.kept / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sparsity": self.sparsity}


@dataclass
class PruneResult:
    """The pruned copy, its masks (True = kept) and a report per layer, skipped layers included.

    `layers` reports the last pass (one report per pruned layer); `passes` every pass in order
    (equal to `layers` with one stage). `allocation` holds each layer's final sparsity as allocated
    and, for the sensitivity allocation, its scan.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]
    layers: list[LayerReport]
    config: PruneConfig
    seconds: float = 0.0
    skipped: list[LayerReport] = field(default_factory=list)
    passes: list[LayerReport] = field(default_factory=list)
    allocation: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Zeroed fraction over the pruned layers' weights."""
        kept = sum(r.kept for r in self.layers)
        total = sum(r.numel for r in self.layers)
        return 1.0 - kept / total if total else 0.0

    def save(self, out_dir: Path, extra: dict[str, Any] | None = None) -> None:
        """Write model.safetensors (pruned weights), masks.safetensors and report.json into `out_dir`."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(out_dir / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in self.masks.items()}, str(out_dir / "masks.safetensors"))
        (out_dir / "report.json").write_text(json.dumps({**self.summary(), **(extra or {})}, indent=2))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready report: config, per-layer reports and totals."""
        return {
            "config": self.config.to_dict(),
            "seconds": self.seconds,
            "sparsity": self.sparsity,
            "layers": [r.to_dict() for r in self.layers],
            "skipped": [r.to_dict() for r in self.skipped],
            "passes": [r.to_dict() for r in self.passes] if len(self.passes) > len(self.layers) else [],
            "allocation": self.allocation,
        }
