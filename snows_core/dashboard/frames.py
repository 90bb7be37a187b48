"""Tables the dashboard shows, as pandas DataFrames built from the run store (no Streamlit, no tensors).

- `runs_frame`: one row per run (spec fields, status, progress through the layers, results);
- `steps_frame`, `layers_frame`, `trajectory_frame`: a run's Newton steps, per-layer reports (a row
  per layer and pass) and accuracy after each layer, from its events;
- `cg_frame`, `convergence_frame`, `line_search_frame`: inside each Newton step, the CG solve's residual
  and model decrease per iteration, the loss along cumulative CG iterations, the Armijo trials;
- `allocation_frame`, `scan_frame`: each layer's allocated sparsity, and the sensitivity scan behind it;
- `sensitivity_frame`: a sensitivity run's cells (layer x sparsity: losses, top-1 and its drop, checks);
- `mask_reconstruction_matrix`: top-1 per mask method (rows) and reconstruction (columns: none, lstsq, SNOWS at each K);
- `comparability`: why a set of runs is not a fair comparison (empty when it is).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from snows_core.config import upgrade_config_dict
from snows_core.io.checkpoint import first_line
from snows_core.runs.store import RunStatus, RunStore

__all__ = [
    "RUN_COLUMNS",
    "runs_frame",
    "steps_frame",
    "cg_frame",
    "convergence_frame",
    "line_search_frame",
    "layers_frame",
    "trajectory_frame",
    "allocation_frame",
    "scan_frame",
    "sensitivity_frame",
    "series_label",
    "reconstruction_label",
    "mask_reconstruction_matrix",
    "comparability",
    "seed_repeats",
    "COMPARABLE_ON",
]

RUN_COLUMNS = [
    "id", "kind", "status", "progress", "model", "dataset", "mask", "reconstruction", "k", "pattern", "allocation",
    "stages", "sparsity", "top1_dense", "top1_mask_only", "top1_final", "gain", "seconds", "sparsity_achieved",
    "peak_mem", "layers_done", "layers_total", "n_calib", "seed", "newton_passes", "cg_iters", "eval_size", "sweep_id",
    "created", "version", "calib_digest", "eval_subset", "executor", "scheduler", "imported_from", "torch", "error",
    "label",
]  # fmt: skip

COMPARABLE_ON = {  # column: what differs when it does
    "dataset": "dataset",
    "calib_digest": "calibration images",
    "seed": "seed",
    "eval_subset": "evaluation subset",
    "version": "snows_core version",
    "torch": "torch version",
}


def runs_frame(store: RunStore) -> pd.DataFrame:
    """Every run, newest first, with its progress and (when done) its results."""
    progress, results = store.progress(), store.results()
    rows = [
        _readable_row(run, progress.get(run["id"], (0, None)), results.get(run["id"]) or {}) for run in store.list()
    ]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return frame.iloc[::-1].reset_index(drop=True)


def _readable_row(run: dict[str, Any], progress: tuple[int, int | None], result: dict[str, Any]) -> dict[str, Any]:
    """The run's row, or, when what it stores cannot be read (a newer schema, an imported row of the wrong
    shape), a row of kind "unreadable" with its id, status and the reason: a page never fails for one run, and
    the Runs page can still delete or export it."""
    try:
        return _run_row(run, progress, result)
    except Exception as err:  # whatever one stored row holds
        reason = f"unreadable: {type(err).__name__}: {first_line(err)}"
        row = dict.fromkeys(RUN_COLUMNS)
        spec = run.get("spec") if isinstance(run.get("spec"), dict) else {}
        row |= {"id": run.get("id"), "kind": "unreadable", "status": run.get("status"), "progress": 0.0}
        row |= {"model": str(spec.get("model", "?")), "created": _utc(run.get("created")), "error": reason}
        return row | {"label": reason}


def _run_row(run: dict[str, Any], progress: tuple[int, int | None], result: dict[str, Any]) -> dict[str, Any]:
    config = upgrade_config_dict(run["spec"]["config"])
    done, total = progress
    final, mask_only = result.get("top1_final"), result.get("top1_mask_only")
    row = {
        "id": run["id"],
        "kind": run["spec"].get("kind", "prune"),
        "status": run["status"],
        "progress": 1.0 if run["status"] == RunStatus.DONE else (done / total if total else 0.0),
        "model": run["spec"]["model"],
        "dataset": run["spec"]["dataset"],
        "eval_size": run["spec"]["eval_size"],
        **{key: config[key] for key in ("mask", "reconstruction", "k", "pattern", "allocation", "sparsity")},
        "stages": config.get("stages", 1),
        **{key: config[key] for key in ("n_calib", "seed", "newton_passes", "cg_iters")},
        "top1_dense": result.get("top1_dense"),
        "top1_mask_only": mask_only,
        "top1_final": final,
        "gain": final - mask_only if final is not None and mask_only is not None else None,
        "seconds": result.get("seconds"),
        "sparsity_achieved": result.get("sparsity"),
        "peak_mem": result.get("peak_mem"),
        "layers_done": done,
        "layers_total": total,
        "sweep_id": run["sweep_id"],
        "created": _utc(run["created"]),
        "version": run["version"],
        "calib_digest": result.get("calib_digest"),
        "eval_subset": result.get("eval_subset"),
        "executor": run["executor"],
        "scheduler": run["scheduler"],
        "imported_from": run["imported_from"],
        "torch": (result.get("environment") or {}).get("torch"),
        "error": run["error"],
    }
    row["label"] = series_label(row) if row["kind"] == "prune" else f"sensitivity of {series_label(row)}"
    return row


def _utc(seconds: object) -> datetime | None:
    """A stored time as a UTC datetime; None where it is no time a calendar holds (an imported 1e300, say)."""
    try:
        return datetime.fromtimestamp(float(seconds), UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def reconstruction_label(reconstruction: str, k: int, stages: int = 1) -> str:
    """How the kept weights were reconstructed: "none", "lstsq" or "snows K=k" (", S stages" when gradual)."""
    label = f"snows K={k}" if reconstruction == "snows" else reconstruction
    return label + (f", {stages} stages" if stages > 1 else "")


def series_label(row: dict[str, Any] | pd.Series) -> str:
    """One curve of the trade-off charts: mask method x reconstruction (x pattern when N:M, allocation and stages
    when not the defaults)."""
    pattern = "" if row["pattern"] == "unstructured" else f" {row['pattern']}"
    allocation = f" ({row['allocation']})" if row.get("allocation", "uniform") != "uniform" else ""
    reconstruction = reconstruction_label(row["reconstruction"], int(row["k"]), int(row.get("stages", 1) or 1))
    return f"{row['mask']}{pattern} + {reconstruction}{allocation}"


def steps_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per Newton step (numbered from 1) plus a step 0 per layer and pass: the loss its first step
    started from. `stage` is the pass over the network (1 without stages)."""
    order: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for e in events:
        if e["kind"] == "layer_started":
            order[e["layer"]] = e["index"]
        elif e["kind"] == "newton_step":
            stage = e.get("stage", 1)
            if not any(
                r["layer"] == e["layer"] and r["stage"] == stage for r in rows[-1:]
            ):  # a layer's steps arrive together
                rows.append({"layer": e["layer"], "stage": stage, "step": 0, "loss": e["loss"], "cg_iters": 0})
            rows.append(
                {
                    "layer": e["layer"],
                    "stage": stage,
                    "step": e["step"],
                    "loss": e["loss_after"],
                    "cg_iters": e["cg_iters"],
                    "cg_residual": e["cg_residual"],
                    "step_size": e["step_size"],
                    "seconds": e["seconds"],
                    "cg_stop": e.get("cg_stop") or None,  # runs from before the solver's trace: unknown
                    "trials": len(e.get("line_search", [])) or None,
                }
            )
    columns = ["layer", "stage", "step", "loss", "cg_iters", "cg_residual", "step_size", "seconds", "cg_stop", "trials"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["index"] = frame["layer"].map(order)
    return frame


def _step_rows(events: Iterable[dict[str, Any]], field: str) -> Iterable[tuple[dict[str, Any], list]]:
    for e in events:
        if e["kind"] == "newton_step" and e.get(field):
            yield e, e[field]


def cg_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per CG iteration of every Newton step: relative residual and model decrease, with an
    iteration 0 per step (residual 1, decrease 0: CG starts from d = 0)."""
    rows = []
    for e, trace in _step_rows(events, "cg_trace"):
        key = {"layer": e["layer"], "stage": e.get("stage", 1), "step": e["step"]}
        rows.append({**key, "iteration": 0, "residual": 1.0, "decrease": 0.0})
        rows.extend({**key, "iteration": int(i), "residual": r, "decrease": d} for i, r, d in trace)
    return pd.DataFrame(rows, columns=["layer", "stage", "step", "iteration", "residual", "decrease"])


def convergence_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Each layer's loss against the CG iterations spent on it so far, across Newton steps and passes: the
    real convergence curve, where a step costs its CG iterations. `measured` rows are the loss where each
    step started and ended (after its line search); `model` rows, inside a step, are the loss the
    quadratic model predicts at each CG iterate (the loss at the step's start minus the model decrease)."""
    order: dict[str, int] = {}
    spent: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for e in events:
        if e["kind"] == "layer_started":
            order[e["layer"]] = e["index"]
        if e["kind"] != "newton_step":
            continue
        key = {"layer": e["layer"], "index": order.get(e["layer"]), "stage": e.get("stage", 1), "step": e["step"]}
        start = spent.get(e["layer"], 0)
        rows.append({**key, "cg_total": start, "loss": e["loss"], "source": "measured"})
        rows.extend(
            {**key, "cg_total": start + int(i), "loss": e["loss"] - d, "source": "model"}
            for i, _, d in e.get("cg_trace", [])
        )
        spent[e["layer"]] = start + e["cg_iters"]
        rows.append({**key, "cg_total": spent[e["layer"]], "loss": e["loss_after"], "source": "measured"})
    return pd.DataFrame(rows, columns=["layer", "index", "stage", "step", "cg_total", "loss", "source"])


def line_search_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Every Armijo trial of every Newton step: its step size, the batch loss there and whether it passed."""
    rows = [
        {"layer": e["layer"], "stage": e.get("stage", 1), "step": e["step"], "trial": n + 1, "alpha": a, "loss": v,
         "accepted": bool(ok)}
        for e, trials in _step_rows(events, "line_search")
        for n, (a, v, ok) in enumerate(trials)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["layer", "stage", "step", "trial", "alpha", "loss", "accepted"])


def layers_frame(events: Iterable[dict[str, Any]], last_pass_only: bool = False) -> pd.DataFrame:
    """One row per finished layer and pass: losses before / after warm start / after, cost, sparsity.

    With `last_pass_only`, each layer's row of its latest pass (what the final network holds)."""
    rows = [
        {"index": e["index"], "stage": e.get("stage", 1), **e["report"]} for e in events if e["kind"] == "layer_done"
    ]
    columns = ["index", "stage", "name", "loss_before", "loss_warm", "loss_after", "newton_steps", "cg_iters"]
    columns += ["seconds", "peak_mem", "sparsity", "kept", "numel"]
    frame = pd.DataFrame(rows, columns=columns)
    if last_pass_only and not frame.empty:
        frame = frame[frame["stage"] == frame["stage"].max()].reset_index(drop=True)
    return frame


def allocation_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Each layer's final sparsity as allocated before pruning (empty for runs that did not record it)."""
    allocated = next((e for e in events if e["kind"] == "allocation"), None)
    if allocated is None:
        return pd.DataFrame(columns=["layer", "sparsity"])
    return pd.DataFrame(list(allocated["sparsities"].items()), columns=["layer", "sparsity"])


def scan_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The sensitivity scan as a layer x sparsity table of losses (rows in layer order), from its
    per-layer events (so it fills in while the scan runs); empty without a scan."""
    rows = {
        e["layer"]: dict(zip(e["sparsities"], e["losses"], strict=True)) for e in events if e["kind"] == "layer_scanned"
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(index="layer", columns="sparsity")


SENSITIVITY_MEASURES = ("window_loss_mask", "window_loss", "output_loss", "top1", "logit_change", "removed", "checks")


def sensitivity_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per layer and sparsity of a sensitivity run (filling in layer by layer while it runs), with
    `top1_drop` = dense top-1 minus the cell's (points of accuracy lost when that layer alone is pruned)."""
    rows = [
        {"layer": e["layer"], "index": e["index"], "sparsity": s, "top1_dense": e["top1_dense"],
         **{key: e[key][i] for key in SENSITIVITY_MEASURES}}
        for e in events
        if e["kind"] == "layer_sensitivity"
        for i, s in enumerate(e["sparsities"])
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["layer", "index", "sparsity", "top1_dense", *SENSITIVITY_MEASURES])
    frame["top1_drop"] = frame["top1_dense"] - frame["top1"]
    return frame


def trajectory_frame(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Top-1 after each pruned layer (SNOWS weights and mask only), when the run recorded it."""
    rows = [
        {k: e[k] for k in ("index", "layer", "top1", "top1_mask_only")} for e in events if e["kind"] == "evaluation"
    ]
    return pd.DataFrame(rows, columns=["index", "layer", "top1", "top1_mask_only"])


def mask_reconstruction_matrix(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top-1, gain over mask-only) with rows = mask methods and columns = reconstructions: per cell the mean
    over seeds of the newest run of each seed (one seed: its newest run)."""
    done = runs[runs["status"] == RunStatus.DONE].copy()
    if done.empty:
        empty = pd.DataFrame()
        return empty, empty
    done["reconstructed"] = [
        reconstruction_label(r, int(k), int(s))
        for r, k, s in zip(done["reconstruction"], done["k"], done["stages"], strict=True)
    ]
    per_seed = (
        done.sort_values("created")
        .groupby(["mask", "reconstructed", "seed"], dropna=False)[["top1_final", "gain"]]
        .last()
    )
    newest = per_seed.groupby(level=["mask", "reconstructed"]).mean()
    columns = sorted(newest.index.get_level_values("reconstructed").unique(), key=_reconstruction_order)
    top1 = newest["top1_final"].unstack("reconstructed").reindex(columns=columns)
    gain = newest["gain"].unstack("reconstructed").reindex(columns=columns)
    return top1, gain


def _reconstruction_order(label: str) -> tuple[int, int, int]:
    stages = int(label.split(", ")[1].split()[0]) if ", " in label else 1
    if label.startswith("snows K="):
        return 2, int(label.split("=")[1].split(",")[0]), stages
    return (0, 0, stages) if label.startswith("none") else (1, 0, stages)


def seed_repeats(runs: pd.DataFrame) -> list[int]:
    """The seeds when these runs repeat every setting (label and sparsity) on the same two or more seeds, each
    seed with one set of calibration images (a sweep over seeds), else []."""
    seeds = runs.groupby(["label", "sparsity"], dropna=False)["seed"].agg(lambda s: tuple(sorted(set(s))))
    if seeds.empty or seeds.nunique() != 1 or len(seeds.iloc[0]) < 2:
        return []
    if (runs.groupby("seed")["calib_digest"].nunique() > 1).any():
        return []
    return [int(seed) for seed in seeds.iloc[0]]


def comparability(runs: pd.DataFrame) -> list[str]:
    """What differs between these runs that makes their accuracies not comparable ([] when none). Seeds (and so
    calibration images) may differ when every setting is repeated on the same seeds (`seed_repeats`)."""
    by_design = {"seed", "calib_digest"} if seed_repeats(runs) else set()
    reasons = []
    for column, what in COMPARABLE_ON.items():
        values = runs[column].dropna().unique()
        if len(values) > 1 and column not in by_design:
            reasons.append(f"{what} differs ({', '.join(map(str, values[:4]))})")
    return reasons
