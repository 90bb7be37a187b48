"""What each mask kept: overlap, kept patterns and per-layer sparsity from stored masks, on hand-made masks with
exact answers; the Compare table's formatting; the standalone HTML report."""

import numpy as np
import pandas as pd
import pytest
from store_fixtures import LAYERS, add_masks, populate

from snows_core.dashboard import charts
from snows_core.dashboard.kept import (
    compare_masks,
    comparison_table,
    kept_pattern_frame,
    layer_pattern,
    layer_sparsity_frame,
    load_masks,
    overlap_frame,
)
from snows_core.runs import RunStore

A = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)  # a Linear's mask, (out 2, in 4): 4 kept
B = np.array([[1, 0, 1, 0], [1, 0, 1, 1]], dtype=bool)  # 5 kept, 3 of them shared with A


def test_overlap_counts_shared_weights_and_jaccard_per_layer_and_pair():
    frame = overlap_frame({"a": {"fc": A, "same": A}, "b": {"fc": B, "same": A}, "c": {"fc": ~A, "same": A}})
    ab = frame[(frame["layer"] == "fc") & (frame["pair"] == "a vs b")].iloc[0]
    assert (ab["kept_a"], ab["kept_b"], ab["shared"]) == (4, 5, 3)
    assert (ab["shared_of_a"], ab["shared_of_b"], ab["jaccard"]) == (0.75, 0.6, 0.5)  # 3 / (4 + 5 - 3)
    assert frame[(frame["layer"] == "fc") & (frame["pair"] == "a vs c")]["jaccard"].item() == 0.0  # disjoint
    assert (frame[frame["layer"] == "same"]["jaccard"] == 1.0).all()
    assert list(frame["layer"].unique()) == ["fc", "same"] and len(frame) == 6  # 2 layers x 3 pairs


def test_a_layer_pruned_differently_shaped_or_only_by_one_run_is_left_out():
    frame = overlap_frame({"a": {"fc": A, "x": A}, "b": {"fc": B, "x": A[:, :2]}, "c": {"fc": B}})
    assert list(frame["layer"].unique()) == ["fc"]


def test_kept_pattern_sums_kernel_positions_and_marks_what_one_run_alone_kept():
    conv_a = np.zeros((2, 2, 3, 3), dtype=bool)
    conv_b = np.zeros((2, 2, 3, 3), dtype=bool)
    conv_a[0, 1, :2] = True  # 6 weights of cell (0, 1)
    conv_b[0, 1, 0] = True  # 3 of them
    conv_b[1, 0, 1, 1] = True  # one weight nobody else kept
    frame = kept_pattern_frame({"a": {"c": conv_a}, "b": {"c": conv_b}}, "c").set_index(["run", "out", "in"])
    assert frame.loc[("a", 0, 1), "kept"] == 6 and frame.loc[("a", 0, 1), "only"] == 3
    assert frame.loc[("b", 0, 1), "kept"] == 3 and frame.loc[("b", 0, 1), "only"] == 0
    assert frame.loc[("b", 1, 0), "kept"] == 1 and frame.loc[("b", 1, 0), "only"] == 1
    assert frame["kept"].sum() == conv_a.sum() + conv_b.sum() and (frame["positions"] == 9).all()


def test_wide_layers_are_binned_into_at_most_max_side_cells_a_side():
    mask = np.zeros((130, 10), dtype=bool)
    mask[129, 9] = True
    frame = kept_pattern_frame({"a": {"fc": mask}, "b": {"fc": ~mask}}, "fc", max_side=64)
    a = frame[frame["run"] == "a"]
    assert a["out"].nunique() == 44 and a["in"].nunique() == 10  # 3 channels a cell: ceil(130 / 3)
    assert a.loc[a["kept"] > 0, ["out", "in", "kept"]].values.tolist() == [[129, 9, 1]]
    assert (frame["positions"] == 3).all() and frame.groupby("run")["kept"].sum().to_dict() == {"a": 1, "b": 1299}


