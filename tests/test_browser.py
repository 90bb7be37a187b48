"""A real browser: headless Debian Chromium through Playwright against `streamlit run app.py`.

Deep links opened first on a freshly started server get the app's navigation and sidebar. Opens /,
launches the teaching demo through the form, waits on the Runs page until it is done, clicks
its point on the Trade-offs page, which opens its detail page, checks that the Plotly charts rendered;
launches a sensitivity scan of the mlp from the Sensitivity page and waits for its heatmap. Screenshots
go into $SNOWS_SCREENSHOTS when set, else the test's temporary folder.
"""

import os
import re
from pathlib import Path

import pytest
from store_fixtures import add_masks, populate

from scripts.browser import CHROMIUM, chromium, select_option, serve_app
from snows_core.runs import RunStore

pytest.importorskip("playwright")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium"),
]


@pytest.mark.parametrize("first", ["run_detail", "common"])
def test_a_deep_link_opened_first_on_a_fresh_server_gets_the_apps_navigation_and_sidebar(home, tmp_path, first):
    ids = populate(home)
    with serve_app(home, tmp_path / "streamlit.log") as url, chromium() as page:
        page.goto(f"{url}/run_detail?run={ids['done']}" if first == "run_detail" else f"{url}/common")
        nav = page.get_by_test_id("stSidebarNav")
        nav.get_by_role("link", name="Trade-offs").wait_for(timeout=300_000)
        page.get_by_text("Store:").wait_for(timeout=120_000)  # the shared sidebar
        links = [name.split("\n")[-1].strip().lower() for name in nav.get_by_role("link").all_inner_texts()]  # no icon
        assert links == ["launch", "runs", "run detail", "trade-offs", "compare", "sensitivity", "lesson", "learn"]
        if first == "run_detail":  # the requested page and run, its query kept
            page.get_by_role("heading", name="Run detail").wait_for(timeout=120_000)
            page.get_by_text("91.00%").wait_for(timeout=120_000)  # that run's final top-1 (the newest is running)
            assert page.url.endswith(f"/run_detail?run={ids['done']}")
        else:  # a helper module is no page: the default page instead
            page.get_by_text("Launch a pruning run").wait_for(timeout=120_000)


def test_two_finished_runs_masks_overlap_drawn_on_compare(home, tmp_path):
    ids = populate(home)
    add_masks(home, ids["done"], seed=0)
    add_masks(home, ids["done_wanda"], seed=1)
    with serve_app(home, tmp_path / "streamlit.log") as url, chromium(1400, 1800) as page:
        page.goto(f"{url}/compare")
        overlap = page.locator(".js-plotly-plot", has_text="What the masks share").first
        overlap.wait_for(timeout=300_000)
        page.locator(".js-plotly-plot", has_text="what each mask kept").first.wait_for(timeout=120_000)
        assert overlap.locator(".scatterlayer .trace").count() == 1  # one pair: the two runs with masks
        assert page.get_by_role("button", name=re.compile("Download report")).count() == 1


def test_the_lessons_first_three_steps_from_a_fresh_store(home, tmp_path):
    shots = Path(os.environ.get("SNOWS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    titles = ["1. Prune 90% of the weights", "2. Re-fit each layer to its own output", "3. Reconstruct K operations"]
    with serve_app(home, tmp_path / "streamlit.log") as url, chromium(1400, 1200) as page:
        page.goto(f"{url}/lesson?step=1&present=1")  # presentation mode, as in class
        for number, title in enumerate(titles, start=1):
            page.get_by_role("heading", name=re.compile("^" + re.escape(title))).wait_for(timeout=300_000)
            page.get_by_role("button", name=re.compile("Run this step")).click()
            # generous: seconds a step idle, minutes on a loaded machine
            page.locator(".js-plotly-plot", has_text="Top-1 on 1,000 test images").first.wait_for(timeout=900_000)
            if number == 3:  # the K-deep step also shows the Newton-CG solve
                page.locator(".js-plotly-plot", has_text="CG residual").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / f"lesson-{number}.png"))
            if number < len(titles):
                page.get_by_role("button", name=re.compile("Next")).click()
                page.wait_for_url(f"**/lesson?step={number + 1}&present=1", timeout=120_000)
        assert [r["status"] for r in RunStore(home).list()] == ["done"] * 3


def test_launch_a_teaching_demo_and_see_its_charts(home, tmp_path):
    shots = Path(os.environ.get("SNOWS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with serve_app(home, tmp_path / "streamlit.log") as url, chromium() as page:
        page.goto(url + "/")  # the root first: a fresh server's first deep link can show "Page not found"
        page.get_by_text("Launch a pruning run").wait_for(timeout=300_000)
        select_option(page, "Preset", "Teaching demo (under a minute on a laptop CPU)")
        page.get_by_text("Forecast").wait_for(timeout=300_000)
        page.get_by_role("button", name=re.compile("Launch")).last.wait_for()
        page.screenshot(path=str(shots / "launch.png"), full_page=True)
        page.get_by_role("button", name=re.compile("^.*Launch$")).click()
        page.get_by_text("Queued:").wait_for(timeout=120_000)

        page.get_by_role("link", name="Runs").first.click()
        # the sidebar counts, refreshed live; generous: a loaded machine takes minutes where an idle one takes 20 s
        page.get_by_text("1 done").wait_for(timeout=900_000)
        page.screenshot(path=str(shots / "runs.png"), full_page=True)

        run = RunStore(home).list()[0]
        assert run["status"] == "done" and run["spec"]["config"]["sparsity"] == 0.9

        page.get_by_role("link", name="Trade-offs").first.click()
        point = page.locator(".js-plotly-plot").first.locator(".scatterlayer .trace .points path").first
        point.wait_for(timeout=300_000)
        page.wait_for_timeout(1000)
        point.click(force=True)  # a point opens its run
        page.wait_for_url(f"**/run_detail?run={run['id']}", timeout=120_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
        page.wait_for_timeout(1500)  # let every chart draw
        assert page.locator(".js-plotly-plot").count() >= 3
        page.screenshot(path=str(shots / "run_detail.png"), full_page=True)


def test_scan_the_mlp_from_the_sensitivity_page_and_see_its_heatmap(home, tmp_path):
    shots = Path(os.environ.get("SNOWS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with serve_app(home, tmp_path / "streamlit.log") as url, chromium(1400, 1600) as page:
        page.goto(url + "/")
        page.get_by_text("Launch a pruning run").wait_for(timeout=300_000)
        page.get_by_role("link", name="Sensitivity").first.click()
        page.get_by_text("No sensitivity scan yet").wait_for(timeout=300_000)
        select_option(page, "Model", re.compile("^mlp:"))
        select_option(page, "Update", "none")
        page.get_by_role("button", name=re.compile("Scan every layer")).click()
        heatmap = page.locator(".js-plotly-plot", has_text="each layer pruned alone").first  # a live rerun may
        heatmap.wait_for(timeout=900_000)  # briefly show two; generous: minutes on a loaded machine, seconds idle
        page.get_by_text("Suggested sparsities at 90% overall").first.wait_for(timeout=900_000)
        page.wait_for_timeout(1500)  # let every chart draw
        assert page.locator(".js-plotly-plot").count() >= 3
        (scan,) = RunStore(home).list()
        assert scan["status"] == "done" and scan["spec"]["kind"] == "sensitivity"
        page.screenshot(path=str(shots / "sensitivity.png"), full_page=True)
