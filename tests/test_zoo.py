"""The shipped Fashion-MNIST zoo, hub names offline, and dataset loaders."""

import json
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from snows_core.io.data import FASHION_MNIST_DIR, calibration_images, list_datasets, load_dataset, stack_images
from snows_core.measure.metrics import evaluate
from snows_core.models import create_model, list_models, model_info
from snows_core.models._registry import ASSETS

ZOO = [name for name in list_models() if model_info(name).weights]
TARGETS = {"mlp": 0.87, "resnet20": 0.92, "mobilenet_v2": 0.91, "vit_tiny": 0.88}
needs_fashion = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")


def test_the_four_defaults_are_registered_with_shipped_weights():
    assert sorted(ZOO) == sorted(TARGETS)
    for name in ZOO:
        assert (ASSETS / f"{name}.safetensors").is_file() and (ASSETS / f"{name}.json").is_file()


@needs_fashion
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_loads_and_classifies(name):
    model = create_model(name, pretrained=True)
    x, y = stack_images(load_dataset("fashion-mnist", "test"), list(range(8)))
    logits = model(x)
    assert logits.shape == (8, 10) and logits.dtype == torch.float32
    assert (logits.argmax(1) == y).sum() >= 6
    info = model_info(name).to_dict()
    assert info["input_size"] == [1, 28, 28] and info["dataset"] == "fashion-mnist" and info["params"] > 0
    assert info["top1"] >= TARGETS[name]


@needs_fashion
def test_shipped_accuracy_matches_the_card_on_1000_images():
    test = load_dataset("fashion-mnist", "test")
    for name in ZOO:
        card = json.loads((ASSETS / f"{name}.json").read_text())
        measured = evaluate(create_model(name), test, batch_size=500, limit=1000)
        assert abs(measured["top1"] - card["test_top1_first_1000"]) <= 0.01, name
        assert measured["top5"] >= measured["top1"] and measured["images"] == 1000


def test_checkpoint_only_models_say_where_to_get_weights():
    with pytest.raises(ValueError, match="akamaster"):
        create_model("resnet20_cifar10")
    assert create_model("resnet20_cifar10", pretrained=False)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.slow
def test_hub_names_offline_give_a_clear_error_and_random_weights_still_load(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"could not download pretrained weights for torchvision:resnet18 \(offline"):
        create_model("torchvision:resnet18")
    with pytest.raises(ValueError, match=r"timm:resnet18 \(offline.*pretrained=False"):
        create_model("timm:resnet18")
    assert create_model("torchvision:resnet18", pretrained=False)(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert create_model("timm:resnet18", pretrained=False, num_classes=7)(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="'mlp'.*timm:NAME"):
        create_model("no_such_model")


@needs_fashion
def test_fashion_mnist_is_the_full_real_set_normalised():
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 9  # the first training image: ankle boot
    images, labels = stack_images(train, list(range(5000)))
    assert abs(images.mean().item()) < 0.02 and abs(images.std().item() - 1) < 0.02
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_fashion_mnist_offline_without_files_says_what_to_install(tmp_path, monkeypatch):
    import torchvision.datasets.utils as utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(utils, "download_and_extract_archive", offline)
    monkeypatch.setattr(utils, "download_url", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_cifar10_from_npz(shared):
    test = load_dataset("cifar10", "test", root=shared / "data" / "cifar10-subset.npz")
    x, y = test[0]
    assert len(test) == 1017 and x.shape == (3, 32, 32) and y == 3  # the official test batch starts with a cat
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = x * std[:, None, None] + mean[:, None, None]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_imagefolder_reads_class_folders(tmp_path):
    for label, colour in (("cat", 10), ("dog", 200)):
        (tmp_path / "val" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 50, 3), colour, dtype=np.uint8)).save(tmp_path / "val" / label / f"{i}.png")
    data = load_dataset("imagefolder", "train", root=tmp_path / "val", image_size=32)
    x, y = data[3]
    assert len(data) == 4 and x.shape == (3, 32, 32) and y == 1


def test_calibration_sample_is_seeded_and_bad_names_are_refused():
    images = torch.arange(20.0).view(20, 1, 1, 1)
    assert torch.equal(calibration_images(images, 5, seed=3), calibration_images(images, 5, seed=3))
    assert not torch.equal(calibration_images(images, 5, seed=3), calibration_images(images, 5, seed=4))
    with pytest.raises(ValueError, match="n_calib is 21"):
        calibration_images(images, 21, seed=0)
    with pytest.raises(ValueError, match="'cifar10'.*'fashion-mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        load_dataset("fashion-mnist", "val")
    assert {"fashion-mnist", "cifar10", "imagefolder"} <= set(list_datasets())


def test_a_wrong_data_root_for_fashion_mnist_is_an_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset("fashion-mnist", "train", root=tmp_path / "nowhere")
    assert not any(tmp_path.rglob("*.gz"))
