"""Compare: runs side by side, the mask x reconstruction matrix, and a flag when runs are not comparable."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.common import empty_state, runs, store
from snows_core.dashboard import charts
from snows_core.dashboard.frames import comparability, layers_frame, mask_reconstruction_matrix, seed_repeats
from snows_core.runs import RunStatus

st.title("Compare runs")
frame = runs()
done = frame[(frame["status"] == RunStatus.DONE) & (frame["kind"] == "prune")]  # scans have no final top-1
if len(done) < 2:
    empty_state("Comparing needs at least two finished runs: launch a sweep over mask methods or K.")
    st.stop()

latest_sweep = done["sweep_id"].dropna()
default = list(done[done["sweep_id"] == latest_sweep.iloc[0]]["id"]) if not latest_sweep.empty else list(done["id"][:2])
by_id = done.set_index("id")
chosen = st.multiselect(
    "Runs",
    list(by_id.index),
    default=default[:8],
    format_func=lambda i: f"{i} ({by_id.loc[i, 'label']}, sparsity {by_id.loc[i, 'sparsity']})",
    key="compare_runs",
)
picked = done[done["id"].isin(chosen)]
if len(picked) < 2:
    st.info("Pick two or more runs.")
    st.stop()

reasons, repeats = comparability(picked), seed_repeats(picked)
if reasons:
    st.warning("**Not comparable**: " + "; ".join(reasons) + ".", icon=":material/warning:")
elif repeats:
    st.success(
        f"Comparable: every setting repeated on seeds {', '.join(map(str, repeats))} (other calibration images "
        "by design); same dataset, evaluation subset and versions. The matrix below shows means over seeds."
    )
else:
    st.success("Comparable: same dataset, calibration images, seed, evaluation subset and versions.")

summary = picked[["id", "model", "label", "sparsity", "top1_dense", "top1_mask_only", "top1_final", "gain", "seconds"]]
reference = summary.iloc[0]
summary = summary.assign(
    delta_vs_first=summary["top1_final"] - reference["top1_final"],
    seconds_vs_first=summary["seconds"] - reference["seconds"],
)
st.dataframe(
    summary,
    hide_index=True,
    column_config={
        c: st.column_config.NumberColumn(format="%.4f")
        for c in ("top1_dense", "top1_mask_only", "top1_final", "gain", "delta_vs_first")
    },
)

layers = pd.concat(
    [
        layers_frame(store().events(run_id), last_pass_only=True).assign(run=f"{run_id[-6:]} {label}")
        for run_id, label in zip(picked["id"], picked["label"], strict=True)
    ],
    ignore_index=True,
)
if not layers.empty:
    st.plotly_chart(charts.compare_layer_losses(layers), key="compare_layers")

st.subheader("Mask x reconstruction")
model_runs = done[done["model"] == picked["model"].iloc[0]]
sparsities = sorted(model_runs["sparsity"].dropna().unique())
if sparsities:
    sparsity = st.select_slider(
        "Sparsity", sparsities, value=picked["sparsity"].dropna().iloc[0], key="matrix_sparsity"
    )
    top1, gain = mask_reconstruction_matrix(model_runs[model_runs["sparsity"] == sparsity])
    if not top1.empty:
        st.plotly_chart(charts.matrix_heatmap(top1, gain), key="matrix")
        st.caption(
            "Cells: top-1 of the newest finished run, and its gain over the mask alone on the same images "
            "(with several seeds, the mean over seeds)."
        )
