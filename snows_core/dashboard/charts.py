"""Plotly figures for the dashboard, each built from a DataFrame of `dashboard.frames` (testable without a UI).

Every trade-off point carries its run id in `customdata`, so a click in the app can open that run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    from snows_core.dashboard.teach import NewtonCG2D

__all__ = [
    "loss_curves",
    "cg_iterations",
    "step_sizes",
    "cg_residuals",
    "loss_vs_cg",
    "cg_stops",
    "line_search_trials",
    "layer_losses",
    "layer_cost",
    "layer_sparsity",
    "pass_losses",
    "allocation_heatmap",
    "trajectory",
    "accuracy_vs_sparsity",
    "accuracy_vs_k",
    "accuracy_vs_cost",
    "compare_layer_losses",
    "matrix_heatmap",
    "mask_heatmap",
    "overlap_chart",
    "kept_pattern_chart",
    "layer_sparsity_chart",
    "report_html",
    "accuracy_bars",
    "plot_newton_cg_2d",
    "sensitivity_heatmap",
    "sensitivity_curves",
    "SENSITIVITY_VIEWS",
]

SENSITIVITY_VIEWS = {  # what a sensitivity chart can show: column -> (label, log scale)
    "top1_drop": ("top-1 lost (points)", False),
    "window_loss": ("K-window loss after the update", True),
    "window_loss_mask": ("K-window loss, mask only", True),
    "output_loss": ("output loss (logits MSE)", True),
}

TEMPLATE = "plotly_white"


def _figure(title: str, x: str, y: str, *, log_y: bool = False) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        title=title, xaxis_title=x, yaxis_title=y, template=TEMPLATE, legend_title_text="", margin={"t": 50}
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _passes(steps: pd.DataFrame) -> bool:
    return "stage" in steps and steps["stage"].nunique() > 1


def loss_curves(steps: pd.DataFrame) -> go.Figure:
    """The K-window loss against Newton step, one line per layer (and pass, with stages), log scale."""
    fig = _figure("Reconstruction loss per Newton step", "Newton step", "K-window loss", log_y=True)
    passes = _passes(steps)
    for (stage, layer), rows in steps.sort_values(["stage", "index", "step"]).groupby(["stage", "layer"], sort=False):
        name = f"{layer} · pass {stage}" if passes else str(layer)
        fig.add_scatter(x=rows["step"], y=rows["loss"], mode="lines+markers", name=name)
    fig.update_xaxes(dtick=1)
    return fig


def _step_label(stage: int, step: int, passes: bool) -> str:
    return f"pass {stage} step {step}" if passes else f"step {step}"


def cg_iterations(steps: pd.DataFrame) -> go.Figure:
    """CG iterations of every Newton step, grouped by layer (one bar group per pass and step)."""
    fig = _figure("CG iterations per Newton step", "layer", "CG iterations")
    passes = _passes(steps)
    taken = steps[steps["step"] > 0].sort_values(["index", "step"])
    for (stage, step), rows in taken.groupby(["stage", "step"]):
        fig.add_bar(x=rows["layer"], y=rows["cg_iters"], name=_step_label(stage, step, passes))
    fig.update_layout(barmode="group")
    return fig


def step_sizes(steps: pd.DataFrame) -> go.Figure:
    """The Armijo step size accepted at each Newton step (0: no step passed)."""
    fig = _figure("Line-search step sizes", "layer", "step size")
    passes = _passes(steps)
    taken = steps[steps["step"] > 0].sort_values(["index", "step"])
    for (stage, step), rows in taken.groupby(["stage", "step"]):
        fig.add_scatter(x=rows["layer"], y=rows["step_size"], mode="markers", name=_step_label(stage, step, passes))
    return fig


def cg_residuals(cg: pd.DataFrame, layer: str) -> go.Figure:
    """One layer's CG solves: relative residual against CG iteration, one line per Newton step (log scale)."""
    fig = _figure(f"CG residual, {layer}", "CG iteration", "||r|| / ||g||", log_y=True)
    rows = cg[cg["layer"] == layer]
    passes = _passes(rows)
    for (stage, step), solve in rows.groupby(["stage", "step"]):
        fig.add_scatter(
            x=solve["iteration"], y=solve["residual"].clip(lower=1e-12), mode="lines+markers",
            name=_step_label(stage, step, passes), customdata=solve["decrease"],
            hovertemplate="iteration %{x}: residual %{y:.3g}, model decrease %{customdata:.3g}<extra></extra>",
        )  # fmt: skip
    return fig


