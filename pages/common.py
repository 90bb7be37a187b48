"""What the pages share: the store, the runs table, the sidebar, navigation to a run, empty states."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from snows_core.dashboard.frames import runs_frame
from snows_core.models import list_models, model_info
from snows_core.runs import RunStatus, RunStore, StoreError, snows_home
from snows_core.runs.executor import tend_queue
from snows_core.runs.store import FINAL

PAGES = [
    ("pages/launch.py", "Launch", ":material/rocket_launch:"),
    ("pages/runs.py", "Runs", ":material/table_rows:"),
    ("pages/run_detail.py", "Run detail", ":material/monitoring:"),
    ("pages/tradeoffs.py", "Trade-offs", ":material/scatter_plot:"),
    ("pages/compare.py", "Compare", ":material/compare_arrows:"),
    ("pages/sensitivity.py", "Sensitivity", ":material/query_stats:"),
    ("pages/lesson.py", "Lesson", ":material/co_present:"),
    ("pages/learn.py", "Learn", ":material/school:"),
]
REFRESH_SECONDS = 2.0


def _leave_folder_pages() -> None:
    """Until app.py has run once in this server process, Streamlit serves pages/ as folder-based pages
    (streamlit/streamlit#9624): a deep link opened first on a fresh server ran pages/<page>.py alone, with the
    folder's file names as navigation (this module among them) and no shared sidebar. Every page imports this
    module, so on that first run it switches the process to app.py's navigation and runs again: the URL, page
    and query parameters, is unchanged, and app.py now routes it. (Streamlit 1.67's flag; pinned.)"""
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_folder_pages()
_RUNS = "_runs_this_script_run"  # (script run, runs frame read in it)
ACTIVE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def store() -> RunStore:
    """The run store of $SNOWS_HOME, opened (schema, migrations) once per home rather than on every call;
    $SNOWS_HOME is read each time, so tests can point it elsewhere."""
    home = snows_home()
    if not (home / "runs.db").is_file():  # removed under us: open it afresh
        _open_store.clear()
    try:
        return _open_store(str(home))
    except StoreError as err:
        st.error(f"{err}. Point $SNOWS_HOME at another folder, or move this file aside.", icon=":material/error:")
        st.stop()


@st.cache_resource(show_spinner=False)
def _open_store(home: str) -> RunStore:
    return RunStore(home)


def runs() -> pd.DataFrame:
    """All runs, newest first, runs whose worker died marked failed first. Read once per script run: the
    sidebar, the page and a fragment drawn with it share one read; a fragment's timed reruns are script
    runs of their own and read afresh."""
    this_run = _script_run()
    shared = st.session_state.get(_RUNS)
    if this_run is not None and shared is not None and shared[0] is this_run:
        return shared[1]
    frame = _read_runs()
    st.session_state[_RUNS] = (this_run, frame)
    return frame


def _script_run() -> object | None:
    """An object new in every script run, full or fragment: Streamlit resets its run context (and with it
    the element cursors) at the start of each."""
    ctx = get_script_run_ctx()
    return None if ctx is None else ctx.cursors


def _read_runs() -> pd.DataFrame:
    current = store()
    tend_queue(current)
    return runs_frame(current)


def any_active(frame: pd.DataFrame) -> bool:
    return bool(frame["status"].isin(ACTIVE).any())


def open_run(run_id: str) -> None:
    st.session_state["run"] = run_id
    st.switch_page("pages/run_detail.py", query_params={"run": run_id})


def empty_state(message: str, page: str = "pages/launch.py", label: str = "Launch a run") -> None:
    st.info(message, icon=":material/info:")
    st.page_link(page, label=label, icon=":material/arrow_forward:")


@st.cache_data(show_spinner=False)
def model_label(name: str) -> str:
    """'resnet20: fashion-mnist, 93.76% top-1, 0.27 M params' for the model pickers."""
    info = model_info(name)
    top1 = f", {info.top1:.2%} top-1" if info.top1 is not None else ", needs a checkpoint"
    return f"{name}: {info.dataset}{top1}, {info.params / 1e6:.2f} M params"


def zoo() -> list[str]:
    return list_models()


def sidebar() -> None:
    with st.sidebar:
        frame = runs()
        counts = frame["status"].value_counts()
        st.caption(f"Store: `{store().home}`")
        if frame.empty:
            st.caption("No runs yet.")
        else:
            st.caption(" · ".join(f"{counts.get(s, 0)} {s}" for s in (RunStatus.RUNNING, RunStatus.QUEUED, *FINAL)))
        running = frame[frame["status"] == RunStatus.RUNNING]
        for _, row in running.iterrows():
            st.progress(float(row["progress"]), text=f"{row['model']} {row['label']}")


MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def escape_markdown(text: object) -> str:
    """Stored text (a model name from an imported run, say) shown as text: markdown's specials escaped, so no
    link, emphasis or HTML of its own renders (":" too: no bare URL turns into a link)."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


def percent(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2%}"
