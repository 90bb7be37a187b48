"""The door: every path into the store (CLI submit and sweep, `executor.submit`, `submit_all`) refuses a run
that cannot start here, with one line naming the field and exit code 2, and stores nothing."""

import pickle

import numpy as np
import pytest
import torch

from snows_core import PruneConfig
from snows_core.cli import main
from snows_core.masks.method import _MASK_METHODS, MaskMethod
from snows_core.models import create_model
from snows_core.runs import RunSpec, RunStore
from snows_core.runs.executor import submit
from snows_core.runs.process import exclusive
from snows_core.runs.sweep import submit_all

QUICK = ["--model", "mlp", "--sparsity", "0.5", "--k", "1", "--n-calib", "64"]
HUGE = ["--model", "resnet20", "--n-calib", "60000", "--batch-size", "60000"]  # a forecast peak of ~170 GiB


class Payload:
    def __reduce__(self):
        return (print, ("this code ran while loading a checkpoint",))


def checkpoints(folder) -> dict[str, str]:
    """Bad checkpoints for the mlp: empty, cut short, a pickle that runs code, another architecture's weights."""
    state = create_model("mlp").state_dict()
    torch.save(state, folder / "good.th")
    files = {"empty": b"", "truncated": (folder / "good.th").read_bytes()[:200], "code": pickle.dumps(Payload())}
    files |= {"hello": b"hello world", "text": b"a text file\nwith two lines\n"}  # no pickle at all
    for name, data in files.items():
        (folder / f"{name}.th").write_bytes(data)
    torch.save({k: v[..., :1] if v.dim() > 1 else v for k, v in state.items()}, folder / "shape.th")
    return {name: str(folder / f"{name}.th") for name in [*files, "shape"]}


