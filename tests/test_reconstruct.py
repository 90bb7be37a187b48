"""Reconstruction: lstsq equals its closed form, SNOWS never raises the loss, pruned entries stay zero."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core import PruneConfig, prune_model
from snows_core.engine.columns import KeptFactors, input_grams, layer_columns, solve_on_kept
from snows_core.engine.graph import PrunedPath, prunable_nodes, trace
from snows_core.engine.problem import LayerProblem, layer_problem
from snows_core.engine.reconstruct import (
    get_reconstruction,
    gram_preconditioner,
    list_reconstructions,
    lstsq_weight,
)
from snows_core.masks import unstructured_mask


def ridge_rows(inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, ridge: float) -> torch.Tensor:
    """Row by row: argmin ||inputs[:, S] w - targets[:, o]||^2 + ridge ||w||^2, by an augmented lstsq."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for o in range(mask.shape[0]):
        cols = inputs[:, mask[o]]
        a = torch.cat([cols, ridge**0.5 * torch.eye(cols.shape[1], dtype=torch.float64)])
        b = torch.cat([targets[:, o], torch.zeros(cols.shape[1], dtype=torch.float64)])
        out[o, mask[o]] = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    return out


def test_lstsq_linear_equals_closed_form():
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(6, 4).double()
    x, x_dense = (
        torch.randn(40, 6, generator=g, dtype=torch.float64),
        torch.randn(40, 6, generator=g, dtype=torch.float64),
    )
    mask = torch.rand(4, 6, generator=g) > 0.4
    damping = 1e-2
    got = lstsq_weight(LayerProblem("l", layer, layer.weight.detach(), x=x, x_reference=x_dense), mask, damping)
    expected = ridge_rows(x, x_dense @ layer.weight.detach().T, mask, ridge=damping * 40 * 4 / 2)
    torch.testing.assert_close(got, expected)
    assert not got[~mask].any()


def test_lstsq_conv_equals_closed_form_on_im2col():
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False).double()
    x = torch.randn(5, 3, 7, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(conv.weight.shape, generator=g) > 0.5
    got = lstsq_weight(LayerProblem("c", conv, conv.weight.detach(), x=x, x_reference=x), mask, damping=1e-3)
    cols = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27)  # (N*L, C*k*k)
    flat_mask = mask.reshape(4, 27)
    targets = cols @ conv.weight.detach().reshape(4, 27).T
    expected = ridge_rows(cols, targets, flat_mask, ridge=1e-3 * cols.shape[0] * 4 / 2).reshape(conv.weight.shape)
    torch.testing.assert_close(got, expected)


def test_lstsq_grouped_conv_solves_each_row_on_its_own_group_and_kept_inputs():
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False).double()
    x = torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(conv.weight.shape, generator=g) > 0.3
    mask[1] = False  # a row with nothing kept
    mask[2] = True  # a dense row: the widest system
    got = lstsq_weight(LayerProblem("c", conv, conv.weight.detach(), x=x, x_reference=x), mask, damping=1e-3)
    for group in range(2):
        rows = slice(2 * group, 2 * group + 2)
        cols = F.unfold(x[:, 2 * group : 2 * group + 2], 3, padding=1).transpose(1, 2).reshape(-1, 18)  # (N*L, 18)
        weight = conv.weight.detach()[rows].reshape(2, 18)
        expected = ridge_rows(cols, cols @ weight.T, mask[rows].reshape(2, 18), ridge=1e-3 * 6 * 4 * 25 / 2)
        torch.testing.assert_close(got[rows].reshape(2, 18), expected)
    assert not got[1].any()


def make_problem(model, layer: str, k: int, sparsity: float = 0.6) -> LayerProblem:
    gm = trace(model)
    node = next(n for n in prunable_nodes(gm) if n.target == layer)
    path = PrunedPath(gm, torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(2)), batch_size=8)
    mask = unstructured_mask(gm.get_submodule(layer).weight.abs(), sparsity)
    return layer_problem(gm, node, path, k=k, mask=mask, batch_size=8)[0]


