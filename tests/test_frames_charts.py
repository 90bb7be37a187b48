"""Store -> DataFrames (dashboard.frames) and DataFrames -> Plotly figures (dashboard.charts)."""

import numpy as np
import pandas as pd
import pytest

from snows_core import PruneConfig
from snows_core.dashboard import charts
from snows_core.dashboard.frames import (
    allocation_frame,
    cg_frame,
    comparability,
    convergence_frame,
    layers_frame,
    line_search_frame,
    mask_reconstruction_matrix,
    reconstruction_label,
    runs_frame,
    scan_frame,
    seed_repeats,
    sensitivity_frame,
    series_label,
    steps_frame,
    trajectory_frame,
)
from snows_core.runs import RunSpec, RunStore
from tests.store_fixtures import LAYERS, add_sensitivity_run, populate, staged_events


@pytest.fixture
def store(home):
    """The populated store; `home` stops its stand-in worker afterwards."""
    store = RunStore(home)
    return store, populate(home)


def test_runs_frame_has_status_progress_and_gain(store):
    store, ids = store
    frame = runs_frame(store).set_index("id")
    assert frame.loc[ids["running"], "progress"] == pytest.approx(1 / 3)
    assert frame.loc[ids["running"], "layers_total"] == 3 and frame.loc[ids["running"], "status"] == "running"
    assert frame.loc[ids["done"], "progress"] == 1.0
    assert frame.loc[ids["done"], "gain"] == pytest.approx(0.91 - 0.8)
    assert frame.loc[ids["done"], "label"] == "magnitude + snows K=3"
    assert frame.loc[ids["failed"], "error"].endswith("boom")
    assert pd.isna(frame.loc[ids["failed"], "top1_final"])
    assert runs_frame(RunStore(store.home / "empty")).empty


def test_steps_layers_and_trajectory_frames(store):
    store, ids = store
    events = store.events(ids["done"])
    steps = steps_frame(events)
    first = steps[steps["layer"] == LAYERS[0]]
    assert list(first["step"]) == [0, 1, 2]
    assert list(first["loss"]) == [1.0, 0.5, pytest.approx(1 / 3)]  # start, then loss after each step
    assert list(steps["index"].unique()) == [0, 1, 2]
    layers = layers_frame(events)
    assert list(layers["name"]) == LAYERS and list(layers["loss_after"]) == pytest.approx([1 / 3, 1 / 6, 1 / 9])
    assert list(trajectory_frame(events)["top1"]) == pytest.approx([0.9, 0.89, 0.88])
    assert trajectory_frame(store.events(ids["running"])).empty


def test_mask_reconstruction_matrix_and_comparability(store):
    store, _ = store
    frame = runs_frame(store)
    top1, gain = mask_reconstruction_matrix(frame)
    assert list(top1.index) == ["magnitude", "wanda"] and list(top1.columns) == ["snows K=0", "snows K=3"]
    assert top1.loc["wanda", "snows K=3"] == 0.92 and gain.loc["magnitude", "snows K=0"] == pytest.approx(0.1)
    done = frame[frame["status"] == "done"]
    assert comparability(done) == []
    other_seed = done.assign(seed=[0, 1, 0, 0], calib_digest=["a", "b", "a", "a"])
    reasons = comparability(other_seed)
    assert any("calibration images" in r for r in reasons) and any(r.startswith("seed") for r in reasons)


def test_solve_charts(store):
    store, ids = store
    events = store.events(ids["done"])
    steps, layers = steps_frame(events), layers_frame(events)
    loss = charts.loss_curves(steps)
    assert [t.name for t in loss.data] == LAYERS and loss.layout.yaxis.type == "log"
    assert loss.layout.xaxis.title.text == "Newton step" and list(loss.data[0].y) == [1.0, 0.5, pytest.approx(1 / 3)]
    cg = charts.cg_iterations(steps)
    assert [t.name for t in cg.data] == ["step 1", "step 2"] and list(cg.data[0].y) == [10, 10, 10]
    assert charts.step_sizes(steps).layout.yaxis.title.text == "step size"
    bars = charts.layer_losses(layers)
    assert [t.name for t in bars.data] == ["mask only", "lstsq warm start", "final"]
    cost = charts.layer_cost(layers)
    assert list(cost.data[1].y) == [1024.0] * 3  # MiB
    assert list(charts.layer_sparsity(layers).data[0].y) == [0.5] * 3
    traj = charts.trajectory(trajectory_frame(events), dense=0.93)
    assert [t.name for t in traj.data] == ["SNOWS", "mask only"] and list(traj.data[0].x) == [1, 2, 3]


