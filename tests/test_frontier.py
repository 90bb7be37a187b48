"""The frontier options in the layer loop: in-loop SparseGPT and OBC, stages, LAMP and sensitivity allocation."""

import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_zoo import ZOO, needs_fashion

from snows_core import PruneConfig, prune_model
from snows_core.engine.graph import PrunedPath, prunable_nodes, trace
from snows_core.engine.problem import LayerProblem, layer_problem
from snows_core.engine.reconstruct import Solution, get_reconstruction
from snows_core.io.data import calibration_images, load_dataset
from snows_core.masks import unstructured_mask
from snows_core.masks.sparsegpt import sparsegpt_layer
from snows_core.measure.metrics import mean_interval


def calib(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def recorded(monkeypatch):
    """A reconstruction "record" that keeps the starting point and remembers every (layer, mask) it saw."""
    from snows_core import reconstruct

    seen: list[tuple[str, torch.Tensor]] = []

    def record(problem, cfg, emit):
        seen.append((problem.name, problem.mask.clone()))
        return Solution(problem.start_weight, problem.start_loss)

    monkeypatch.setitem(reconstruct._RECONSTRUCTIONS.entries, "record", record)
    return seen


def test_stages_nest_the_masks_and_end_at_the_exact_sparsity(tiny_resnet, recorded):
    cfg = PruneConfig(sparsity=0.8, reconstruction="record", stages=3, n_calib=16)
    result = prune_model(tiny_resnet, calib(), cfg)
    by_layer: dict[str, list[torch.Tensor]] = {}
    for name, mask in recorded:
        by_layer.setdefault(name, []).append(mask)
    for name, masks in by_layer.items():
        kept = [int(m.sum()) for m in masks]
        # cubic schedule of 461 prunable weights (576 * 0.8): 1 - (2/3)^3, 1 - (1/3)^3, 1 of them
        assert kept == [576 - round(461 * (1 - (2 / 3) ** 3)), 576 - round(461 * (1 - (1 / 3) ** 3)), 115], name
        for earlier, later in itertools.pairwise(masks):
            assert not (later & ~earlier).any(), f"{name}: a pruned weight came back"
        assert torch.equal(masks[-1], result.masks[name])
    assert result.sparsity == pytest.approx(1 - 230 / 1152)


def test_stages_report_every_pass_and_stamp_events(tiny_resnet):
    events = []
    result = prune_model(tiny_resnet, calib(), PruneConfig(sparsity=0.7, stages=2, k=1, n_calib=16), events.append)
    assert events[0].stages == 2
    assert [(e.layer, e.stage) for e in events if e.kind == "layer_done"] == [
        ("c1", 1),
        ("c2", 1),
        ("c1", 2),
        ("c2", 2),
    ]
    assert {e.stage for e in events if e.kind == "newton_step"} == {1, 2}
    assert [r.stage for r in result.passes] == [1, 1, 2, 2] and [r.stage for r in result.layers] == [2, 2]
    assert [r.name for r in result.layers] == ["c1", "c2"]
    assert result.summary()["passes"] and len(result.summary()["layers"]) == 2


def test_one_stage_is_the_one_shot_loop_bit_for_bit(tiny_resnet):
    """The plain SNOWS loop, written out: dense magnitude masks, then each layer reconstructed in order."""
    cfg = PruneConfig(sparsity=0.7, k=2, n_calib=16, newton_passes=2, batch_size=8)
    result = prune_model(tiny_resnet, calib(), cfg)

    import copy

    model = copy.deepcopy(tiny_resnet).requires_grad_(False)
    gm = trace(model)
    path = PrunedPath(gm, calib(), 8)
    dense_path = PrunedPath(trace(copy.deepcopy(model)), calib(), 8)
    for node in [n for n in prunable_nodes(gm) if n.target in ("c1", "c2")]:
        module = gm.get_submodule(node.target)
        mask = unstructured_mask(module.weight.abs(), 0.7)
        problem, _ = layer_problem(gm, node, path, k=2, mask=mask, batch_size=8, dense_path=dense_path)
        module.weight.copy_(get_reconstruction("snows")(problem, cfg, lambda e: None).weight * mask)
        path.invalidate(node)
    for name in ("c1", "c2"):
        assert torch.equal(getattr(result.model, name).weight, getattr(model, name).weight), name


def test_sparsegpt_with_no_update_is_sparsegpt_itself(tiny_resnet):
    result = prune_model(
        tiny_resnet, calib(), PruneConfig(sparsity=0.6, mask="sparsegpt", reconstruction="none", n_calib=16)
    )
    x = F.relu(tiny_resnet.stem(calib())).detach()  # c1's input: nothing before it is pruned, so both paths agree
    c1 = LayerProblem("c1", tiny_resnet.c1, tiny_resnet.c1.weight.detach(), keep=230, x=x, x_reference=x)
    mask, weight = sparsegpt_layer(c1)
    torch.testing.assert_close(result.model.c1.weight, weight)
    assert torch.equal(result.masks["c1"], mask)
    assert result.sparsity == pytest.approx(1 - 460 / 1152)


@pytest.mark.parametrize("method", ["obc", "sparsegpt"])
def test_a_later_pass_starts_the_in_loop_method_from_the_reconstructed_weights(tiny_resnet, monkeypatch, method):
    from snows_core.masks import obc, sparsegpt

    module = {"obc": obc, "sparsegpt": sparsegpt}[method]
    run = getattr(module, f"{method}_prune")
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(weight, hessian, **kwargs):
        kept, solved = run(weight, hessian, **kwargs)
        calls.append((weight.clone(), solved.clone()))
        return kept, solved

    monkeypatch.setattr(module, f"{method}_prune", spy)
    cfg = PruneConfig(sparsity=0.8, mask=method, reconstruction="none", stages=2, n_calib=16)
    prune_model(tiny_resnet, calib(), cfg)
    (c1_first, c2_first, c1_second, c2_second) = calls  # pass 1: c1, c2; pass 2: c1, c2 (one group each)
    dense = tiny_resnet.c1.weight.detach().reshape(8, -1).double()
    assert torch.equal(c1_first[0], dense)  # pass 1 on c1: both paths agree, W* is the dense weight
    assert torch.allclose(c1_second[0], c1_first[1]) and torch.allclose(c2_second[0], c2_first[1])


def test_snows_starts_from_the_sparsegpt_weights_and_improves_on_them(tiny_resnet):
    cfg = PruneConfig(sparsity=0.8, mask="sparsegpt", reconstruction="snows", k=2, n_calib=16)
    result = prune_model(tiny_resnet, calib(), cfg)
    for r in result.layers:
        assert r.loss_warm is not None and r.loss_after <= r.loss_warm <= r.loss_before


@pytest.mark.parametrize("allocation", ["lamp", "sensitivity"])
def test_allocations_meet_the_overall_target_under_the_cap(tiny_resnet, allocation):
    cfg = PruneConfig(sparsity=0.75, allocation=allocation, layer_sparsity_cap=0.85, n_calib=16, k=1)
    events = []
    result = prune_model(tiny_resnet, calib(), cfg, events.append)
    assert sum(r.kept for r in result.layers) == round(0.25 * 1152)
    assert all(r.sparsity <= 0.85 + 1e-9 for r in result.layers)
    (allocated,) = [e for e in events if e.kind == "allocation"]
    assert allocated.sparsities == pytest.approx({r.name: r.sparsity for r in result.layers})
    scanned = [e for e in events if e.kind == "layer_scanned"]
    if allocation == "sensitivity":
        scan = result.allocation["scan"]
        assert [e.layer for e in scanned] == ["c1", "c2"] and scan["sparsities"][-1] == 0.85
        for losses in scan["losses"].values():
            assert losses == sorted(losses)  # more pruning never lowers the loss on this tiny net
    else:
        assert scanned == [] and result.allocation["scan"] is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"stages": 0}, "stages must be an integer >= 1"),
        ({"stages": 1.5}, "stages must be an integer"),
        ({"allocation": "nosuch"}, "allocation must be one of 'uniform', 'global', 'lamp', 'sensitivity'"),
        ({"mask": "custom", "stages": 2}, "stages must be 1 with mask 'custom'"),
    ],
)
def test_bad_frontier_options_are_refused_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kwargs)


