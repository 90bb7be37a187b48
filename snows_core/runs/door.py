"""The door: the checks every RunSpec passes before it is stored, one function for every way in.

`check_inputs(spec, force=...)` refuses, with one line naming what is wrong, a run that cannot start here
(a device the machine lacks, a model it cannot build, a checkpoint that is not weights of the architecture,
data that is missing or smaller than the calibration sample) or that the memory forecast says cannot
finish (`force` queues it anyway). The CLI's submit and sweep, `executor.submit`, `submit_all` and the
Launch page all come through here.

It stays light, so a submit takes well under two seconds: for a zoo model on CPU nothing imports torch.
Names, state-dict shapes and footprints come from the catalog snapshot, a .safetensors checkpoint is read
from its header, dataset sizes from file headers, the CPU-only case from /proc. Torch is imported only
where only torch can answer: a hub model, a pickled torch checkpoint, a machine with an NVIDIA driver,
a dataset whose size only loading tells.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from snows_core.config import PruneConfig
from snows_core.io import catalog
from snows_core.io.catalog import Footprint
from snows_core.io.checkpoint import check_shapes, state_shapes
from snows_core.io.datafiles import check_npz, split_size
from snows_core.runs.spec import RunSpec

__all__ = [
    "check_inputs",
    "check_runnable",
    "check_memory",
    "device_type",
    "available_memory",
    "peak_bytes",
    "model_footprint",
    "MemoryFit",
    "FIT_FRACTION",
]

TORCH_BASE_BYTES = 1 << 30  # a CPU worker's resident size before any tensor (torch itself)
FIT_FRACTION = 0.9  # of the memory available: the rest is the forecast's margin and everyone else's
NVIDIA_DRIVER = Path("/proc/driver/nvidia")


def check_inputs(spec: RunSpec, *, force: bool = False) -> None:
    """Refuse `spec` unless it can start here and (without `force`) its memory forecast fits."""
    check_runnable(spec)
    if not force:
        check_memory(spec)


def check_runnable(spec: RunSpec) -> None:
    """Device, model, checkpoint, data and the mask method's reach: what `RunSpec.inputs_key` names (a sweep
    checks one per key)."""
    device_type(spec.config.device)
    _check_model(spec)
    _check_data(spec)
    _check_mask(spec)


def device_type(device: str) -> str:
    """The device type ("cpu" or "cuda") a config's `device` computes on; ValueError when it asks for CUDA the
    machine lacks. Without an NVIDIA driver (Linux tells through /proc) the answer needs no torch."""
    if device == "cpu":
        return "cpu"
    if sys.platform == "linux" and not NVIDIA_DRIVER.exists():
        if device == "auto":
            return "cpu"
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available; use 'auto' or 'cpu'")
    from snows_core.engine.device import resolve_device

    return resolve_device(device).type


def _check_model(spec: RunSpec) -> None:
    if catalog.hub_of(spec.model):
        _check_hub_model(spec)
        return
    info = catalog.entry("model", spec.model)  # an unknown name: "model must be one of ..."
    if spec.checkpoint is not None:
        check_shapes(spec.checkpoint, state_shapes(spec.checkpoint), info["state"], spec.model)
    elif info["weights"] is None:
        raise ValueError(f"model {spec.model} ships no weights: give a checkpoint. {info['checkpoint_hint']}".strip())
    elif not (catalog.ASSETS / info["weights"]).is_file():
        raise FileNotFoundError(f"model {spec.model}'s weights {catalog.ASSETS / info['weights']} are missing")


def _check_hub_model(spec: RunSpec) -> None:
    """A timm/torchvision name the installed library knows; a checkpoint of the architecture it builds."""
    from snows_core.models import check_hub_name, create_model

    check_hub_name(spec.model)
    if spec.checkpoint is not None:
        create_model(spec.model, pretrained=False, checkpoint=spec.checkpoint)  # raises naming the bad key


def _check_data(spec: RunSpec) -> None:
    root = Path(spec.data_root) if spec.data_root is not None else None
    size = split_size(spec.dataset, "train", root)
    if size is None:
        from snows_core.io.data import load_dataset

        size = len(load_dataset(spec.dataset, "train", root))  # raises naming what to install or where
    if spec.config.n_calib > size:
        raise ValueError(f"n_calib is {spec.config.n_calib} but the {spec.dataset} train split holds {size}")
    if root is not None and root.suffix == ".npz":
        expected = None if catalog.hub_of(spec.model) else tuple(catalog.entry("model", spec.model)["input_size"])
        classes = catalog.entry("dataset", spec.dataset)["num_classes"]
        image = check_npz(root, num_classes=classes, channels=None if expected is None else expected[0])
        if expected is not None and image != expected:
            _check_input_size(spec.model, image, expected)


def _check_input_size(model: str, image: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Images of another size than the model's own: fine for a network that pools (a CNN), refused for one that
    cannot take them (an MLP, a ViT), as a forward of one such image with random weights tells."""
    import torch

    from snows_core.io.checkpoint import first_line
    from snows_core.models import create_model

    try:
        with torch.no_grad():
            create_model(model, pretrained=False).eval()(torch.zeros(1, *image))
    except Exception as err:  # whatever the architecture raises on the wrong shape
        reason = first_line(err)
        raise ValueError(
            f"images are {image} (C, H, W); {model} takes {expected} and fails on them: {reason}"
        ) from None


