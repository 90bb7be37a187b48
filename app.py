"""SNOWS Lab: launch one-shot pruning runs in the background and explore their trade-offs.

`streamlit run app.py` serves it on localhost. This file is the router: one `st.navigation` over the
pages in pages/, and the sidebar they share. The UI reads the run store ($SNOWS_HOME) and submits
through snows_core.runs; pruning never runs in this process.
"""

import streamlit as st

from pages.common import PAGES, sidebar

st.set_page_config(page_title="SNOWS Lab", page_icon=":material/ac_unit:", layout="wide")
page = st.navigation(
    [st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)]
)
sidebar()
page.run()
