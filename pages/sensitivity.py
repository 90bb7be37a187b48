"""Sensitivity: each layer pruned alone at a grid of sparsities (the rest dense), measured; which layers are
fragile, and a run launched from the per-layer sparsities the scan suggests."""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from pages.common import ACTIVE, REFRESH_SECONDS, escape_markdown, model_label, open_run, percent, runs, store, zoo
from snows_core.config import PruneConfig
from snows_core.dashboard import charts
from snows_core.dashboard.frames import sensitivity_frame
from snows_core.engine.reconstruct import list_reconstructions
from snows_core.masks import get_mask_method, list_mask_methods
from snows_core.runs import RunSpec
from snows_core.runs.executor import submit
from snows_core.runs.store import FINAL

st.title("Layer sensitivity")
st.caption(
    "Each layer pruned alone at sparsities from 50% up to the cap, the rest of the network dense, with the "
    "mask method and update you choose: its K-window loss and the network's top-1 on a test subset. Fragile "
    "layers lose accuracy early; robust ones can take more sparsity. It runs in the background queue."
)

with st.form("scan"):
    a, b, c = st.columns(3)
    models = zoo()
    default = models.index("resnet20") if "resnet20" in models else 0
    model = a.selectbox("Model", models, index=default, key="sens_model", format_func=model_label)
    mask = b.selectbox(
        "Mask method",
        [m for m in list_mask_methods() if not get_mask_method(m).user_supplied],
        key="sens_mask",
    )
    update = c.selectbox(
        "Update", list_reconstructions(), index=1, key="sens_update", help="lstsq is fast; snows slower"
    )
    d, e, f, g = st.columns(4)
    k = d.number_input("K (window depth)", 0, 10, 3, key="sens_k")
    n_calib = e.number_input("Calibration images", 16, 4096, 128, step=16, key="sens_n_calib")
    eval_size = f.number_input("Test images scored", 50, 10000, 500, step=50, key="sens_eval")
    target = g.slider("Overall target sparsity (for the suggestion)", 0.5, 0.95, 0.9, 0.05, key="sens_target")
    launched = st.form_submit_button("Scan every layer", type="primary", icon=":material/query_stats:")

if launched:
    try:
        config = PruneConfig(sparsity=target, mask=mask, reconstruction=update, k=int(k), n_calib=int(n_calib))
        spec = RunSpec(model=model, config=config, eval_size=int(eval_size), kind="sensitivity")
        st.session_state["sensitivity_run"] = submit(store(), spec)
    except (ValueError, FileNotFoundError) as err:
        st.error(f"Nothing was queued: {err}")
    else:
        st.rerun()  # the sidebar read the runs before this submit: read them again, with the new scan

frame = runs()
scans = frame[frame["kind"] == "sensitivity"]
if scans.empty:
    st.info(
        "No sensitivity scan yet: choose a model above and scan it (resnet20 with lstsq: under two minutes on "
        "a 2-core CPU; the mlp with none: seconds)."
    )
    st.stop()

ids = list(scans["id"])
wanted = st.session_state.get("sensitivity_run")
run_id = st.selectbox(
    "Scan",
    ids,
    index=ids.index(wanted) if wanted in ids else 0,
    format_func=lambda i: f"{i}  ({scans.set_index('id').loc[i, 'status']}, {scans.set_index('id').loc[i, 'label']})",
    key="sensitivity_pick",
)


def fragile_layers(cells: pd.DataFrame, count: int = 3) -> pd.DataFrame:
    """The layers losing the most top-1 at the highest sparsity scanned, and the most robust."""
    top = cells[cells["sparsity"] == cells["sparsity"].max()].sort_values("top1_drop", ascending=False)
    return top[["layer", "sparsity", "top1_drop"]].head(count)


def suggestion(run: dict, result: dict) -> None:
    """The per-layer sparsities the scan suggests at the target, and a run launched with them."""
    suggested = pd.DataFrame(list(result["suggested_sparsities"].items()), columns=["name", "sparsity"])
    target = run["spec"]["config"]["sparsity"]
    st.subheader(f"Suggested sparsities at {target:.0%} overall")
    st.plotly_chart(charts.layer_sparsity(suggested, "Suggested sparsity per layer"), key="suggested")
    st.caption(
        "The `sensitivity` allocation on this scan's output losses: the least summed loss with exactly the "
        "target share of weights removed, each layer capped. A run with allocation *sensitivity* and this "
        "scan's settings allocates exactly these."
    )
    if st.button("Launch a run with these sparsities", icon=":material/rocket_launch:", key="launch_suggested"):
        spec = RunSpec.from_dict(run["spec"])
        prune = dataclasses.replace(
            spec, kind="prune", config=dataclasses.replace(spec.config, allocation="sensitivity")
        )
        try:
            st.session_state["suggested_run"] = submit(store(), prune)
        except (ValueError, FileNotFoundError) as err:
            st.error(f"Nothing was queued: {err}")
    launched_run = st.session_state.get("suggested_run")
    if launched_run:
        st.success(f"Queued {launched_run}", icon=":material/check_circle:")
        if st.button("Open its live detail", icon=":material/monitoring:"):
            open_run(launched_run)


@st.fragment(run_every=REFRESH_SECONDS if scans.set_index("id").loc[run_id, "status"] in ACTIVE else None)
def live() -> None:
    run = store().get(run_id)
    row = runs().set_index("id").loc[run_id]
    cells = sensitivity_frame(store().events(run_id))
    if run["status"] in ACTIVE:
        total = row["layers_total"]
        st.progress(float(row["progress"]), text=f"{int(row['layers_done'])} of {total or '?'} layers scanned")
    elif run["status"] != "done":
        st.warning(f"The scan ended {run['status']}: {escape_markdown(run['error'] or '')}")
    if cells.empty:
        st.info(
            "No layer scanned yet: the scan is "
            + ("waiting in the queue." if run["status"] == "queued" else "starting.")
        )
        return
    st.metric("top-1 dense on the subset", percent(cells["top1_dense"].iloc[0]))
    view = st.radio(
        "Colour by",
        list(charts.SENSITIVITY_VIEWS),
        format_func=lambda c: charts.SENSITIVITY_VIEWS[c][0],
        horizontal=True,
        key="sens_view",
    )
    st.plotly_chart(charts.sensitivity_heatmap(cells, view), key="sens_heatmap")
    st.plotly_chart(charts.sensitivity_curves(cells, view), key="sens_curves")
    fragile = fragile_layers(cells)
    st.markdown(
        "**Most fragile** at the highest sparsity scanned: "
        + ", ".join(f"{r.layer} (−{100 * r.top1_drop:.1f} points)" for r in fragile.itertuples())
    )
    flagged = cells[cells["checks"] != ""]
    if not flagged.empty:
        st.warning(
            f"{len(flagged)} cell{'s' if len(flagged) > 1 else ''} left the logits unchanged. A zero change is "
            "checked, not counted as robustness:",
            icon=":material/fact_check:",
        )
        st.dataframe(flagged[["layer", "sparsity", "removed", "checks"]], hide_index=True)
    if run["status"] == "done":
        suggestion(run, store().result(run_id) or {})
    if run["status"] in FINAL and run["status"] != scans.set_index("id").loc[run_id, "status"]:
        st.rerun()  # the scan finished: one last full render, then stop refreshing


live()
