"""What pruning buys at inference, measured: dense vs pruned latency of the whole model, and file sizes.

Zeros alone make nothing faster: a kernel has to skip them. PyTorch has one such kernel for these
networks, the 2:4 semi-structured matmul on NVIDIA GPUs (`torch.sparse.to_sparse_semi_structured`,
Ampere and later, float16/bfloat16), and it covers Linear layers only: there is no 2:4 convolution
kernel. So `measure` runs

- on CUDA, with pruned Linears at 2:4: those layers through the semi-structured kernel, against the
  same pruned model run dense (both float16), once the two are seen to give the same outputs (if they
  do not, or the sparse model cannot run, it is timed dense and the reason says why);
- anywhere else (CPU, unstructured masks, convolutions): the pruned model as it is, dense with zeros,
  and states the speed-up as 1.0x with the reason instead of reporting timing noise as a gain.

Latency is the median of repeated forwards of one batch after warm-up. Published 2:4 figures on ViT-B/16
(batch 256, A100) are about 1.02-1.1x, so a measured speed-up above `DOUBLE_CHECK_ABOVE` is measured again
with three times the repeats, dense and sparse in turn, and that second figure is the one reported.

File sizes compare the pruned weights as safetensors, dense (what `PruneResult.save` writes), with a sparse
format: each pruned weight as its kept values plus a bitmask of one bit per weight (`sparse_state_dict`,
read back by `dense_state_dict`).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from snows_core.io.checkpoint import first_line
from snows_core.masks import holds_nm
from snows_core.measure.speed_report import DOUBLE_CHECK_ABOVE, SpeedReport

__all__ = [
    "SpeedReport",
    "measure_speed",
    "sparse_state_dict",
    "dense_state_dict",
    "export_sizes",
    "is_two_four",
]

OUTPUT_TOLERANCE = 1e-2  # relative error allowed between the sparse-kernel and the dense float16 outputs
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def measure_speed(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    device: str | torch.device,
    batch: torch.Tensor,
    repeats: int = 20,
) -> SpeedReport:
    """Latency of the pruned `model` (weights already zero where `masks` is False) on `batch` (B, C, H, W)
    on `device`, dense vs through a sparse kernel where one exists, and the weights' file sizes."""
    device = torch.device(device)
    dense_bytes, sparse_bytes = export_sizes(model, masks)
    sizes = {"dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes, "batch": int(batch.shape[0])}
    if device.type != "cuda":
        latency = _median_ms(copy.deepcopy(model).to(device).eval(), batch.to(device, torch.float32), device, repeats)
        reason = f"{device.type.upper()}: no sparse kernel, the pruned model runs dense with zeros"
        return SpeedReport(device.type, "dense", 1.0, reason, latency, latency, dtype="float32", **sizes)
    dense = copy.deepcopy(model).to(device, torch.float16).eval()
    sparse = copy.deepcopy(dense)
    x = batch.to(device, torch.float16)  # (B, C, H, W)
    sparse_layers, dense_layers = _to_semi_structured(sparse, masks)
    name = torch.cuda.get_device_name(device)
    error, refusal = _check_outputs(sparse, dense, x) if sparse_layers else (None, "no layer fits the 2:4 kernel")
    if refusal:
        dense_layers |= dict.fromkeys(sparse_layers, "converted, but not timed: see the reason")
        latency = _median_ms(dense, x, device, repeats)
        reason = refusal + (f" ({_tally(dense_layers)})" if dense_layers else "")
        return SpeedReport(
            name, "dense", 1.0, reason, latency, latency, dtype="float16", dense_layers=dense_layers, **sizes
        )
    dense_ms, pruned_ms = _median_ms(dense, x, device, repeats), _median_ms(sparse, x, device, repeats)
    checked = dense_ms / pruned_ms > DOUBLE_CHECK_ABOVE
    if checked:
        dense_ms, pruned_ms = _interleaved_ms(dense, sparse, x, device, 3 * repeats)
    kept = f"{len(sparse_layers)} Linear layers through the 2:4 kernel"
    reason = kept + (f"; dense: {len(dense_layers)} ({_tally(dense_layers)})" if dense_layers else "")
    return SpeedReport(
        name,
        "semi-structured 2:4",
        dense_ms / pruned_ms,
        reason,
        dense_ms,
        pruned_ms,
        dtype="float16",
        sparse_layers=sparse_layers,
        dense_layers=dense_layers,
        max_rel_error=error,
        double_checked=checked,
        **sizes,
    )


def is_two_four(mask: torch.Tensor) -> bool:
    """Whether a Linear's mask (out, in) keeps at most 2 of every 4 consecutive inputs of each row."""
    return mask.dim() == 2 and holds_nm(mask, 2, 4)


def sparse_state_dict(model: nn.Module, masks: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The model's weights in the sparse format: every masked weight as `NAME.weight.values` (its kept
    entries, row-major) and `NAME.weight.bitmask` (uint8, one bit per weight, most significant first); the
    rest as it is. Returns (tensors, metadata), metadata holding each masked weight's shape as JSON."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    shapes = {}
    for name, mask in masks.items():
        key = f"{name}.weight"
        weight, keep = state.pop(key), mask.cpu().bool()
        flat = torch.cat([keep.flatten(), keep.new_zeros(-keep.numel() % 8)]).reshape(-1, 8)  # (ceil(n/8), 8)
        state[f"{key}.values"] = weight[keep].contiguous()  # (kept,)
        state[f"{key}.bitmask"] = (flat.to(torch.uint8) * _BITS).sum(-1, dtype=torch.uint8)  # (ceil(n/8),)
        shapes[key] = list(weight.shape)
    return state, {"sparse_weights": json.dumps(shapes)}


def dense_state_dict(tensors: dict[str, torch.Tensor], metadata: dict) -> dict[str, torch.Tensor]:
    """The dense state dict back from `sparse_state_dict`'s (tensors, metadata)."""
    state = dict(tensors)
    for key, shape in json.loads(metadata["sparse_weights"]).items():
        values, packed = state.pop(f"{key}.values"), state.pop(f"{key}.bitmask")
        numel = math.prod(shape)
        keep = ((packed.unsqueeze(-1) & _BITS) > 0).flatten()[:numel]  # (numel,)
        weight = values.new_zeros(numel)
        weight[keep] = values
        state[key] = weight.reshape(shape)
    return state


def export_sizes(model: nn.Module, masks: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Bytes of the model's weights as safetensors: dense, and in the sparse format."""
    from safetensors.torch import save

    dense = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors, metadata = sparse_state_dict(model, masks)
    return len(save(dense)), len(save(tensors, metadata))


def _to_semi_structured(model: nn.Module, masks: dict[str, torch.Tensor]) -> tuple[list[str], dict[str, str]]:
    """Swap every 2:4-masked Linear weight of `model` (on CUDA) for a semi-structured one, in place; the layers
    swapped, and why each other pruned layer was not."""
    from torch.sparse import to_sparse_semi_structured

    swapped, kept_dense = [], {}
    for name, mask in masks.items():
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            kept_dense[name] = f"{type(module).__name__}: PyTorch has no 2:4 kernel for it"
            continue
        if not is_two_four(mask):
            kept_dense[name] = "mask is not 2:4"
            continue
        weight = module.weight.detach() * mask.to(module.weight.device)  # (out, in)
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
        except (RuntimeError, ValueError) as err:  # shape or GPU outside the kernel's constraints
            kept_dense[name] = first_line(err)
            continue
        swapped.append(name)
    return swapped, kept_dense


@torch.no_grad()
def _median_ms(model: nn.Module, x: torch.Tensor, device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        model(x)
    return statistics.median(_timed(lambda: model(x), device) for _ in range(repeats))


@torch.no_grad()
def _interleaved_ms(
    dense: nn.Module, sparse: nn.Module, x: torch.Tensor, device: torch.device, repeats: int
) -> tuple[float, float]:
    """Medians of dense and sparse forwards taken in turn, so drifting clocks or load hit both alike."""
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for _ in range(repeats):
        times["dense"].append(_timed(lambda: dense(x), device))
        times["sparse"].append(_timed(lambda: sparse(x), device))
    return statistics.median(times["dense"]), statistics.median(times["sparse"])


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - tic) * 1e3


@torch.no_grad()
def _check_outputs(sparse: nn.Module, dense: nn.Module, x: torch.Tensor) -> tuple[float | None, str | None]:
    """The sparse model's relative output error against the dense one, and why it cannot be timed (or None)."""
    reference = dense(x).float()
    try:
        error = float((sparse(x).float() - reference).norm() / reference.norm().clamp_min(1e-12))
    except (RuntimeError, NotImplementedError) as err:  # an op of this model the sparse tensor cannot take
        return None, f"the 2:4 kernel could not run this model: {first_line(err)}"
    if not error <= OUTPUT_TOLERANCE:
        return error, f"the 2:4 kernel's outputs differed from the dense ones by {error:.3g} (relative)"
    return error, None


def _tally(reasons: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for reason in reasons.values():
        counts[reason] = counts.get(reason, 0) + 1
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())
