"""CIFAR ResNets and safe checkpoint loading."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from snows_core.engine.graph import default_layers, trace
from snows_core.io.data import load_npz
from snows_core.measure.metrics import top1
from snows_core.models import create_model, list_models, read_state_dict


@pytest.mark.parametrize("name,convs", [("resnet20_cifar10", 19), ("resnet32_cifar10", 31), ("resnet56_cifar10", 55)])
def test_cifar_resnet_depths(name, convs):
    model = create_model(name, pretrained=False)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert name in list_models()


def test_akamaster_checkpoint_loads_and_scores_as_published(shared):
    model = create_model("resnet20_cifar10", checkpoint=shared / "models" / "resnet20-cifar10.th")
    test_x, test_y = load_npz(shared / "data" / "cifar10-subset.npz", "test")
    assert top1(model, test_x, test_y) == pytest.approx(0.9164, abs=5e-4)


def test_safetensors_round_trip(tmp_path):
    model = create_model("resnet20_cifar10", pretrained=False)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = create_model("resnet20_cifar10", checkpoint=tmp_path / "w.safetensors")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_mismatched_checkpoint_names_the_first_bad_key(tmp_path):
    state = create_model("resnet20_cifar10", pretrained=False).state_dict()
    state["linear.weight"] = torch.zeros(7, 64)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"'linear.weight' has shape \(7, 64\), expected \(10, 64\)"):
        create_model("resnet20_cifar10", checkpoint=tmp_path / "bad.pt")
    del state["linear.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="lacks 'linear.weight'"):
        create_model("resnet20_cifar10", checkpoint=tmp_path / "missing.pt")


class Exploit:
    def __reduce__(self):
        return (print, ("this code must never run",))


def test_pickles_with_code_and_corrupt_files_are_refused(tmp_path, capsys):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "evil.pt")
    assert "never run" not in capsys.readouterr().out
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pt")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_traces_and_has_layers_to_prune(name):
    model = create_model(name, pretrained=False)
    assert default_layers(trace(model))