def test_the_gram_preconditioner_solves_each_rows_kept_system_of_the_layers_own_hessian(tiny_resnet):
    problem = make_problem(tiny_resnet, "c1", k=0)
    damping = 1e-2
    precondition = gram_preconditioner(problem, damping)
    gram, _, numel = problem.grams  # (1, d, d)
    mask = problem.mask.reshape(problem.mask.shape[0], -1)  # (rows, d)
    r = torch.randn(problem.free_index.numel(), generator=torch.Generator().manual_seed(4))  # (n_free,)
    expected, start = torch.zeros_like(r, dtype=torch.float64), 0
    for row in mask:
        kept = row.nonzero().squeeze(1)
        system = 2.0 / numel * gram[0][kept][:, kept] + damping * torch.eye(kept.numel(), dtype=torch.float64)
        expected[start : start + kept.numel()] = torch.linalg.solve(system, r[start : start + kept.numel()].double())
        start += kept.numel()
    torch.testing.assert_close(precondition(r).double(), expected, rtol=1e-4, atol=1e-6)


def test_the_warm_start_and_the_preconditioner_factor_each_layer_once(tiny_resnet, monkeypatch):
    factorised = []
    cholesky_ex = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a: factorised.append(a.shape) or cholesky_ex(a))
    problem = make_problem(tiny_resnet, "c1", k=0)
    get_reconstruction("lstsq")(problem, PruneConfig(k=0), lambda e: None)
    alone = len(factorised)
    problem = make_problem(tiny_resnet, "c1", k=0)
    get_reconstruction("snows")(problem, PruneConfig(k=0, preconditioner="gram"), lambda e: None)
    assert alone >= 1 and len(factorised) == 2 * alone


@pytest.mark.parametrize("curvature", ["exact", "gauss-newton"])
def test_snows_at_k0_reaches_the_least_squares_optimum(tiny_resnet, curvature):
    """K=0 with the same inputs is the lstsq problem; Newton-CG from the mask must land on its optimum."""
    problem = make_problem(tiny_resnet, "c1", k=0)
    cfg = PruneConfig(
        k=0,
        warm_start=False,
        curvature=curvature,
        newton_passes=6,
        cg_iters=300,
        cg_tol=1e-8,
        damping=1e-8,
        targets="pruned-input",
        batch_size=16,
    )
    problem.batch_size = 16
    snows = get_reconstruction("snows")(problem, cfg, lambda e: None)
    lstsq = get_reconstruction("lstsq")(problem, cfg, lambda e: None)
    assert snows.loss == pytest.approx(lstsq.loss, rel=1e-3)
    torch.testing.assert_close(snows.weight, lstsq.weight, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("reconstruction", list_reconstructions())
@pytest.mark.parametrize("k", [0, 3])
def test_reconstruction_never_raises_the_loss_and_keeps_pruned_weights_zero(tiny_resnet, reconstruction, k):
    calib = torch.randn(24, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    cfg = PruneConfig(sparsity=0.7, reconstruction=reconstruction, k=k, n_calib=24, batch_size=8, newton_passes=2)
    result = prune_model(tiny_resnet, calib, cfg)
    modules = dict(result.model.named_modules())
    for report in result.layers:
        assert report.loss_after <= report.loss_before
        weight = modules[report.name].weight
        assert not weight[~result.masks[report.name]].any()
        assert report.kept == int(result.masks[report.name].sum())
        if reconstruction == "snows":
            assert report.loss_after < report.loss_before and report.newton_steps >= 1 and report.cg_iters >= 1
            assert report.loss_warm is not None and report.loss_after <= report.loss_warm


def test_newton_steps_emit_events_with_losses_and_cg_counts(tiny_resnet):
    calib = torch.randn(16, 3, 6, 6)
    events = []
    prune_model(tiny_resnet, calib, PruneConfig(k=2, n_calib=16, batch_size=8, newton_passes=2), on_event=events.append)
    steps = [e for e in events if e.kind == "newton_step"]
    assert steps and all(e.loss_after <= e.loss and 1 <= e.cg_iters <= 10 and 0 <= e.step_size <= 1 for e in steps)
    assert {e.layer for e in steps} == {"c1", "c2"}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.Conv2d(3, 4, 3, padding=1), 6),
        (nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2), 7),
        (nn.Conv2d(2, 2, (3, 2), padding=(2, 0), dilation=(2, 1), stride=(1, 2)), 7),
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), 5),  # depthwise
        (nn.Conv2d(3, 5, 1), 4),
    ],
)
def test_layer_columns_are_the_unfolded_im2col_columns_in_either_memory_format(conv, size, channels_last):
    x = torch.randn(3, conv.in_channels, size, size, generator=torch.Generator().manual_seed(1))[1:]  # an offset view
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    unfolded = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (n, C*kh*kw, L)
    expected = unfolded.unflatten(1, (conv.groups, -1)).permute(1, 2, 0, 3).flatten(2)  # (groups, d, n*L)
    assert torch.equal(layer_columns(conv, x), expected)


