"""Runs: every run in the store, live while any is queued or running; cancel, re-run, delete, export, import."""

from __future__ import annotations

import streamlit as st

from pages.common import ACTIVE, REFRESH_SECONDS, any_active, empty_state, escape_markdown, open_run, runs, store
from snows_core.runs import RunSpec, RunStatus
from snows_core.runs.bundle import export_zip, import_zip
from snows_core.runs.executor import submit

COLUMNS = ["id", "status", "progress", "model", "mask", "reconstruction", "k", "pattern", "allocation", "stages"]
COLUMNS += ["sparsity", "top1_dense", "top1_mask_only", "top1_final", "seconds", "sweep_id", "imported_from"]
CONFIG = {
    "id": st.column_config.TextColumn("run"),
    "progress": st.column_config.ProgressColumn("layers", min_value=0.0, max_value=1.0, format="percent"),
    "sparsity": st.column_config.NumberColumn("sparsity", format="%.2f"),
    "top1_dense": st.column_config.NumberColumn("top-1 dense", format="%.4f"),
    "top1_mask_only": st.column_config.NumberColumn("mask only", format="%.4f"),
    "top1_final": st.column_config.NumberColumn("final", format="%.4f"),
    "seconds": st.column_config.NumberColumn("seconds", format="%.1f"),
    "sweep_id": "sweep",
    "imported_from": st.column_config.TextColumn("imported from", help="Empty: computed here"),
}


def actions(selected: list[str], frame) -> None:
    if not selected:
        st.caption("Select rows to open, cancel, re-run, delete or export them.")
        return
    rows = frame[frame["id"].isin(selected)]
    cols = st.columns(5)
    if cols[0].button("Open", icon=":material/monitoring:", disabled=len(selected) != 1):
        open_run(selected[0])
    active = rows[rows["status"].isin(ACTIVE)]
    if cols[1].button("Cancel", icon=":material/stop_circle:", disabled=active.empty):
        for run_id in active["id"]:
            store().request_cancel(run_id)
        st.rerun()
    if cols[2].button("Re-run", icon=":material/replay:", help="Queue the same spec again (recomputed)"):
        for run_id in selected:
            submit(store(), RunSpec.from_dict(store().get(run_id)["spec"]), force=True)
        st.rerun()
    finished = rows[~rows["status"].isin(ACTIVE)]
    with cols[3].popover("Delete", icon=":material/delete:", disabled=finished.empty):
        st.write(f"Delete {len(finished)} finished run(s) with their weights? This cannot be undone.")
        if st.button("Delete for good", type="primary"):
            for run_id in finished["id"]:
                store().delete(run_id)
            st.rerun()
    if len(selected) == 1 and selected[0] in set(finished["id"]):
        cols[4].download_button(
            "Export",
            data=lambda: export_zip(store(), selected[0]),  # built when clicked, not on every rerun
            file_name=f"{selected[0]}.zip",
            mime="application/zip",
            icon=":material/download:",
        )


st.title("Runs")
frame = runs()
if frame.empty:
    empty_state("No runs yet. Launch one (the teaching demo takes under a minute) or import a bundle below.")
else:
    f1, f2, f3 = st.columns(3)
    statuses = f1.multiselect("Status", [s.value for s in RunStatus], key="filter_status")
    models = f2.multiselect("Model", sorted(frame["model"].unique()), key="filter_model")
    sweeps = f3.multiselect("Sweep", sorted(frame["sweep_id"].dropna().unique()), key="filter_sweep")

    @st.fragment(run_every=REFRESH_SECONDS if any_active(frame) else None)
    def table() -> None:
        live = runs()
        keep = live["id"].notna()
        for column, chosen in (("status", statuses), ("model", models), ("sweep_id", sweeps)):
            if chosen:
                keep &= live[column].isin(chosen)
        shown = live[keep]
        event = st.dataframe(
            shown[COLUMNS],
            column_config=CONFIG,
            hide_index=True,
            on_select="rerun",
            selection_mode="multi-row",
            key="runs_table",
        )
        selected = [shown.iloc[i]["id"] for i in event.selection.rows if i < len(shown)]
        actions(selected, live)
        failed = shown[shown["status"] == RunStatus.FAILED]
        for _, row in failed.head(3).iterrows():
            with st.expander(f"Why {row['id']} failed"):
                st.code(row["error"] or "no error text")
        if any_active(live) != any_active(frame):
            st.rerun()  # start or stop the live refresh

    table()

st.divider()
upload = st.file_uploader("Import a run bundle (.zip from Export)", type=["zip"], key="bundle_upload")
if upload is not None and st.button("Import", icon=":material/upload:"):
    try:
        st.success(f"Imported {import_zip(store(), upload.getvalue())}")
    except (ValueError, FileNotFoundError) as err:
        st.error(f"Import failed: {escape_markdown(err)}")
