"""The golden set: fixed prune_model configs whose every mask and weight tensor is hashed, so that a change that
should not move results (a refactor) can show that it moves none, bit for bit.

    .venv/bin/python tests/golden.py --write    # record tests/golden.json from the code as it is now

Only public names are used (PruneConfig, prune_model, create_model, load_dataset), so the same file runs on the
tree before and after a change. Bit-for-bit equality holds on one processor with one torch build and thread
count: `rounding_fingerprint()` hashes a few float32 kernels so that the test can tell a machine whose rounding
differs (where the hashes cannot be compared) from a change in the results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core import PruneConfig, prune_model
from snows_core.io.data import calibration_images, load_dataset
from snows_core.models import create_model

GOLDEN = Path(__file__).with_name("golden.json")
THREADS = 2
N_CALIB, BATCH = 64, 32
MASKS = ("magnitude", "wanda", "sparsegpt", "obc")
LAYERS = {
    "mlp": ("5", "7"),  # 256 and 128 input columns: obc stays cheap
    "resnet20": ("layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1"),
    "dwnet": None,  # the default selection: every conv but the stem, and not the classifier
}


class DepthwiseNet(nn.Module):
    """A stem, an inverted residual block (expand, depthwise 3x3, project) with ReLU6, and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.head = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu6(self.bn1(self.expand(x)))
        x = x + self.project(F.relu6(self.bn2(self.depthwise(y))))
        x = F.relu(self.head(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def depthwise_net() -> nn.Module:
    torch.manual_seed(0)
    model = DepthwiseNet()
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model.eval()


def cases() -> list[tuple[str, str, dict]]:
    """(case id, model, config overrides): every mask x reconstruction at 90%, and each mask with SNOWS at 2:4
    and in 3 stages, LAMP, the sensitivity scan and the other targets; on mlp and resnet20 (a few layers each)
    and the depthwise net."""
    out = []
    for model in ("mlp", "resnet20", "dwnet"):
        for mask in MASKS:
            for recon in ("none", "lstsq", "snows"):
                out.append((f"{model}-{mask}-{recon}", model, {"mask": mask, "reconstruction": recon}))
            out.append((f"{model}-{mask}-2:4", model, {"mask": mask, "pattern": "2:4", "sparsity": None}))
            out.append((f"{model}-{mask}-stages3", model, {"mask": mask, "stages": 3}))
        out.append((f"{model}-magnitude-lamp-lstsq", model, {"allocation": "lamp", "reconstruction": "lstsq"}))
        out.append((f"{model}-wanda-lamp-stages3", model, {"mask": "wanda", "allocation": "lamp", "stages": 3}))
        out.append((f"{model}-obc-lamp", model, {"mask": "obc", "allocation": "lamp"}))
        out.append((f"{model}-magnitude-2:4-stages3", model, {"pattern": "2:4", "sparsity": None, "stages": 3}))
    for mask in ("magnitude", "obc"):
        out.append((f"dwnet-{mask}-sensitivity", "dwnet", {"mask": mask, "allocation": "sensitivity"}))
    for targets in ("pruned-input", "official"):
        out.append((f"resnet20-magnitude-{targets}", "resnet20", {"targets": targets}))
    out.append(("resnet20-sparsegpt-official", "resnet20", {"mask": "sparsegpt", "targets": "official"}))
    return out


def model_and_images(name: str) -> tuple[nn.Module, torch.Tensor, tuple[str, ...] | None]:
    if name == "dwnet":
        images = torch.randn(N_CALIB, 1, 12, 12, generator=torch.Generator().manual_seed(2))  # (N, 1, 12, 12)
        return depthwise_net(), images, LAYERS[name]
    images = calibration_images(load_dataset("fashion-mnist", "train"), N_CALIB, seed=0)  # (N, 1, 28, 28)
    return create_model(name, pretrained=True).eval(), images, LAYERS[name]


def run_case(model_name: str, overrides: dict) -> dict[str, str]:
    """{tensor name: sha256 of its bytes} for every mask and every pruned weight of one run."""
    model, images, layers = model_and_images(model_name)
    fields = {"sparsity": 0.9, "k": 3, "n_calib": N_CALIB, "batch_size": BATCH, "layers": layers, "device": "cpu"}
    config = PruneConfig(**{**fields, **overrides})
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        result = prune_model(model, images, config)
    finally:
        torch.set_num_threads(threads)
    modules = dict(result.model.named_modules())
    digests = {}
    for name, mask in sorted(result.masks.items()):
        digests[f"{name}.mask"] = tensor_hash(mask)
        digests[f"{name}.weight"] = tensor_hash(modules[name].weight)
    return digests


def tensor_hash(tensor: torch.Tensor) -> str:
    value = tensor.detach().cpu().contiguous()
    return hashlib.sha256(f"{value.dtype}{tuple(value.shape)}".encode() + value.numpy().tobytes()).hexdigest()[:16]


def rounding_fingerprint() -> str:
    """A hash of float32 kernels the engine leans on (conv forward and backward, matmul, Cholesky), the torch
    version and the thread count: equal fingerprints mean the golden hashes are comparable bit for bit."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 12, 12, generator=generator, requires_grad=True)  # (N, C, H, W)
    w = torch.randn(16, 16, 3, 3, generator=generator, requires_grad=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        y = F.conv2d(x, w, padding=1)
        y.pow(2).sum().backward()
        a = torch.randn(96, 200, generator=generator)
        gram = a @ a.T  # (96, 96)
        parts = [y, x.grad, w.grad, gram, torch.linalg.cholesky(gram.double() + torch.eye(96))]
    finally:
        torch.set_num_threads(threads)
    digest = hashlib.sha256(torch.__version__.encode())
    for part in parts:
        digest.update(part.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record {GOLDEN.name} from the code as it is now")
    args = parser.parse_args()
    record = {"fingerprint": rounding_fingerprint(), "cases": {}}
    for case, model, overrides in cases():
        record["cases"][case] = run_case(model, overrides)
        print(case, flush=True)
    if args.write:
        GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
