"""Image data for calibration and evaluation.

`load_npz` reads arrays in the layout of CIFAR-10 subsets (uint8 NCHW ``train_x``/``test_x`` and int
labels ``train_y``/``test_y``) and normalises them the way the CIFAR models were trained: scale to
[0, 1], then the ImageNet mean and std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load_npz", "normalise", "calibration_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] and standardised per channel."""
    x = images.float() / 255.0
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def load_npz(path: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) float32 normalised, labels (N,) int64) of one split of an .npz file."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    with np.load(path) as arrays:
        missing = {f"{split}_x", f"{split}_y"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; it holds {sorted(arrays.files)}")
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{path}: {split}_x must be uint8 (N, C, H, W); got {x.dtype} {x.shape}")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if x.shape[1] == 3 else ((0.5,), (0.5,))
    return normalise(torch.from_numpy(x), mean, std), torch.from_numpy(y.astype(np.int64))


def calibration_images(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded random sample of n images (the same seed gives the same images)."""
    if n > images.shape[0]:
        raise ValueError(f"n_calib is {n} but the data holds {images.shape[0]} images")
    generator = torch.Generator().manual_seed(seed)
    return images[torch.randperm(images.shape[0], generator=generator)[:n]]