@pytest.mark.parametrize("groups", [1, 2])
def test_the_cross_moment_is_the_cross_gram_times_the_dense_weight(groups):
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=groups, bias=True).double()
    linear = nn.Linear(5, 3).double()
    cases = [
        (conv, torch.randn(7, 4, 5, 5, dtype=torch.float64, generator=generator)),
        (linear, torch.randn(7, 2, 5, dtype=torch.float64, generator=generator)),
        (nn.Linear(3, 6).double(), torch.randn(7, 3, dtype=torch.float64, generator=generator)),  # out > d
    ]
    for module, x in cases:
        x_reference = x + 0.3 * torch.randn(x.shape, dtype=x.dtype, generator=generator)
        weight = torch.randn(module.weight.shape, dtype=x.dtype, generator=generator)
        gram, cross, numel = input_grams(module, x, x_reference, weight, batch_size=3)
        cols, cols_t = layer_columns(module, x), layer_columns(module, x_reference)  # (groups, d, rows)
        rows = weight.reshape(cols.shape[0], weight.shape[0] // cols.shape[0], -1)  # (groups, out/g, d)
        torch.testing.assert_close(gram, cols @ cols.transpose(1, 2))
        torch.testing.assert_close(cross, cols @ cols_t.transpose(1, 2) @ rows.transpose(1, 2))
        assert numel == cols.shape[-1] * weight.shape[0]
        _, same, _ = input_grams(module, x, x, weight, batch_size=3)
        torch.testing.assert_close(same, gram @ rows.transpose(1, 2))


def test_kept_factors_solve_each_rows_kept_system_as_solve_on_kept_does():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(2, 7, 7, generator=g, dtype=torch.float64)
    system = a @ a.transpose(1, 2)  # (groups, d, d)
    system[1, 3, :] = system[1, :, 3] = 0.0  # a dead input in group 1: singular without a ridge
    keep = (torch.rand(4, 7, generator=g) < 0.5).double()
    keep[0] = 0.0  # a row with nothing kept
    keep[3, 3] = 1.0  # row 3 (group 1) keeps the dead input
    group_of_row = torch.tensor([0, 0, 1, 1])
    rhs = torch.randn(4, 7, generator=g, dtype=torch.float64)
    factors = KeptFactors(system, group_of_row, keep, ridge=0.1)
    solved = factors.solve(rhs)
    for row in range(4):
        kept = keep[row].bool()
        expected = torch.zeros(7, dtype=torch.float64)
        block = system[group_of_row[row]][kept][:, kept] + 0.1 * torch.eye(int(kept.sum()), dtype=torch.float64)
        expected[kept] = torch.linalg.solve(block, rhs[row, kept])
        torch.testing.assert_close(solved[row], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(solved, solve_on_kept(system, group_of_row, keep, rhs, ridge=0.1))
    singular = KeptFactors(system, group_of_row, keep).solve(rhs)  # no ridge: row 3's system is singular
    torch.testing.assert_close(singular[3], rhs[3] * keep[3])  # solved as the identity on its kept inputs
    assert KeptFactors.footprint(keep) == 4 * int(keep.sum(1).max()) ** 2 * 8
