"""SpeedReport: what `measure_speed` found, as a plain JSON-ready record, and its figures in words.

Free of torch, so the dashboard and the command line read stored reports without importing it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["DOUBLE_CHECK_ABOVE", "SpeedReport"]

DOUBLE_CHECK_ABOVE = 1.5  # a speed-up above this is measured again before it is believed


@dataclass(frozen=True)
class SpeedReport:
    """Dense vs pruned inference, as measured on one device.

    Attributes:
        device: where it ran ("cpu", or the GPU's name).
        kernel: "semi-structured 2:4" when some layers ran through the sparse kernel, else "dense".
        speedup: dense_ms / pruned_ms, or exactly 1.0 when nothing ran sparse (see `reason`).
        reason: why the speed-up is what it is, in words.
        dense_ms, pruned_ms: median latency of one forward over `batch` images.
        batch, dtype: what was timed.
        sparse_layers: layers that ran through the sparse kernel; dense_layers: {layer: why it did not}.
        dense_bytes, sparse_bytes: the pruned weights as dense safetensors, and in the sparse format.
        max_rel_error: relative difference of the sparse-kernel outputs from the dense ones (None when
            nothing ran sparse).
        double_checked: the first figure was above DOUBLE_CHECK_ABOVE; the one reported is the second, longer,
            interleaved measurement.
    """

    device: str
    kernel: str
    speedup: float
    reason: str
    dense_ms: float
    pruned_ms: float
    batch: int
    dtype: str
    sparse_layers: list[str] = field(default_factory=list)
    dense_layers: dict[str, str] = field(default_factory=dict)
    dense_bytes: int = 0
    sparse_bytes: int = 0
    max_rel_error: float | None = None
    double_checked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedReport:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def figures(self) -> dict[str, str]:
        """The report in words: the headline ("1.0x, CPU, no sparse kernel"), latencies, file sizes, and why."""
        device = "CPU" if self.device == "cpu" else self.device
        if self.kernel == "dense":
            headline = f"{self.speedup:.1f}x, {device}, no sparse kernel"
        else:
            headline = f"{self.speedup:.2f}x, {device}, {self.kernel} kernel"
        return {
            "headline": headline,
            "latency": f"{self.dense_ms:.1f} ms dense, {self.pruned_ms:.1f} ms pruned "
            f"({self.batch} images, {self.dtype}, median)",
            "size": f"{self.dense_bytes / 2**20:.2f} MiB dense, {self.sparse_bytes / 2**20:.2f} MiB sparse "
            f"(values + 1-bit mask): {self.sparse_bytes / max(self.dense_bytes, 1):.0%} of dense",
            "reason": self.reason
            + (f" Measured twice: the first figure was above {DOUBLE_CHECK_ABOVE}x." if self.double_checked else ""),
        }
