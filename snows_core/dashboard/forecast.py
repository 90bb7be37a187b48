"""Cost forecast for a RunSpec before it is launched: seconds and peak memory, and whether it fits.

Two sources, best first:
1. past runs on this machine: done runs of the same model, dataset, reconstruction, K, calibration size,
   Newton passes and CG iterations; their median seconds and largest peak memory;
2. a probe: the model's footprint from the catalog (activation sizes, parameters, pruned layers; the
   door's memory rule, `runs.door.peak_bytes`) and one timed forward pass on a calibration-sized batch,
   turned into seconds by counting dense-forward equivalents (DFE) per layer, fitted end to end on the
   zoo's ResNet-20 at 90% with 256 images (pruning 2.6 s with lstsq, 4.5 s and 7.6 s with SNOWS K=0 and 3,
   39 s in 5 stages, since the solver's tangent curvature products): a layer costs about 1.2 DFE for its
   set-up and least-squares fit, a Newton step about half a window forward per CG iteration plus 3.5 for
   the line search and gradient, and a window spans about (K + 2) / layers of the network; every stage
   repeats the loop, and a sensitivity scan costs about a least-squares fit and half a forward per layer
   and scanned sparsity. Expect it within a factor of 2 either way.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from snows_core.config import PruneConfig, upgrade_config_dict
from snows_core.engine.device import resolve_device
from snows_core.io.catalog import Footprint
from snows_core.models import create_model, input_size
from snows_core.runs.door import MemoryFit, available_memory, model_footprint, peak_bytes
from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStore
from snows_core.scan import scan_sparsities

__all__ = ["Forecast", "Probe", "probe", "forecast"]

STARTUP_SECONDS = 1.0  # a run's start: 0.3 s on a warm queue, 5 s on a cold one (bench_queue.py), data and model loads
SETUP_FORWARDS = 1.2
HVP_FORWARDS = 0.5
LINE_SEARCH_FORWARDS = 3.5
IN_LOOP_FORWARDS = {"sparsegpt": 0.3, "obc": 1.0}  # a mask chosen in the layer loop, per layer and pass


@dataclass(frozen=True)
class Probe(Footprint):
    """A model's footprint (the catalog's) and the seconds per image of a timed forward pass here."""

    seconds_per_image: float


@dataclass(frozen=True)
class Forecast:
    """Seconds and peak memory of a run, and what they were estimated from."""

    seconds: float
    peak_bytes: int
    available_bytes: int
    basis: str

    @property
    def fits(self) -> bool:
        """The door's rule (`door.MemoryFit`), so what the page shows as fitting is what the door queues."""
        return MemoryFit(self.peak_bytes, self.available_bytes).fits

    def message(self) -> str:
        gib = 2**30
        return (
            f"about {self.seconds:.0f} s and {self.peak_bytes / gib:.1f} GiB peak "
            f"({self.available_bytes / gib:.1f} GiB available; {self.basis})"
        )


def probe(model: str, batch: int = 64, device: str = "auto") -> Probe:
    """Time one forward pass of `model` (random weights: the cost does not depend on them) on `batch` images."""
    target = resolve_device(device)
    network = create_model(model, pretrained=False).to(target)
    x = torch.randn(batch, *input_size(model), device=target)  # (B, C, H, W)
    with torch.no_grad():
        network(x)  # warm-up
        seconds = min(_timed(network, x) for _ in range(3))
    return Probe(**vars(model_footprint(model)), seconds_per_image=seconds / batch)


def _timed(network: torch.nn.Module, x: torch.Tensor) -> float:
    tic = time.perf_counter()
    network(x)
    return time.perf_counter() - tic


def forecast(spec: RunSpec, probed: Probe, store: RunStore | None = None) -> Forecast:
    """Seconds and peak memory of `spec`, from past runs on this machine when there are some, else the probe."""
    device = resolve_device(spec.config.device).type
    available = available_memory(device)
    estimated = peak_bytes(spec.config, probed, device)
    past = _past_runs(spec, store) if store is not None else []
    if past:
        return Forecast(
            statistics.median(r["seconds"] for r in past),
            max(int(r.get("peak_mem") or 0) for r in past) or estimated,
            available,
            f"median of {len(past)} past run{'s' if len(past) > 1 else ''} on this machine",
        )
    return Forecast(_seconds(spec, probed), estimated, available, "estimated from a probe")


def _seconds(spec: RunSpec, p: Probe) -> float:
    c = spec.config
    dense_forward = p.seconds_per_image * c.n_calib
    window = min(1.0, (c.k + 2) / max(p.layers, 1))
    newton = c.newton_passes * (HVP_FORWARDS * c.cg_iters * c.curvature_fraction + LINE_SEARCH_FORWARDS) * window
    per_layer = {"none": 0.3, "lstsq": SETUP_FORWARDS}.get(c.reconstruction, SETUP_FORWARDS + newton)
    per_layer += IN_LOOP_FORWARDS.get(c.mask, 0.0)
    scan = len(scan_sparsities(c.layer_sparsity_cap)) * 1.5 if c.allocation == "sensitivity" else 0.0
    evals = (3 + (2 * p.layers if spec.trajectory else 0)) * p.seconds_per_image * (spec.eval_size or 10_000)
    return STARTUP_SECONDS + p.layers * (c.stages * per_layer + scan) * dense_forward + evals


def _past_runs(spec: RunSpec, store: RunStore) -> list[dict]:
    keys = (
        "reconstruction",
        "k",
        "n_calib",
        "newton_passes",
        "cg_iters",
        "curvature_fraction",
        "preconditioner",
        "device",
        "stages",
        "allocation",
    )
    wanted = {key: getattr(spec.config, key) for key in keys}
    results = store.results()
    matches = []
    for run in store.list("done"):
        config, result = (
            {**PruneConfig().to_dict(), **upgrade_config_dict(run["spec"]["config"])},
            results.get(run["id"]) or {},
        )  # older runs
        same = run["spec"]["model"] == spec.model and run["spec"]["dataset"] == spec.dataset
        same = same and IN_LOOP_FORWARDS.get(config["mask"]) == IN_LOOP_FORWARDS.get(spec.config.mask)
        if same and all(config[key] == value for key, value in wanted.items()) and "seconds" in result:
            matches.append(result)
    return matches
