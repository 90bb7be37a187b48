"""Trade-offs: top-1 against sparsity, against K and against cost; click a point to open its run."""

from __future__ import annotations

import streamlit as st

from pages.common import empty_state, open_run, runs
from snows_core.dashboard import charts
from snows_core.runs import RunStatus

st.title("Trade-offs")
frame = runs()
done = frame[(frame["status"] == RunStatus.DONE) & (frame["kind"] == "prune")]  # scans have no final top-1
if done.empty:
    empty_state(
        "No finished runs yet. Launch a sweep, e.g. the preset *Magnitude vs Wanda at K = 0 and 3*, "
        "and its accuracy-sparsity curves appear here."
    )
    st.stop()

a, b, c = st.columns(3)
models = list(done["model"].value_counts().index)  # the most explored model first
model = a.selectbox("Model", models, key="tradeoff_model")
subset = done[done["model"] == model]
dataset = b.selectbox("Dataset", sorted(subset["dataset"].unique()), key="tradeoff_dataset")
subset = subset[subset["dataset"] == dataset]
labels = sorted(subset["label"].unique())
chosen = c.multiselect("Curves (mask + reconstruction)", labels, default=labels, key="tradeoff_labels")
subset = subset[subset["label"].isin(chosen)]
st.caption(f"{len(subset)} finished runs. Click a point to open its run.")


def clickable(figure, key: str) -> None:
    event = st.plotly_chart(figure, key=key, on_select="rerun", selection_mode="points")
    points = event.selection.points if event else []
    if points and points[0].get("customdata"):
        open_run(points[0]["customdata"][0])


clickable(charts.accuracy_vs_sparsity(subset), "vs_sparsity")
left, right = st.columns(2)
with left:
    clickable(charts.accuracy_vs_k(subset), "vs_k")
with right:
    clickable(charts.accuracy_vs_cost(subset), "vs_cost")
