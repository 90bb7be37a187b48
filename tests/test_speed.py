"""Measured speed: the sparse weight format round-trips exactly, and off CUDA the speed-up is 1.0x with its reason."""

import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load, save

from snows_core.measure.speed import dense_state_dict, export_sizes, is_two_four, measure_speed, sparse_state_dict
from snows_core.runs.local import free_gpu, placed
from snows_core.runs.spec import RunSpec


def pruned_mlp() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    keep = torch.rand(8, 12) > 0.5  # 96 weights: 12 bitmask bytes
    with torch.no_grad():
        model[0].weight.mul_(keep)
    return model, {"0": keep}


def test_the_bitmask_packs_eight_weights_a_byte_most_significant_first():
    model = nn.Sequential(nn.Linear(9, 1, bias=False))
    keep = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 10.0) * keep)
    tensors, metadata = sparse_state_dict(model, {"0": keep})
    assert tensors.keys() == {"0.weight.values", "0.weight.bitmask"}
    assert tensors["0.weight.bitmask"].tolist() == [0b10000001, 0b10000000]
    assert tensors["0.weight.values"].tolist() == [1.0, 8.0, 9.0]
    assert metadata == {"sparse_weights": '{"0.weight": [1, 9]}'}


def test_the_sparse_format_round_trips_through_safetensors_exactly():
    model, masks = pruned_mlp()
    tensors, metadata = sparse_state_dict(model, masks)
    restored = dense_state_dict(load(save(tensors, metadata)), metadata)
    assert restored.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(restored[key], value), key


def test_export_sizes_count_kept_values_and_one_bit_per_weight():
    model, masks = pruned_mlp()
    tensors, _ = sparse_state_dict(model, masks)
    kept = int(masks["0"].sum())
    dense_data = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    sparse_data = sum(t.numel() * t.element_size() for t in tensors.values())
    assert sparse_data == dense_data - 96 * 4 + kept * 4 + 12  # 96 float32 weights -> kept values + 12 bytes
    dense, sparse = export_sizes(model, masks)
    assert 0 < dense - dense_data < 300 and 0 < sparse - sparse_data < 500  # the files' JSON headers


def test_on_cpu_the_pruned_model_runs_dense_and_the_speedup_is_one_with_the_reason():
    model, masks = pruned_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = measure_speed(model, masks, "cpu", torch.randn(4, 12), repeats=3)
    assert (report.device, report.kernel, report.speedup, report.dtype) == ("cpu", "dense", 1.0, "float32")
    assert report.reason == "CPU: no sparse kernel, the pruned model runs dense with zeros"
    assert report.dense_ms == report.pruned_ms > 0
    assert report.batch == 4 and report.sparse_layers == [] and report.max_rel_error is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_two_four_means_at_most_two_of_every_four_inputs_of_a_row():
    assert is_two_four(torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]], dtype=torch.bool))
    assert not is_two_four(torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool))
    assert not is_two_four(torch.ones(2, 6, dtype=torch.bool))  # rows not in groups of 4
    assert not is_two_four(torch.ones(2, 4, 1, 1, dtype=torch.bool))  # a conv's weight


def test_each_worker_gets_the_lowest_free_gpu_and_runs_auto_specs_there():
    assert free_gpu([], 0) is None
    assert free_gpu([0, 2], 4) == 1
    assert free_gpu([0, 1], 2) is None
    spec = RunSpec("mlp")
    assert placed(spec, 1).config.device == "cuda:1"
    assert placed(spec, 1).content_hash() != spec.content_hash() and placed(spec, None) is spec
    for device in ("cpu", "cuda:0"):
        explicit = RunSpec("mlp", config=spec.config.__class__(device=device))
        assert placed(explicit, 1) is explicit


