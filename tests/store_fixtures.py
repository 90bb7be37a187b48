"""A store holding one run in each state, with hand-made events and results (no pruning needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from snows_core import PruneConfig
from snows_core.runs import RunSpec, RunStatus, RunStore

LAYERS = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]


def spec(mask: str = "magnitude", sparsity: float = 0.5, k: int = 3, reconstruction: str = "snows", seed: int = 0):
    config = PruneConfig(sparsity=sparsity, mask=mask, k=k, reconstruction=reconstruction, seed=seed)
    return RunSpec(model="resnet20", config=config)


def solve_events(store: RunStore, run_id: str, layers: list[str], trajectory: bool = True) -> None:
    """run_started, then per layer: layer_started, two Newton steps, layer_done (and an evaluation)."""
    store.append_event(run_id, "run_started", {"kind": "run_started", "layers": LAYERS, "device": "cpu"})
    for i, layer in enumerate(layers):
        loss = 1.0 / (i + 1)
        store.append_event(run_id, "layer_started", {"kind": "layer_started", "layer": layer, "index": i})
        for step in (1, 2):
            store.append_event(
                run_id,
                "newton_step",
                {
                    "kind": "newton_step",
                    "layer": layer,
                    "step": step,
                    "loss": loss / step,
                    "loss_after": loss / (step + 1),
                    "cg_iters": 10,
                    "cg_residual": 1e-3,
                    "step_size": 1.0 if step == 1 else 0.9,
                    "seconds": 0.5,
                    "cg_stop": "tolerance" if step == 1 else "cap",
                    "cg_trace": [[1, 0.5, 0.2], [2, 0.01, 0.25]] if step == 1 else [[1, 0.6, 0.1], [2, 0.2, 0.12]],
                    "line_search": [[1.0, loss / 2, 1]] if step == 1 else [[1.0, 2.0, 0], [0.9, loss / 3, 1]],
                },
            )
        report = {
            "name": layer,
            "loss_before": 2 * loss,
            "loss_warm": loss,
            "loss_after": loss / 3,
            "newton_steps": 2,
            "cg_iters": 20,
            "seconds": 1.0,
            "peak_mem": 2**30,
            "kept": 50,
            "numel": 100,
            "sparsity": 0.5,
        }
        store.append_event(run_id, "layer_done", {"kind": "layer_done", "layer": layer, "index": i, "report": report})
        if trajectory:
            store.append_event(
                run_id,
                "evaluation",
                {"kind": "evaluation", "layer": layer, "index": i, "top1": 0.9 - i / 100, "top1_mask_only": 0.8},
            )


def staged_events() -> list[dict]:
    """Two layers pruned in two passes after a sensitivity scan: what prune_model emits with stages=2."""
    events: list[dict] = [{"kind": "run_started", "layers": ["a", "b"], "device": "cpu", "stages": 2}]
    events += [
        {"kind": "layer_scanned", "layer": name, "index": i, "n_layers": 2, "sparsities": [0.5, 0.9], "losses": loss}
        for i, (name, loss) in enumerate((("a", [0.1, 1.0]), ("b", [0.01, 0.2])))
    ]
    events.append({"kind": "allocation", "allocation": "sensitivity", "sparsities": {"a": 0.6, "b": 0.8}, "scan": None})
    for stage in (1, 2):
        for i, name in enumerate(["a", "b"]):
            events.append({"kind": "layer_started", "layer": name, "index": i, "stage": stage})
            step = {"kind": "newton_step", "layer": name, "step": 1, "loss": 1.0 * stage, "loss_after": 0.5 * stage}
            events.append(
                {**step, "cg_iters": 10, "cg_residual": 0.1, "step_size": 1.0, "seconds": 0.1, "stage": stage}
            )
            report = {"name": name, "loss_before": 2.0, "loss_warm": 1.0, "loss_after": 0.5 * stage, "newton_steps": 1}
            report |= {"cg_iters": 10, "seconds": 1.0, "peak_mem": 0, "kept": 40, "numel": 100, "sparsity": 0.3 * stage}
            events.append({"kind": "layer_done", "layer": name, "index": i, "stage": stage, "report": report})
    return events


def result(final: float, mask_only: float = 0.8, seed: int = 0) -> dict:
    return {
        "top1_dense": 0.93,
        "top1_mask_only": mask_only,
        "top1_final": final,
        "seconds": 12.0,
        "sparsity": 0.5,
        "peak_mem": 2**30,
        "calib_digest": f"digest-{seed}",
        "eval_subset": "fashion-mnist:test[:1000]",
        "environment": {"torch": "2.14.1"},
    }


def populate(home: Path) -> dict[str, str]:
    """Runs done (magnitude and wanda, K 0 and 3), failed, cancelled and running; returns ids by role."""
    store = RunStore(home)
    ids = {}
    for role, s, final in (
        ("done", spec(), 0.91),
        ("done_wanda", spec(mask="wanda"), 0.92),
        ("done_k0", spec(k=0), 0.9),
        ("done_wanda_k0", spec(mask="wanda", k=0), 0.905),
    ):
        ids[role] = store.create(s, "0.1.0", sweep_id="sweep-test")
        store.claim_next(pid=1)
        solve_events(store, ids[role], LAYERS)
        store.finish(ids[role], RunStatus.DONE, result(final))
    ids["failed"] = store.create(spec(sparsity=0.7), "0.1.0")
    store.claim_next(pid=1)
    store.finish(ids["failed"], RunStatus.FAILED, error="Traceback: RuntimeError: boom")
    ids["cancelled"] = store.create(spec(sparsity=0.8), "0.1.0")
    store.claim_next(pid=1)
    solve_events(store, ids["cancelled"], LAYERS[:1], trajectory=False)
    store.finish(ids["cancelled"], RunStatus.CANCELLED, error="cancelled by request")
    ids["running"] = store.create(spec(sparsity=0.9), "0.1.0")
    stand_in = subprocess.Popen(["sleep", "600"])  # a live worker pid; the `home` fixture kills it
    store.claim_next(pid=stand_in.pid)
    solve_events(store, ids["running"], LAYERS[:1], trajectory=False)
    return ids


def add_masks(home: Path, run_id: str, seed: int) -> dict[str, np.ndarray]:
    """masks.safetensors for a finished run: each of LAYERS a seeded (8, 4, 3, 3) mask, half kept."""
    rng = np.random.default_rng(seed)
    masks = {layer: rng.permutation(np.arange(288) < 144).reshape(8, 4, 3, 3) for layer in LAYERS}
    folder = RunStore(home).run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(masks, str(folder / "masks.safetensors"))  # bool, as a run stores them
    return masks


def add_staged_run(home: Path) -> str:
    """A finished run of two layers in two passes after a sensitivity scan (events as prune_model emits them)."""
    store = RunStore(home)
    config = PruneConfig(sparsity=0.7, allocation="sensitivity", stages=2, k=1)
    run_id = store.create(RunSpec(model="mlp", config=config), "0.1.0")
    store.claim_next(pid=1)
    for event in staged_events():
        store.append_event(run_id, event["kind"], event)
    store.finish(run_id, RunStatus.DONE, result(0.88))
    return run_id


def add_sensitivity_run(home: Path) -> str:
    """A finished sensitivity scan of the mlp's two pruned layers; layer "5" at 50% changed nothing (checked)."""
    store = RunStore(home)
    config = PruneConfig(sparsity=0.9, reconstruction="lstsq", n_calib=64)
    run_id = store.create(RunSpec(model="mlp", config=config, eval_size=100, kind="sensitivity"), "0.1.0")
    store.claim_next(pid=1)
    store.append_event(run_id, "run_started", {"kind": "run_started", "layers": ["3", "5"], "device": "cpu"})
    grid = [0.5, 0.9, 0.98]
    for index, (layer, top1, checks) in enumerate(
        (("3", [0.9, 0.8, 0.5], ["", "", ""]), ("5", [0.9, 0.89, 0.85], ["no effect on these images, checked", "", ""]))
    ):
        cells = {
            "window_loss_mask": [0.1, 0.5, 0.9], "window_loss": [0.05, 0.2, 0.6], "output_loss": [0.01, 0.1, 0.3],
            "top1": top1, "logit_change": [0.0 if checks[0] else 0.1, 0.3, 0.9], "removed": [10, 20, 30],
            "checks": checks,
        }  # fmt: skip
        event = {"kind": "layer_sensitivity", "layer": layer, "index": index, "n_layers": 2, "sparsities": grid}
        store.append_event(run_id, "layer_sensitivity", {**event, **cells, "top1_dense": 0.9, "numel": 100})
    store.finish(
        run_id,
        RunStatus.DONE,
        {"kind": "sensitivity", "top1_dense": 0.9, "suggested_sparsities": {"3": 0.85, "5": 0.95}},
    )
    return run_id
