"""The door: every path into the store (CLI submit and sweep, `executor.submit`, `submit_all`) refuses a run
that cannot start here, with one line naming the field and exit code 2, and stores nothing."""

import pickle

import pytest
import torch

from snows_core import PruneConfig
from snows_core.cli import main
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
