"""targets="official": the official SNOWS code's objective, checked by hand on a tiny block network;
the absolute CG stopping rule, curvature products on a sub-sample, and frozen BatchNorm windows."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core import PruneConfig, prune_model
from snows_core.engine.graph import prunable_nodes, trace
from snows_core.engine.reconstruct import _curvature_batch
from snows_core.engine.solver import conjugate_gradient
from snows_core.engine.window import FrozenBatchNorm, block_inputs, build_window
from snows_core.events import LayerStarted
from snows_core.masks import unstructured_mask


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.c2(F.relu(self.bn(self.c1(x)))))


class BlockNet(nn.Module):
    """Stem, one residual block held in its own module, pooled classifier."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = Block(width)
        self.fc = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture
def net() -> BlockNet:
    torch.manual_seed(0)
    model = BlockNet().eval()
    bn = model.block.bn
    bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.1, 0.1)
    return model


def node_of(gm, name):
    return next(n for n in prunable_nodes(gm) if n.target == name)


def test_block_inputs_are_what_the_block_reads(net):
    gm = trace(net)
    assert [n.name for n in block_inputs(gm, node_of(gm, "block.c2"))] == ["relu"]  # relu(stem(x))
    assert [n.name for n in block_inputs(gm, node_of(gm, "stem"))] == ["x"]  # held by the model itself


def test_official_kinds_leave_the_logits_out(net):
    gm = trace(net)
    assert [kind for _, kind in build_window(gm, node_of(gm, "block.c2"), 3).ops] == ["conv", "activation", "linear"]
    official = build_window(gm, node_of(gm, "block.c2"), 3, kinds=("conv", "activation"))
    assert [kind for _, kind in official.ops] == ["conv", "activation"]


def test_official_targets_run_the_dense_block_from_the_pruned_block_input(net):
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    losses = {}

    def record(event):
        if isinstance(event, LayerStarted):
            losses[event.layer] = (event.loss_before, event.window)

    config = PruneConfig(
        sparsity=0.5, reconstruction="none", k=3, targets="official", layers=["block.c1", "block.c2"], n_calib=5
    )
    prune_model(net, x, config, on_event=record)

    b = net.block
    m1 = b.c1.weight * unstructured_mask(b.c1.weight.abs(), 0.5)
    m2 = b.c2.weight * unstructured_mask(b.c2.weight.abs(), 0.5)
    with torch.no_grad():
        xb = F.relu(net.stem(x))  # the block input: the stem is not pruned
        dense_c2 = b.c2(F.relu(b.bn(b.c1(xb))))  # the dense block, dense c1 too
        pruned_c2 = F.conv2d(F.relu(b.bn(F.conv2d(xb, m1, padding=1))), m2, padding=1)
        expected = F.mse_loss(pruned_c2, dense_c2) + F.mse_loss(F.relu(xb + pruned_c2), F.relu(xb + dense_c2))
    loss, window = losses["block.c2"]
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert [op.split(":")[1] for op in window] == ["conv", "activation"]  # no logits tap


def test_cg_stops_on_an_absolute_residual_when_asked():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    a = a @ a.T + torch.eye(40, dtype=torch.float64)
    b = 1e3 * torch.randn(40, generator=g, dtype=torch.float64)  # ||b|| ~ 6e3
    relative = conjugate_gradient(lambda v: a @ v, b, max_iters=500, tol=1e-3, damping=0.0)
    absolute = conjugate_gradient(lambda v: a @ v, b, max_iters=500, tol=1e-3, damping=0.0, relative=False)
    assert relative.residual * b.norm() <= 1e-3 * b.norm() and relative.residual * b.norm() > 1e-3
    assert absolute.residual * b.norm().item() < 1e-3 and absolute.iters > relative.iters


def test_curvature_batch_is_the_batch_or_a_seeded_subsample_of_it():
    batch = slice(256, 512)
    assert _curvature_batch(batch, 1.0, torch.Generator().manual_seed(0)) is batch
    picked = _curvature_batch(batch, 0.25, torch.Generator().manual_seed(0))
    assert picked.shape == (64,) and picked.unique().numel() == 64
    assert picked.min() >= 256 and picked.max() < 512 and torch.equal(picked, picked.sort().values)
    assert torch.equal(picked, _curvature_batch(batch, 0.25, torch.Generator().manual_seed(0)))
    assert _curvature_batch(slice(0, 3), 0.1, torch.Generator()).numel() == 1  # at least one image


@pytest.mark.parametrize("fraction", [0.0, 1.5, float("nan"), "half"])
def test_curvature_fraction_outside_the_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="curvature_fraction"):
        PruneConfig(curvature_fraction=fraction)


def test_curvature_on_a_subsample_still_lowers_the_loss_and_is_deterministic(net):
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    config = PruneConfig(sparsity=0.7, k=2, curvature_fraction=0.5, warm_start=False, n_calib=16, batch_size=16)
    first, second = prune_model(net, x, config), prune_model(net, x, config)
    for a, b in zip(first.layers, second.layers, strict=True):
        assert a.loss_after < a.loss_before and a.loss_after == b.loss_after


def test_the_gram_preconditioner_meets_the_official_tolerance_in_fewer_products(net):
    x = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    settings = dict(sparsity=0.7, k=2, targets="official", warm_start=False, n_calib=32, batch_size=32, cg_iters=50)
    settings |= dict(cg_tol=1e-6, newton_passes=2)
    plain = prune_model(net, x, PruneConfig(**settings, preconditioner="none"))
    preconditioned = prune_model(net, x, PruneConfig(**settings, preconditioner="gram"))
    assert sum(r.cg_iters for r in preconditioned.layers) < sum(r.cg_iters for r in plain.layers) / 2
    for a, b in zip(plain.layers, preconditioned.layers, strict=True):  # the same Newton steps, met sooner
        assert b.loss_after == pytest.approx(a.loss_after, rel=1e-3)


def test_an_unknown_preconditioner_is_refused():
    with pytest.raises(ValueError, match="preconditioner"):
        PruneConfig(preconditioner="jacobi")


def test_frozen_batchnorm_equals_the_eval_module_and_leaves_the_network_alone(net):
    bn = net.block.bn
    x = torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(FrozenBatchNorm(bn)(x), bn(x), rtol=1e-6, atol=1e-6)
    gm = trace(net)
    window = build_window(gm, node_of(gm, "block.c1"), 2)
    assert isinstance(window.module.get_submodule("block.bn"), FrozenBatchNorm)
    assert isinstance(gm.get_submodule("block.bn"), nn.BatchNorm2d)  # the traced network keeps its module
