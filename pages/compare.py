"""Compare: runs side by side, what each mask kept, the mask x reconstruction matrix, a flag when runs are not
comparable, and the comparison as one HTML file."""

from __future__ import annotations

import zlib

import pandas as pd
import streamlit as st

from pages.common import empty_state, runs, store
from snows_core.dashboard import charts, kept
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

table = kept.comparison_table(picked)
st.dataframe(
    table,
    hide_index=True,
    column_config={
        **{c: st.column_config.NumberColumn(format="%.2f") for c in table.columns if "(%)" in c or "points" in c},
        "Seconds": st.column_config.NumberColumn(format="%d s"),
        "Seconds vs first": st.column_config.NumberColumn(format="%+d s"),
    },
    key="compare_table",
)
st.caption("The first run is the reference for the differences; accuracies in percent, differences in points.")

layers = pd.concat(
    [
        layers_frame(store().events(run_id), last_pass_only=True).assign(run=f"{run_id[-6:]} {label}")
        for run_id, label in zip(picked["id"], picked["label"], strict=True)
    ],
    ignore_index=True,
)
figures = []
if not layers.empty:
    figures.append(charts.compare_layer_losses(layers))
    st.plotly_chart(figures[-1], key="compare_layers")


@st.cache_data(show_spinner="Reading the stored masks…", max_entries=32)
def mask_views(home: str, runs: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Cached per store and runs: a finished run's masks never change."""
    return kept.compare_masks(store(), runs)


@st.cache_data(show_spinner=False, max_entries=32)
def pattern_view(home: str, runs: dict[str, str], layer: str) -> pd.DataFrame:
    return kept.layer_pattern(store(), runs, layer)


st.subheader("What each mask kept")
labelled = {f"{run_id[-6:]} {label}": run_id for run_id, label in zip(picked["id"], picked["label"], strict=True)}
if picked["model"].nunique() > 1:
    st.info("Masks compare within one model: pick runs of the same model to see what each kept.")
else:
    overlap, sparsity, common = mask_views(str(store().home), labelled)
    if not common:
        st.info("These runs stored no masks to compare (imported without them, or removed).")
    else:
        figures += [charts.overlap_chart(overlap), charts.layer_sparsity_chart(sparsity)]
        st.plotly_chart(figures[-2], key="mask_overlap")
        st.caption(
            "1 = both runs kept exactly the same weights of that layer; hover for the share of each run's kept "
            "weights the other kept too."
        )
        st.plotly_chart(figures[-1], key="mask_sparsity")
        stored = list(dict.fromkeys(sparsity["run"]))  # the runs that stored masks
        chosen_set = zlib.crc32("|".join(stored).encode())  # other runs, other options: fresh widgets
        layer = st.selectbox("Layer", common, key=f"kept_layer_{chosen_set}")
        pattern_runs = st.multiselect(
            "Runs side by side", stored, default=stored[:2], max_selections=4, key=f"kept_runs_{chosen_set}"
        )
        if len(pattern_runs) >= 1:
            pattern = pattern_view(str(store().home), {label: labelled[label] for label in pattern_runs}, layer)
            figures.append(charts.kept_pattern_chart(pattern, layer))
            st.plotly_chart(figures[-1], key="kept_pattern")
            st.caption(
                "Top: how many of each output x input channel cell's weights (kernel positions summed) the run "
                "kept. Bottom: the weights that run alone kept among those shown."
            )

st.subheader("Mask x reconstruction")
model_runs = done[done["model"] == picked["model"].iloc[0]]
sparsities = sorted(model_runs["sparsity"].dropna().unique())
if sparsities:
    sparsity = st.select_slider(
        "Sparsity", sparsities, value=picked["sparsity"].dropna().iloc[0], key="matrix_sparsity"
    )
    top1, gain = mask_reconstruction_matrix(model_runs[model_runs["sparsity"] == sparsity])
    if not top1.empty:
        figures.append(charts.matrix_heatmap(top1, gain))
        st.plotly_chart(figures[-1], key="matrix")
        st.caption(
            "Cells: top-1 of the newest finished run, and its gain over the mask alone on the same images "
            "(with several seeds, the mean over seeds)."
        )

st.download_button(
    "Download report",
    lambda: charts.report_html(  # built when clicked: plotly.js inline makes it megabytes
        "SNOWS Lab: runs compared",
        table,
        figures,
        notes=f"{len(picked)} runs of {', '.join(picked['model'].unique())}; the first is the reference.",
    ),
    file_name="snows-comparison.html",
    mime="text/html",
    icon=":material/download:",
    key="compare_report",
    help="One HTML file with this table and these charts, interactive, that opens offline.",
)
