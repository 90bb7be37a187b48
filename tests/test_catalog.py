"""The catalog snapshot (what the door knows without torch) and the light readers behind the door: idx and
npz headers, safetensors headers, the shape rule, the memory rule."""

import gzip
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from snows_core import PruneConfig, catalog
from snows_core.io.catalog import Footprint
from snows_core.io.checkpoint import _pickled_shapes, check_shapes, state_shapes
from snows_core.io.datafiles import idx_count, npz_split_shape, read_idx, split_size
from snows_core.masks.method import _MASK_METHODS, MaskMethod
from snows_core.models import create_model
from snows_core.runs.door import MemoryFit, device_type, peak_bytes


def test_the_snapshot_is_what_the_registries_say_now():
    fresh = catalog.dumps(catalog.build_snapshot())
    assert fresh == catalog.SNAPSHOT.read_text(), "stale: run `python -m snows_core.io.catalog`"


def test_the_snapshot_holds_each_zoo_models_shapes_and_footprint():
    mlp = catalog.entry("model", "mlp")
    assert mlp["state"]["1.weight"] == [512, 784] and mlp["weights"] == "mlp.safetensors"
    assert catalog.footprint("mlp") == Footprint(
        activation_bytes_per_image=4 * (784 + 2 * 512 + 2 * 256 + 2 * 128 + 10),  # flatten, 3 x (linear, relu), head
        largest_activation_per_image=4 * 784,
        param_bytes=4 * (784 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10),
        layers=2,
    )
    assert catalog.default_dataset("resnet20_cifar10") == "cifar10"
    assert catalog.default_dataset("timm:resnet18") == "imagefolder"


def test_a_plug_in_registered_here_is_known_and_an_unknown_name_lists_the_known_ones(monkeypatch):
    monkeypatch.setitem(
        _MASK_METHODS.entries, "mine", MaskMethod("mine", lambda inputs: inputs.weight, user_supplied=True)
    )
    assert "mine" in catalog.names("mask")
    assert catalog.entry("mask", "mine") == {"user_supplied": True, "refuses_layers": False}
    with pytest.raises(ValueError, match="stages must be 1 with mask 'mine'"):
        PruneConfig(mask="mine", stages=2)
    with pytest.raises(ValueError, match=r"^mask must be one of 'custom', .*; got 'nosuch'$"):
        catalog.entry("mask", "nosuch")


def write_idx(path, array: np.ndarray, cut: int | None = None) -> None:
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data[:cut]))


def test_idx_headers_give_the_count_and_a_bad_header_is_named(tmp_path):
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    write_idx(tmp_path / "x.gz", images)
    assert idx_count(tmp_path / "x.gz") == 5
    assert (read_idx(tmp_path / "x.gz") == images).all()
    write_idx(tmp_path / "short.gz", images, cut=9)
    with pytest.raises(ValueError, match="cut short in its header"):
        idx_count(tmp_path / "short.gz")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(ValueError, match="not an idx file"):
        idx_count(tmp_path / "text.gz")


def test_fashion_mnist_files_are_counted_from_their_headers(tmp_path):
    for prefix, n in (("train", 7), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))
    assert split_size("fashion-mnist", "train", tmp_path) == 7 and split_size("fashion-mnist", "test", tmp_path) == 3
    assert split_size("fashion-mnist", "train", tmp_path / "absent") is None  # loading says what to install
    assert split_size("imagefolder", "train", tmp_path) is None  # only a listing can tell


def test_npz_members_are_checked_from_their_headers(tmp_path):
    np.savez(tmp_path / "d.npz", train_x=np.zeros((4, 3, 2, 2), np.uint8), train_y=np.zeros(4), test_x=np.zeros(1))
    assert npz_split_shape(tmp_path / "d.npz", "train") == (4, 3, 2, 2)
    assert split_size("cifar10", "train", tmp_path / "d.npz") == 4
    with pytest.raises(ValueError, match=r"lacks \['test_y'\]"):
        npz_split_shape(tmp_path / "d.npz", "test")
    np.savez(tmp_path / "f.npz", train_x=np.zeros((4, 3, 2, 2), np.float32), train_y=np.zeros(4))
    with pytest.raises(ValueError, match="must be uint8"):
        npz_split_shape(tmp_path / "f.npz", "train")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not an .npz file"):
        npz_split_shape(tmp_path / "junk.npz", "train")


