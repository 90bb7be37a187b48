"""Dataset files decoded once per store: the decoded array kept as safetensors, keyed by the source's content.

Every run used to decode its dataset files again: Fashion-MNIST's gzip'd idx images take 0.35 s to inflate
here, for 0.07 s to read back a decoded copy (hash the source, load, check). `decoded(source, tag, decode)`
returns `decode(source)`, from `<folder>/data/<key>.safetensors` when the folder of `decode_cache(folder)` holds
the entry for the key: a SHA-256 over the source file's bytes and size and the decoder's `tag` (so a file
changed in place, same path and name, is a new key and never served stale). An entry carries its key and a
CRC-32 of the array in its metadata, both checked at each read: a truncated, corrupt or foreign entry is
decoded again and replaced, never trusted. Entries are written to a temporary file and renamed, so two
workers filling one entry at once leave one whole entry. Outside a `decode_cache` block (or with
``SNOWS_CACHE=off``, set by `snows_core.runs.cache.store_cache`) it is `decode(source)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

import numpy as np

from snows_core.io.atomic import replaced

__all__ = ["decode_cache", "decoded", "source_key"]

FORMAT = "1"  # bump when a decoder's output changes for the same file: every entry is then a new key
_FOLDER: ContextVar[Path | None] = ContextVar("snows_decoded_cache", default=None)


@contextlib.contextmanager
def decode_cache(folder: Path | None) -> Iterator[None]:
    """Within this block `decoded` reads and fills the entries under `folder` (None: decodes every time)."""
    token = _FOLDER.set(None if folder is None else Path(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)


def source_key(source: Path, tag: str) -> str:
    """SHA-256 over the decoder's tag, the format version, the file's size and its bytes."""
    with open(source, "rb") as f:
        content = hashlib.file_digest(f, "sha256").hexdigest()
    parts = [tag, FORMAT, str(source.stat().st_size), content]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def decoded(source: Path, tag: str, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
    """`decode(source)`, or the entry kept for the same content and `tag` (see the module docstring)."""
    folder = _FOLDER.get()
    if folder is None:
        return decode(source)
    key = source_key(source, tag)
    path = folder / "data" / f"{key}.safetensors"
    array = _read(path, key)
    if array is None:
        array = np.ascontiguousarray(decode(source))
        _write(path, key, array)
    return array


def _read(path: Path, key: str) -> np.ndarray | None:
    """The entry's array, or None when there is none or it cannot be trusted."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as entry:
            metadata = entry.metadata() or {}
            array = entry.get_tensor("data")
    except Exception:  # missing, truncated, not safetensors at all: each means "decode again"
        return None
    if metadata.get("key") != key or metadata.get("crc32") != str(zlib.crc32(array)):
        return None
    return array


def _write(path: Path, key: str, array: np.ndarray) -> None:
    """Write the entry whole or not at all (`snows_core.io.atomic.replaced`)."""
    from safetensors.numpy import save_file

    with replaced(path) as temporary:
        save_file({"data": array}, str(temporary), metadata={"key": key, "crc32": str(zlib.crc32(array))})
