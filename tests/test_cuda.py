"""On a CUDA device: the same masks and top-1 as on CPU, the same HVPs, one queued run per GPU, the allocator's peak.

Marked `cuda`: skipped where torch sees no device (see conftest), run by scripts/device_check.sh on one.
The ResNet-20 tests read ../shared ($SNOWS_SHARED); the ViT test reads Fashion-MNIST (Debian's
dataset-fashion-mnist or $SNOWS_FASHION_MNIST); each skips, saying so, when its data is missing.
"""

import dataclasses
import os
import time

import pytest
import torch
import torch.nn as nn

from snows_core import PruneConfig, prune_model
from snows_core.engine.graph import PrunedPath, prunable_nodes, trace
from snows_core.engine.problem import layer_problem
from snows_core.engine.solver import exact_curvature
from snows_core.io.data import load_dataset, load_npz, stack_images
from snows_core.masks import unstructured_mask
from snows_core.measure.memory import PeakMemory
from snows_core.measure.metrics import top1
from snows_core.models import create_model
from snows_core.runs import RunSpec, RunStatus, RunStore
from snows_core.runs.executor import submit

pytestmark = pytest.mark.cuda


def cpu_and_cuda(model: nn.Module, calib: torch.Tensor, config: PruneConfig) -> dict[str, object]:
    return {device: prune_model(model, calib, dataclasses.replace(config, device=device)) for device in ("cpu", "cuda")}


def assert_alike(results: dict, test_x: torch.Tensor, test_y: torch.Tensor) -> None:
    cpu, cuda = results["cpu"], results["cuda"]
    assert cpu.masks.keys() == cuda.masks.keys()
    for name in cpu.masks:
        assert torch.equal(cpu.masks[name], cuda.masks[name]), name
    accuracy = {device: top1(r.model, test_x, test_y) for device, r in results.items()}
    assert abs(accuracy["cpu"] - accuracy["cuda"]) <= 0.005, accuracy


def test_resnet20_prunes_alike_on_cuda_and_cpu(shared):
    model = create_model("resnet20_cifar10", checkpoint=shared / "models" / "resnet20-cifar10.th")
    data = shared / "data" / "cifar10-subset.npz"
    calib, (test_x, test_y) = load_npz(data, "train")[0][:128], load_npz(data, "test")
    results = cpu_and_cuda(model, calib, PruneConfig(sparsity=0.7, n_calib=128, batch_size=128))
    assert_alike(results, test_x, test_y)


def test_a_timm_vit_prunes_alike_on_cuda_and_cpu():
    try:
        train = load_dataset("fashion-mnist", "train", os.environ.get("SNOWS_FASHION_MNIST"))
        test = load_dataset("fashion-mnist", "test", os.environ.get("SNOWS_FASHION_MNIST"))
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        pytest.skip(f"Fashion-MNIST not found: {err}")
    model = create_model("vit_tiny")  # a timm VisionTransformer, trained (assets/vit_tiny.safetensors)
    calib = stack_images(train, list(range(128)))[0]
    test_x, test_y = stack_images(test, list(range(2000)))
    results = cpu_and_cuda(model, calib, PruneConfig(pattern="2:4", n_calib=128, batch_size=128))
    assert_alike(results, test_x, test_y)


def test_the_exact_hvp_on_cuda_equals_the_cpu_one_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4)).double().eval()
    x = torch.randn(10, 6, dtype=torch.float64)
    products = {}
    for device in ("cpu", "cuda"):
        gm = trace(model.to(device).requires_grad_(False))
        node = prunable_nodes(gm)[1]
        mask = unstructured_mask(gm.get_submodule(node.target).weight.abs(), 0.5)
        problem, _ = layer_problem(gm, node, PrunedPath(gm, x.to(device), 10), k=2, mask=mask, batch_size=10)
        free = problem.dense_weight[mask] + 0.1
        batch = slice(0, problem.n)
        curvature = exact_curvature(lambda w: problem.taps(problem.weight_of(w), batch), problem.reference, free)  # noqa: B023
        v = torch.linspace(-1, 1, free.numel(), dtype=torch.float64, device=device)
        products[device] = (curvature.hvp(v).cpu(), curvature.grad.cpu())
    torch.testing.assert_close(products["cuda"], products["cpu"], rtol=1e-10, atol=1e-12)


def test_peak_memory_on_cuda_is_the_allocators_peak():
    device = torch.device("cuda")
    with PeakMemory(device) as memory:
        block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
        del block
    assert 64 * 2**20 <= memory.peak <= torch.cuda.memory_allocated(device) + 64 * 2**20 + 2**20


def test_the_queue_runs_one_run_per_gpu_and_records_the_device(home, shared):
    store = RunStore(home)
    config = PruneConfig(sparsity=0.5, reconstruction="lstsq", n_calib=64, batch_size=64)
    specs = [
        RunSpec(
            "resnet20_cifar10",
            config=dataclasses.replace(config, seed=seed),
            eval_size=200,
            checkpoint=str(shared / "models" / "resnet20-cifar10.th"),
            data_root=str(shared / "data" / "cifar10-subset.npz"),
        )
        for seed in range(torch.cuda.device_count() + 1)  # one more run than GPUs: it has to wait
    ]
    ids = [submit(store, spec) for spec in specs]
    deadline = time.monotonic() + 600
    while any(store.get(i)["status"] not in ("done", "failed") for i in ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    runs = [store.get(i) for i in ids]
    assert [r["status"] for r in runs] == [RunStatus.DONE] * len(ids), [r["error"] for r in runs]
    results = [store.result(i) for i in ids]
    for result in results:
        gpu = int(result["device"].split(":")[1])
        assert result["environment"]["device_name"] == torch.cuda.get_device_name(gpu)
    # at no moment did two runs share a GPU
    spans = sorted((r["started"], r["finished"], res["device"]) for r, res in zip(runs, results, strict=True))
    for i, (start, _, device) in enumerate(spans):
        assert all(not (s < start < f and d == device) for s, f, d in spans[:i]), spans
