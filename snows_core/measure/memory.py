"""Peak memory of a block of work: CUDA allocator peak on GPU, resident-set high-water mark on CPU.

On CPU the kernel's per-process high-water mark (VmHWM) is reset through /proc/self/clear_refs where
Linux allows it, so each layer gets its own peak; elsewhere the process-wide peak (ru_maxrss) is used.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path
from types import TracebackType

import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """Context manager; `peak` holds the peak bytes seen inside it (GPU bytes on CUDA, RSS on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_rss_peak()
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _rss_peak()


def _reset_rss_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _rss_peak() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kibibytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
