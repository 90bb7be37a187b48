"""Datasets for calibration and evaluation: a registry with one factory, `load_dataset`.

Every dataset yields (image tensor normalised the way the zoo models expect, int label).
- ``fashion-mnist``: the full set (60k/10k) from Debian's ``dataset-fashion-mnist`` package (idx files
  in /usr/share/datasets/fashion-mnist/), else torchvision's download when online.
- ``cifar10``: an .npz with uint8 NCHW ``train_x``/``train_y``/``test_x``/``test_y`` (the layout of
  ../shared/data/cifar10-subset.npz), or torchvision's CIFAR10 in a folder (downloaded when online).
- ``imagefolder``: a folder of class sub-folders (ImageNet val, Imagenette, your own), resized and
  normalised for the chosen model.

Calibration images come from the train split, sampled with a seed; evaluation uses the test split,
optionally its first `n` images for quick previews.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from snows_core.io.datafiles import FASHION_MNIST_DIR, SPLITS, fashion_mnist_files, npz_split_shape, read_idx
from snows_core.io.decoded import decoded
from snows_core.registry import Registry

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DatasetInfo",
    "ImageTensorDataset",
    "register_dataset",
    "load_dataset",
    "list_datasets",
    "dataset_info",
    "load_npz",
    "normalise",
    "calibration_indices",
    "calibration_images",
    "stack_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    factory: Callable[..., Dataset]
    num_classes: int
    summary: str = ""


_DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(name: str, *, num_classes: int, summary: str = "") -> Callable:
    """Decorator registering `fn(split, root, **options) -> Dataset` under `name`."""

    return _DATASETS.decorator(name, lambda fn: DatasetInfo(name, fn, num_classes, summary))


list_datasets = _DATASETS.names


def dataset_info(name: str) -> DatasetInfo:
    return _DATASETS.get(name)


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, **options: Any) -> Dataset:
    """The `split` ("train" or "test") of a registered dataset; `root` overrides where it is read from."""
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    return info.factory(split, Path(root) if root is not None else None, **options)


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) kept compact in memory, normalised per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple, std: tuple) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return normalise(self.images[index : index + 1], self.mean, self.std)[0], int(self.labels[index])

    def batch(self, indices: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images and labels for many indices at once (no per-item Python loop)."""
        return normalise(self.images[indices], self.mean, self.std), self.labels[indices]


def stack_images(dataset: Dataset, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, C, H, W), labels (n,)) for the given indices of any dataset."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.batch(torch.as_tensor(indices))
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def calibration_indices(total: int, n: int, seed: int) -> torch.Tensor:
    """(n,) indices of a seeded random sample of `total` images (the same seed gives the same sample)."""
    if n > total:
        raise ValueError(f"n_calib is {n} but the data holds {total} images")
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def calibration_images(data: Dataset | torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The images at `calibration_indices(len(data), n, seed)`."""
    indices = calibration_indices(data.shape[0] if torch.is_tensor(data) else len(data), n, seed)
    return data[indices] if torch.is_tensor(data) else stack_images(data, indices)[0]


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] and standardised per channel."""
    x = images.float() / 255.0
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def load_npz(path: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) float32 normalised, labels (N,) int64) of one split of an .npz file."""
    dataset = _npz_dataset(Path(path), split)
    return dataset.batch(slice(None))


def _npz_dataset(path: Path, split: str) -> ImageTensorDataset:
    npz_split_shape(path, split)  # the members are there and the images uint8 NCHW
    x = decoded(path, f"npz:{split}_x", lambda p: _npz_member(p, f"{split}_x"))  # (N, C, H, W) uint8
    y = decoded(path, f"npz:{split}_y", lambda p: _npz_member(p, f"{split}_y"))  # (N,)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if x.shape[1] == 3 else (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    return ImageTensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), mean, std)


def _npz_member(path: Path, member: str) -> np.ndarray:
    with np.load(path) as arrays:
        return arrays[member]


@register_dataset("fashion-mnist", num_classes=10, summary="Zalando Fashion-MNIST, 28x28 grey, 60k/10k")
def fashion_mnist(split: str, root: Path | None) -> ImageTensorDataset:
    images_file, labels_file = fashion_mnist_files(split, root)
    if images_file.is_file() and labels_file.is_file():
        images = torch.from_numpy(decoded(images_file, "idx", read_idx)).unsqueeze(1)  # (N, 1, 28, 28)
        labels = torch.from_numpy(decoded(labels_file, "idx", read_idx).astype(np.int64))
        return ImageTensorDataset(images, labels, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    return _torchvision_fallback(
        "FashionMNIST",
        split,
        root,
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        hint=f"no Fashion-MNIST files in {root or FASHION_MNIST_DIR}: run `apt-get install -y "
        "dataset-fashion-mnist` (Debian), or pass root= a folder holding the idx .gz files",
    )


@register_dataset("cifar10", num_classes=10, summary="CIFAR-10 from an .npz (uint8 NCHW) or torchvision's folder")
def cifar10(split: str, root: Path | None) -> ImageTensorDataset:
    if root is not None and root.suffix == ".npz":
        return _npz_dataset(root, split)
    return _torchvision_fallback(
        "CIFAR10",
        split,
        root,
        IMAGENET_MEAN,
        IMAGENET_STD,
        hint="pass root= an .npz with train_x/train_y/test_x/test_y (such as "
        "../shared/data/cifar10-subset.npz) or a folder holding torchvision's CIFAR-10",
    )


@register_dataset("imagefolder", num_classes=0, summary="a folder of class sub-folders (ImageNet val, your own)")
def image_folder(
    split: str, root: Path | None, image_size: int = 224, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD
) -> Dataset:
    from torchvision import datasets, transforms

    if root is None or not root.is_dir():
        raise ValueError(f"imagefolder needs root= a folder of class sub-folders; got {root}")
    folder = root / split if (root / split).is_dir() else root
    resize = int(image_size * 256 / 224)
    transform = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return datasets.ImageFolder(str(folder), transform=transform)


def _torchvision_fallback(
    cls: str, split: str, root: Path | None, mean: tuple, std: tuple, hint: str
) -> ImageTensorDataset:
    """torchvision's copy under `root` (or ~/.cache/snows), downloading when online; a clear error when not."""
    from torchvision import datasets

    folder = root or Path.home() / ".cache" / "snows" / cls.lower()
    try:  # a folder the user named is read as it is: a wrong one is an error, never a download into it
        raw = getattr(datasets, cls)(str(folder), train=split == "train", download=root is None)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError... all mean "not here"
        raise FileNotFoundError(f"{hint}. (Downloading with torchvision failed: {err})") from err
    images = torch.as_tensor(np.asarray(raw.data))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # (N, C, H, W)
    return ImageTensorDataset(images.contiguous(), torch.as_tensor(np.asarray(raw.targets)), mean, std)
