"""Masks against hand-computed examples (True = kept)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.engine.problem import LayerProblem
from snows_core.masks import (
    get_mask_method,
    input_column_sq_norms,
    nm_mask,
    nm_skip_reason,
    top_count_mask,
    unstructured_mask,
)
from snows_core.masks.allocation import global_counts


def global_masks(scores: dict, sparsity: float, cap: float) -> dict:
    """One ranking over all layers (the global allocation), then each layer's top count."""
    counts = global_counts(scores, sparsity, cap)
    return {name: top_count_mask(scores[name], counts[name]) for name in scores}


def problem_of(weight: torch.Tensor, **fields) -> LayerProblem:
    """A layer problem for a Linear holding `weight`, with the scorer's other fields."""
    layer = nn.Linear(*reversed(weight.shape), bias=False) if weight.dim() == 2 else nn.Linear(weight.numel(), 1)
    layer.weight.data = weight.clone()
    return LayerProblem("fc", layer, weight.clone(), **fields)


def test_unstructured_keeps_largest_scores():
    scores = torch.tensor([[1.0, -5.0, 3.0, 0.5], [2.0, 0.1, -4.0, 6.0]]).abs()
    expected = torch.tensor([[False, True, True, False], [False, False, True, True]])
    assert torch.equal(unstructured_mask(scores, 0.5), expected)


def test_unstructured_rounds_kept_count():
    assert int(unstructured_mask(torch.arange(10.0), 0.75).sum()) == 2  # round(2.5) = 2
    assert int(unstructured_mask(torch.arange(10.0), 0.0).sum()) == 10


def test_two_four_on_a_row():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0, -5.0, 6.0, 7.0, -8.0]])
    kept = nm_mask(weight.abs(), 2, 4)
    assert torch.equal(weight * kept, torch.tensor([[0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 7.0, -8.0]]))


def test_nm_groups_run_along_input_channels_of_a_conv():
    # weight (out=1, in=4, kh=1, kw=2): groups are the 4 input channels at each kernel position
    scores = torch.tensor([[[[1.0, 9.0]], [[2.0, 8.0]], [[3.0, 7.0]], [[4.0, 6.0]]]])
    kept = nm_mask(scores, 2, 4)
    assert kept.shape == scores.shape
    assert torch.equal(kept[0, :, 0, 0], torch.tensor([False, False, True, True]))
    assert torch.equal(kept[0, :, 0, 1], torch.tensor([True, True, False, False]))


def test_nm_refuses_depthwise_and_says_why():
    assert nm_skip_reason(torch.Size([16, 1, 3, 3]), 4) == "input dimension 1 is not a multiple of M=4"
    assert nm_skip_reason(torch.Size([16, 8, 3, 3]), 4) is None
    with pytest.raises(ValueError, match="not a multiple"):
        nm_mask(torch.ones(4, 6), 2, 4)


def test_global_ranking_with_a_cap():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    # uncapped, 50% keeps all of b; a cap of 0.75 forces one weight of a to stay
    masks = global_masks(scores, 0.5, cap=0.75)
    assert torch.equal(masks["a"], torch.tensor([False, False, False, True]))
    assert torch.equal(masks["b"], torch.tensor([False, True, True, True]))
    # no layer is ever pruned beyond the cap: 0.999 of 4 weights still keeps one of a's (rounded up)
    loose = global_masks(scores, 0.5, cap=0.999)
    assert torch.equal(loose["a"], torch.tensor([False, False, False, True]))
    assert torch.equal(loose["b"], torch.tensor([False, True, True, True]))


def test_global_keeps_exact_budget_with_ties():
    scores = {"a": torch.ones(6), "b": torch.ones(4)}
    masks = global_masks(scores, 0.5, cap=0.9)
    assert int(masks["a"].sum() + masks["b"].sum()) == 5


def test_wanda_and_magnitude_differ_when_inputs_differ():
    weight = torch.tensor([[1.0, 2.0]])
    column_sq_norms = torch.tensor([[9.0, 1.0]])  # input 0 is 3x louder than input 1
    inputs = problem_of(weight, column_sq_norms=column_sq_norms)
    magnitude = unstructured_mask(get_mask_method("magnitude").score(inputs), 0.5)
    wanda = unstructured_mask(get_mask_method("wanda").score(inputs), 0.5)
    assert torch.equal(magnitude, torch.tensor([[False, True]]))
    assert torch.equal(wanda, torch.tensor([[True, False]]))  # 1*3 > 2*1


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 4)])
def test_conv_column_norms_match_im2col(stride, padding, dilation, groups):
    conv = nn.Conv2d(8, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = torch.randn(3, 8, 9, 9)
    cols = F.unfold(x, 3, dilation=dilation, padding=padding, stride=stride)  # (N, C*9, L)
    per_column = cols.pow(2).sum(dim=(0, 2)).view(8, 3, 3)  # (C, kh, kw)
    expected = torch.stack(
        [per_column[(o // (8 // groups)) * (8 // groups) + torch.arange(8 // groups)] for o in range(8)]
    )
    torch.testing.assert_close(input_column_sq_norms(conv, x), expected)


def test_linear_column_norms():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    torch.testing.assert_close(input_column_sq_norms(nn.Linear(2, 3), x), torch.tensor([[10.0, 4.0]] * 3))


def test_random_mask_is_seeded():
    inputs = lambda seed: problem_of(torch.ones(50), generator=torch.Generator().manual_seed(seed))  # noqa: E731
    score = get_mask_method("random").score
    assert torch.equal(score(inputs(1)), score(inputs(1)))
    assert not torch.equal(score(inputs(1)), score(inputs(2)))


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="'magnitude'"):
        get_mask_method("nope")
