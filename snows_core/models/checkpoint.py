"""Load weights safely: safetensors, or a state_dict through torch.load(weights_only=True).

Never unpickles code. Checkpoints that wrap the state_dict (``{"state_dict": ...}``) or carry the
``module.`` prefix of DataParallel (as the akamaster CIFAR ResNets do) are accepted. A mismatch names
the first bad key (a missing BatchNorm ``num_batches_tracked`` counter, absent from older checkpoints,
is tolerated); the model is left untouched unless every tensor fits.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

__all__ = ["read_state_dict", "load_weights"]


def first_line(err: BaseException) -> str:
    """An error's first line for a one-line message (its type when it has no text, as an empty file gives)."""
    return (str(err).splitlines() or [type(err).__name__])[0]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch checkpoint, keys without a ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, ValueError, EOFError, OSError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {first_line(err)}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"checkpoint {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `path` into `model` strictly; ValueError naming the first missing, unexpected or misshaped key."""
    state = read_state_dict(path)
    own = model.state_dict()
    for key, value in own.items():
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = value  # older checkpoints predate this counter; it does not affect eval
        elif key not in state:
            raise ValueError(f"checkpoint {path} lacks {key!r} ({type(model).__name__} needs it)")
        if state[key].shape != value.shape:
            raise ValueError(
                f"checkpoint {path}: {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise ValueError(f"checkpoint {path} has unexpected key {extra[0]!r} for {type(model).__name__}")
    model.load_state_dict(state)
    return model
