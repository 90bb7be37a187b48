"""prune_model end to end: contracts, bad input, events, skipped layers, and ResNet-20 on real CIFAR-10."""

import copy

import pytest
import torch
import torch.nn as nn
from test_lookahead import DepthwiseSENet

from snows_core import PruneConfig, prune_model
from snows_core.io.data import load_npz
from snows_core.masks import get_mask_method, list_mask_methods
from snows_core.measure.metrics import top1
from snows_core.models import create_model


def calib(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_input_model_is_untouched_and_result_is_a_pruned_copy(tiny_resnet):
    before = state(tiny_resnet)
    result = prune_model(tiny_resnet, calib(), PruneConfig(sparsity=0.5, n_calib=16))
    assert all(torch.equal(v, before[k]) for k, v in tiny_resnet.state_dict().items())
    assert result.model is not tiny_resnet
    assert sorted(result.masks) == ["c1", "c2"]
    assert [r.name for r in result.layers] == ["c1", "c2"]
    for keep in result.masks.values():
        assert keep.dtype == torch.bool and keep.sum() == keep.numel() // 2


def test_events_arrive_in_order(tiny_resnet):
    events = []
    prune_model(tiny_resnet, calib(), PruneConfig(n_calib=16), on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_done"
    assert kinds.count("layer_started") == kinds.count("layer_done") == 2
    assert kinds.index("newton_step") > kinds.index("layer_started")
    assert events[0].layers == ["c1", "c2"]
    done = [e for e in events if e.kind == "layer_done"]
    assert done[0].report["loss_after"] <= done[0].report["loss_before"]


def test_an_exception_from_the_callback_stops_the_run_and_leaves_the_model(tiny_resnet):
    before = state(tiny_resnet)

    def cancel(event):
        if event.kind == "newton_step":
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        prune_model(tiny_resnet, calib(), PruneConfig(n_calib=16), on_event=cancel)
    assert all(torch.equal(v, before[k]) for k, v in tiny_resnet.state_dict().items())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"calib_images": torch.full((16, 3, 6, 6), float("nan"))}, "NaN or inf"),
        ({"calib_images": calib().index_fill(0, torch.tensor([3]), float("inf"))}, "NaN or inf"),
        ({"config": PruneConfig(n_calib=17)}, "n_calib is 17 but the calibration data holds 16"),
        ({"config": PruneConfig(layers=("c1", "nope"), n_calib=16)}, r"layers \['nope'\] are not prunable"),
        ({"config": PruneConfig(mask="custom", n_calib=16)}, "custom_masks"),
        (
            {"config": PruneConfig(mask="custom", n_calib=16), "custom_masks": {"c1": torch.ones(8, 8, 3)}},
            r"custom mask for c1 has shape \(8, 8, 3\)",
        ),
        (
            {
                "config": PruneConfig(sparsity=None, pattern="2:4", mask="custom", n_calib=16),
                "custom_masks": {"c1": torch.ones(8, 8, 3, 3, dtype=torch.bool)},
            },
            "keeps more than 2 of some group of 4",
        ),
    ],
)
def test_bad_input_is_refused_before_any_work(tiny_resnet, kwargs, match):
    before = state(tiny_resnet)
    args = {"calib_images": calib(), "config": PruneConfig(n_calib=16), **kwargs}
    with pytest.raises(ValueError, match=match):
        prune_model(tiny_resnet, args.pop("calib_images"), args.pop("config"), **args)
    assert all(torch.equal(v, before[k]) for k, v in tiny_resnet.state_dict().items())


def test_a_model_with_no_prunable_layer_is_refused():
    with pytest.raises(ValueError, match="no prunable layer"):
        prune_model(nn.Sequential(nn.ReLU(), nn.Flatten()), calib(), PruneConfig(n_calib=16))
    with pytest.raises(ValueError, match="no layer to prune"):
        prune_model(nn.Sequential(nn.Flatten(), nn.Linear(108, 4), nn.Linear(4, 2)), calib(), PruneConfig(n_calib=16))


def test_custom_masks_are_applied_exactly(tiny_resnet):
    keep = torch.zeros(8, 8, 3, 3, dtype=torch.bool)
    keep[:, :, 1, 1] = True  # keep only kernel centres
    result = prune_model(tiny_resnet, calib(), PruneConfig(mask="custom", n_calib=16), custom_masks={"c2": keep})
    assert torch.equal(result.masks["c2"], keep)
    assert not result.model.c2.weight[~keep].any()
    assert torch.equal(result.model.c1.weight, tiny_resnet.c1.weight)


