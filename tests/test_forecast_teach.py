"""The launch page's library side: sweep grids, the cost forecast, and the Learn page's masks and windows."""

import dataclasses

import numpy as np
import pytest

from snows_core import PruneConfig
from snows_core.dashboard import charts
from snows_core.dashboard.forecast import Forecast, forecast, probe
from snows_core.dashboard.teach import LEARN_SPEC, mask_example, newton_cg_2d, window_chains
from snows_core.runs import RunSpec, RunStatus, RunStore
from snows_core.runs.sweep import grid_specs, sweep_id

BASE = RunSpec(model="mlp", config=PruneConfig(sparsity=0.5, n_calib=64))


def test_a_grid_drops_k_for_updates_that_ignore_it():
    specs = grid_specs(BASE, {"reconstruction": ["none", "lstsq", "snows"], "k": [0, 3]})
    assert [(s.config.reconstruction, s.config.k) for s in specs] == [
        ("none", 0),
        ("lstsq", 0),
        ("snows", 0),
        ("snows", 3),
    ]
    assert sweep_id(specs) == sweep_id(list(specs)) and sweep_id(specs) != sweep_id(specs[:2])


def test_a_grid_over_patterns_lets_n_m_imply_the_sparsity():
    specs = grid_specs(BASE, {"pattern": ["unstructured", "2:4"]})
    assert [(s.config.pattern, s.config.sparsity) for s in specs] == [("unstructured", 0.5), ("2:4", 0.5)]
    with pytest.raises(ValueError, match="sparsity"):
        grid_specs(BASE, {"sparsity": [0.5, 1.5]})


def test_the_forecast_uses_past_runs_on_this_machine_first(tmp_path):
    store = RunStore(tmp_path)
    probed = probe("mlp", 16, "cpu")
    assert forecast(BASE, probed, store).basis == "estimated from a probe"
    for seconds in (10.0, 30.0, 20.0):
        run = store.create(dataclasses.replace(BASE, eval_size=100 + int(seconds)), "v")
        store.claim_next(pid=1)
        store.finish(run, RunStatus.DONE, {"seconds": seconds, "peak_mem": 2**30})
    other = store.create(dataclasses.replace(BASE, config=dataclasses.replace(BASE.config, k=1)), "v")
    store.claim_next(pid=1)
    store.finish(other, RunStatus.DONE, {"seconds": 99.0, "peak_mem": 1})
    predicted = forecast(BASE, probed, store)
    assert predicted.seconds == 20.0 and predicted.peak_bytes == 2**30
    assert predicted.basis == "median of 3 past runs on this machine"
    staged = dataclasses.replace(BASE, config=dataclasses.replace(BASE.config, stages=3))
    assert forecast(staged, probed, store).basis == "estimated from a probe"  # other stages: not the same work


def test_stages_and_a_sensitivity_scan_raise_the_probe_forecast():
    probed = probe("mlp", 16, "cpu")
    with_config = lambda **kw: dataclasses.replace(BASE, config=dataclasses.replace(BASE.config, **kw))  # noqa: E731
    one, two, three = (forecast(with_config(stages=s), probed).seconds for s in (1, 2, 3))
    assert two > one and three - one == pytest.approx(2 * (two - one))  # every stage repeats the layer loop
    assert forecast(with_config(allocation="sensitivity"), probed).seconds > one


def test_the_probe_counts_the_mlp_exactly_and_a_forecast_that_cannot_fit_says_so():
    probed = probe("mlp", 8, "cpu")
    assert probed.layers == 2  # the first and the last linear layers stay dense
    assert probed.param_bytes == 4 * (784 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10)
    assert probed.largest_activation_per_image == 4 * 784  # the flattened image
    assert Forecast(10, 9 * 2**30, 10 * 2**30, "x").fits is False
    assert Forecast(10, 8 * 2**30, 10 * 2**30, "x").fits is True


def test_mask_examples_keep_exactly_what_the_pattern_says():
    nm = mask_example("2:4", rows=4, cols=8).to_numpy()
    assert (nm.reshape(4, 2, 4).sum(-1) == 2).all()
    unstructured = mask_example("unstructured", 0.75, rows=4, cols=8).to_numpy()
    assert unstructured.sum() == 8


def test_window_chains_name_the_operations_each_window_reaches():
    chains = window_chains("resnet20", 3)
    first = chains.iloc[0]
    assert first["layer"] == "layer1.0.conv1" and first["operations"] == 3
    assert first["reaches"] == (
        "layer1_0_conv1 (conv) → relu_1 (activation) → layer1_0_conv2 (conv) → relu_2 (activation)"
    )
    assert set(window_chains("resnet20", 0)["operations"]) == {0}
    assert len(chains) == 18


def test_the_learn_run_prunes_one_layer_of_the_mlp():
    assert LEARN_SPEC.model == "mlp" and LEARN_SPEC.config.layers == ("3",)


def test_the_2d_explorer_steps_like_newton_cg_on_a_quadratic():
    step = newton_cg_2d((1.0, 4.0), (2.0, 1.0), angle=0.0)  # H = diag(1, 4): f = (x^2 + 4 y^2) / 2
    assert step.cg[["x", "y"]].to_numpy()[-1] == pytest.approx([0.0, 0.0], abs=1e-12)  # 2 CG iterations: Newton
    g = np.array([2.0, 4.0])  # H w0
    cauchy = g @ g / (g @ np.diag([1.0, 4.0]) @ g)
    assert step.gradient == pytest.approx(tuple(np.array([2.0, 1.0]) - cauchy * g))
    assert step.cg[["x", "y"]].to_numpy()[1] == pytest.approx(step.gradient)  # CG's first iterate: the gradient step
    assert list(step.trials["alpha"]) == [1.0] and step.trials["accepted"].all()
    assert step.grid["f"].min() == 0.0 and len(step.grid) == 61 * 61


def test_understated_curvature_overshoots_and_the_line_search_backtracks():
    step = newton_cg_2d((1.0, 4.0), (2.0, 1.0), angle=0.0, curvature_scale=0.25)  # the full step is 4x too long
    assert step.cg[["x", "y"]].to_numpy()[-1] == pytest.approx([-6.0, -3.0])
    alphas = list(step.trials["alpha"])
    assert (
        alphas[0] == 1.0 and alphas[1] == pytest.approx(0.9) and list(step.trials["accepted"]) == [False] * 7 + [True]
    )
    assert alphas[-1] == pytest.approx(0.9**7)  # f(w0 + a d) = (1 - 4a)^2 f0 falls below f0 once a < 1/2
    figure = charts.plot_newton_cg_2d(step)
    assert [t.name for t in figure.data][1:] == [
        "gradient step", "CG iterates", "Armijo trials", "Newton point (the minimum)", "start"
    ]  # fmt: skip
    assert list(figure.data[3].marker.symbol) == ["circle-open"] * 7 + ["circle"]
