"""Allocations against hand-computed examples: LAMP scores, global counts, the sensitivity knapsack."""

import pytest
import torch

from snows_core.masks import list_allocations
from snows_core.masks.allocation import (
    AllocationInputs,
    SensitivityScan,
    get_allocation,
    global_counts,
    lamp_scores,
    sensitivity_counts,
)


def test_allocations_are_listed_simplest_first():
    assert list_allocations() == ["uniform", "global", "lamp", "sensitivity"]
    with pytest.raises(ValueError, match="allocation must be one of"):
        get_allocation("nosuch")


def test_lamp_scores_follow_the_formula():
    # sorted |w|: 1, 2, 3, 4 -> squares 1, 4, 9, 16; suffix sums 30, 29, 25, 16
    scores = torch.tensor([3.0, -1.0, 4.0, 2.0]).abs()
    expected = torch.tensor([9 / 25, 1 / 30, 16 / 16, 4 / 29], dtype=torch.float64)
    torch.testing.assert_close(lamp_scores(scores), expected)
    # a 2-D tensor keeps its shape; the largest entry of every layer scores 1
    other = lamp_scores(torch.tensor([[0.5, 8.0], [2.0, 1.0]]))
    assert other.shape == (2, 2) and other[0, 1] == 1.0


def test_lamp_allocation_ranks_normalised_scores_across_layers():
    # layer a is small in absolute terms but LAMP normalises per layer: both keep their two largest
    scores = {"a": torch.arange(1.0, 9.0) / 10, "b": torch.arange(1.0, 9.0) * 10}
    counts = get_allocation("lamp").counts(AllocationInputs(scores, 0.75, 0.9))
    assert counts == {"a": 2, "b": 2}
    assert global_counts(scores, 0.75, 0.9) == {"a": 1, "b": 3}  # magnitude: a only keeps what the cap forces
    uniform = get_allocation("uniform").counts(AllocationInputs(scores, 0.5, 0.9))
    assert uniform == {"a": 4, "b": 4}


def scan() -> SensitivityScan:
    # layer "fragile" loses a lot when pruned, "robust" hardly anything; both have 100 weights
    return SensitivityScan(
        sparsities=[0.5, 0.8, 0.9],
        losses={"fragile": [1.0, 4.0, 9.0], "robust": [0.01, 0.02, 0.05]},
        numel={"fragile": 100, "robust": 100},
    )


def test_sensitivity_meets_the_target_exactly_and_prunes_the_robust_layer_first():
    counts = sensitivity_counts(scan(), 0.7, cap=0.9)
    assert sum(counts.values()) == 60  # 70% of 200 weights pruned
    assert counts["robust"] == 10  # at its cap
    assert counts["fragile"] == 50


def test_sensitivity_never_goes_beyond_the_cap():
    counts = sensitivity_counts(scan(), 0.85, cap=0.88)
    assert sum(counts.values()) == 30
    assert all(count >= 12 for count in counts.values())  # 1 - 0.88 of 100, rounded


def test_sensitivity_interpolates_between_scanned_sparsities():
    # with the budget between two scan points, weights go where the loss falls fastest per weight
    table = SensitivityScan([0.5, 0.9], {"a": [1.0, 5.0], "b": [1.0, 2.0]}, {"a": 100, "b": 100})
    counts = sensitivity_counts(table, 0.8, cap=0.9)
    assert sum(counts.values()) == 40
    assert counts == {"a": 30, "b": 10}  # a's segment 0.9 -> 0.5 saves 4 per 40 weights, b's 1 per 40


def test_sensitivity_allocation_runs_the_scan_on_demand():
    calls = []

    def lazy() -> SensitivityScan:
        calls.append(1)
        return scan()

    scores = {"fragile": torch.ones(100), "robust": torch.ones(100)}
    counts = get_allocation("sensitivity").counts(AllocationInputs(scores, 0.7, 0.9, lazy))
    assert calls == [1] and counts == {"fragile": 50, "robust": 10}
    assert get_allocation("sensitivity").needs_scan and not get_allocation("lamp").needs_scan