def loss_vs_cg(convergence: pd.DataFrame) -> go.Figure:
    """Each layer's K-window loss against the CG iterations spent on it, across Newton steps and passes:
    measured at each step's start and end (solid), predicted by the quadratic model in between (dotted)."""
    fig = _figure("Loss along CG iterations", "cumulative CG iterations", "K-window loss", log_y=True)
    palette = px.colors.qualitative.Plotly
    ordered = convergence.sort_values(["index", "stage", "step", "cg_total"], kind="stable")
    for n, (layer, rows) in enumerate(ordered.groupby("layer", sort=False)):
        colour = palette[n % len(palette)]
        measured, model = rows[rows["source"] == "measured"], rows[rows["source"] == "model"]
        fig.add_scatter(
            x=measured["cg_total"], y=measured["loss"], mode="lines+markers", name=str(layer), legendgroup=str(layer),
            line={"color": colour},
        )  # fmt: skip
        if not model.empty:
            x, y = _model_paths(rows)
            fig.add_scatter(
                x=x, y=y, mode="lines", legendgroup=str(layer), line={"color": colour, "dash": "dot"},
                name=f"{layer} (model)", showlegend=False, connectgaps=False,
            )  # fmt: skip
    return fig


def _model_paths(rows: pd.DataFrame) -> tuple[list, list]:
    """Each step's start and its model-predicted losses, the steps separated by gaps (None)."""
    x: list = []
    y: list = []
    for _, step in rows.groupby(["stage", "step"], sort=False):
        start = step[step["source"] == "measured"].iloc[0]
        model = step[step["source"] == "model"]
        x += [int(start["cg_total"]), *model["cg_total"].astype(int).tolist(), None]  # plain ints: plotly keeps None
        y += [float(start["loss"]), *model["loss"].clip(lower=1e-12).tolist(), None]
    return x, y


STOP_COLOURS = {"tolerance": "#2ca02c", "cap": "#ff7f0e", "negative curvature": "#d62728", "zero gradient": "#7f7f7f"}


def cg_stops(steps: pd.DataFrame) -> go.Figure:
    """Why each layer's CG solves ended (tolerance reached, iteration cap, negative curvature), as counts."""
    fig = _figure("Why each CG solve stopped", "layer", "Newton steps")
    taken = steps[(steps["step"] > 0) & steps["cg_stop"].notna()].sort_values(["index", "step"])
    layers = list(dict.fromkeys(taken["layer"]))
    counts = taken.groupby(["cg_stop", "layer"]).size()
    for stop, colour in STOP_COLOURS.items():
        if stop in counts.index.get_level_values(0):
            per_layer = counts[stop].reindex(layers, fill_value=0)
            fig.add_bar(x=layers, y=per_layer.to_numpy(), name=stop, marker_color=colour)
    fig.update_layout(barmode="stack")
    return fig


def line_search_trials(trials: pd.DataFrame, layer: str) -> go.Figure:
    """One layer's Armijo trials: the batch loss at each step size tried, the accepted one filled."""
    fig = _figure(f"Line-search trials, {layer}", "step size alpha", "batch loss", log_y=True)
    rows = trials[trials["layer"] == layer]
    passes = _passes(rows)
    for (stage, step), tried in rows.groupby(["stage", "step"]):
        fig.add_scatter(
            x=tried["alpha"], y=tried["loss"], mode="lines+markers", name=_step_label(stage, step, passes),
            marker={"symbol": ["circle" if ok else "circle-open" for ok in tried["accepted"]], "size": 9},
        )  # fmt: skip
    return fig