def test_sparsegpt_refuses_a_layer_it_cannot_handle_before_any_work():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding="same"), nn.Flatten(), nn.LazyLinear(2))
    model(calib(1))
    events = []
    with pytest.raises(ValueError, match=r"mask 'sparsegpt' cannot handle layer 1: its padding is 'same'"):
        prune_model(model, calib(), PruneConfig(mask="sparsegpt", reconstruction="none", n_calib=16), events.append)
    assert events == []


@needs_fashion
@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize(
    "options",
    [
        {"mask": "sparsegpt", "stages": 2, "allocation": "sensitivity", "sparsity": 0.8},
        {"mask": "sparsegpt", "pattern": "2:4", "sparsity": None},
        {"mask": "wanda", "allocation": "lamp", "stages": 2, "sparsity": 0.7},
        {"mask": "obc", "stages": 2, "sparsity": 0.8},
        {"mask": "obc", "pattern": "2:4", "sparsity": None},
    ],
    ids=["sparsegpt-stages-sensitivity", "sparsegpt-2:4", "wanda-lamp-stages", "obc-stages", "obc-2:4"],
)
@pytest.mark.slow
def test_zoo_models_take_every_frontier_option(name, options):
    from snows_core.models import create_model

    images = calibration_images(load_dataset("fashion-mnist", "train"), 16, seed=0)
    cfg = PruneConfig(**options, k=1, n_calib=16, cg_iters=2, device="cpu")
    result = prune_model(create_model(name), images, cfg)
    assert result.layers and all(r.loss_after <= r.loss_before + 1e-6 for r in result.layers)
    if cfg.nm is None:
        assert result.sparsity == pytest.approx(cfg.sparsity, abs=1e-3)
    else:
        for keep in result.masks.values():
            assert (keep.movedim(1, -1).reshape(-1, 4).sum(-1) == 2).all()


def test_mean_interval_is_the_student_t_interval():
    mean, half = mean_interval([0.80, 0.82, 0.84, 0.83, 0.81])  # sd 0.0158, t(0.975, 4) = 2.776
    assert mean == pytest.approx(0.82) and half == pytest.approx(2.776 * 0.015811388 / 5**0.5, rel=1e-6)
    assert mean_interval([0.5, 0.7]) == pytest.approx((0.6, 12.706 * 0.1))
    assert mean_interval([0.9])[0] == 0.9 and math.isnan(mean_interval([0.9])[1])
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])