def test_the_solvers_trace_becomes_residual_convergence_and_line_search_frames(store):
    store, ids = store
    events = store.events(ids["done"])
    cg = cg_frame(events)
    first = cg[(cg["layer"] == LAYERS[0]) & (cg["step"] == 1)]
    assert list(first["iteration"]) == [0, 1, 2] and list(first["residual"]) == [1.0, 0.5, 0.01]
    assert list(first["decrease"]) == [0.0, 0.2, 0.25]
    convergence = convergence_frame(events)
    layer = convergence[convergence["layer"] == LAYERS[1]]
    measured, model = layer[layer["source"] == "measured"], layer[layer["source"] == "model"]
    assert list(measured["cg_total"]) == [0, 10, 10, 20] and list(measured["loss"]) == pytest.approx(
        [0.5, 0.25, 0.25, 1 / 6]
    )
    assert list(model["cg_total"]) == [1, 2, 11, 12] and list(model["loss"]) == pytest.approx([0.3, 0.25, 0.15, 0.13])
    trials = line_search_frame(events)
    second = trials[(trials["layer"] == LAYERS[0]) & (trials["step"] == 2)]
    assert list(second["alpha"]) == [1.0, 0.9] and list(second["accepted"]) == [False, True]
    assert list(steps_frame(events).query("step > 0")["cg_stop"])[:2] == ["tolerance", "cap"]
    running = cg_frame(store.events(ids["failed"]))
    assert list(running.columns) == ["layer", "stage", "step", "iteration", "residual", "decrease"]


def test_the_solvers_trace_charts(store):
    store, ids = store
    events = store.events(ids["done"])
    residuals = charts.cg_residuals(cg_frame(events), LAYERS[2])
    assert [t.name for t in residuals.data] == ["step 1", "step 2"] and residuals.layout.yaxis.type == "log"
    assert list(residuals.data[1].y) == [1.0, 0.6, 0.2] and list(residuals.data[1].customdata) == [0.0, 0.1, 0.12]
    along = charts.loss_vs_cg(convergence_frame(events))
    assert [t.name for t in along.data if t.showlegend is not False] == LAYERS
    assert list(along.data[0].x) == [0, 10, 10, 20] and along.data[1].line.dash == "dot"
    assert list(along.data[1].x) == [0, 1, 2, None, 10, 11, 12, None]  # each step: its start, then the model
    stops = charts.cg_stops(steps_frame(events))
    assert [(t.name, list(t.y)) for t in stops.data] == [("tolerance", [1, 1, 1]), ("cap", [1, 1, 1])]
    trials = charts.line_search_trials(line_search_frame(events), LAYERS[0])
    assert list(trials.data[1].marker.symbol) == ["circle-open", "circle"]


def test_tradeoff_charts_carry_run_ids(store):
    store, ids = store
    done = runs_frame(store).query("status == 'done'")
    fig = charts.accuracy_vs_sparsity(done)
    names = sorted(t.name for t in fig.data)
    assert names == ["magnitude + snows K=0", "magnitude + snows K=3", "wanda + snows K=0", "wanda + snows K=3"]
    assert fig.layout.xaxis.title.text == "sparsity" and fig.layout.yaxis.title.text == "top-1"
    trace = next(t for t in fig.data if t.name == "wanda + snows K=3")
    assert trace.customdata[0][0] == ids["done_wanda"] and list(trace.y) == [0.92]
    by_k = charts.accuracy_vs_k(done)
    assert sorted(t.name for t in by_k.data) == ["magnitude @ 0.50", "wanda @ 0.50"]
    assert list(next(t for t in by_k.data if t.name == "wanda @ 0.50").x) == [0, 3]
    assert charts.accuracy_vs_cost(done).layout.xaxis.title.text == "seconds"
    top1, gain = mask_reconstruction_matrix(done)
    heat = charts.matrix_heatmap(top1, gain)
    assert heat.data[0].text[1][1] == "0.9200<br>+0.1200"


