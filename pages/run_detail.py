"""Run detail: one run's Newton-CG solve, layer by layer; live while it runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.common import ACTIVE, REFRESH_SECONDS, empty_state, escape_markdown, percent, runs, store
from snows_core.dashboard import charts
from snows_core.dashboard.frames import (
    allocation_frame,
    cg_frame,
    convergence_frame,
    layers_frame,
    line_search_frame,
    scan_frame,
    steps_frame,
    trajectory_frame,
)
from snows_core.measure.speed_report import SpeedReport
from snows_core.runs import RunStatus

st.title("Run detail")
frame = runs()
if frame.empty:
    empty_state("No runs yet: launch one and follow its solve here, live.")
    st.stop()

wanted = st.query_params.get("run") or st.session_state.get("run")
by_id = frame.set_index("id")
ids = list(by_id.index)
run_id = st.selectbox(
    "Run",
    ids,
    index=ids.index(wanted) if wanted in ids else 0,
    format_func=lambda i: f"{i}  ({by_id.loc[i, 'status']}, {by_id.loc[i, 'label']})",
)
st.query_params["run"] = run_id
st.session_state["run"] = run_id


def header(row: pd.Series) -> None:
    spec = store().get(row["id"])["spec"]
    config = spec["config"]
    pattern = config["pattern"] if config["pattern"] != "unstructured" else f"{config['sparsity']:.0%} unstructured"
    stages = config.get("stages", 1)
    st.markdown(
        f"**{escape_markdown(row['model'])}** on {escape_markdown(row['dataset'])} · {pattern} ({config['allocation']}"
        + (f", {stages} stages" if stages > 1 else "")
        + f") · mask **{row['mask']}** · "
        f"reconstruction **{row['reconstruction']}**"
        + (f" K={row['k']}" if row["reconstruction"] == "snows" else "")
        + f" · {config['n_calib']} calibration images · seed {config['seed']} · status **{row['status']}**"
    )
    if row["status"] in ACTIVE:
        total = row["layers_total"]
        done = int(row["layers_done"])
        st.progress(
            float(row["progress"]), text=f"{done} of {total or '?'} layers" + (" (all passes)" if stages > 1 else "")
        )
    a, b, c, d = st.columns(4)
    a.metric("top-1 dense", percent(row["top1_dense"]))
    b.metric("mask only", percent(row["top1_mask_only"]))
    c.metric(
        "final",
        percent(row["top1_final"]),
        delta=None if pd.isna(row["gain"]) else f"{100 * row['gain']:+.1f} points over mask only",
    )
    d.metric("seconds", "" if pd.isna(row["seconds"]) else f"{row['seconds']:.1f}")
    if row["status"] == RunStatus.FAILED:
        st.error("The run failed.")
        st.code(row["error"] or "no error text")
    elif row["status"] == RunStatus.CANCELLED:
        st.warning(f"Cancelled: {escape_markdown(row['error'] or '')}")


def body(row: pd.Series) -> None:
    if row["kind"] == "sensitivity":
        st.info("This run is a sensitivity scan: its heatmap and suggested sparsities are on the Sensitivity page.")
        st.page_link("pages/sensitivity.py", label="Open the Sensitivity page", icon=":material/query_stats:")
        return
    events = store().events(row["id"])
    steps, passes, points = steps_frame(events), layers_frame(events), trajectory_frame(events)
    layers = layers_frame(events, last_pass_only=True)
    allocated, scan = allocation_frame(events), scan_frame(events)
    if steps.empty and layers.empty and scan.empty:
        st.info(
            "No Newton step yet: the run is "
            + (
                "waiting in the queue."
                if row["status"] == RunStatus.QUEUED
                else "loading its model and data."
                if row["status"] == RunStatus.RUNNING
                else "without a recorded solve."
            )
        )
        return
    solve, per_layer, allocation, through, speed = st.tabs(
        ["Newton-CG solve", "Per layer", "Allocation", "Trajectory", "Speed"]
    )
    with solve:
        if not steps.empty:
            newton_solve(steps, events)
        else:
            st.caption("This reconstruction takes no Newton steps (none or lstsq).")
    with per_layer:
        if layers.empty:
            st.caption("No layer finished yet.")
        else:
            if passes["stage"].nunique() > 1:
                st.plotly_chart(charts.pass_losses(passes), key="pass_losses")
                st.caption("Charts below: each layer's last pass, what the final network holds.")
            st.plotly_chart(charts.layer_losses(layers), key="layer_losses")
            left, right = st.columns(2)
            left.plotly_chart(charts.layer_cost(layers), key="layer_cost")
            right.plotly_chart(charts.layer_sparsity(layers), key="layer_sparsity")
            st.dataframe(passes.drop(columns=["index"]), hide_index=True)
    with allocation:
        if not scan.empty:
            st.plotly_chart(charts.allocation_heatmap(scan, allocated), key="scan")
            st.caption(
                "Each layer pruned alone at each sparsity (the rest dense): the MSE of the network's logits "
                "against the dense network's. The allocation keeps the summed loss lowest at the overall target."
            )
        if allocated.empty:
            st.caption("Not recorded for this run.")
        else:
            st.plotly_chart(
                charts.layer_sparsity(allocated.rename(columns={"layer": "name"}), "Allocated sparsity per layer"),
                key="allocated",
            )
    with through:
        if points.empty:
            st.caption("Not recorded for this run: tick *Record the accuracy trajectory* when launching.")
        else:
            st.plotly_chart(charts.trajectory(points, row["top1_dense"]), key="trajectory")
    with speed:
        measured_speed((store().result(row["id"]) or {}).get("speed"))


def measured_speed(speed: dict | None) -> None:
    """Dense vs pruned latency and file size, as measured on the run's device."""
    if speed is None:
        st.caption("Not measured for this run: tick *Measure inference speed* when launching.")
        return
    if "error" in speed:
        st.warning(speed["error"])
        return
    figures = SpeedReport.from_dict(speed).figures()
    st.metric("speed-up", figures["headline"])
    st.markdown(f"**Latency** {figures['latency']}  \n**Weights** {figures['size']}")
    st.caption(figures["reason"])
    if speed["dense_layers"]:
        st.dataframe(
            pd.DataFrame(speed["dense_layers"].items(), columns=["layer", "why it ran dense"]), hide_index=True
        )


