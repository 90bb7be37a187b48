"""Shared fixtures: tiny hand-made models and the path to ../shared (or $SNOWS_SHARED); tests marked `cuda`
are skipped where torch sees no CUDA device."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.runs import RunStore

SHARED = Path(os.environ.get("SNOWS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
# a test's queue goes cold soon after its last run (a minute's warm dispatcher and spare per test would pile up);
# tests of the warm queue itself set their own
os.environ.setdefault("SNOWS_IDLE_SECONDS", "5")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class TinyResNet(nn.Module):
    """Conv stem, one residual block with functional ReLUs, pooled classifier."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.c1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.c2(F.relu(self.bn1(self.c1(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture
def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(TinyResNet())


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "models" / "resnet20-cifar10.th").is_file():
        pytest.skip(f"shared data not found at {SHARED}; set SNOWS_SHARED")
    return SHARED


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SNOWS_HOME", str(tmp_path))
    yield tmp_path
    for run in RunStore(tmp_path).list():  # leave no worker behind
        if run["status"] == "running" and run["worker_pid"] and run["executor"] == "local":
            with contextlib.suppress(ProcessLookupError):
                os.kill(run["worker_pid"], signal.SIGKILL)