def layer_losses(layers: pd.DataFrame) -> go.Figure:
    """Per layer: loss with the mask only, after the least-squares warm start, and final."""
    fig = _figure("Loss before and after, per layer", "layer", "K-window loss", log_y=True)
    for column, name in (("loss_before", "mask only"), ("loss_warm", "lstsq warm start"), ("loss_after", "final")):
        if layers[column].notna().any():
            fig.add_bar(x=layers["name"], y=layers[column], name=name)
    fig.update_layout(barmode="group")
    return fig


def layer_cost(layers: pd.DataFrame) -> go.Figure:
    """Seconds and peak memory per layer, in two stacked panels."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    fig.add_bar(x=layers["name"], y=layers["seconds"], name="seconds", row=1, col=1)
    fig.add_bar(x=layers["name"], y=layers["peak_mem"] / 2**20, name="peak memory (MiB)", row=2, col=1)
    fig.update_layout(title="Time and peak memory per layer", template=TEMPLATE, showlegend=False)
    fig.update_yaxes(title_text="seconds", row=1, col=1)
    fig.update_yaxes(title_text="peak memory (MiB)", row=2, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    return fig


def layer_sparsity(layers: pd.DataFrame, title: str = "Achieved sparsity per layer") -> go.Figure:
    fig = _figure(title, "layer", "sparsity")
    fig.add_bar(x=layers["name"], y=layers["sparsity"], name="sparsity")
    fig.update_yaxes(range=[0, 1])
    return fig


def pass_losses(layers: pd.DataFrame) -> go.Figure:
    """Gradual pruning: each layer's final K-window loss and sparsity after every pass."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for stage, rows in layers.sort_values(["stage", "index"]).groupby("stage"):
        fig.add_scatter(
            x=rows["name"], y=rows["loss_after"], mode="lines+markers", name=f"pass {stage}", row=1, col=1,
            legendgroup=str(stage),
        )  # fmt: skip
        fig.add_bar(x=rows["name"], y=rows["sparsity"], name=f"pass {stage}", row=2, col=1, legendgroup=str(stage),
                    showlegend=False)  # fmt: skip
    fig.update_layout(title="Loss and sparsity after each pass", template=TEMPLATE, barmode="group")
    fig.update_yaxes(title_text="K-window loss", type="log", row=1, col=1)
    fig.update_yaxes(title_text="sparsity", range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    return fig


def allocation_heatmap(scan: pd.DataFrame, allocated: pd.DataFrame) -> go.Figure:
    """The sensitivity scan (layer x sparsity, colour = log10 of the loss) with each layer's allocated sparsity."""
    columns = [f"{s:g}" for s in scan.columns]
    fig = go.Figure(
        go.Heatmap(
            z=np.log10(scan.to_numpy(dtype=float).clip(min=1e-12)),
            x=columns,
            y=list(scan.index),
            customdata=scan.to_numpy(dtype=float),
            hovertemplate="%{y} at %{x}: loss %{customdata:.4g}<extra></extra>",
            colorscale="Reds",
            colorbar_title="log10 loss",
        )
    )
    chosen = allocated.set_index("layer")["sparsity"].reindex(scan.index)
    nearest = [columns[int(np.abs(np.asarray(scan.columns, dtype=float) - s).argmin())] for s in chosen]
    fig.add_scatter(
        x=nearest,
        y=list(scan.index),
        mode="markers",
        marker={"symbol": "x", "size": 10, "color": "black"},
        name="allocated",
        text=[f"{s:.3f}" for s in chosen],
        hovertemplate="%{y}: allocated %{text}<extra></extra>",
    )
    fig.update_layout(
        title="Sensitivity scan: each layer pruned alone (x: allocated, nearest scanned sparsity)",
        xaxis_title="sparsity of that layer alone",
        yaxis_title="layer",
        template=TEMPLATE,
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def _view(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column] * (100 if column == "top1_drop" else 1)
    return values.clip(lower=1e-12) if SENSITIVITY_VIEWS[column][1] else values


def sensitivity_heatmap(cells: pd.DataFrame, column: str = "top1_drop") -> go.Figure:
    """Layer (rows, network order) x sparsity (columns) of a sensitivity run, coloured by `column`; cells
    whose pruning left the logits unchanged are marked with a dot and their check in the hover."""
    label, log = SENSITIVITY_VIEWS[column]
    ordered = cells.sort_values(["index", "sparsity"])
    layers, sparsities = list(dict.fromkeys(ordered["layer"])), sorted(ordered["sparsity"].unique())
    table = ordered.assign(value=_view(ordered, column)).pivot(index="layer", columns="sparsity", values="value")
    table = table.reindex(index=layers, columns=sparsities)
    checks = ordered.pivot(index="layer", columns="sparsity", values="checks").reindex(index=layers, columns=sparsities)
    z = np.log10(table.to_numpy(dtype=float)) if log else table.to_numpy(dtype=float)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"{s:g}" for s in sparsities],
            y=layers,
            customdata=np.dstack([table.to_numpy(dtype=float), checks.fillna("").to_numpy()]),
            colorscale="Reds" if column == "top1_drop" else "Viridis",
            colorbar={"title": f"log10 {label}" if log else label},
            hovertemplate="%{y} at %{x}: %{customdata[0]:.4g}<br>%{customdata[1]}<extra></extra>",
        )
    )
    flagged = ordered[ordered["checks"].fillna("") != ""]
    if not flagged.empty:
        fig.add_scatter(
            x=[f"{s:g}" for s in flagged["sparsity"]], y=flagged["layer"], mode="markers", name="no effect: checked",
            marker={"symbol": "circle-dot", "size": 10, "color": "white", "line": {"color": "black", "width": 1}},
            text=flagged["checks"], hovertemplate="%{y} at %{x}: %{text}<extra></extra>",
        )  # fmt: skip
    fig.update_layout(
        title=f"Sensitivity: {label}, each layer pruned alone",
        xaxis_title="sparsity of that layer",
        yaxis_title="layer",
        template=TEMPLATE,
        yaxis={"autorange": "reversed"},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def sensitivity_curves(cells: pd.DataFrame, column: str = "top1_drop") -> go.Figure:
    """`column` against the layer's sparsity, one line per layer (network order)."""
    label, log = SENSITIVITY_VIEWS[column]
    fig = _figure(f"Per-layer curves: {label}", "sparsity of that layer", label, log_y=log)
    for layer, rows in cells.sort_values(["index", "sparsity"]).groupby("layer", sort=False):
        fig.add_scatter(x=rows["sparsity"], y=_view(rows, column), mode="lines+markers", name=str(layer))
    return fig


def trajectory(points: pd.DataFrame, dense: float | None = None) -> go.Figure:
    """Top-1 after each pruned layer: SNOWS weights against the mask alone."""
    fig = _figure("Accuracy through the layers (pruning trajectory)", "layers pruned", "top-1")
    x = points["index"] + 1
    fig.add_scatter(x=x, y=points["top1"], mode="lines+markers", name="SNOWS", text=points["layer"])
    fig.add_scatter(x=x, y=points["top1_mask_only"], mode="lines+markers", name="mask only", text=points["layer"])
    if dense is not None:
        fig.add_hline(y=dense, line_dash="dot", annotation_text="dense")
    return fig


def _series(fig: go.Figure, runs: pd.DataFrame, x: str, mode: str = "lines+markers") -> go.Figure:
    """One curve per label, each point clickable to its run. Where a label has several runs at one x
    (repeats over seeds, i.e. other calibration images, or settings the label does not name), the curve goes
    through their mean with a bar from the lowest to the highest, and every run is a faint point of its own."""
    hover = "%{customdata[0]}<br>" + x + " %{x}<br>top-1 %{y:.4f}<extra>%{fullData.name}</extra>"
    for label, rows in runs.sort_values(x).groupby("label"):
        ids = rows[["id"]].to_numpy()
        if not rows[x].duplicated().any():
            fig.add_scatter(
                x=rows[x], y=rows["top1_final"], mode=mode, name=str(label), customdata=ids, hovertemplate=hover
            )
            continue
        spread = rows.groupby(x)["top1_final"].agg(["mean", "min", "max", "count"]).reset_index()
        fig.add_scatter(
            x=spread[x],
            y=spread["mean"],
            mode=mode,
            name=str(label),
            legendgroup=str(label),
            error_y=dict(
                type="data",
                symmetric=False,
                array=spread["max"] - spread["mean"],
                arrayminus=spread["mean"] - spread["min"],
            ),
            text=spread["count"],  # not customdata: a click on the mean opens no run
            hovertemplate=x + " %{x}<br>mean top-1 %{y:.4f} of %{text} runs (bar: lowest to highest)"
            "<extra>%{fullData.name}</extra>",
        )
        fig.add_scatter(
            x=rows[x],
            y=rows["top1_final"],
            mode="markers",
            name=f"{label}: runs",
            legendgroup=str(label),
            showlegend=False,
            opacity=0.4,
            customdata=ids,
            hovertemplate=hover,
        )
    return fig


def _dense_line(fig: go.Figure, runs: pd.DataFrame) -> None:
    dense = runs["top1_dense"].dropna()
    if not dense.empty:
        fig.add_hline(y=float(dense.median()), line_dash="dot", annotation_text="dense")


def accuracy_vs_sparsity(runs: pd.DataFrame) -> go.Figure:
    """Top-1 against sparsity, one curve per mask method x reconstruction, with the dense model's line."""
    fig = _series(_figure("Top-1 against sparsity", "sparsity", "top-1"), runs, "sparsity")
    _dense_line(fig, runs)
    return fig


def accuracy_vs_k(runs: pd.DataFrame) -> go.Figure:
    """Top-1 of SNOWS runs against the depth K, one curve per mask method x sparsity."""
    snows = runs[runs["reconstruction"] == "snows"]
    snows = snows.assign(label=[f"{m} @ {s:.2f}" for m, s in zip(snows["mask"], snows["sparsity"], strict=True)])
    fig = _series(_figure("Top-1 against depth K", "K", "top-1"), snows, "k")
    _dense_line(fig, runs)
    return fig


def accuracy_vs_cost(runs: pd.DataFrame) -> go.Figure:
    """Top-1 against run seconds: what each point of accuracy costs."""
    return _series(_figure("Top-1 against cost", "seconds", "top-1"), runs, "seconds", mode="markers")


def compare_layer_losses(layers: pd.DataFrame) -> go.Figure:
    """Final per-layer loss of several runs overlaid (`layers` has a `run` column)."""
    fig = _figure("Per-layer loss, runs overlaid", "layer", "final K-window loss", log_y=True)
    for run, rows in layers.groupby("run", sort=False):
        fig.add_scatter(x=rows["name"], y=rows["loss_after"], mode="lines+markers", name=str(run))
    return fig


def matrix_heatmap(top1: pd.DataFrame, gain: pd.DataFrame) -> go.Figure:
    """The mask x reconstruction matrix: colour = top-1, text = top-1 and gain over mask-only."""
    text = [
        [
            "" if pd.isna(t) else f"{t:.4f}<br>{g:+.4f}" if not pd.isna(g) else f"{t:.4f}"
            for t, g in zip(trow, grow, strict=True)
        ]
        for trow, grow in zip(top1.to_numpy(), gain.to_numpy(), strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=top1.to_numpy(),
            x=list(top1.columns),
            y=list(top1.index),
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            colorbar_title="top-1",
        )
    )
    fig.update_layout(
        title="Mask x reconstruction: top-1 (and gain over mask-only)",
        xaxis_title="reconstruction",
        yaxis_title="mask method",
        template=TEMPLATE,
    )
    return fig


def mask_heatmap(mask: pd.DataFrame, title: str) -> go.Figure:
    """A weight mask (rows: outputs, columns: inputs; 1 = kept) as a heatmap."""
    fig = go.Figure(
        go.Heatmap(
            z=mask.to_numpy(),
            x=list(mask.columns),
            y=list(mask.index),
            colorscale=[[0, "#f1f1f1"], [1, "#1f4e9c"]],
            zmin=0,
            zmax=1,
            showscale=False,
            xgap=1,
            ygap=1,
        )
    )
    fig.update_layout(title=title, xaxis_title="input", yaxis_title="output", template=TEMPLATE)
    fig.update_yaxes(autorange="reversed")
    return fig


def overlap_chart(overlap: pd.DataFrame) -> go.Figure:
    """`kept.overlap_frame`: per layer, the Jaccard index of each pair's kept weights (1 = the same mask)."""
    fig = _figure("What the masks share: Jaccard index of kept weights per layer", "layer", "Jaccard |A∩B| / |A∪B|")
    for pair, rows in overlap.groupby("pair", sort=False):
        fig.add_scatter(
            x=rows["layer"],
            y=rows["jaccard"],
            mode="lines+markers",
            name=str(pair),
            customdata=np.stack([rows["shared_of_a"], rows["shared_of_b"], rows["shared"]], axis=1),
            hovertemplate="%{x}<br>Jaccard %{y:.3f}<br>of the first's kept: %{customdata[0]:.1%}"
            "<br>of the second's kept: %{customdata[1]:.1%}<br>%{customdata[2]} shared<extra></extra>",
        )
    fig.update_yaxes(range=[0, 1.02])
    return fig


def kept_pattern_chart(pattern: pd.DataFrame, layer: str) -> go.Figure:
    """`kept.kept_pattern_frame`: each run's kept pattern (top row) and the weights only that run kept (bottom
    row), output x input channels, a cell's count of the weights it holds."""
    runs = list(dict.fromkeys(pattern["run"]))
    fig = make_subplots(
        rows=2,
        cols=len(runs),
        subplot_titles=[*(f"{run}: kept" for run in runs), *(f"{run}: kept by it alone" for run in runs)],
        shared_yaxes=True,
        vertical_spacing=0.12,
    )
    positions = int(pattern["positions"].iloc[0])
    for col, run in enumerate(runs, start=1):
        rows = pattern[pattern["run"] == run]
        for row, (field, scale) in enumerate((("kept", "Blues"), ("only", "Reds")), start=1):
            grid = rows.pivot(index="out", columns="in", values=field)
            fig.add_heatmap(
                z=grid.to_numpy(),
                x=list(grid.columns),
                y=list(grid.index),
                zmin=0,
                zmax=positions,
                colorscale=scale,
                showscale=col == len(runs),
                colorbar={"len": 0.42, "y": 0.79 if row == 1 else 0.21, "title": field},
                hovertemplate=f"out %{{y}}, in %{{x}}: %{{z}} of {positions} {field}<extra>{run}</extra>",
                row=row,
                col=col,
            )
    fig.update_yaxes(autorange="reversed", title_text="output channel", col=1)
    fig.update_xaxes(title_text="input channel", row=2)
    fig.update_layout(title=f"{layer}: what each mask kept", template=TEMPLATE, height=720)
    return fig


def layer_sparsity_chart(sparsity: pd.DataFrame) -> go.Figure:
    """`kept.layer_sparsity_frame`: each run's sparsity per layer on one chart (its allocation)."""
    fig = _figure("Per-layer sparsity of each run's masks", "layer", "sparsity")
    for run, rows in sparsity.groupby("run", sort=False):
        fig.add_scatter(
            x=rows["layer"],
            y=rows["sparsity"],
            mode="lines+markers",
            name=str(run),
            customdata=rows["weights"],
            hovertemplate="%{x}: %{y:.1%} of %{customdata} weights<extra></extra>",
        )
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    return fig


def accuracy_bars(bars: pd.DataFrame, dense: float | None = None) -> go.Figure:
    """Top-1 as bars (`bars`: label, top1 in [0, 1]), the dense network's as a dashed line; for the lesson."""
    fig = go.Figure(
        go.Bar(
            x=bars["label"],
            y=bars["top1"],
            text=[f"{v:.1%}" for v in bars["top1"]],
            textposition="outside",
            marker_color=px.colors.qualitative.Plotly[: len(bars)],
        )
    )
    if dense is not None:
        fig.add_hline(y=dense, line_dash="dash", annotation_text=f"dense {dense:.1%}", annotation_position="top left")
    fig.update_layout(title="Top-1 on 1,000 test images", yaxis_title="top-1", template=TEMPLATE, showlegend=False)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.08])
    return fig