def newton_solve(steps: pd.DataFrame, events: list[dict]) -> None:
    """Loss per Newton step and along CG iterations; inside one layer's steps, the CG residuals and the
    line-search trials; why every CG solve stopped."""
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_curves(steps), key="loss_curves")
    right.plotly_chart(charts.loss_vs_cg(convergence_frame(events)), key="loss_vs_cg")
    cg = cg_frame(events)
    if cg.empty:
        st.caption("This run predates the solver's trace: no CG residuals or line-search trials were recorded.")
    else:
        layers = list(dict.fromkeys(steps.sort_values(["index", "stage", "step"])["layer"]))
        layer = st.selectbox("Layer", layers, key="solve_layer", help="Whose CG solves and line searches to draw")
        left, right = st.columns(2)
        left.plotly_chart(charts.cg_residuals(cg, layer), key="cg_residuals")
        right.plotly_chart(charts.line_search_trials(line_search_frame(events), layer), key="line_search")
        st.caption(
            "Each CG solve starts at residual 1 (d = 0) and stops at the tolerance, at the iteration cap, or on "
            "negative curvature; hover a point for the quadratic model's predicted decrease. The line search "
            "tries alpha = 1, 0.9, 0.81, ... until the loss falls enough (filled: accepted)."
        )
    left, right = st.columns(2)
    if steps["cg_stop"].notna().any():
        left.plotly_chart(charts.cg_stops(steps), key="cg_stops")
    else:
        left.plotly_chart(charts.cg_iterations(steps), key="cg")
    right.plotly_chart(charts.step_sizes(steps), key="steps")


@st.fragment(run_every=REFRESH_SECONDS if by_id.loc[run_id, "status"] in ACTIVE else None)
def live() -> None:
    current = runs().set_index("id").loc[run_id]
    row = pd.concat([pd.Series({"id": run_id}), current])
    if row["kind"] == "unreadable":
        st.error(f"Run {run_id} cannot be shown: {escape_markdown(row['error'].removeprefix('unreadable: '))}")
        st.page_link("pages/runs.py", label="Delete or export it on the Runs page", icon=":material/list:")
        return
    header(row)
    body(row)
    if current["status"] != by_id.loc[run_id, "status"]:
        st.rerun()  # the run finished: one last full render, then stop refreshing


live()
