"""The Streamlit app through AppTest: every page renders (empty store and one with runs in every state),
the launch form queues the chosen spec, and bad values show an error and store nothing."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from snows_core import PruneConfig
from snows_core.cli import _parser, config_from_args
from snows_core.runs import RunSpec, RunStatus, RunStore
from snows_core.runs.process import exclusive
from tests.store_fixtures import (
    LAYERS,
    add_masks,
    add_sensitivity_run,
    add_staged_run,
    populate,
    result,
    solve_events,
)

APP = Path(__file__).resolve().parents[1] / "app.py"
BEST_PRESET = "Best at high sparsity: OBC masks, 90% in 5 gradual stages (resnet20)"
PAGES = ["launch", "runs", "run_detail", "tradeoffs", "compare", "sensitivity", "lesson", "learn"]


def open_page(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception[0].value
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_store_with_a_next_step(home, page):
    at = open_page(page)
    assert at.title
    if page not in ("launch", "learn", "sensitivity", "lesson"):
        assert at.info and at.get("page_link")  # says what to do next
    if page == "lesson":
        assert at.button(key="lesson_run")  # the step's run, one click away
    if page == "sensitivity":
        assert at.info and at.button  # says what to do next, and the form can launch a scan


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_runs_in_every_state(home, page):
    ids = populate(home)
    at = open_page(page, run=ids["done"])
    assert not at.error
    if page == "run_detail":
        assert len(at.get("plotly_chart")) >= 5 and at.metric[2].value == "91.00%"
    if page == "tradeoffs":
        assert len(at.get("plotly_chart")) == 3
    if page == "compare":
        assert at.success and len(at.get("plotly_chart")) == 2  # the sweep is comparable


def test_compare_shows_what_each_mask_kept_a_readable_table_and_a_report(home):
    ids = populate(home)
    add_masks(home, ids["done"], seed=0)
    add_masks(home, ids["done_wanda"], seed=1)
    at = open_page("compare")  # the sweep's four runs; two of them stored masks
    table = at.dataframe[0].value
    assert list(table.columns)[:4] == ["Run", "Model", "Setting", "Sparsity (%)"]
    assert table["Final top-1 (%)"].tolist() == [90.5, 90.0, 92.0, 91.0]  # newest first, in percent
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert "What the masks share: Jaccard index of kept weights per layer" in titles
    assert "Per-layer sparsity of each run's masks" in titles
    assert f"{LAYERS[0]}: what each mask kept" in titles
    (layer,) = [box for box in at.selectbox if box.label == "Layer"]
    layer.set_value(LAYERS[2]).run()
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert f"{LAYERS[2]}: what each mask kept" in titles
    (button,) = at.get("download_button")
    assert button.proto.label == "Download report"


def test_run_detail_draws_the_solvers_trace_for_the_chosen_layer(home):
    ids = populate(home)
    at = open_page("run_detail", run=ids["done"])
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert {"Loss along CG iterations", "Why each CG solve stopped"} <= set(titles)
    assert "CG residual, layer1.0.conv1" in titles
    at.selectbox(key="solve_layer").set_value("layer2.0.conv1").run()
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert "CG residual, layer2.0.conv1" in titles and "Line-search trials, layer2.0.conv1" in titles


def test_the_2d_explorer_shows_the_line_search_backtrack_when_curvature_is_understated(home):
    at = open_page("learn")
    assert any("accepted α = 1 after 1 trial," in m.value for m in at.markdown)
    at.slider(key="learn_scale").set_value(0.25).run()
    at.slider(key="learn_eig1").set_value(4.0).run()  # a round bowl: the full step is exactly 4x too long
    assert any("after 8 trials" in m.value for m in at.markdown)


def test_a_staged_run_shows_its_passes_and_allocation(home):
    run = add_staged_run(home)
    at = open_page("run_detail", run=run)
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert "Loss and sparsity after each pass" in titles and "Allocated sparsity per layer" in titles
    assert any(title.startswith("Sensitivity scan") for title in titles)
    assert "2 stages" in at.markdown[0].value


def test_a_failed_run_shows_its_error(home):
    ids = populate(home)
    at = open_page("run_detail", run=ids["failed"])
    assert at.error and "boom" in at.code[0].value


def test_the_launch_form_queues_the_chosen_spec(home):
    at = open_page("launch")
    at.selectbox(key="model").set_value("mlp")
    at.multiselect(key="masks").set_value(["magnitude", "wanda"])
    at.multiselect(key="reconstructions").set_value(["none"])
    at.text_input(key="sparsities").set_value("0.3")
    at.number_input(key="n_calib").set_value(32)
    at.number_input(key="eval_size").set_value(100)
    at.checkbox(key="measure_speed").check()
    at.run()
    assert "sweep of 2 runs" in at.markdown[-1].value or any("sweep of 2 runs" in m.value for m in at.markdown)
    at.button[-1].click().run()  # Launch
    assert not at.exception and at.success
    runs = RunStore(home).list()
    assert len(runs) == 2 and {r["sweep_id"] for r in runs} != {None}
    configs = [r["spec"]["config"] for r in runs]
    assert {c["mask"] for c in configs} == {"magnitude", "wanda"}
    assert all(c["sparsity"] == 0.3 and c["reconstruction"] == "none" and c["n_calib"] == 32 for c in configs)
    assert all(r["spec"]["model"] == "mlp" and r["spec"]["eval_size"] == 100 for r in runs)
    assert all(r["spec"]["measure_speed"] for r in runs)


def test_several_seeds_repeat_every_run_of_the_form(home):
    at = open_page("launch")
    at.selectbox(key="model").set_value("mlp")
    at.multiselect(key="reconstructions").set_value(["none"])
    at.text_input(key="sparsities").set_value("0.3")
    at.number_input(key="n_calib").set_value(32)
    at.text_input(key="seeds").set_value("0, 1, 2")
    at.run()
    at.button[-1].click().run()  # Launch
    assert not at.exception and at.success
    runs = RunStore(home).list()
    assert sorted(r["spec"]["config"]["seed"] for r in runs) == [0, 1, 2] and len({r["sweep_id"] for r in runs}) == 1


@pytest.mark.parametrize(
    "key,value,field",
    [
        ("sparsities", "1.5", "sparsity"),
        ("ks", "-1", "k"),
        ("seeds", "-1", "seed"),
        ("seeds", "first", "seed"),
        ("sparsities", "half", "sparsity"),
        ("nm", "5:4", "pattern"),
    ],
)
def test_bad_values_show_an_error_and_store_nothing(home, key, value, field):
    at = open_page("launch")
    if key == "nm":
        at.radio(key="pattern_kind").set_value("N:M").run()
    at.text_input(key=key).set_value(value).run()
    assert at.error and field in at.error[0].value
    assert not [b for b in at.button if b.label == "Launch"]
    assert RunStore(home).list() == []


def test_the_paper_preset_asks_for_a_checkpoint(home):
    at = open_page("launch")
    at.selectbox(key="preset").set_value("Paper: ResNet-20 CIFAR-10").run()
    assert at.selectbox(key="model").value == "resnet20_cifar10"
    assert at.error and "checkpoint" in at.error[0].value


def test_the_best_recipe_preset_fills_a_gradual_run(home):
    at = open_page("launch")
    at.selectbox(key="preset").set_value(BEST_PRESET).run()
    assert at.number_input(key="stages").value == 5 and at.text_input(key="sparsities").value == "0.9"
    assert at.multiselect(key="masks").value == ["obc"]
    assert any(c.value.startswith("Recipe `best`: the best one-shot recipe") for c in at.caption)
    assert at.multiselect(key="reconstructions").value == ["snows"]
    assert "sparsegpt" in at.multiselect(key="masks").options and "lamp" in at.radio(key="allocation").options
    assert not at.error and any("about" in m.value for m in at.markdown)  # forecast shown, ready to launch


@pytest.mark.parametrize(
    "preset, flags",
    [
        ("Teaching demo (under a minute on a laptop CPU)", ["--recipe", "teaching"]),
        (BEST_PRESET, ["--recipe", "best", "--sparsity", "0.9"]),
        ("Best at 2:4 (resnet20)", ["--recipe", "best", "--pattern", "2:4"]),
        ("Official SNOWS: the paper code's objective and settings, 90% (resnet20)", ["--recipe", "official"]),
    ],
)
def test_a_recipe_preset_queues_the_same_config_as_the_cli_recipe(home, preset, flags):
    at = open_page("launch")
    at.selectbox(key="preset").set_value(preset).run()
    with exclusive(home / "dispatcher.lock"):  # nothing starts the launched run
        at.button[-1].click().run()  # Launch
    (run,) = RunStore(home).list()
    cli = config_from_args(_parser().parse_args(["submit", *flags]))
    assert run["spec"]["config"] == RunSpec(model="resnet20", config=cli).config.to_dict()


def test_the_launch_form_keeps_its_values_across_pages(home):
    at = open_page("launch")
    at.text_input(key="sparsities").set_value("0.8").run()
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/launch.py").run()
    assert at.text_input(key="sparsities").value == "0.8"


def test_a_run_that_cannot_fit_in_memory_is_refused(home):
    at = open_page("launch")
    at.number_input(key="n_calib").set_value(60_000)
    at.number_input(key="batch_size").set_value(60_000).run()
    assert at.error and "does not fit" in at.error[0].value
    assert not [b for b in at.button if b.label == "Launch"]


def test_more_calibration_images_than_the_data_holds_is_refused(home):
    at = open_page("launch")
    at.number_input(key="n_calib").set_value(70_000).run()
    assert at.error and "n_calib" in at.error[0].value


@pytest.mark.parametrize("page", ["runs", "run_detail"])
def test_a_page_and_its_live_fragment_share_one_read_of_the_runs_frame(home, page, monkeypatch):
    import pages.common

    ids = populate(home)
    reads = []
    real = pages.common.runs_frame
    monkeypatch.setattr(pages.common, "runs_frame", lambda store: reads.append(1) or real(store))
    at = open_page(page, run=ids["done"])
    reads.clear()
    at.run()
    assert not at.exception and len(reads) == 1


def test_a_corrupt_store_is_one_clear_error_on_every_page(home):
    (home / "runs.db").write_bytes(b"not a database" * 100)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception and "cannot open the run store" in at.error[0].value
    (home / "runs.db").unlink()  # the fixture's teardown reads the store


def test_the_sensitivity_page_reads_a_scan_flags_checked_cells_and_launches_its_suggestion(home):
    populate(home)
    scan = add_sensitivity_run(home)
    at = open_page("sensitivity", sensitivity_run=scan)
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert titles[:2] == [
        "Sensitivity: top-1 lost (points), each layer pruned alone",
        "Per-layer curves: top-1 lost (points)",
    ]
    assert "Suggested sparsity per layer" in titles
    assert any("**Most fragile**" in m.value and m.value.index("3 (") < m.value.index("5 (") for m in at.markdown)
    assert at.warning and "1 cell left the logits unchanged" in at.warning[0].value
    with exclusive(home / "dispatcher.lock"):  # nothing starts the launched run
        at.button(key="launch_suggested").click().run()
        launched = [r for r in RunStore(home).list() if r["spec"]["config"]["allocation"] == "sensitivity"]
    (run,) = [r for r in launched if r["spec"].get("kind", "prune") == "prune" and r["status"] == "queued"]
    assert run["spec"]["model"] == "mlp" and run["spec"]["config"]["sparsity"] == 0.9
    assert run["spec"]["config"]["reconstruction"] == "lstsq"


def test_the_sensitivity_form_queues_a_scan(home):
    at = open_page("sensitivity")
    at.selectbox(key="sens_model").set_value("mlp")
    at.selectbox(key="sens_update").set_value("none")
    with exclusive(home / "dispatcher.lock"):
        at.button[0].click().run()
    (run,) = RunStore(home).list()
    assert run["spec"]["kind"] == "sensitivity" and run["spec"]["config"]["reconstruction"] == "none"
    assert run["spec"]["eval_size"] == 500 and not at.error
    assert at.selectbox(key="sensitivity_pick").value == run["id"]  # the page shows the new scan at once


def test_a_sensitivity_run_in_run_detail_points_to_its_page(home):
    scan = add_sensitivity_run(home)
    at = open_page("run_detail", run=scan)
    assert "sensitivity scan" in at.info[0].value and at.get("page_link")


def test_run_detail_shows_the_measured_speed_or_how_to_get_it(home):
    ids = populate(home)
    store = RunStore(home)
    measured = store.create(RunSpec(model="mlp", measure_speed=True), "0.1.0")
    store.claim_next(pid=1)
    solve_events(store, measured, LAYERS)
    speed = {
        "device": "cpu", "kernel": "dense", "speedup": 1.0, "dense_ms": 2.0, "pruned_ms": 2.0, "batch": 64,
        "dtype": "float32", "dense_bytes": 2**21, "sparse_bytes": 2**20, "sparse_layers": [], "dense_layers": {},
        "reason": "CPU: no sparse kernel, the pruned model runs dense with zeros", "max_rel_error": None,
        "double_checked": False,
    }  # fmt: skip
    store.finish(measured, RunStatus.DONE, {**result(0.9), "speed": speed})
    at = open_page("run_detail", run=measured)
    assert [m.value for m in at.metric if m.label == "speed-up"] == ["1.0x, CPU, no sparse kernel"]
    assert "2.00 MiB dense, 1.00 MiB sparse" in " ".join(m.value for m in at.markdown)
    at = open_page("run_detail", run=ids["done"])
    assert any("Measure inference speed" in c.value for c in at.caption)
    untimed = store.create(RunSpec(model="mlp", eval_size=500, measure_speed=True), "0.1.0")
    store.claim_next(pid=1)
    solve_events(store, untimed, LAYERS)
    store.finish(untimed, RunStatus.DONE, {**result(0.9), "speed": {"error": "speed not measured: CUDA out of memory"}})
    at = open_page("run_detail", run=untimed)
    assert [w.value for w in at.warning] == ["speed not measured: CUDA out of memory"]


def poison(home: Path) -> list[str]:
    """Runs whose rows no page can read as they are: a config of a newer schema, a time out of any calendar."""
    store = RunStore(home)
    newer, far = (
        store.create(RunSpec("mlp", config=PruneConfig(sparsity=0.5, n_calib=64, seed=i)), "v") for i in (1, 2)
    )
    for run_id in (newer, far):
        store.finish(run_id, RunStatus.DONE, result(0.8))
    with store._connect() as db:
        spec = json.loads(db.execute("SELECT spec FROM runs WHERE id = ?", (newer,)).fetchone()[0])
        spec["config"]["schema_version"] = 99
        db.execute("UPDATE runs SET spec = ? WHERE id = ?", (json.dumps(spec), newer))
        db.execute("UPDATE runs SET created = 1e300 WHERE id = ?", (far,))
    return [newer, far]


@pytest.mark.parametrize("page", PAGES)
def test_one_unreadable_run_never_breaks_a_page(home, page):
    populate(home)
    newer, far = poison(home)
    at = open_page(page, run=far)
    assert at.title
    if page == "runs":
        table = at.dataframe[0].value
        assert {newer, far} <= set(table["run"] if "run" in table else table["id"])


def test_a_model_name_holding_markdown_is_shown_as_text(home):
    store = RunStore(home)
    model = "timm:x [CLICK-ME](https://example.invalid/)"
    run = store.create(RunSpec(model, dataset="fashion-mnist", config=PruneConfig(sparsity=0.5, n_calib=64)), "v")
    store.finish(run, RunStatus.FAILED, error="stood in")
    at = open_page("run_detail", run=run)
    shown = " ".join(m.value for m in at.markdown)
    assert "[CLICK-ME](https" not in shown and r"\[CLICK\-ME\]\(https\:" in shown
