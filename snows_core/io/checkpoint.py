"""Load weights safely: safetensors, or a state_dict through torch.load(weights_only=True).

Never unpickles code. Checkpoints that wrap the state_dict (``{"state_dict": ...}``) or carry the
``module.`` prefix of DataParallel (as the akamaster CIFAR ResNets do) are accepted. A mismatch names
the first bad key (a missing BatchNorm ``num_batches_tracked`` counter, absent from older checkpoints,
is tolerated); the model is left untouched unless every tensor fits.

The door checks a checkpoint against an architecture's shapes from the catalog without building the
model (`state_shapes`, `check_shapes`) and without importing torch: a .safetensors file by its header, a
torch file (zip or legacy format) by a restricted unpickler that knows only an OrderedDict, storage types
and the tensor rebuilds, and checks that every storage's bytes are there. Anything else it meets (another
global, a storage type it does not size, a file cut short) is left to torch's weights-only load, which
gives the verdict and the message.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["first_line", "read_state_dict", "state_shapes", "check_shapes", "load_weights"]

Shapes = Mapping[str, Sequence[int]]


def first_line(err: BaseException) -> str:
    """An error's first line for a one-line message (its type when it has no text, as an empty file gives)."""
    return (str(err).splitlines() or [type(err).__name__])[0]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch checkpoint, keys without a ``module.`` prefix."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _existing(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, ValueError, EOFError, OSError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {first_line(err)}") from err
    except Exception as err:  # the weights-only unpickler meets a file that is no pickle (a text file, say)
        kind = f"{type(err).__name__}: {first_line(err)}"
        raise ValueError(f"cannot read checkpoint {path}: not a torch checkpoint or safetensors file ({kind})") from err
    state = _unwrapped(state)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"checkpoint {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def state_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a checkpoint; a .safetensors file is read from its header (no torch import)."""
    from safetensors import SafetensorError, safe_open

    path = _existing(path)
    if path.suffix != ".safetensors":
        shapes = _pickled_shapes(path)
        if shapes is None:  # torch's weights-only load decides, and says why
            shapes = {key: tuple(value.shape) for key, value in read_state_dict(path).items()}
        return shapes
    try:
        with safe_open(str(path), framework="numpy") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {first_line(err)}") from err
    return {key.removeprefix("module."): shape for key, shape in shapes.items()}


def check_shapes(path: str | Path, found: Shapes, expected: Shapes, owner: str) -> None:
    """ValueError naming the first key `owner` needs that `found` lacks or holds misshaped, or the first extra."""
    for key, shape in expected.items():
        if key not in found and key.endswith("num_batches_tracked"):
            continue  # older checkpoints predate this counter; it does not affect eval
        if key not in found:
            raise ValueError(f"checkpoint {path} lacks {key!r} ({owner} needs it)")
        if tuple(found[key]) != tuple(shape):
            raise ValueError(f"checkpoint {path}: {key!r} has shape {tuple(found[key])}, expected {tuple(shape)}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ValueError(f"checkpoint {path} has unexpected key {extra[0]!r} for {owner}")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `path` into `model` strictly; ValueError naming the first missing, unexpected or misshaped key."""
    state = read_state_dict(path)
    own = model.state_dict()
    shapes = {k: v.shape for k, v in state.items()}
    check_shapes(path, shapes, {k: v.shape for k, v in own.items()}, type(model).__name__)
    model.load_state_dict({**{k: v for k, v in own.items() if k not in state}, **state})
    return model


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save before the zip format
ELEMENT_BYTES = {"Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1}
ELEMENT_BYTES |= {"Byte": 1, "Bool": 1}


class _StorageType(NamedTuple):
    element_bytes: int


class _Storage(NamedTuple):
    key: str
    numel: int
    element_bytes: int


class _Tensor(NamedTuple):
    storage: _Storage
    shape: tuple[int, ...]


class _Unknown(Exception):
    """Something only torch can judge: the caller falls back to a weights-only torch.load."""


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> _Tensor:
    extent = offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True)) + 1
    if not isinstance(storage, _Storage) or (all(size) and extent > storage.numel):
        raise _Unknown
    return _Tensor(storage, tuple(size))


class _ShapeUnpickler(pickle.Unpickler):
    """A torch checkpoint's structure without torch: a tensor becomes its storage and shape."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name.endswith("Storage") and name.removesuffix("Storage") in ELEMENT_BYTES:
            return _StorageType(ELEMENT_BYTES[name.removesuffix("Storage")])
        raise _Unknown

    def persistent_load(self, pid: Any) -> _Storage:
        """("storage", type, key, location, element count, ...) in both formats; anything else is torch's."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise _Unknown
        return _Storage(str(pid[2]), int(pid[4]), pid[1].element_bytes)


def _pickled_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Shapes from a torch checkpoint whose every storage is there, or None when torch must judge it."""
    try:
        with path.open("rb") as f:
            is_zip = zipfile.is_zipfile(f)
            f.seek(0)
            state = _read_zip(f) if is_zip else _read_legacy(f)
    except (
        _Unknown,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        struct.error,
        OSError,
        zipfile.BadZipFile,
    ):
        return None
    state = _unwrapped(state)
    if not isinstance(state, dict) or not state or not all(isinstance(v, _Tensor) for v in state.values()):
        return None
    return {str(k).removeprefix("module."): v.shape for k, v in state.items()}


def _read_zip(f: IO[bytes]) -> Any:
    """The zip format: <archive>/data.pkl, each storage's bytes in <archive>/data/<key>."""
    with zipfile.ZipFile(f) as archive:
        (pkl,) = [name for name in archive.namelist() if name.endswith("/data.pkl")] or [None]
        if pkl is None:
            raise _Unknown
        unpickler = _ShapeUnpickler(io.BytesIO(archive.read(pkl)))
        state = unpickler.load()
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        folder = pkl.removesuffix("data.pkl") + "data/"
        for tensor in _tensors(state):
            storage = tensor.storage
            if sizes.get(folder + storage.key, -1) < storage.numel * storage.element_bytes:
                raise _Unknown
    return state


def _read_legacy(f: IO[bytes]) -> Any:
    """The legacy format: magic, protocol, system info, the object, its storage keys, then each storage as
    its element count (8 bytes) and its bytes."""
    magic, protocol, system, state, keys = (_ShapeUnpickler(f).load() for _ in range(5))
    if magic != LEGACY_MAGIC or protocol != 1001 or not isinstance(system, dict):
        raise _Unknown
    storages = {t.storage.key: t.storage for t in _tensors(state)}
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise _Unknown
    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != storage.numel:
            raise _Unknown
        f.seek(numel * storage.element_bytes, io.SEEK_CUR)
    if f.tell() > f.seek(0, io.SEEK_END):  # the last storage ends past the end of the file
        raise _Unknown
    return state


def _unwrapped(state: Any) -> Any:
    """The state_dict of a checkpoint that wraps it (``{"state_dict": ..., "best_prec1": ...}``), else itself."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        return state["state_dict"]
    return state


def _tensors(state: Any) -> list[_Tensor]:
    values = _unwrapped(state)
    return [v for v in values.values() if isinstance(v, _Tensor)] if isinstance(values, dict) else []


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path
