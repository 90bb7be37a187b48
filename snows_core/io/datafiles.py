"""Dataset files read without torch: where they live, their headers, and each split's size from metadata.

- idx (the MNIST format, gzip'd): a 4-byte magic whose last byte is the number of dimensions, then the
  big-endian dimensions, then uint8 data; the header alone gives the image count.
- .npz with uint8 NCHW ``train_x``/``train_y``/``test_x``/``test_y``: each member is a .npy file whose header
  gives its shape and dtype without reading the array.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "FASHION_MNIST_DIR",
    "SPLITS",
    "fashion_mnist_files",
    "read_idx",
    "idx_count",
    "npz_split_shape",
    "check_npz",
    "split_size",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def fashion_mnist_files(split: str, root: Path | None) -> tuple[Path, Path]:
    """(images, labels) idx files of a Fashion-MNIST split under `root` (default: Debian's package)."""
    folder, prefix = root or FASHION_MNIST_DIR, "train" if split == "train" else "t10k"
    return folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"


def read_idx(path: Path) -> np.ndarray:
    """An idx file's array (uint8, shaped by its header)."""
    with gzip.open(path, "rb") as f:
        dims = _idx_dims(f, path)
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims).copy()


def idx_count(path: Path) -> int:
    """How many items an idx file holds, from its header (decompresses a few bytes, not the file)."""
    with gzip.open(path, "rb") as f:
        return _idx_dims(f, path)[0]


def _idx_dims(f: BinaryIO, path: Path) -> tuple[int, ...]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:3] != b"\0\0\x08" or magic[3] == 0:
        raise ValueError(f"{path} is not an idx file of uint8 data")
    head = f.read(4 * magic[3])
    if len(head) < 4 * magic[3]:
        raise ValueError(f"{path} is cut short in its header")
    return struct.unpack(f">{magic[3]}I", head)


def npz_split_shape(path: Path, split: str) -> tuple[int, ...]:
    """The (N, C, H, W) of `split`'s images in an .npz, checked from the members' headers: both members there,
    images uint8 with four dimensions."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            files = sorted(name.removesuffix(".npy") for name in archive.namelist())
            missing = {f"{split}_x", f"{split}_y"} - set(files)
            if missing:
                raise ValueError(f"{path} lacks {sorted(missing)}; it holds {files}")
            with archive.open(f"{split}_x.npy") as member:
                read_header = _NPY_HEADERS[np.lib.format.read_magic(member)]
                shape, _, dtype = read_header(member)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not an .npz file: {err}") from err
    if dtype != np.uint8 or len(shape) != 4:
        raise ValueError(f"{path}: {split}_x must be uint8 (N, C, H, W); got {dtype} {shape}")
    return shape


def check_npz(path: Path, *, num_classes: int, channels: int | None = None) -> tuple[int, ...]:
    """Refuse an .npz whose splits cannot serve a run: an empty split, labels that are not one integer per
    image in [0, num_classes), or images with another channel count than the model takes. The labels are read
    (they are small); the images only from their headers. Returns the train images' (C, H, W)."""
    shapes = {split: npz_split_shape(path, split) for split in SPLITS}
    with np.load(path, allow_pickle=False) as archive:
        all_labels = {split: archive[f"{split}_y"] for split in SPLITS}
    for split, shape in shapes.items():
        if shape[0] == 0:
            raise ValueError(f"{path}: the {split} split holds no image")
        if channels is not None and shape[1] != channels:
            raise ValueError(f"{path}: {split}_x has {shape[1]} channel(s); the model takes {channels}")
        labels = all_labels[split]
        if labels.shape != (shape[0],):
            raise ValueError(f"{path}: {split}_y holds {labels.shape} labels for {shape[0]} images; one each")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: {split}_y must hold integer class labels; got {labels.dtype}")
        if num_classes and (labels.min() < 0 or labels.max() >= num_classes):
            low, high = int(labels.min()), int(labels.max())
            raise ValueError(f"{path}: {split}_y labels run from {low} to {high}; classes are 0 to {num_classes - 1}")
    return tuple(shapes["train"][1:])


def _fashion_mnist_size(split: str, root: Path | None) -> int | None:
    images, labels = fashion_mnist_files(split, root)
    return idx_count(images) if images.is_file() and labels.is_file() else None


def _cifar10_size(split: str, root: Path | None) -> int | None:
    return npz_split_shape(root, split)[0] if root is not None and root.suffix == ".npz" else None


_SIZES: dict[str, Callable[[str, Path | None], int | None]] = {
    "fashion-mnist": _fashion_mnist_size,
    "cifar10": _cifar10_size,
}  # datasets with files whose headers tell their size; any other is loaded to be counted


def split_size(dataset: str, split: str, root: Path | None) -> int | None:
    """Images in a split, from file metadata alone; None when only loading the dataset can tell
    (torchvision's folders, an image folder, the files not there yet)."""
    sizer = _SIZES.get(dataset)
    return sizer(split, root) if sizer is not None else None
