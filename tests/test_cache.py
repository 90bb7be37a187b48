"""The per-store cache of the dense evaluation: hit for the same inputs, miss for changed content at the same
path, a corrupt entry rebuilt, concurrent fills leaving one whole entry, switched off by SNOWS_CACHE=off."""

import json
import multiprocessing

import pytest
import torch
import torch.nn as nn
from test_zoo import needs_fashion

from snows_core import PruneConfig
from snows_core.io.data import ImageTensorDataset
from snows_core.runs import RunSpec
from snows_core.runs.cache import cached_evaluation, dataset_digest, model_digest, store_cache

CPU = torch.device("cpu")


def inputs(seed: int = 0) -> tuple[nn.Module, ImageTensorDataset]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    return model, ImageTensorDataset(images, torch.randint(0, 3, (20,)), (0.5,), (0.25,))


class Counter:
    def __init__(self, top1: float = 0.75) -> None:
        self.calls, self.top1 = 0, top1

    def __call__(self) -> dict:
        self.calls += 1
        return {"top1": self.top1, "images": 20}


def test_the_same_inputs_are_computed_once_per_store(tmp_path):
    model, data = inputs()
    compute = Counter()
    with store_cache(tmp_path):
        first = cached_evaluation(model, data, CPU, 20, compute)
        again = cached_evaluation(model, data, CPU, 20, compute)
    assert first == again == {"top1": 0.75, "images": 20} and compute.calls == 1
    assert len(list((tmp_path / "dense").glob("*.json"))) == 1
    with store_cache(tmp_path / "other"):  # another store: its own cache
        cached_evaluation(model, data, CPU, 20, compute)
    assert compute.calls == 2


def test_outside_a_store_cache_or_switched_off_nothing_is_cached(tmp_path, monkeypatch):
    model, data = inputs()
    compute = Counter()
    cached_evaluation(model, data, CPU, 20, compute)
    monkeypatch.setenv("SNOWS_CACHE", "off")
    with store_cache(tmp_path):
        cached_evaluation(model, data, CPU, 20, compute)
        cached_evaluation(model, data, CPU, 20, compute)
    assert compute.calls == 3 and not (tmp_path / "dense").exists()


@pytest.mark.parametrize(
    "change",
    ["one weight", "one pixel", "one label", "the limit", "the normalisation"],
)
def test_changed_content_is_a_new_entry_never_the_stale_one(tmp_path, change):
    model, data = inputs()
    with store_cache(tmp_path):
        cached_evaluation(model, data, CPU, 10, Counter(0.5))
        limit = 10
        if change == "one weight":
            with torch.no_grad():
                model[1].weight[0, 0] += 1e-6  # the same checkpoint path, new content
        elif change == "one pixel":
            data.images[3, 0, 0, 0] ^= 1
        elif change == "one label":
            data.labels[9] = (data.labels[9] + 1) % 3
        elif change == "the limit":
            limit = 12
        else:
            data.std = (0.3,)
        assert cached_evaluation(model, data, CPU, limit, Counter(0.25))["top1"] == 0.25


def test_a_change_beyond_the_scored_images_keeps_the_entry(tmp_path):
    model, data = inputs()
    with store_cache(tmp_path):
        cached_evaluation(model, data, CPU, 10, Counter(0.5))
        data.images[15] = 0  # not among the 10 scored
        assert cached_evaluation(model, data, CPU, 10, Counter(0.25))["top1"] == 0.5


@pytest.mark.parametrize(
    "corrupt", [b"", b"{not json", b'{"key": "another", "result": {"top1": 0.5, "images": 20}}', b"top1 2.0"]
)
def test_a_corrupt_entry_is_rebuilt_not_trusted(tmp_path, corrupt):
    model, data = inputs()
    with store_cache(tmp_path):
        cached_evaluation(model, data, CPU, 20, Counter(0.5))
        (entry,) = (tmp_path / "dense").glob("*.json")
        key = json.loads(entry.read_text())["key"]
        text = corrupt.replace(b"top1 2.0", json.dumps({"key": key, "result": {"top1": 2.0, "images": 20}}).encode())
        entry.write_bytes(text)
        compute = Counter(0.5)
        assert cached_evaluation(model, data, CPU, 20, compute) == {"top1": 0.5, "images": 20}
        assert compute.calls == 1 and json.loads(entry.read_text()) == {"key": key, "result": compute()}


def _fill(folder: str, barrier, results) -> None:
    model, data = inputs()
    barrier.wait()
    with store_cache(folder):
        results.put(cached_evaluation(model, data, CPU, 20, Counter(0.5)))


def test_two_workers_filling_one_entry_at_once_leave_one_whole_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_fill, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert [results.get(timeout=10) for _ in workers] == [{"top1": 0.5, "images": 20}] * 2
    (entry,) = (tmp_path / "dense").iterdir()  # no temporary file left behind
    assert json.loads(entry.read_text())["result"] == {"top1": 0.5, "images": 20}


def test_digests_see_content_not_identity():
    model, data = inputs()
    twin, twin_data = inputs()
    assert model_digest(model) == model_digest(twin) and dataset_digest(data, 5) == dataset_digest(twin_data, 5)
    assert dataset_digest(data, 5) != dataset_digest(data, 6)
    assert dataset_digest(object(), 5) is None  # no image tensors (an ImageFolder): not cached


@needs_fashion
def test_a_sweeps_runs_score_each_network_once(tmp_path, monkeypatch):
    from snows_core.runs import pipeline

    scored = []
    real = pipeline.evaluate
    monkeypatch.setattr(pipeline, "evaluate", lambda model, *a, **k: scored.append(model) or real(model, *a, **k))
    configs = [
        PruneConfig(sparsity=0.5, reconstruction="none", n_calib=32),
        PruneConfig(sparsity=0.7, reconstruction="none", n_calib=32),
        PruneConfig(sparsity=0.5, reconstruction="snows", k=1, n_calib=32, newton_passes=1, cg_iters=2),
    ]
    with store_cache(tmp_path):
        results = [pipeline.run_spec(RunSpec(model="mlp", config=c, eval_size=200), lambda e: None)[1] for c in configs]
    # the dense network, the 50% and 70% masks alone (a run without a re-fit ends as its mask alone: not scored
    # again), then only the re-fit network of the third run, whose mask is the first run's
    assert len(scored) == 4
    assert results[0]["top1_dense"] == results[1]["top1_dense"] == results[2]["top1_dense"] > 0.5
    assert results[0]["top1_final"] == results[0]["top1_mask_only"] == results[2]["top1_mask_only"]