def test_two_four_skips_the_depthwise_conv_with_the_reason():
    torch.manual_seed(0)
    model = DepthwiseSENet().eval()
    result = prune_model(model, torch.randn(8, 3, 6, 6), PruneConfig(sparsity=None, pattern="2:4", n_calib=8))
    skipped = {r.name: r.skipped for r in result.skipped}
    assert skipped == {"depthwise": "input dimension 1 is not a multiple of M=4"}
    assert sorted(result.masks) == ["expand", "project", "se.expand", "se.reduce"]
    for name, keep in result.masks.items():
        groups = keep.movedim(1, -1).reshape(-1, 4)
        assert (groups.sum(-1) == 2).all(), name
    assert torch.equal(result.model.depthwise.weight, model.depthwise.weight)


def test_global_allocation_hits_the_overall_sparsity_with_the_cap(tiny_resnet):
    cfg = PruneConfig(sparsity=0.6, allocation="global", layer_sparsity_cap=0.7, n_calib=16, reconstruction="none")
    result = prune_model(tiny_resnet, calib(), cfg)
    assert result.sparsity == pytest.approx(0.6, abs=1 / 1152)
    assert all(r.sparsity <= 0.7 + 1e-9 for r in result.layers)


def test_wanda_masks_follow_input_norms(tiny_resnet):
    loud = calib().clone()
    cfg = dict(n_calib=16, reconstruction="none", sparsity=0.5)
    magnitude = prune_model(tiny_resnet, loud, PruneConfig(mask="magnitude", **cfg)).masks["c1"]
    wanda = prune_model(tiny_resnet, loud, PruneConfig(mask="wanda", **cfg)).masks["c1"]
    assert not torch.equal(magnitude, wanda)


@pytest.mark.slow
def test_resnet20_on_cifar10_snows_beats_mask_only(shared):
    """End to end on real data: 50% unstructured magnitude, 128 calibration images, 500 test images."""
    model = create_model("resnet20_cifar10", checkpoint=shared / "models" / "resnet20-cifar10.th")
    train_x, _ = load_npz(shared / "data" / "cifar10-subset.npz", "train")
    test_x, test_y = load_npz(shared / "data" / "cifar10-subset.npz", "test")
    test_x, test_y = test_x[:500], test_y[:500]
    scores = {}
    for reconstruction in ("none", "snows"):
        cfg = PruneConfig(sparsity=0.5, reconstruction=reconstruction, k=3, n_calib=128, device="cpu")
        result = prune_model(copy.deepcopy(model), train_x[:128], cfg)
        scores[reconstruction] = top1(result.model, test_x, test_y)
        assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    dense = top1(model, test_x, test_y)
    assert scores["snows"] > scores["none"]
    assert scores["snows"] >= dense - 0.01


@pytest.mark.parametrize("curvature", ["exact", "gauss-newton"])
def test_snows_runs_on_a_timm_vit_and_a_depthwise_se_net(curvature):
    """Attention (whose fused kernels have no double backward), GELU, SiLU, sigmoid gates, depthwise convs."""
    from test_lookahead import tiny_vit

    for model, shape in ((tiny_vit().eval(), (8, 3, 16, 16)), (DepthwiseSENet().eval(), (8, 3, 6, 6))):
        cfg = PruneConfig(sparsity=0.5, k=3, n_calib=8, curvature=curvature)
        result = prune_model(model, torch.randn(shape), cfg)
        assert result.layers and all(r.loss_after <= r.loss_before for r in result.layers)
        assert sum(r.loss_after < r.loss_before for r in result.layers) >= len(result.layers) // 2


@pytest.mark.parametrize("mask", [m for m in list_mask_methods() if not get_mask_method(m).user_supplied])
def test_every_registered_mask_method_keeps_the_exact_count(tiny_resnet, mask):
    calib = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    result = prune_model(tiny_resnet, calib, PruneConfig(sparsity=0.5, mask=mask, reconstruction="none", n_calib=16))
    assert set(result.masks) == {"c1", "c2"}
    assert all(int(keep.sum()) == keep.numel() // 2 for keep in result.masks.values())


@pytest.mark.parametrize("value", [2.0, float("nan")])
def test_a_custom_mask_of_other_values_than_keep_and_prune_is_refused(tiny_resnet, value):
    masks = {name: torch.ones_like(getattr(tiny_resnet, name).weight) for name in ("c1", "c2")}
    masks["c2"][0, 0, 0, 0] = value
    config = PruneConfig(mask="custom", reconstruction="none", n_calib=8)
    with pytest.raises(ValueError, match="custom mask for c2 must hold only True/False"):
        prune_model(tiny_resnet, torch.randn(8, 3, 8, 8), config, custom_masks=masks)


def test_a_vit_prunes_in_mini_batches_smaller_than_its_calibration_set():
    from snows_core.models import create_model

    config = PruneConfig(sparsity=0.5, k=1, n_calib=12, batch_size=4, cg_iters=2, device="cpu")
    result = prune_model(create_model("vit_tiny").eval(), torch.randn(12, 1, 28, 28), config)
    assert result.layers and all(r.loss_after <= r.loss_before for r in result.layers)