def test_a_safetensors_header_gives_the_shapes_and_the_rule_names_the_first_bad_key(tmp_path):
    save_file(
        {"module.a": torch.zeros(2, 3), "bn.num_batches_tracked": torch.zeros((), dtype=torch.long)},
        tmp_path / "w.safetensors",
    )
    found = state_shapes(tmp_path / "w.safetensors")
    assert found == {"a": (2, 3), "bn.num_batches_tracked": ()}
    check_shapes("w", found, {"a": [2, 3], "bn.num_batches_tracked": [], "c.num_batches_tracked": []}, "Net")
    with pytest.raises(ValueError, match=r"^checkpoint w lacks 'b' \(Net needs it\)$"):
        check_shapes("w", found, {"a": [2, 3], "b": [1]}, "Net")
    with pytest.raises(ValueError, match=r"^checkpoint w: 'a' has shape \(2, 3\), expected \(3, 2\)$"):
        check_shapes("w", found, {"a": [3, 2], "bn.num_batches_tracked": []}, "Net")
    with pytest.raises(ValueError, match=r"^checkpoint w has unexpected key 'bn.num_batches_tracked' for Net$"):
        check_shapes("w", found, {"a": [2, 3]}, "Net")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        state_shapes(tmp_path / "junk.safetensors")


def test_torch_files_are_read_without_torch_and_anything_doubtful_goes_to_torch(tmp_path):
    state = {"module.a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.long), "c": torch.zeros(3, 3)[:, :2]}
    torch.save(state, tmp_path / "zip.pt")
    torch.save({"state_dict": state, "best_prec1": 91.6}, tmp_path / "legacy.th", _use_new_zipfile_serialization=False)
    expected = {"a": (2, 3), "b": (4,), "c": (3, 2)}
    assert _pickled_shapes(tmp_path / "zip.pt") == expected == _pickled_shapes(tmp_path / "legacy.th")
    torch.save({"p": torch.nn.Parameter(torch.zeros(3))}, tmp_path / "parameter.pt")  # a global it does not know
    for name in ("zip.pt", "legacy.th"):
        (tmp_path / f"cut-{name}").write_bytes((tmp_path / name).read_bytes()[:-8])  # the last storage cut short
    for doubtful in ("parameter.pt", "cut-zip.pt", "cut-legacy.th"):
        assert _pickled_shapes(tmp_path / doubtful) is None
    assert state_shapes(tmp_path / "parameter.pt") == {"p": (3,)}  # torch's verdict
    for cut in ("cut-zip.pt", "cut-legacy.th"):
        with pytest.raises(ValueError, match="cannot read checkpoint"):
            state_shapes(tmp_path / cut)


def test_the_snapshot_shapes_match_what_a_checkpoint_of_the_model_holds(tmp_path):
    save_file(create_model("resnet20").state_dict(), tmp_path / "r.safetensors")
    check_shapes("r", state_shapes(tmp_path / "r.safetensors"), catalog.entry("model", "resnet20")["state"], "x")


def test_the_memory_rule_counts_cached_values_one_batch_and_the_weights():
    footprint = Footprint(activation_bytes_per_image=100, largest_activation_per_image=10, param_bytes=1000, layers=3)
    config = PruneConfig(n_calib=64, batch_size=16)
    assert peak_bytes(config, footprint, "cuda") == 4 * 1000 + 6 * 10 * 64 + 2 * 100 * 16
    assert peak_bytes(config, footprint, "cpu") == 2**30 + 4 * 1000 + 6 * 10 * 64 + 2 * 100 * 16
    assert MemoryFit(89, 100).fits and not MemoryFit(90, 100).fits


def test_cpu_and_auto_need_no_torch_on_a_machine_without_an_nvidia_driver(monkeypatch, tmp_path):
    monkeypatch.setattr("snows_core.runs.door.NVIDIA_DRIVER", tmp_path / "absent")
    assert device_type("cpu") == "cpu" and device_type("auto") == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        device_type("cuda:1")
