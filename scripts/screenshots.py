"""Screenshots of every page for the README, taken in headless Debian Chromium against a given store.

    .venv/bin/python scripts/screenshots.py --home STORE --out assets/screenshots [--run RUN_ID] [--pages ...]

STORE should hold some finished runs (e.g. the sweep of benchmarks/bench_queue.py) and, for the
Sensitivity page, a finished sensitivity scan (the newest is shown). The Learn page is shot at its 2-D
Newton-CG explorer; "masks" is Compare's "What each mask kept" (of the runs Compare picks: give the store two
finished runs of one model, e.g. magnitude and obc masks); "speed" is Run detail's Speed tab (of `--speed-run`,
a run submitted with --measure-speed); "lesson" is the lesson's step 3 in presentation mode (give the store its
runs: benchmarks/bench_lesson.py --home STORE). `--pages` shoots only the pages named.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.browser import chromium, select_option, serve_app  # noqa: E402

PAGES = ("launch", "runs", "tradeoffs", "compare", "masks", "run_detail", "speed", "sensitivity", "lesson", "learn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshots")
    parser.add_argument("--run", default=None, help="the run shown on the detail page (default: the newest)")
    parser.add_argument("--speed-run", default=None, help="the run whose Speed tab is shot (default: --run)")
    parser.add_argument("--pages", nargs="*", default=list(PAGES), choices=PAGES, help="which pages to shoot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with serve_app(args.home, args.out.parent / "streamlit-screenshots.log") as url, chromium(1400, 1800) as page:

        def shoot(name: str, wait_for: str = "", delay: int = 2500, height: int | None = None) -> None:
            if name not in args.pages:
                return
            if wait_for:
                page.locator(wait_for).first.wait_for(timeout=60_000)
            page.wait_for_timeout(delay)
            clip = {"x": 0, "y": 0, "width": 1400, "height": height} if height else None
            page.screenshot(path=str(args.out / f"{name}.png"), clip=clip)

        page.goto(url + "/")
        page.get_by_text("Launch a pruning run").wait_for(timeout=60_000)
        select_option(page, "Preset", "Magnitude vs Wanda at K = 0 and 3 (resnet20)")
        page.get_by_text("Forecast").wait_for(timeout=60_000)
        shoot("launch")
        for link, name, selector in (
            ("Runs", "runs", "[data-testid=stDataFrame]"),
            ("Trade-offs", "tradeoffs", ".js-plotly-plot"),
            ("Compare", "compare", ".js-plotly-plot"),
        ):
            page.get_by_role("link", name=link).first.click()
            shoot(name, selector)
        if "masks" in args.pages:
            page.get_by_role("link", name="Compare").first.click()
            heading = page.get_by_role("heading", name="What each mask kept")
            page.locator(".js-plotly-plot", has_text="what each mask kept").first.wait_for(timeout=60_000)
            heading.evaluate("heading => heading.scrollIntoView()")
            shoot("masks", delay=3000)
        page.goto(url + "/run_detail" + (f"?run={args.run}" if args.run else ""))
        shoot("run_detail", ".js-plotly-plot", delay=4000)
        if "speed" in args.pages:
            run = args.speed_run or args.run
            page.goto(url + "/run_detail" + (f"?run={run}" if run else ""))
            page.get_by_role("tab", name="Speed").click()
            shoot("speed", "[data-testid=stMetric]", height=760)
        if "sensitivity" in args.pages:
            page.get_by_role("link", name="Sensitivity").first.click()
            shoot("sensitivity", ".js-plotly-plot", delay=4000)
        if "lesson" in args.pages:
            page.goto(url + "/lesson?step=3&present=1")
            page.locator(".js-plotly-plot", has_text="CG residual").first.wait_for(timeout=60_000)
            shoot("lesson", ".js-plotly-plot", delay=3000, height=1300)
        if "learn" in args.pages:  # the 2-D Newton-CG explorer
            page.get_by_role("link", name="Learn").first.click()
            page.get_by_text("3. Newton-CG in two dimensions").wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            page.get_by_text("3. Newton-CG in two dimensions").evaluate("heading => heading.scrollIntoView()")
            shoot("learn", ".js-plotly-plot")
    (args.out.parent / "streamlit-screenshots.log").unlink(missing_ok=True)
    print(f"wrote {sorted(p.name for p in args.out.glob('*.png'))} to {args.out}")


if __name__ == "__main__":
    main()
