"""OBC against a plain per-row OBS loop that re-inverts the Hessian of the remaining inputs at every step."""

import pytest
import torch
import torch.nn as nn
from test_sparsegpt import problem

from snows_core import PruneConfig, prune_model
from snows_core.engine.problem import LayerProblem
from snows_core.masks import holds_nm
from snows_core.masks.obc import MAX_COLUMNS, obc_layer, obc_prune


def reference_obc(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    prune: int | None = None,
    nm: tuple[int, int] | None = None,
    damping: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row: prune the alive weight of least w_p^2 / inv(H_AA)_pp (A the alive inputs, the inverse taken
    afresh), move the others by OBS, record the weights after every step. Unstructured: the `prune` smallest
    step losses over all rows say how many steps each row keeps; N:M: no more than M - N per group."""
    h = hessian.double() + damping * hessian.diagonal().mean().double() * torch.eye(
        hessian.shape[0], dtype=torch.float64
    )
    rows, d = weight.shape
    losses, trajectories, orders = [], [], []
    for r in range(rows):
        w, alive = weight[r].double().clone(), torch.ones(d, dtype=torch.bool)
        row_losses, trajectory, order = [], [w.clone()], []
        while alive.any():
            idx = alive.nonzero()[:, 0]
            inverse = torch.linalg.inv(h[idx][:, idx])
            saliency = w[idx] ** 2 / inverse.diagonal()
            if nm is not None:
                full = torch.tensor([(~alive[(j // nm[1]) * nm[1] :][: nm[1]]).sum() >= nm[1] - nm[0] for j in idx])
                if full.all():
                    break
                saliency[full] = float("inf")
            p = int(saliency.argmin())
            w[idx] -= w[idx[p]] / inverse[p, p] * inverse[p]
            w[idx[p]], alive[idx[p]] = 0.0, False
            row_losses.append(float(saliency[p]))
            trajectory.append(w.clone())
            order.append(int(idx[p]))
        losses.append(row_losses)
        trajectories.append(trajectory)
        orders.append(order)
    if nm is None:
        flat = sorted((loss, r) for r, row in enumerate(losses) for loss in row)[:prune]
        counts = [sum(1 for _, row in flat if row == r) for r in range(rows)]
    else:
        counts = [len(row) for row in losses]
    kept = torch.ones(rows, d, dtype=torch.bool)
    for r in range(rows):
        kept[r, orders[r][: counts[r]]] = False
    return kept, torch.stack([trajectories[r][counts[r]] for r in range(rows)])


@pytest.mark.parametrize("prune", [1, 23, 50, 59])
def test_unstructured_matches_the_per_row_obs_reference(prune):
    weight, _, hessian = problem()
    kept, solved = obc_prune(weight, hessian, prune=prune)
    ref_kept, ref_solved = reference_obc(weight, hessian, prune=prune)
    assert int((~kept).sum()) == prune
    assert torch.equal(kept, ref_kept)
    assert torch.allclose(solved, ref_solved, atol=1e-5)
    assert torch.all(solved[~kept] == 0)


def test_rows_lose_different_counts_where_their_losses_say():
    weight, _, hessian = problem()
    weight[0] *= 0.01  # a nearly-zero row costs nothing to prune: it goes first, whole
    kept, _ = obc_prune(weight, hessian, prune=15)
    assert int((~kept[0]).sum()) == 12 and int((~kept).sum()) == 15


def test_nm_matches_the_reference_and_holds_the_pattern():
    weight, _, hessian = problem(d=16)
    kept, solved = obc_prune(weight, hessian, nm=(2, 4))
    ref_kept, ref_solved = reference_obc(weight, hessian, nm=(2, 4))
    assert holds_nm(kept, 2, 4) and int(kept.sum()) == weight.numel() // 2
    assert torch.equal(kept, ref_kept)
    assert torch.allclose(solved, ref_solved, atol=1e-5)


def test_weights_are_the_exact_minimiser_on_the_mask_and_beat_magnitude():
    weight, x, hessian = problem(rows=4, d=20, samples=60)
    kept, solved = obc_prune(weight, hessian, prune=50, relative_damping=0.0)
    for r in range(4):  # least squares on the kept inputs: ||x_K^T w_K - x^T w||
        k = kept[r]
        lstsq = torch.linalg.lstsq(x[k].T, x.T @ weight[r]).solution
        assert torch.allclose(solved[r, k], lstsq, atol=1e-6)
    magnitude = weight.abs() > weight.abs().flatten().kthvalue(50).values  # the same count, by |w|
    refit = torch.zeros_like(weight)
    for r in range(4):
        refit[r, magnitude[r]] = torch.linalg.lstsq(x[magnitude[r]].T, x.T @ weight[r]).solution
    assert ((solved - weight) @ x).pow(2).sum() < ((refit - weight) @ x).pow(2).sum()


def test_damping_is_used():
    weight, _, hessian = problem()
    _, solved = obc_prune(weight, hessian, prune=30)
    _, other = obc_prune(weight, hessian, prune=30, relative_damping=0.5)
    assert not torch.allclose(solved, other)


def test_prior_pruned_weights_go_first_jointly_and_do_not_count_in_the_selection():
    weight, _, hessian = problem(rows=5)
    prior = torch.ones_like(weight, dtype=torch.bool)
    prior[:, :3] = False  # 15 weights already gone
    kept, solved = obc_prune(weight, hessian, prune=40, prior=prior, relative_damping=0.0)
    assert not kept[:, :3].any() and int((~kept).sum()) == 40
    # the same as OBC on the remaining inputs, started from the optimal re-fit without the first three
    h_rest = hessian[3:, 3:]
    refit = weight[:, 3:] + torch.linalg.solve(h_rest, hessian[3:, :3] @ weight[:, :3].T).T  # (rows, d - 3)
    rest_kept, rest_solved = obc_prune(refit, h_rest, prune=25, relative_damping=0.0)
    assert torch.equal(kept[:, 3:], rest_kept)
    assert torch.allclose(solved[:, 3:], rest_solved, atol=1e-6) and torch.all(solved[:, :3] == 0)


def test_a_dead_input_is_pruned_first_for_free():
    weight, x, _ = problem()
    x[4] = 0.0
    kept, _ = obc_prune(weight, 2 * x @ x.T, prune=6)  # as many as the rows: the dead column's weights
    assert not kept[:, 4].any() and int((~kept).sum()) == 6


def test_grouped_conv_rows_use_their_own_groups_hessian():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
    x = torch.randn(6, 4, 5, 5)
    x[:, 2:] = 0.0  # group 2 sees only zeros: its weights cost nothing and go first, group 1's stay
    mask, weight = obc_layer(LayerProblem("c", conv, conv.weight.detach(), keep=30, x=x, x_reference=x))
    assert mask.shape == conv.weight.shape and not mask[2:].any() and int(mask[:2].sum()) == 30
    assert torch.all(weight[~mask] == 0)


def all_step_losses(weight: torch.Tensor, h: torch.Tensor) -> list[float]:
    """Every row of `weight` pruned all the way by OBS under `h` (undamped here): the loss of each step."""
    losses = []
    for row in weight:
        w, alive = row.clone(), torch.ones(len(row), dtype=torch.bool)
        while alive.any():
            idx = alive.nonzero()[:, 0]
            inverse = torch.linalg.inv(h[idx][:, idx])
            saliency = w[idx] ** 2 / inverse.diagonal()
            p = int(saliency.argmin())
            w[idx] -= w[idx[p]] / inverse[p, p] * inverse[p]
            w[idx[p]], alive[idx[p]] = 0.0, False
            losses.append(float(saliency[p]))
    return losses


def reference_blocked_obc(
    weight: torch.Tensor, hessian: torch.Tensor, width: int, prune: int | None = None, nm: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of `width` columns in order, each by `reference_obc` under the Hessian of the block with the later
    columns free, inv(inv(H_FF)_bb), the later ones then re-fitted by least squares, d_L = -d_b H_bL inv(H_LL);
    each block's prune count first, as many as it has among the `prune` smallest step losses of all blocks'
    trajectories under inv(inv(H)_bb) (every other column free)."""
    h = hessian.double() + 0.01 * hessian.diagonal().mean().double() * torch.eye(hessian.shape[0], dtype=torch.float64)
    rows, d = weight.shape
    starts = list(range(0, d, width))
    shares = [None] * len(starts)
    if prune is not None:
        losses = []  # (loss, block)
        for i, a in enumerate(starts):
            free_h = torch.linalg.inv(torch.linalg.inv(h)[a : a + width, a : a + width])
            losses += [(loss, i) for loss in all_step_losses(weight.double()[:, a : a + width], free_h)]
        shares = [sum(1 for _, i in sorted(losses)[:prune] if i == block) for block in range(len(starts))]
    w, kept = weight.double().clone(), torch.ones(rows, d, dtype=torch.bool)
    for a, share in zip(starts, shares, strict=True):
        b, later = min(a + width, d), slice(min(a + width, d), d)
        block_h = torch.linalg.inv(torch.linalg.inv(h[a:, a:])[: b - a, : b - a])
        kept[:, a:b], solved = reference_obc(w[:, a:b], block_h, prune=share, nm=nm, damping=0.0)
        w[:, later] -= (solved - w[:, a:b]) @ h[a:b, later] @ torch.linalg.inv(h[later, later])
        w[:, a:b] = solved
    return kept, w


@pytest.mark.parametrize(("prune", "nm", "width"), [(10, None, 6), (41, None, 6), (60, None, 6), (None, (2, 4), 4)])
def test_a_layer_wider_than_one_inverse_goes_in_blocks_like_the_reference(prune, nm, width):
    weight, _, hessian = problem(rows=5, d=16)
    kept, solved = obc_prune(weight, hessian, prune=prune, nm=nm, max_columns=7)  # blocks of 6, 6, 4 (2:4: 4 x 4)
    ref_kept, ref_solved = reference_blocked_obc(weight, hessian, width, prune=prune, nm=nm)
    assert torch.equal(kept, ref_kept)
    torch.testing.assert_close(solved, ref_solved, atol=1e-5, rtol=1e-5)
    assert torch.all(solved[~kept] == 0)
    assert int((~kept).sum()) == (prune if nm is None else weight.numel() // 2)


def test_one_block_is_exact_obc_and_blocks_cost_little_against_it():
    weight, x, hessian = problem(rows=8, d=24, samples=80)
    exact = obc_prune(weight, hessian, prune=120)
    one_block = obc_prune(weight, hessian, prune=120, max_columns=24)
    assert torch.equal(exact[0], one_block[0]) and torch.equal(exact[1], one_block[1])
    blocked = obc_prune(weight, hessian, prune=120, max_columns=8)
    assert not torch.equal(blocked[0], exact[0])  # the blocks choose differently...
    loss = lambda w: float(((w - weight) @ x).pow(2).sum())  # noqa: E731
    assert (
        loss(exact[1]) <= loss(blocked[1]) < 1.15 * loss(exact[1])
    )  # ...at a small price (2.2x with counts split by size)


def test_a_layer_wider_than_max_columns_runs_in_the_loop():
    model = nn.Sequential(nn.Flatten(), nn.Linear(MAX_COLUMNS + 1, 4))
    config = PruneConfig(mask="obc", reconstruction="none", n_calib=8, layers=["1"], sparsity=0.5)
    result = prune_model(model, torch.randn(8, MAX_COLUMNS + 1), config)
    assert int((~result.masks["1"]).sum()) == 2 * (MAX_COLUMNS + 1)
    assert torch.all(result.model[1].weight[~result.masks["1"]] == 0)