def _check_mask(spec: RunSpec) -> None:
    """A mask only Python can pass (custom), or an in-loop method that refuses one of the layers to prune
    (OBC's column limit): refused here, not as a failed run."""
    mask, entry = spec.config.mask, catalog.entry("mask", spec.config.mask)
    if entry["user_supplied"]:
        raise ValueError(
            f"mask {mask!r} takes masks passed in Python (prune_model(..., custom_masks=...)); a queued "
            "run has no way to receive them"
        )
    if entry["refuses_layers"]:
        from snows_core.engine.graph import default_layers, trace
        from snows_core.masks.method import layer_refusal
        from snows_core.masks.select import nm_skip_reason
        from snows_core.models import create_model

        gm = trace(create_model(spec.model, pretrained=False))
        layers = {name: gm.get_submodule(name) for name in spec.config.layers or default_layers(gm)}
        nm = spec.config.nm  # an N:M pattern skips the layers it cannot group, as prune_model does
        pruned = {name: m for name, m in layers.items() if not (nm and nm_skip_reason(m.weight.shape, nm[1]))}
        reason = layer_refusal(spec.config, pruned)
        if reason:
            raise ValueError(reason)


@dataclass(frozen=True)
class MemoryFit:
    """A run's forecast peak against the memory where it computes."""

    peak_bytes: int
    available_bytes: int

    @property
    def fits(self) -> bool:
        return self.peak_bytes < FIT_FRACTION * self.available_bytes


def check_memory(spec: RunSpec) -> MemoryFit:
    """The memory forecast of `spec`; ValueError when it does not fit (the message says how to force it)."""
    device = device_type(spec.config.device)
    fit = MemoryFit(peak_bytes(spec.config, model_footprint(spec.model), device), available_memory(device))
    if not fit.fits:
        gib = 2**30
        raise ValueError(
            f"memory: the forecast peak is {fit.peak_bytes / gib:.1f} GiB but {fit.available_bytes / gib:.1f} GiB "
            f"is available on {device}: lower n_calib or batch_size, or pass --force (force=True) to queue it anyway"
        )
    return fit


def model_footprint(model: str) -> Footprint:
    """A registered model's footprint from the catalog; a hub model's measured here (built with random weights)."""
    if catalog.hub_of(model) is None:
        return catalog.footprint(model)
    from snows_core.models import create_model, input_size
    from snows_core.models.footprint import measure_footprint

    return Footprint(**measure_footprint(create_model(model, pretrained=False), input_size(model)))


def peak_bytes(config: PruneConfig, footprint: Footprint, device: str) -> int:
    """Forecast peak bytes of a run: the dense and pruned paths' cached values of the widest layer for every
    calibration image, one batch's window with its backward, the weights and their copies, and torch."""
    cached = 6 * footprint.largest_activation_per_image * config.n_calib
    graph = 2 * footprint.activation_bytes_per_image * min(config.batch_size, config.n_calib)
    base = TORCH_BASE_BYTES if device == "cpu" else 0
    return int(base + 4 * footprint.param_bytes + cached + graph)


def available_memory(device: str = "cpu") -> int:
    """Free bytes where the run will compute: GPU memory on CUDA, else MemAvailable of this machine."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 << 30