@pytest.mark.cuda
def test_on_cuda_two_four_linears_run_through_the_sparse_kernel_with_the_dense_outputs():
    from snows_core.masks import nm_mask

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512)).eval()
    masks = {name: nm_mask(model.get_submodule(name).weight.abs(), 2, 4) for name in ("0", "2")}
    with torch.no_grad():
        for name, keep in masks.items():
            model.get_submodule(name).weight.mul_(keep)
    report = measure_speed(model, masks, "cuda", torch.randn(256, 512))
    assert report.kernel == "semi-structured 2:4" and report.sparse_layers == ["0", "2"]
    assert report.device == torch.cuda.get_device_name(0) and report.dtype == "float16"
    assert report.max_rel_error <= 1e-2 and report.speedup > 0


def test_measure_speed_is_stored_only_when_asked_and_only_for_pruning_runs():
    plain = RunSpec("mlp")
    timed = RunSpec("mlp", measure_speed=True)
    assert "measure_speed" not in plain.to_dict() and timed.to_dict()["measure_speed"] is True
    assert RunSpec.from_dict(timed.to_dict()) == timed and timed.content_hash() != plain.content_hash()
    with pytest.raises(ValueError, match="measure_speed needs kind 'prune'"):
        RunSpec("mlp", kind="sensitivity", measure_speed=True)
    with pytest.raises(ValueError, match="measure_speed must be true or false"):
        RunSpec("mlp", measure_speed="yes")


def test_the_speed_figures_say_one_x_on_cpu_without_a_sparse_kernel():
    model, masks = pruned_mlp()
    figures = measure_speed(model, masks, "cpu", torch.randn(4, 12), repeats=3).figures()
    assert figures["headline"] == "1.0x, CPU, no sparse kernel"
    assert figures["reason"] == "CPU: no sparse kernel, the pruned model runs dense with zeros"
    assert figures["latency"].endswith("(4 images, float32, median)")


@pytest.mark.slow
def test_prune_measure_speed_reports_and_prints_the_figures(tmp_path, capsys):
    from snows_core.cli import main

    flags = ["--model", "mlp", "--reconstruction", "none", "--n-calib", "32", "--eval-size", "100"]
    assert main(["prune", *flags, "--measure-speed", "--out", str(tmp_path)]) == 0
    speed = json.loads((tmp_path / "report.json").read_text())["speed"]
    assert (speed["device"], speed["kernel"], speed["speedup"], speed["batch"]) == ("cpu", "dense", 1.0, 64)
    pruned = 512 * 256 + 256 * 128  # the hidden layers (the first and the classifier stay dense), half kept
    saved = pruned * 4 - (pruned // 2 * 4 + pruned // 8)  # float32 weights -> kept values + a 1-bit mask
    assert abs(speed["dense_bytes"] - speed["sparse_bytes"] - saved) < 1000  # the files' headers differ
    assert "speed: 1.0x, CPU, no sparse kernel" in capsys.readouterr().out


def test_only_two_four_linears_are_offered_to_the_sparse_kernel_and_each_other_layer_says_why():
    from snows_core.measure.speed import _to_semi_structured

    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Flatten(), nn.Linear(8, 8), nn.Linear(8, 8)).eval()
    two_four = torch.tensor([1, 1, 0, 0], dtype=torch.bool).repeat(8, 2)  # (8, 8)
    masks = {"0": torch.ones(8, 4, 1, 1, dtype=torch.bool), "2": two_four, "3": ~torch.eye(8, dtype=torch.bool)}
    swapped, dense = _to_semi_structured(model, masks)
    assert dense["0"] == "Conv2d: PyTorch has no 2:4 kernel for it" and dense["3"] == "mask is not 2:4"
    assert swapped == [] and dense["2"]  # on CPU the kernel refuses the tensor; its words are kept
    assert isinstance(model[2].weight, nn.Parameter) and model[2].weight.layout == torch.strided


def test_a_run_whose_timing_fails_keeps_its_result_and_says_why(monkeypatch, tmp_path):
    import snows_core.measure.speed
    from snows_core import PruneConfig
    from snows_core.runs.pipeline import run_spec

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(snows_core.measure.speed, "measure_speed", out_of_memory)
    config = PruneConfig(reconstruction="none", n_calib=32)
    result, summary = run_spec(RunSpec("mlp", config=config, eval_size=50, measure_speed=True), lambda event: None)
    assert summary["speed"] == {"error": "speed not measured: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert result.masks and summary["top1_final"] is not None