def test_layer_sparsity_is_the_fraction_each_mask_zeroes():
    frame = layer_sparsity_frame({"a": {"fc": A}, "b": {"fc": B}}).set_index("run")
    assert frame.loc["a", "sparsity"] == 0.5 and frame.loc["b", "sparsity"] == 0.375
    assert (frame["weights"] == 8).all()


def test_compare_masks_reads_what_the_runs_stored(home):
    ids = populate(home)
    store = RunStore(home)
    masks = {seed: add_masks(home, ids[role], seed) for seed, role in enumerate(("done", "done_wanda"))}
    assert all(np.array_equal(load_masks(store, ids["done"])[k], v) for k, v in masks[0].items())
    overlap, sparsity, common = compare_masks(store, {"m": ids["done"], "w": ids["done_wanda"], "k0": ids["done_k0"]})
    assert common == LAYERS and set(overlap["pair"]) == {"m vs w"}  # done_k0 stored no masks: left out
    shared = [int((masks[0][layer] & masks[1][layer]).sum()) for layer in LAYERS]
    assert overlap["shared"].tolist() == shared and (sparsity["sparsity"] == 0.5).all()
    pattern = layer_pattern(store, {"m": ids["done"], "w": ids["done_wanda"]}, LAYERS[1])
    assert pattern.groupby("run")["kept"].sum().to_dict() == {"m": 144, "w": 144}
    assert compare_masks(store, {"k0": ids["done_k0"]})[2] == []


def test_the_comparison_table_has_readable_names_percentages_and_whole_seconds():
    runs = pd.DataFrame(
        {
            "id": ["r1", "r2"],
            "model": ["resnet20", "resnet20"],
            "label": ["magnitude + snows K=3", "wanda + snows K=3"],
            "sparsity": [0.9, 0.9],
            "top1_dense": [0.9164, 0.9164],
            "top1_mask_only": [0.1, 0.19862],
            "top1_final": [0.8456, 0.8512345],
            "gain": [0.7456, 0.65261],
            "seconds": [80.4, 91.6],
        }
    )
    table = comparison_table(runs)
    assert list(table.columns) == [
        "Run",
        "Model",
        "Setting",
        "Sparsity (%)",
        "Dense top-1 (%)",
        "Mask only (%)",
        "Final top-1 (%)",
        "Gain (points)",
        "Final vs first (points)",
        "Seconds",
        "Seconds vs first",
    ]
    second = table.iloc[1]
    assert (second["Sparsity (%)"], second["Mask only (%)"], second["Final top-1 (%)"]) == (90.0, 19.86, 85.12)
    assert second["Final vs first (points)"] == 0.56 and (second["Seconds"], second["Seconds vs first"]) == (92, 11)


def test_the_report_is_one_standalone_html_file_with_the_table_and_interactive_charts():
    table = pd.DataFrame({"Run": ["r1 <b>"], "Final top-1 (%)": [85.12]})
    figures = [
        charts.overlap_chart(overlap_frame({"a": {"fc": A}, "b": {"fc": B}})),
        charts.layer_sparsity_chart(layer_sparsity_frame({"a": {"fc": A}})),
    ]
    html = charts.report_html("Runs <compared>", table, figures, notes="two runs")
    assert html.startswith("<!DOCTYPE html>") and "<title>Runs &lt;compared&gt;</title>" in html
    assert "r1 &lt;b&gt;" in html and "85.12" in html and "two runs" in html
    assert html.count("Plotly.newPlot") == 2  # both charts, interactive
    assert html.count("plotly.js v") == 1 and "<script src=" not in html  # the library inline once: opens offline


@pytest.mark.parametrize("side", [1, 2, 3])
def test_the_kept_pattern_chart_draws_a_kept_and_an_alone_panel_per_run(side):
    masks = {f"r{i}": {"fc": np.roll(A, i, axis=1)} for i in range(side)}
    fig = charts.kept_pattern_chart(kept_pattern_frame(masks, "fc"), "fc")
    fields = [trace.hovertemplate.split("<extra>")[0].split()[-1] for trace in fig.data]
    assert fields == ["kept", "only"] * side and [trace.xaxis for trace in fig.data][-1] == f"x{2 * side}"
