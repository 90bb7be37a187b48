"""SparseGPT against a plain OBS loop written with the explicit inverse Hessian of the remaining columns."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.engine.problem import LayerProblem
from snows_core.masks import MaskChoice, get_mask_method, nm_mask, unstructured_mask
from snows_core.masks.sparsegpt import sparsegpt_layer, sparsegpt_prune


def reference_obs(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    prune: int | None = None,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damping: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column j prunes its masked weights and moves the error onto columns j.. with inv(H[j:, j:]) row 0;
    a block's mask takes its lowest OBS saliencies w^2 / inv(H[j:, j:])[0, 0] when the block starts (N:M:
    per group of M columns, per row, when the group starts)."""
    w, h = weight.double().clone(), hessian.double().clone()
    h += damping * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    rows, d = w.shape
    inverse_diag = lambda j: torch.linalg.inv(h[j:, j:])[0, 0]  # noqa: E731
    kept = torch.ones(rows, d, dtype=torch.bool)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        if nm is None:
            saliency = torch.stack([w[:, j] ** 2 / inverse_diag(j) for j in range(b0, b1)], 1)
            count = round(prune * b1 / d) - round(prune * b0 / d)
            lowest = torch.argsort(saliency.flatten())[:count]
            block_kept = kept[:, b0:b1].clone()
            block_kept.view(-1)[lowest] = False
            kept[:, b0:b1] = block_kept
        for j in range(b0, b1):
            if nm is not None and (j - b0) % nm[1] == 0:
                group = range(j, j + nm[1])
                saliency = torch.stack([w[:, c] ** 2 / inverse_diag(c) for c in group], 1)
                lowest = torch.argsort(saliency, dim=1)[:, : nm[1] - nm[0]]
                kept[:, j : j + nm[1]].scatter_(1, lowest, False)
            inverse = torch.linalg.inv(h[j:, j:])
            q = w[:, j] * kept[:, j]
            w[:, j:] -= ((w[:, j] - q) / inverse[0, 0])[:, None] * inverse[0][None]
            w[:, j] = q
    return kept, w


def problem(rows: int = 6, d: int = 12, samples: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, d, generator=g, dtype=torch.float64)
    scale = torch.linspace(0.2, 2.0, d, dtype=torch.float64)[:, None]  # columns of unequal energy
    x = torch.randn(d, samples, generator=g, dtype=torch.float64) * scale
    return weight, x, 2 * x @ x.T


@pytest.mark.parametrize("block", [128, 5])
def test_unstructured_matches_the_obs_reference(block):
    weight, _, hessian = problem()
    kept, solved = sparsegpt_prune(weight, hessian, prune=50, block_size=block)
    ref_kept, ref_solved = reference_obs(weight, hessian, prune=50, block=block)
    assert torch.equal(kept, ref_kept)
    torch.testing.assert_close(solved, ref_solved, atol=1e-5, rtol=1e-5)
    assert int(kept.sum()) == weight.numel() - 50  # exact count
    assert torch.all(solved[~kept] == 0)


def test_two_four_matches_the_reference_and_holds_the_pattern():
    weight, _, hessian = problem(d=16)
    kept, solved = sparsegpt_prune(weight, hessian, nm=(2, 4), block_size=8)
    ref_kept, ref_solved = reference_obs(weight, hessian, nm=(2, 4), block=8)
    assert torch.equal(kept, ref_kept)
    torch.testing.assert_close(solved, ref_solved, atol=1e-5, rtol=1e-5)
    assert torch.all(kept.reshape(6, 4, 4).sum(-1) == 2)


def test_damping_is_one_percent_of_the_mean_diagonal_and_rescues_a_singular_hessian():
    weight, _, _ = problem()
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # rank 5 < 12
    hessian = 2 * x @ x.T
    _, solved = sparsegpt_prune(weight, hessian, prune=36)
    _, ref = reference_obs(weight, hessian, prune=36, damping=0.01)
    torch.testing.assert_close(solved, ref, atol=1e-5, rtol=1e-5)
    _, other = sparsegpt_prune(weight, hessian, prune=36, relative_damping=0.1)
    assert not torch.allclose(other, solved)