def test_mask_heatmap_shows_kept_weights():
    mask = pd.DataFrame([[1, 0, 1, 0], [0, 1, 1, 0]])
    fig = charts.mask_heatmap(mask, "2:4")
    assert fig.data[0].z.tolist() == [[1, 0, 1, 0], [0, 1, 1, 0]] and fig.layout.title.text == "2:4"


def test_stages_show_as_passes_in_frames_and_charts():
    events = staged_events()
    steps = steps_frame(events)
    assert list(steps["stage"]) == [1, 1, 1, 1, 2, 2, 2, 2] and list(steps["step"]) == [0, 1] * 4
    assert [t.name for t in charts.loss_curves(steps).data] == ["a · pass 1", "b · pass 1", "a · pass 2", "b · pass 2"]
    assert [t.name for t in charts.cg_iterations(steps).data] == ["pass 1 step 1", "pass 2 step 1"]
    passes, last = layers_frame(events), layers_frame(events, last_pass_only=True)
    assert list(passes["stage"]) == [1, 1, 2, 2] and list(last["stage"]) == [2, 2]
    assert list(last["sparsity"]) == [0.6, 0.6]
    fig = charts.pass_losses(passes)
    assert [t.name for t in fig.data if t.type == "scatter"] == ["pass 1", "pass 2"]
    assert list(fig.data[2].y) == [1.0, 1.0]  # pass 2's losses


def test_allocation_and_scan_frames_and_heatmap():
    events = staged_events()
    allocated, scan = allocation_frame(events), scan_frame(events)
    assert allocated.to_dict("list") == {"layer": ["a", "b"], "sparsity": [0.6, 0.8]}
    assert list(scan.index) == ["a", "b"] and list(scan.columns) == [0.5, 0.9]
    assert scan.loc["b", 0.9] == 0.2
    fig = charts.allocation_heatmap(scan, allocated)
    np.testing.assert_allclose(fig.data[0].z, [[-1.0, 0.0], [-2.0, np.log10(0.2)]])
    assert list(fig.data[1].x) == ["0.5", "0.9"]  # allocated 0.6 and 0.8, drawn at the nearest scanned column
    assert allocation_frame([]).empty and scan_frame([]).empty


def test_labels_name_the_allocation_and_stages():
    row = {"mask": "sparsegpt", "pattern": "unstructured", "reconstruction": "snows", "k": 3}
    assert series_label({**row, "allocation": "uniform", "stages": 1}) == "sparsegpt + snows K=3"
    assert series_label({**row, "allocation": "lamp", "stages": 4}) == "sparsegpt + snows K=3, 4 stages (lamp)"
    assert reconstruction_label("lstsq", 0, 2) == "lstsq, 2 stages" and reconstruction_label("snows", 3) == "snows K=3"


def test_progress_counts_every_pass(home):
    store = RunStore(home)
    run = store.create(RunSpec(model="mlp", config=PruneConfig(stages=3, k=1)), "0.1.0")
    store.append_event(run, "run_started", {"kind": "run_started", "layers": ["a", "b"], "device": "cpu", "stages": 3})
    store.append_event(run, "layer_done", {"kind": "layer_done", "layer": "a"})
    assert store.progress()[run] == (1, 6)


def test_a_sensitivity_run_becomes_cells_a_heatmap_and_curves(home):
    store = RunStore(home)
    run = add_sensitivity_run(home)
    cells = sensitivity_frame(store.events(run))
    assert list(cells["layer"]) == ["3"] * 3 + ["5"] * 3 and list(cells["sparsity"][:3]) == [0.5, 0.9, 0.98]
    assert list(cells["top1_drop"][:3]) == pytest.approx([0.0, 0.1, 0.4])
    heatmap = charts.sensitivity_heatmap(cells)
    assert list(heatmap.data[0].y) == ["3", "5"] and list(heatmap.data[0].x) == ["0.5", "0.9", "0.98"]
    assert heatmap.data[0].z[0] == pytest.approx([0.0, 10.0, 40.0])  # points of top-1 lost
    flagged = heatmap.data[1]
    assert flagged.name == "no effect: checked" and list(flagged.y) == ["5"] and list(flagged.x) == ["0.5"]
    loss = charts.sensitivity_heatmap(cells, "window_loss")
    assert loss.data[0].z[1] == pytest.approx(np.log10([0.05, 0.2, 0.6]))
    curves = charts.sensitivity_curves(cells, "top1_drop")
    assert [t.name for t in curves.data] == ["3", "5"] and list(curves.data[1].y) == pytest.approx([0.0, 1.0, 5.0])
    frame = runs_frame(store)
    assert frame.loc[0, "kind"] == "sensitivity" and frame.loc[0, "label"] == "sensitivity of magnitude + lstsq"
    assert frame.loc[0, "progress"] == 1.0