@pytest.mark.parametrize(
    "command,flags,message",
    [
        ("submit", ["--device", "cuda"], "CUDA is not available"),
        ("submit", ["--model", "timm:no_such_net", "--dataset", "fashion-mnist"], "timm"),
        ("submit", ["--model", "torchvision:no_such_net", "--dataset", "fashion-mnist"], "torchvision"),
        ("submit", ["--seed", str(10**30)], "seed must be an integer"),
        ("sweep", ["--n-calib", "64,1000000"], "n_calib is 1000000"),
        ("sweep", ["--seed", f"0,{2**64}"], "seed must be an integer"),
        ("submit", ["--checkpoint", "{empty}"], "cannot read checkpoint"),
        ("submit", ["--checkpoint", "{truncated}"], "cannot read checkpoint"),
        ("submit", ["--checkpoint", "{code}"], "cannot read checkpoint"),
        ("submit", ["--checkpoint", "{hello}"], "not a torch checkpoint or safetensors file"),
        ("submit", ["--checkpoint", "{text}"], "not a torch checkpoint or safetensors file"),
        ("prune", ["--checkpoint", "{text}"], "not a torch checkpoint or safetensors file"),
        ("submit", ["--checkpoint", "{shape}"], "shape"),
        ("submit", ["--checkpoint", "{missing}"], "does not exist"),
        ("submit", HUGE, "memory: the forecast peak is"),
        ("sweep", ["--model", "resnet20", "--n-calib", "64,60000", "--batch-size", "60000"], "pass --force"),
    ],
)
def test_a_run_that_cannot_start_here_is_refused_at_the_door(home, tmp_path, capsys, command, flags, message):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    files = {**checkpoints(tmp_path), "missing": str(tmp_path / "nothing.th")}
    assert main([command, *QUICK, *[flag.format(**files) for flag in flags]]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1, captured.err
    assert "this code ran" not in captured.out + captured.err
    assert RunStore(home).list() == []


def test_an_empty_value_list_is_a_usage_error_not_a_traceback(home, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", *QUICK[:-4], "--k", ","])
    assert exit_.value.code == 2 and "holds no value" in capsys.readouterr().err


def test_the_python_api_checks_inputs_too(home):
    store = RunStore(home)
    spec = RunSpec(model="mlp", config=PruneConfig(sparsity=0.5, n_calib=10**6))
    with pytest.raises(ValueError, match="n_calib is 1000000"):
        submit(store, spec)
    fine = RunSpec(model="mlp", config=PruneConfig(sparsity=0.5, n_calib=64))
    with pytest.raises(ValueError, match="n_calib is 1000000"):
        submit_all(store, [fine, spec])
    assert store.list() == []


def test_force_queues_a_run_the_memory_forecast_refuses(home, capsys):
    with exclusive(home / "dispatcher.lock") as held:  # stands for a busy dispatcher: nothing starts the run
        assert held
        assert main(["submit", *QUICK, *HUGE]) == 2 and RunStore(home).list() == []
        assert "--force" in capsys.readouterr().err
        assert main(["submit", *QUICK, *HUGE, "--force"]) == 0
        (run,) = RunStore(home).list()
        assert run["status"] == "queued" and run["spec"]["config"]["n_calib"] == 60000
        RunStore(home).request_cancel(run["id"])


def test_the_python_api_checks_memory_unless_forced(home):
    store = RunStore(home)
    spec = RunSpec(model="resnet20", config=PruneConfig(n_calib=60000, batch_size=60000))
    with pytest.raises(ValueError, match="memory: the forecast peak"):
        submit(store, spec)
    with pytest.raises(ValueError, match="memory: the forecast peak"):
        submit_all(store, [RunSpec(model="mlp", config=PruneConfig(n_calib=64)), spec])
    assert store.list() == []
    with exclusive(home / "dispatcher.lock"):
        run = submit(store, spec, force=True)
        assert store.get(run)["status"] == "queued"
        store.request_cancel(run)


def npz(folder, name: str, **splits) -> str:
    """An .npz of 1-channel 28x28 images (8 train, 4 test) with labels 0..3, with `splits` replacing members."""
    members = {
        "train_x": np.zeros((8, 1, 28, 28), np.uint8),
        "train_y": np.arange(8) % 4,
        "test_x": np.zeros((4, 1, 28, 28), np.uint8),
        "test_y": np.arange(4),
    }
    path = folder / f"{name}.npz"
    np.savez(path, **(members | splits))
    return str(path)


@pytest.mark.parametrize(
    "members,message",
    [
        ({}, None),
        ({"test_x": np.zeros((0, 1, 28, 28), "uint8"), "test_y": []}, "test split holds no image"),
        ({"train_x": np.zeros((8, 3, 28, 28), "uint8")}, "has 3 channel(s); the model takes 1"),
        ({"train_y": [0, 1, 2]}, "train_y holds (3,) labels for 8 images"),
        ({"test_y": [0, 1, 2, 255]}, "labels run from 0 to 255; classes are 0 to 9"),
        ({"test_y": [0.0, 1.0, float("nan"), 3.0]}, "test_y must hold integer class labels"),
        (
            {"train_x": np.zeros((8, 1, 32, 32), np.uint8), "test_x": np.zeros((4, 1, 32, 32), np.uint8)},
            "images are (1, 32, 32) (C, H, W); mlp takes (1, 28, 28) and fails on them",
        ),
    ],
)
def test_a_dataset_file_a_run_could_only_fail_on_is_refused_at_the_door(home, tmp_path, capsys, members, message):
    flags = ["submit", "--model", "mlp", "--n-calib", "8", "--dataset", "cifar10"]
    with exclusive(home / "dispatcher.lock"):  # stands for a busy dispatcher: nothing starts an accepted run
        code = main([*flags, "--data-root", npz(tmp_path, "data", **members)])
    err = capsys.readouterr().err
    assert (code, message is None or message in err) == ((0, True) if message is None else (2, True)), err
    assert len(RunStore(home).list()) == (message is None)


def test_a_mask_a_queued_run_cannot_use_is_refused_at_the_door(home, capsys):
    assert main(["submit", *QUICK, "--mask", "custom"]) == 2
    assert "custom_masks" in capsys.readouterr().err and RunStore(home).list() == []


def test_an_in_loop_mask_that_refuses_a_layer_is_refused_at_the_door(home, capsys, monkeypatch):
    narrow = lambda module: "too wide" if module.weight[0].numel() > 300 else None  # noqa: E731
    method = MaskMethod("narrow", None, True, choose=lambda problem: None, unsupported=narrow)
    monkeypatch.setitem(_MASK_METHODS.entries, "narrow", method)
    assert main(["submit", *QUICK, "--mask", "narrow"]) == 2  # the mlp's first layer has 784 inputs
    err = capsys.readouterr().err
    assert "mask 'narrow' cannot handle layer" in err and "too wide" in err and err.count("\n") == 1
    assert RunStore(home).list() == []


@pytest.mark.slow
def test_obc_takes_a_model_with_layers_wider_than_one_inverse(home, shared, capsys):
    data = ["--dataset", "cifar10", "--data-root", str(shared / "data" / "cifar10-subset.npz"), "--n-calib", "64"]
    with exclusive(home / "dispatcher.lock"):  # stands for a busy dispatcher: nothing starts an accepted run
        code = main(["submit", "--model", "torchvision:resnet18", *data, "--mask", "obc"])  # 3x3x512: 4608 columns
    assert code == 0, capsys.readouterr().err
    assert len(RunStore(home).list()) == 1


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--stages", "1000000000000"], "stages must be at most 100"),
        (["--cg-iters", str(10**9)], "cg_iters must be at most 100,000"),
        (["--k", str(10**6)], "k must be at most 1,000"),
    ],
)
def test_a_count_a_typo_blew_up_is_refused(home, capsys, flags, message):
    assert main(["submit", *QUICK[:4], "--n-calib", "64", *flags]) == 2
    assert message in capsys.readouterr().err and RunStore(home).list() == []


def test_a_sweep_of_a_million_runs_is_refused_before_any_is_built(home, capsys):
    hundred = ",".join(map(str, range(100)))
    flags = ["--seed", hundred, "--k", hundred, "--cg-iters", ",".join(map(str, range(1, 101)))]
    assert main(["sweep", *QUICK[:4], "--n-calib", "64", *flags]) == 2
    err = capsys.readouterr().err
    assert "the sweep has 1,000,000 runs" in err and "at most 1,000" in err and RunStore(home).list() == []