def report_html(title: str, table: pd.DataFrame, figures: list[go.Figure], notes: str = "") -> str:
    """One standalone HTML file: the title, notes, the table and the figures, interactive (plotly.js inline
    once, so the file opens offline)."""
    from html import escape

    parts = [
        fig.to_html(
            full_html=False,
            include_plotlyjs=i == 0,
            default_width="100%",
            default_height=f"{fig.layout.height or 480}px",
        )
        for i, fig in enumerate(figures)
    ]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}</style>"
        f"</head><body><h1>{escape(title)}</h1><p>{escape(notes)}</p>"
        f"{table.to_html(index=False, border=0, na_rep='')}"
        + "".join(f"<div>{part}</div>" for part in parts)
        + "</body></html>"
    )


def plot_newton_cg_2d(step: NewtonCG2D) -> go.Figure:
    """One Newton-CG step on a 2-D quadratic: contours of f, the steepest-descent step, the CG iterates, the
    exact Newton point and the Armijo trials along the CG direction (filled: accepted)."""
    grid = step.grid.pivot(index="y", columns="x", values="f")
    fig = go.Figure(
        go.Contour(
            x=grid.columns,
            y=grid.index,
            z=np.log1p(grid.to_numpy()),
            colorscale="Blues",
            reversescale=True,
            showscale=False,
            contours={"coloring": "heatmap"},
            hoverinfo="skip",
            ncontours=18,
        )
    )
    start_x, start_y = step.start
    fig.add_scatter(
        x=[start_x, step.gradient[0]],
        y=[start_y, step.gradient[1]],
        mode="lines+markers",
        name="gradient step",
        line={"dash": "dash", "color": "#7f7f7f"},
    )
    fig.add_scatter(
        x=step.cg["x"],
        y=step.cg["y"],
        mode="lines+markers+text",
        name="CG iterates",
        text=[f"d{k}" for k in step.cg["k"]],
        textposition="top right",
        line={"color": "#1f77b4", "width": 3},
        marker={"size": 9},
    )
    fig.add_scatter(
        x=step.trials["x"],
        y=step.trials["y"],
        mode="markers",
        name="Armijo trials",
        customdata=step.trials["alpha"],
        marker={
            "size": 11,
            "color": "#d62728",
            "symbol": ["circle" if ok else "circle-open" for ok in step.trials["accepted"]],
        },
        hovertemplate="alpha %{customdata:.3g}<extra></extra>",
    )
    fig.add_scatter(
        x=[step.newton[0]],
        y=[step.newton[1]],
        mode="markers",
        name="Newton point (the minimum)",
        marker={"symbol": "star", "size": 16, "color": "#2ca02c"},
    )
    fig.add_scatter(x=[start_x], y=[start_y], mode="markers", name="start", marker={"size": 12, "color": "black"})
    fig.update_layout(title="One Newton-CG step on a quadratic", template=TEMPLATE, xaxis_title="w1", yaxis_title="w2")
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig
