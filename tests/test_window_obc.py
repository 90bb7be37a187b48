"""Window-OBC against references written here: the window's curvature from its explicit Jacobian, OBC's per-row
trajectories re-inverting the Hessian every step, the row-weighted selection and the joint re-fit solved with an
explicit Kronecker product."""

import pytest
import torch
import torch.nn as nn

from snows_core import PruneConfig, prune_model
from snows_core.engine.graph import PrunedPath, prunable_nodes, trace
from snows_core.engine.problem import layer_problem
from snows_core.masks import holds_nm
from snows_core.masks.obc import obc_layer
from snows_core.masks.window_obc import G_DAMPING, group_blocks, kronecker_refit, output_curvature, window_obc_layer


def mlp_problem(k: int, keep: int = 0, nm: tuple[int, int] | None = None, prior: torch.Tensor | None = None):
    """The first layer (6 -> 5) of a Linear-ReLU-Linear-ReLU-Linear net on 20 images, its K-window loaded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU())
    model = model.double().eval()
    with torch.no_grad():
        model[4].weight.mul_(torch.linspace(0.05, 3.0, 5, dtype=torch.float64))  # the window weighs channels unequally
    gm = trace(model)
    node = next(n for n in prunable_nodes(gm) if n.target == "2")
    x = torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    problem, _ = layer_problem(gm, node, PrunedPath(gm, x, 20), k=k, batch_size=20)
    problem.keep, problem.nm, problem.prior = keep, nm, prior
    return problem


def explicit_curvature(problem) -> torch.Tensor:
    """sum over images of sum_t J_t^T J_t / numel(tap t), each J_t the full Jacobian of tap t in the layer output."""
    batch = slice(0, problem.n)
    z = problem.layer_output(problem.dense_weight, batch)  # (n, out)
    taps = problem.window_taps(z, batch)
    jacobians = torch.autograd.functional.jacobian(lambda v: problem.window_taps(v, batch), z)
    g = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
    for tap, jac in zip(taps, jacobians, strict=True):
        flat = jac.reshape(tap.numel(), -1)  # (tap entries, n * out); a window acts on each image alone
        for i in range(problem.n):
            block = flat[:, i * z.shape[1] : (i + 1) * z.shape[1]]  # (tap entries, out)
            g += block.T @ block / tap.numel()
    return g


def reference_window_obc(weight, hessian, curvature, prune):
    """Per row, OBS steps with the inverse of the alive inputs' Hessian taken afresh; the `prune` least step losses,
    row i's times 1 / [G^-1]_ii, over all rows; the kept weights then minimise tr(G D H D^T) exactly (an explicit
    Kronecker system on the kept entries)."""
    rows, d = weight.shape
    h = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(d, dtype=torch.float64)
    g = curvature / curvature.diagonal().mean() + G_DAMPING * torch.eye(rows, dtype=torch.float64)
    row_weight = 1 / torch.linalg.inv(g).diagonal()
    steps = []  # (weighted loss, row, column)
    for r in range(rows):
        w, alive = weight[r].clone(), torch.ones(d, dtype=torch.bool)
        while alive.any():
            idx = alive.nonzero()[:, 0]
            inverse = torch.linalg.inv(h[idx][:, idx])
            saliency = w[idx] ** 2 / inverse.diagonal()
            p = int(saliency.argmin())
            steps.append((float(saliency[p] * row_weight[r]), r, int(idx[p])))
            w[idx] -= w[idx[p]] / inverse[p, p] * inverse[p]
            w[idx[p]], alive[idx[p]] = 0.0, False
    kept = torch.ones(rows, d, dtype=torch.bool)
    for r in range(rows):  # a row loses its first `count` steps: as many of its steps as are among the least
        count = sum(1 for _, row, _ in sorted(steps)[:prune] if row == r)
        for _, _, column in [s for s in steps if s[1] == r][:count]:
            kept[r, column] = False
    system = torch.kron(g, h)  # vec row-major: tr(G D H D^T) = vec(D)^T (G kron H) vec(D)
    k = kept.flatten()
    solved = torch.zeros(rows * d, dtype=torch.float64)
    solved[k] = torch.linalg.solve(system[k][:, k], (system @ weight.flatten())[k])
    return kept, solved.view(rows, d)


def test_the_curvature_is_the_windows_gauss_newton_matrix():
    problem = mlp_problem(k=4)
    torch.testing.assert_close(
        output_curvature(problem, problem.dense_weight), explicit_curvature(problem), rtol=1e-10, atol=1e-12
    )


def test_with_k_zero_the_curvature_is_a_multiple_of_the_identity_and_the_method_is_obc():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
    gm = trace(conv.double().eval())
    node = next(n for n in prunable_nodes(gm) if n.target == "2")
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    problem, _ = layer_problem(gm, node, PrunedPath(gm, x, 5), k=0, batch_size=5)
    g = output_curvature(problem, problem.dense_weight)
    torch.testing.assert_close(g, g[0, 0] * torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-15)
    problem.keep = 60
    mask, weight = window_obc_layer(problem)
    obc_mask, obc_weight = obc_layer(problem)
    assert torch.equal(mask, obc_mask)
    torch.testing.assert_close(weight, obc_weight, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep", [25, 12, 4])
def test_mask_and_weights_match_the_explicit_reference(keep):
    problem = mlp_problem(k=4, keep=keep)
    mask, weight = window_obc_layer(problem)
    gram, _, _ = problem.grams
    curvature = explicit_curvature(problem)
    ref_mask, ref_weight = reference_window_obc(problem.dense_weight, 2 * gram[0], curvature, 30 - keep)
    assert int(mask.sum()) == keep
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(weight, ref_weight, rtol=1e-5, atol=1e-5)
    assert torch.all(weight[~mask] == 0)


def test_the_window_moves_the_mask_away_from_obcs():
    problem = mlp_problem(k=4, keep=12)
    assert not torch.equal(window_obc_layer(problem)[0], obc_layer(problem)[0])


def test_the_joint_refit_is_the_kronecker_minimiser():
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(n, 9, generator=gen, dtype=torch.float64) for n in (5, 3))
    h, g = ((m @ m.T + 0.1 * torch.eye(m.shape[0], dtype=torch.float64))[None] for m in (a, b))
    target = torch.randn(1, 3, 5, generator=gen, dtype=torch.float64)
    keep = (torch.rand(1, 3, 5, generator=gen) > 0.4).double()
    solved = kronecker_refit(torch.zeros_like(target), target, h, g, keep)
    system, k = torch.kron(g[0], h[0]), keep.flatten().bool()
    expected = torch.zeros(15, dtype=torch.float64)
    expected[k] = torch.linalg.solve(system[k][:, k], (system @ target.flatten())[k])
    torch.testing.assert_close(solved.flatten(), expected, rtol=1e-7, atol=1e-9)


def test_grouped_rows_couple_within_their_group_only():
    curvature = torch.arange(16, dtype=torch.float64).view(4, 4) + 20 * torch.eye(4, dtype=torch.float64)
    blocks = group_blocks(curvature, groups=2, relative_damping=0.0)
    assert blocks.shape == (2, 2, 2)
    torch.testing.assert_close(blocks[1] * curvature.diagonal().mean(), curvature[2:, 2:])


def test_nm_holds_and_prior_masks_nest():
    prior = torch.ones(5, 6, dtype=torch.bool)
    prior[:, :2] = False
    mask, weight = window_obc_layer(mlp_problem(k=4, nm=(1, 2), prior=prior))
    assert holds_nm(mask, 1, 2) and not mask[:, :2].any() and torch.all(weight[~mask] == 0)
    mask, _ = window_obc_layer(mlp_problem(k=4, keep=9, prior=prior))
    assert int(mask.sum()) == 9 and not (mask & ~prior).any()


def test_gradual_stages_run_end_to_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    model.append(nn.Conv2d(8, 4, 3, padding=1))
    config = PruneConfig(sparsity=0.8, mask="window-obc", stages=3, k=2, n_calib=16, device="cpu")
    result = prune_model(model.eval(), torch.randn(16, 3, 8, 8), config)
    assert [r.name for r in result.layers] == ["2"] and result.sparsity == pytest.approx(0.8, abs=0.01)
    kept = [r.kept for r in result.passes]
    assert len(kept) == 3 and kept[0] > kept[1] > kept[2] == int(result.masks["2"].sum())
    assert all(r.loss_after <= r.loss_before for r in result.passes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "vit_tiny"])
@pytest.mark.parametrize("target", [{"sparsity": 0.8, "stages": 2}, {"pattern": "2:4"}], ids=["stages", "2:4"])
def test_zoo_depthwise_and_attention_windows_take_window_obc(name, target):
    from snows_core.engine.graph import default_layers
    from snows_core.models import create_model

    model = create_model(name).eval()
    layers = default_layers(trace(model))[:4]  # an expansion, a depthwise conv, attention's qkv and proj, ...
    config = PruneConfig(mask="window-obc", k=2, n_calib=8, batch_size=4, cg_iters=2, layers=layers, **target)
    result = prune_model(model, torch.randn(8, 1, 28, 28), config)
    pruned = [r.name for r in result.layers]  # at 2:4 a depthwise conv (one input channel per group) stays dense
    assert pruned and set(pruned) | {r.name for r in result.skipped} == set(layers)
    assert all(r.loss_after <= r.loss_before for r in result.layers)
    if "pattern" in target:
        assert all(holds_nm(result.masks[name], 2, 4) for name in pruned)