def test_repeats_over_seeds_draw_their_mean_and_range_and_each_run():
    runs = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "label": ["magnitude + snows K=3"] * 3 + ["wanda + snows K=3"],
            "sparsity": [0.9, 0.9, 0.8, 0.9],
            "top1_final": [0.80, 0.86, 0.90, 0.70],
            "top1_dense": [0.92] * 4,
        }
    )
    fig = charts.accuracy_vs_sparsity(runs)
    mean, points, single = fig.data
    assert mean.name == "magnitude + snows K=3" and list(mean.x) == [0.8, 0.9]
    assert list(mean.y) == pytest.approx([0.90, 0.83]) and list(mean.text) == [1, 2]
    assert list(mean.error_y.array) == pytest.approx([0.0, 0.03]) and list(mean.error_y.arrayminus) == pytest.approx(
        [0, 0.03]
    )
    assert mean.customdata is None  # the mean is no run: a click on it opens nothing
    assert [row[0] for row in points.customdata] == ["c", "a", "b"] and not points.showlegend
    assert single.name == "wanda + snows K=3" and single.error_y.array is None and single.customdata[0][0] == "d"


def test_the_matrix_averages_seeds_and_keeps_the_newest_run_of_each():
    rows = [  # mask, seed, created, top1_final, gain
        ("magnitude", 0, 1.0, 0.50, 0.1),
        ("magnitude", 0, 2.0, 0.80, 0.3),  # a newer run of seed 0 replaces the first
        ("magnitude", 1, 3.0, 0.84, 0.2),
        ("wanda", 0, 4.0, 0.70, 0.4),
    ]
    done = pd.DataFrame(rows, columns=["mask", "seed", "created", "top1_final", "gain"]).assign(
        status="done", reconstruction="snows", k=3, stages=1
    )
    top1, gain = mask_reconstruction_matrix(done)
    assert top1.loc["magnitude", "snows K=3"] == pytest.approx(0.82) and gain.loc["magnitude", "snows K=3"] == 0.25
    assert top1.loc["wanda", "snows K=3"] == 0.70


def test_runs_repeated_on_the_same_seeds_are_comparable_by_design():
    cells = [(label, seed) for label in ("magnitude + snows K=3", "wanda + snows K=3") for seed in (0, 1)]
    runs = pd.DataFrame(cells, columns=["label", "seed"]).assign(
        sparsity=0.9, calib_digest=lambda f: f["seed"].map({0: "a", 1: "b"}), dataset="cifar10", eval_subset="e"
    )
    runs = runs.assign(version="v", torch="t")
    assert seed_repeats(runs) == [0, 1] and comparability(runs) == []
    unbalanced = runs.iloc[:3]  # wanda only on seed 0: its runs and magnitude's differ in calibration images
    assert seed_repeats(unbalanced) == [] and any(r.startswith("seed") for r in comparability(unbalanced))
    one_seed = runs[runs["seed"] == 0]
    assert seed_repeats(one_seed) == [] and comparability(one_seed) == []


@pytest.mark.parametrize("created", [1e300, -1e18])
def test_a_run_with_a_time_no_calendar_holds_still_makes_a_frame(home, created):
    store = RunStore(home)
    run = store.create(RunSpec("mlp", config=PruneConfig(sparsity=0.5, n_calib=64)), "v")
    with store._connect() as db:  # what an imported bundle with "created": 1e300 stored
        db.execute("UPDATE runs SET created = ? WHERE id = ?", (created, run))
    frame = runs_frame(store)
    assert frame["id"].tolist() == [run] and frame["created"].isna().all()


def test_accuracy_against_k_without_a_snows_run_is_an_empty_chart():
    runs = pd.DataFrame(
        {"id": ["a"], "reconstruction": ["none"], "mask": ["magnitude"], "sparsity": [0.5], "k": [3]}
        | {"top1_final": [0.8], "top1_dense": [0.9], "label": ["magnitude, none"]}
    )
    figure = charts.accuracy_vs_k(runs)
    assert len(figure.data) == 0