def test_output_error_is_lower_than_magnitude_pruning():
    weight, x, hessian = problem(rows=8, d=24, samples=100)
    for sparsity in (0.5, 0.7, 0.9):
        prune = round(sparsity * weight.numel())
        _, solved = sparsegpt_prune(weight, hessian, prune=prune)
        magnitude = weight * unstructured_mask(weight.abs(), sparsity)
        assert ((solved - weight) @ x).norm() < ((magnitude - weight) @ x).norm()


def test_weights_pruned_before_stay_pruned():
    weight, _, hessian = problem()
    prior = torch.rand(weight.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    kept, solved = sparsegpt_prune(weight, hessian, prune=int((~prior).sum()) + 10, prior=prior)
    assert not (kept & ~prior).any()
    assert int(kept.sum()) == weight.numel() - int((~prior).sum()) - 10
    assert torch.all(solved[~kept] == 0)


def inputs_for(module: nn.Module, x: torch.Tensor, keep: int = 0, nm=None, x_reference=None) -> LayerProblem:
    weight = module.weight.detach()
    x_reference = x if x_reference is None else x_reference
    return LayerProblem("layer", module, weight, keep=keep, nm=nm, x=x, x_reference=x_reference)


def test_a_conv_is_pruned_on_its_im2col_columns():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    cols = F.unfold(x, 3, padding=1).permute(1, 0, 2).flatten(1)  # (27, 5*36): (channel, kernel row, kernel col)
    choice = MaskChoice(*sparsegpt_layer(inputs_for(conv, x, keep=40)))
    ref_kept, ref_solved = reference_obs(conv.weight.detach().flatten(1), 2 * cols @ cols.T, prune=108 - 40)
    assert torch.equal(choice.mask.flatten(1), ref_kept)
    torch.testing.assert_close(choice.weight.flatten(1), ref_solved, atol=1e-5, rtol=1e-5)


def test_conv_two_four_groups_run_along_input_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3, padding=1, bias=False)
    choice = MaskChoice(*sparsegpt_layer(inputs_for(conv, torch.randn(4, 8, 5, 5), nm=(2, 4))))
    groups = choice.mask.movedim(1, -1).reshape(4, 3, 3, 2, 4)  # (out, kh, kw, in/4, 4)
    assert torch.all(groups.sum(-1) == 2)
    assert torch.all(choice.weight[~choice.mask] == 0)
    assert choice.mask.shape == conv.weight.shape and nm_mask(choice.mask.float(), 2, 4).equal(choice.mask)


def test_depthwise_convs_are_pruned_per_group_and_keep_the_exact_count():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    choice = MaskChoice(*sparsegpt_layer(inputs_for(conv, torch.randn(4, 4, 5, 5), keep=12)))
    assert int(choice.mask.sum()) == 12 and choice.mask.shape == conv.weight.shape


def test_a_different_dense_input_moves_the_start_to_the_dense_target_fit():
    """min ||W X - W_d X_t||^2 (+ ridge): with nothing pruned, SparseGPT returns W* itself, which fits the target."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 3, bias=False).double()
    x_reference = torch.randn(200, 6, dtype=torch.float64)
    x = x_reference + 0.3 * torch.randn(200, 6, dtype=torch.float64)  # the pruned path drifted
    _, moved = sparsegpt_layer(inputs_for(linear, x, keep=18, x_reference=x_reference))
    target = x_reference @ linear.weight.detach().T
    assert (x @ moved.T - target).norm() < (x @ linear.weight.detach().T - target).norm()
    _, same = sparsegpt_layer(inputs_for(linear, x, keep=18))
    torch.testing.assert_close(same, linear.weight.detach())


def test_sparsegpt_is_registered_as_an_in_loop_method():
    method = get_mask_method("sparsegpt")
    assert method.in_loop and method.score is None
    assert not get_mask_method("magnitude").in_loop
