"""What the Learn page shows, computed here so the UI holds no tensors.

- `mask_example`: one small weight matrix pruned unstructured and N:M (groups of M along the inputs);
- `window_chains`: for each pruned layer of a model, the chain of operations its K-window spans;
- `LEARN_SPEC`: the tiny run whose Newton-CG solve the page steps through (it goes to the queue).
"""

from __future__ import annotations

import pandas as pd
import torch

from snows_core.config import PruneConfig
from snows_core.lookahead import build_window, prunable_nodes, trace
from snows_core.masks import nm_mask, unstructured_mask
from snows_core.models import create_model
from snows_core.prune import default_layers
from snows_core.runs.spec import RunSpec

__all__ = ["mask_example", "window_chains", "LEARN_SPEC"]

LEARN_SPEC = RunSpec(
    model="mlp",
    config=PruneConfig(
        sparsity=0.9, mask="magnitude", k=2, n_calib=128, newton_passes=6, cg_iters=10, layers=("3",), seed=0
    ),
    eval_size=1000,
)


def mask_example(pattern: str, sparsity: float = 0.5, rows: int = 8, cols: int = 16, seed: int = 0) -> pd.DataFrame:
    """A (rows, cols) magnitude mask (1 = kept) of seeded random weights: "unstructured" at `sparsity`, or "N:M"."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))  # (out, in)
    if pattern == "unstructured":
        keep = unstructured_mask(weight.abs(), sparsity)
    else:
        n, m = (int(part) for part in pattern.split(":"))
        keep = nm_mask(weight.abs(), n, m)
    return pd.DataFrame(keep.int().numpy(), index=[f"out {i}" for i in range(rows)], columns=list(range(cols)))


def window_chains(model: str, k: int) -> pd.DataFrame:
    """One row per layer SNOWS prunes by default: the counted operations its K-window reaches."""
    gm = trace(create_model(model, pretrained=False))
    nodes = {n.target: n for n in prunable_nodes(gm)}
    rows = []
    for name in default_layers(gm):
        window = build_window(gm, nodes[name], k)
        rows.append(
            {
                "layer": name,
                "reaches": " → ".join(f"{node} ({kind})" for node, kind in window.ops),
                "operations": len(window.ops) - 1,
            }
        )
    return pd.DataFrame(rows, columns=["layer", "reaches", "operations"])
