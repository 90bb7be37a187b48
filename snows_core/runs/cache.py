"""Per-store caches of what a run computes from its inputs alone, so that a sweep computes it once.

The dense network's top-1 on the evaluation subset depends on the model's weights, the evaluation images and
labels, how many are scored, the device type and the code; every run of a sweep over masks or K computed it
again. `cached_evaluation` keys it by the *content* of those inputs (a SHA-256 over the state dict's tensors
and the images' bytes), so a checkpoint or dataset file changed in place, same path and name, is a new key
and never served stale. Entries are JSON files under `<store>/cache/dense/`, written to a temporary file and
renamed, so two workers filling one entry at once leave one whole entry; an entry that does not parse, names
another key or holds an impossible value is recomputed and replaced, never trusted.

The cache is active inside `store_cache(folder)` (the local worker wraps each run in it); `SNOWS_CACHE=off`
switches it off (to measure what it buys), as does a dataset that does not expose its images as tensors
(an ImageFolder: hashing it would cost the decoding the cache saves).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from snows_core import __version__
from snows_core.io.atomic import replaced
from snows_core.io.decoded import decode_cache

__all__ = ["store_cache", "cache_enabled", "cached_evaluation", "model_digest", "dataset_digest"]

_FOLDER: ContextVar[Path | None] = ContextVar("snows_store_cache", default=None)


def cache_enabled() -> bool:
    return os.environ.get("SNOWS_CACHE", "on").lower() != "off"


@contextlib.contextmanager
def store_cache(folder: Path) -> Iterator[None]:
    """Within this block, `cached_evaluation` reads and fills the cache in `folder` (unless switched off)."""
    folder = Path(folder) if cache_enabled() else None
    token = _FOLDER.set(folder)
    try:
        with decode_cache(folder):  # and dataset files are decoded once (`snows_core.io.decoded`)
            yield
    finally:
        _FOLDER.reset(token)


def _update(digest: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict: every name, dtype, shape and byte."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()


def dataset_digest(dataset: Any, limit: int | None) -> str | None:
    """SHA-256 over the first `limit` images and labels and the normalisation of a dataset that holds them as
    tensors (`images`, `labels`), None for one that does not."""
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if not (torch.is_tensor(images) and torch.is_tensor(labels)):
        return None
    digest = hashlib.sha256()
    _update(digest, images[:limit])
    _update(digest, labels[:limit])
    digest.update(repr((getattr(dataset, "mean", None), getattr(dataset, "std", None))).encode())
    return digest.hexdigest()


def cached_evaluation(
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device,
    limit: int | None,
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """`compute()` (the model's evaluation: {"top1", "images", maybe "top5"}), or its cached result for the
    same weights, images, limit, device type, torch and library versions."""
    folder = _FOLDER.get()
    data = None if folder is None else dataset_digest(dataset, limit)
    if data is None:
        return compute()
    parts = [model_digest(model), data, str(limit), device.type, torch.__version__, __version__]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    path = folder / "dense" / f"{key}.json"
    cached = _read(path, key)
    if cached is not None:
        return cached
    result = compute()
    _write(path, {"key": key, "result": result})
    return result


def _read(path: Path, key: str) -> dict[str, Any] | None:
    """The entry's result, or None when there is none or it cannot be trusted."""
    try:
        entry = json.loads(path.read_text())
        result = entry["result"]
        valid = entry["key"] == key and 0.0 <= result["top1"] <= 1.0 and result["images"] > 0
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result if valid else None


def _write(path: Path, entry: dict[str, Any]) -> None:
    """Write `entry` whole or not at all (`snows_core.io.atomic.replaced`)."""
    with replaced(path) as temporary:
        temporary.write_text(json.dumps(entry))
