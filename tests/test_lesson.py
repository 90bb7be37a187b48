"""The guided lesson: its steps' runs (library) and its page through AppTest: the step in the URL, Next/Back,
a step launched or shown from the store, presentation mode and pre-warming."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from snows_core import __version__
from snows_core.dashboard.lesson import LESSON, lesson_specs, step_runs, step_text
from snows_core.recipes import get_recipe
from snows_core.runs import RunStatus, RunStore
from snows_core.runs.process import exclusive

APP = Path(__file__).resolve().parents[1] / "app.py"


def test_six_steps_of_small_runs_shared_where_the_same_run_makes_two_points():
    assert [step.key for step in LESSON] == ["collapse", "layerwise", "k-deep", "masks", "stages", "trade-off"]
    teaching = get_recipe("teaching")
    for step in LESSON:
        for spec in step.runs.values():
            assert spec.model == "resnet20" and spec.config.n_calib == teaching.n_calib == 128
    k_deep = LESSON[2].runs["snows"].content_hash()
    assert LESSON[3].runs["magnitude"].content_hash() == k_deep == LESSON[5].runs["90%"].content_hash()
    assert len(lesson_specs()) == 9  # 12 runs named, 3 of them the same K-deep run
    assert len({spec.content_hash() for spec in lesson_specs()}) == 9


def test_step_text_fills_each_runs_results_as_percentages_and_seconds():
    text = step_text(
        LESSON[4],
        {"one pass": {"top1_final": 0.6134, "seconds": 9.6}, "3 stages": {"top1_final": 0.75, "seconds": 30.2}},
    )
    assert text == "One pass: 61.3%; three stages: 75.0%, in 30 s against 10 s."


def finished(store: RunStore, spec, final: float = 0.5) -> str:
    run_id = store.create(spec, __version__)
    store.claim_next(pid=1)
    result = {"top1_dense": 0.93, "top1_mask_only": 0.2, "top1_final": final, "seconds": 4.0, "sparsity": 0.9}
    store.finish(run_id, RunStatus.DONE, result)
    return run_id


def test_step_runs_prefers_a_done_run_then_an_active_one(home):
    store = RunStore(home)
    step = LESSON[3]
    assert step_runs(store, step) == {"magnitude": None, "obc": None}
    queued = store.create(step.runs["obc"], __version__)
    done = finished(store, step.runs["magnitude"])
    assert step_runs(store, step) == {"magnitude": done, "obc": queued}


def open_lesson(**query) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.switch_page("pages/lesson.py")
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception[0].value
    return at


def test_the_step_comes_from_the_url_and_next_and_back_move_it_there(home):
    at = open_lesson(step="3")
    assert at.title[0].value == "3. Reconstruct K operations deeper (SNOWS)"
    next(b for b in at.button if b.label == "Next").click().run()
    assert at.query_params["step"] == "4" and at.title[0].value == "4. Two masks, side by side"
    next(b for b in at.button if b.label == "Back").click().run()
    next(b for b in at.button if b.label == "Back").click().run()
    assert at.query_params["step"] == "2" and at.title[0].value == "2. Re-fit each layer to its own output"
    assert open_lesson(step="99").title[0].value.startswith("6.") and open_lesson(step="x").title[0].value[0] == "1"


def test_run_this_step_queues_its_run_once(home):
    with exclusive(home / "dispatcher.lock"):  # nothing starts the launched run
        at = open_lesson(step="4")
        at.button(key="lesson_run").click().run()
        listed = RunStore(home).list()
        assert [r["status"] for r in listed] == ["queued", "queued"]  # magnitude and obc
        assert {r["spec"]["config"]["mask"] for r in listed} == {"magnitude", "obc"}
        assert "lesson_run" not in [b.key for b in at.button]  # launched: followed, not launched again


def test_a_step_whose_runs_are_done_shows_its_result_at_once(home):
    store = RunStore(home)
    finished(store, LESSON[0].runs["mask"], final=0.1234)
    at = open_lesson(step="1")
    assert "lesson_run" not in [b.key for b in at.button]
    assert any(
        "The dense network scores 93.0%; with 90% of its weights gone it scores 12.3%" in m.value for m in at.markdown
    )
    (chart,) = at.get("plotly_chart")
    assert json.loads(chart.proto.spec)["layout"]["title"]["text"] == "Top-1 on 1,000 test images"


@pytest.mark.parametrize("present", [False, True])
def test_presentation_mode_is_in_the_url_and_enlarges_the_page(home, present):
    at = open_lesson(**({"present": "1"} if present else {}))
    styled = any("font-size: 22px" in m.value for m in at.markdown)
    assert styled == present and at.toggle(key="lesson_present").value == present
    at.toggle(key="lesson_present").set_value(not present).run()
    assert ("present" in at.query_params) == (not present)
    assert any("font-size: 22px" in m.value for m in at.markdown) == (not present)


def test_prepare_queues_every_lesson_run_once_reusing_the_done_ones(home):
    store = RunStore(home)
    finished(store, LESSON[0].runs["mask"])
    with exclusive(home / "dispatcher.lock"):
        at = open_lesson()
        at.button(key="lesson_prepare").click().run()
        at.button(key="lesson_prepare").click().run()  # twice: nothing queued twice
        statuses = [r["status"] for r in store.list()]
    assert sorted(statuses) == ["done"] + ["queued"] * 8
    assert "1 of 9 lesson runs are ready" in " ".join(c.value for c in at.caption)
