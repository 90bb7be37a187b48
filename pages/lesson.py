"""Lesson: one-shot pruning in six steps for a class, each a click that launches (or reuses) a small run and
shows what it means; the step is in the URL (?step=N), ?present=1 is the projector view."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages.common import ACTIVE, REFRESH_SECONDS, runs, store
from snows_core.dashboard import charts, kept
from snows_core.dashboard.frames import cg_frame, steps_frame
from snows_core.dashboard.lesson import LESSON, LessonStep, known_run, lesson_specs, step_runs, step_text
from snows_core.runs.executor import reusable_run, submit

PRESENT_CSS = """<style>
html { font-size: 22px; }
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], header { display: none; }
.block-container { max-width: 96vw; padding-top: 1.5rem; }
</style>"""


def step_index() -> int:
    """The step in the URL, 1-based there (?step=3), clamped to the lesson."""
    try:
        return min(max(int(st.query_params.get("step", "1")) - 1, 0), len(LESSON) - 1)
    except ValueError:
        return 0


def go_to(index: int) -> None:
    st.query_params["step"] = str(index + 1)


def set_presenting() -> None:
    if st.session_state["lesson_present"]:
        st.query_params["present"] = "1"
    else:
        del st.query_params["present"]


def sized(fig: go.Figure) -> go.Figure:
    """A chart readable from the back of a room in presentation mode."""
    if presenting:
        fig.update_layout(font_size=20, height=560, title_font_size=26)
    return fig


def launch(step: LessonStep, ids: dict[str, str | None]) -> None:
    for label, run_id in ids.items():
        if run_id is None:
            submit(store(), step.runs[label])


def prepare() -> None:
    """Every run of the lesson queued (the done ones reused): before class."""
    for spec in lesson_specs():
        if known_run(store(), spec) is None:
            submit(store(), spec)


index, presenting = step_index(), st.query_params.get("present") == "1"
step = LESSON[index]
if presenting:
    st.markdown(PRESENT_CSS, unsafe_allow_html=True)

back, middle, forward = st.columns([1, 6, 1])
back.button("Back", icon=":material/arrow_back:", on_click=go_to, args=(index - 1,), disabled=index == 0)
forward.button(
    "Next", icon=":material/arrow_forward:", on_click=go_to, args=(index + 1,), disabled=index == len(LESSON) - 1
)
middle.progress((index + 1) / len(LESSON), text=f"Step {index + 1} of {len(LESSON)}")
st.title(f"{index + 1}. {step.title}")
st.markdown(step.before)

ids = step_runs(store(), step)
if any(run_id is None for run_id in ids.values()):
    st.button(
        "Run this step",
        type="primary",
        icon=":material/play_arrow:",
        key="lesson_run",
        on_click=launch,
        args=(step, ids),
    )


def results_frame(ids: dict[str, str]) -> pd.DataFrame:
    frame = runs().set_index("id")
    return frame.loc[list(ids.values())].assign(step_label=list(ids))


def draw_solve(run_id: str) -> None:
    """The live Newton-CG solve: every layer's loss per Newton step, and one layer's CG residuals."""
    steps = steps_frame(store().events(run_id))
    if steps.empty:
        return
    left, right = st.columns(2)
    left.plotly_chart(sized(charts.loss_curves(steps)), key="lesson_loss")
    cg = cg_frame(store().events(run_id))
    if not cg.empty:
        layer = cg["layer"].iloc[-1]  # the layer being solved now, or the last one
        right.plotly_chart(sized(charts.cg_residuals(cg, layer)), key="lesson_cg")


def draw_result(ids: dict[str, str], rows: pd.DataFrame) -> None:
    results = {label: store().result(run_id) or {} for label, run_id in ids.items()}
    st.markdown(step_text(step, results))
    dense = float(rows["top1_dense"].iloc[0])
    if step.view == "sweep":
        st.plotly_chart(sized(charts.accuracy_vs_sparsity(rows)), key="lesson_sweep")
        return
    if step.key == "collapse":  # no re-fit: the mask alone
        bars = pd.DataFrame({"label": ["90% of weights zeroed"], "top1": rows["top1_final"].to_numpy()})
    elif step.view in ("accuracy", "solve"):
        row = rows.iloc[0]
        bars = pd.DataFrame({"label": ["mask only", "re-fitted"], "top1": [row["top1_mask_only"], row["top1_final"]]})
    else:
        bars = pd.DataFrame({"label": rows["step_label"], "top1": rows["top1_final"]})
    chart, extra = st.columns(2) if step.view == "masks" else (st.container(), None)
    chart.plotly_chart(sized(charts.accuracy_bars(bars, dense)), key="lesson_bars")
    if step.view == "masks":
        overlap, _, common = kept.compare_masks(store(), ids)
        if common:
            extra.plotly_chart(sized(charts.overlap_chart(overlap)), key="lesson_overlap")
    if step.view == "solve":
        draw_solve(ids["snows"])


live = any(run_id is not None and store().get(run_id)["status"] in ACTIVE for run_id in ids.values())


@st.fragment(run_every=REFRESH_SECONDS if live else None)
def follow() -> None:
    """The step's runs as they go, then its result; refreshed while any is queued or running."""
    ids = step_runs(store(), step)
    if any(run_id is None for run_id in ids.values()):
        st.info(
            "Press **Run this step**: its runs take seconds (or come straight from the store when done). A run "
            "that failed or was cancelled is listed on Runs with why; the button tries it again."
        )
        return
    rows = results_frame(ids)
    active = rows[rows["status"].isin(ACTIVE)]
    if not active.empty:
        for _, row in active.iterrows():
            st.progress(float(row["progress"]), text=f"{row['step_label']}: {row['status']}")
        if step.view == "solve":
            draw_solve(ids["snows"])
        return
    if live:  # the last run just ended: a full rerun stops the refresh
        st.rerun()
    draw_result(ids, rows)


follow()

with st.expander("For the teacher", icon=":material/co_present:", expanded=not presenting):
    st.toggle(
        "Presentation mode (larger type, no sidebar; ?present=1)",
        key="lesson_present",
        value=presenting,
        on_change=set_presenting,
    )
    ready = sum(reusable_run(store(), spec) is not None for spec in lesson_specs())
    st.caption(f"{ready} of {len(lesson_specs())} lesson runs are ready in this store.")
    st.button(
        "Prepare the whole lesson",
        icon=":material/bolt:",
        on_click=prepare,
        key="lesson_prepare",
        help="Queue every run of the six steps now (a few minutes on a laptop CPU), so that in class each "
        "step shows its result at once.",
    )
