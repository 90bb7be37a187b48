"""What each mask kept: finished runs' stored masks compared layer by layer, as DataFrames (no Streamlit).

A run stores its masks in masks.safetensors (True = kept), so comparing what two mask methods chose needs no
re-run. Read as NumPy (the dashboard holds frames, never tensors):

- `overlap_frame`: per layer and pair of runs, the kept weights they share: the fraction of each run's kept
  weights the other also kept, and the Jaccard index |A and B| / |A or B|;
- `kept_pattern_frame`: for one layer, each run's kept count per (output, input) channel cell, a conv's kernel
  positions summed, and how many of them no other run chose kept ("only this run");
- `layer_sparsity_frame`: each run's achieved sparsity per layer (its allocation, as the masks show it);
- `comparison_table`: the Compare page's table with readable names, percentages and rounded seconds.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from snows_core.runs.store import RunStore

__all__ = [
    "load_masks",
    "overlap_frame",
    "kept_pattern_frame",
    "layer_sparsity_frame",
    "compare_masks",
    "layer_pattern",
    "comparison_table",
]


def load_masks(store: RunStore, run_id: str) -> dict[str, np.ndarray]:
    """A finished run's masks by layer name, bool arrays shaped like the weights (empty when it stored none)."""
    path = Path(store.run_dir(run_id)) / "masks.safetensors"
    return {name: mask.astype(bool) for name, mask in load_file(str(path)).items()} if path.is_file() else {}


OVERLAP_COLUMNS = ["layer", "pair", "kept_a", "kept_b", "shared", "shared_of_a", "shared_of_b", "jaccard"]


def _common_layers(masks: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The layers every run pruned with one shape, in the first run's order (none without runs)."""
    if not masks:
        return []
    first, *others = masks.values()
    return [n for n in first if all(n in m and m[n].shape == first[n].shape for m in others)]


def overlap_frame(masks: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Per layer (in order) and pair of runs (labels as given): kept counts, shared, `shared_of_a`,
    `shared_of_b` (the share of each run's kept weights the other kept too) and `jaccard`."""
    rows = []
    for layer in _common_layers(masks):
        for a, b in combinations(masks, 2):
            ma, mb = masks[a][layer], masks[b][layer]
            kept_a, kept_b, shared = int(ma.sum()), int(mb.sum()), int((ma & mb).sum())
            union = int((ma | mb).sum())
            rows.append(
                {
                    "layer": layer,
                    "pair": f"{a} vs {b}",
                    "kept_a": kept_a,
                    "kept_b": kept_b,
                    "shared": shared,
                    "shared_of_a": shared / kept_a if kept_a else float("nan"),
                    "shared_of_b": shared / kept_b if kept_b else float("nan"),
                    "jaccard": shared / union if union else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def kept_pattern_frame(masks: dict[str, dict[str, np.ndarray]], layer: str, max_side: int = 64) -> pd.DataFrame:
    """One layer's kept weights per run, long format: run, out, in (the first channel of the cell), kept and
    only (kept by this run and by no other run given), each of `positions` weights per cell: a conv's kernel
    positions, and with more than `max_side` channels a side, that many channels binned into one cell."""
    stack = np.stack([m[layer].reshape(*m[layer].shape[:2], -1) for m in masks.values()])  # (runs, out, in, kk)
    only = stack & (stack.sum(0) == 1)[None]  # (runs, out, in, kk): no other run kept it
    _, out, inputs, kk = stack.shape
    bin_out, bin_in = -(-out // max_side), -(-inputs // max_side)  # channels per cell
    kept, alone = (_binned(a.sum(-1), bin_out, bin_in) for a in (stack, only))  # (runs, out', in') each
    out_idx, in_idx = np.meshgrid(np.arange(kept.shape[1]) * bin_out, np.arange(kept.shape[2]) * bin_in, indexing="ij")
    frames = [
        pd.DataFrame(
            {
                "run": run,
                "out": out_idx.ravel(),
                "in": in_idx.ravel(),
                "kept": kept[i].ravel(),
                "only": alone[i].ravel(),
                "positions": kk * bin_out * bin_in,
            }
        )
        for i, run in enumerate(masks)
    ]
    return pd.concat(frames, ignore_index=True)


def _binned(counts: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(runs, out, in) summed over blocks of rows x cols (zero-padded at the ends): (runs, out/rows, in/cols)."""
    runs, out, inputs = counts.shape
    padded = np.zeros((runs, -(-out // rows) * rows, -(-inputs // cols) * cols), dtype=np.int64)
    padded[:, :out, :inputs] = counts
    return padded.reshape(runs, padded.shape[1] // rows, rows, padded.shape[2] // cols, cols).sum((2, 4))


def layer_sparsity_frame(masks: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Each run's achieved sparsity per layer (the fraction of the layer's weights its mask zeroes)."""
    rows = [
        {"run": run, "layer": layer, "sparsity": 1.0 - float(mask.mean()), "weights": int(mask.size)}
        for run, by_layer in masks.items()
        for layer, mask in by_layer.items()
    ]
    return pd.DataFrame(rows, columns=["run", "layer", "sparsity", "weights"])


def _stored(store: RunStore, runs: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    """Each labelled run's masks ({label: run id}), runs without stored masks left out."""
    loaded = {label: load_masks(store, run_id) for label, run_id in runs.items()}
    return {label: masks for label, masks in loaded.items() if masks}


def compare_masks(store: RunStore, runs: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """From the stored masks of `runs` ({label: run id}): (`overlap_frame`, `layer_sparsity_frame`, the layers
    all of them pruned alike); empty frames when fewer than two runs stored masks."""
    masks = _stored(store, runs)
    if len(masks) < 2:
        return pd.DataFrame(columns=OVERLAP_COLUMNS), layer_sparsity_frame({}), []
    return overlap_frame(masks), layer_sparsity_frame(masks), _common_layers(masks)


def layer_pattern(store: RunStore, runs: dict[str, str], layer: str) -> pd.DataFrame:
    """`kept_pattern_frame` of `layer` from the stored masks of `runs` ({label: run id})."""
    return kept_pattern_frame(_stored(store, runs), layer)


TABLE_COLUMNS = {  # runs_frame column -> the Compare table's name
    "id": "Run",
    "model": "Model",
    "label": "Setting",
    "sparsity": "Sparsity (%)",
    "top1_dense": "Dense top-1 (%)",
    "top1_mask_only": "Mask only (%)",
    "top1_final": "Final top-1 (%)",
    "gain": "Gain (points)",
    "delta_vs_first": "Final vs first (points)",
    "seconds": "Seconds",
    "seconds_vs_first": "Seconds vs first",
}


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs (rows of `runs_frame`, the first the reference) as the Compare table: readable column names,
    accuracies and sparsity in percent and differences in points (2 decimals), seconds rounded to whole ones."""
    first = runs.iloc[0]
    table = runs.assign(
        delta_vs_first=runs["top1_final"] - first["top1_final"],
        seconds_vs_first=runs["seconds"] - first["seconds"],
    )[list(TABLE_COLUMNS)]
    percent = ["sparsity", "top1_dense", "top1_mask_only", "top1_final", "gain", "delta_vs_first"]
    table[percent] = (table[percent].astype(float) * 100).round(2)
    table[["seconds", "seconds_vs_first"]] = table[["seconds", "seconds_vs_first"]].astype(float).round(0)
    return table.rename(columns=TABLE_COLUMNS).reset_index(drop=True)
