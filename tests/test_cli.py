"""The prune command end to end on ResNet-20 and real CIFAR-10 images."""

import json

import pytest
from safetensors.torch import load_file

from snows_core import PruneConfig
from snows_core.cli import main


@pytest.mark.slow
def test_prune_writes_weights_masks_and_report(shared, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "prune",
            "--model",
            "resnet20_cifar10",
            "--checkpoint",
            str(shared / "models" / "resnet20-cifar10.th"),
            "--dataset",
            "cifar10",
            "--data-root",
            str(shared / "data" / "cifar10-subset.npz"),
            "--sparsity",
            "0.7",
            "--k",
            "1",
            "--n-calib",
            "64",
            "--eval-size",
            "200",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "layer1.0.conv1" in printed and "top-1: dense" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["sparsity"] == 0.7 and len(report["layers"]) == 18
    assert 0.0 <= report["top1_final"] <= 1.0 and 0.0 <= report["top1_mask_only"] <= 1.0
    masks, weights = load_file(str(out / "masks.safetensors")), load_file(str(out / "model.safetensors"))
    assert len(masks) == 18
    assert not weights["layer2.0.conv1.weight"][~masks["layer2.0.conv1"]].any()


def test_bad_flags_exit_nonzero_with_the_field_named(tmp_path, capsys):
    assert main(["prune", "--sparsity", "1.5", "--out", str(tmp_path)]) == 2
    assert "sparsity" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_prune_takes_the_frontier_flags(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--model", "mlp", "--mask", "sparsegpt", "--stages", "2", "--allocation", "lamp", "--sparsity", "0.8"]
    code = main(["prune", *flags, "--k", "1", "--n-calib", "32", "--eval-size", "100", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["stages"] == 2 and report["config"]["mask"] == "sparsegpt"
    assert [r["stage"] for r in report["passes"]] == [1, 1, 2, 2] and len(report["layers"]) == 2
    assert report["allocation"]["allocation"] == "lamp" and report["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert main(["prune", "--stages", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "stages must be an integer >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_and_a_queued_run_of_the_same_spec_give_the_same_result(tmp_path, capsys):
    from snows_core.runs import RunSpec
    from snows_core.runs.pipeline import execute

    flags = ["--model", "mlp", "--sparsity", "0.6", "--k", "1", "--n-calib", "64", "--eval-size", "300"]
    assert main(["prune", *flags, "--out", str(tmp_path / "cli")]) == 0
    cli_report = json.loads((tmp_path / "cli" / "report.json").read_text())
    spec = RunSpec(model="mlp", config=PruneConfig(sparsity=0.6, k=1, n_calib=64), eval_size=300)
    queued = execute(spec, tmp_path / "queued", lambda event: None)  # what a worker or a Dask task calls
    assert cli_report["spec"] == spec.to_dict()
    assert set(queued) <= set(cli_report)
    for key in ("top1_dense", "top1_mask_only", "top1_final", "calib_ids", "eval_images", "sparsity"):
        assert cli_report[key] == queued[key], key


def test_an_out_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    taken = tmp_path / "passwd"
    taken.write_text("root:x:0:0")
    assert main(["prune", "--model", "mlp", "--n-calib", "32", "--eval-size", "16", "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and err.count("\n") == 1 and taken.read_text() == "root:x:0:0"
