"""Run bundles: one folder per run that moves a result between machines.

Layout of an exported bundle::

    bundle.json         format, run row (id, status, times, library version), spec, result, environment
    layers.csv          the per-layer report, one row per layer (also layers.json)
    events.jsonl        every stored event, oldest first
    model.safetensors   pruned weights (fp32, exactly those that were scored)
    masks.safetensors   masks, True = kept
    report.json         the worker's own report

`import_bundle` moves the artifacts into place and then inserts the run, its events and its result in
one transaction (removing the artifacts if that fails), so a failed import leaves no run behind. The
run keeps its id and records where it came from; its result carries the calibration sample, evaluation
subset and environment that decide whether it is comparable with local runs.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from snows_core.runs.store import FINAL, RunStore

__all__ = ["export_bundle", "import_bundle", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "snows-run-bundle/1"
RUN_ID = re.compile(r"\d{8}-\d{6}-[\w.-]+")  # a store's own ids; nothing that leaves $SNOWS_HOME/runs/
REQUIRED_RUN_FIELDS = ("id", "status", "version", "created")
ARTIFACTS = ("model.safetensors", "masks.safetensors", "report.json")
LAYER_COLUMNS = (
    "name",
    "sparsity",
    "loss_before",
    "loss_warm",
    "loss_after",
    "newton_steps",
    "cg_iters",
    "seconds",
    "peak_mem",
    "kept",
    "numel",
)


def export_bundle(store: RunStore, run_id: str, out: str | Path) -> Path:
    """Write the bundle of a finished run into the folder `out` (created; must be empty if it exists)."""
    out = Path(out)
    run = store.get(run_id)
    if run["status"] not in FINAL:
        raise ValueError(f"run {run_id} is {run['status']}; export it when it has finished")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"export folder {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    result = store.result(run_id)
    row = {k: run[k] for k in ("id", "status", "version", "sweep_id", "created", "started", "finished", "error")}
    bundle = {
        "format": BUNDLE_FORMAT,
        "run": {**row, "executor": run["executor"], "scheduler": run["scheduler"], "spec_hash": run["spec_hash"]},
        "spec": run["spec"],
        "result": result,
        "environment": (result or {}).get("environment"),
    }
    (out / "bundle.json").write_text(json.dumps(bundle, indent=2))
    with open(out / "events.jsonl", "w") as f:
        for event in store.events(run_id):
            f.write(json.dumps({k: v for k, v in event.items() if k != "id"}) + "\n")
    source = store.run_dir(run_id)
    for name in ARTIFACTS:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    layers = _layers(source / "report.json")
    (out / "layers.json").write_text(json.dumps(layers, indent=2))
    with open(out / "layers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, LAYER_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(layers)
    return out


def import_bundle(store: RunStore, folder: str | Path) -> str:
    """Add the run in bundle `folder` to `store` (with its events, result and artifacts); returns its id."""
    folder = Path(folder)
    manifest = folder / "bundle.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder} is not a run bundle: it has no bundle.json")
    bundle = json.loads(manifest.read_text())
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"bundle format must be {BUNDLE_FORMAT!r}; got {bundle.get('format')!r}")
    missing = [key for key in REQUIRED_RUN_FIELDS if key not in bundle.get("run", {})] + [
        key for key in ("spec",) if key not in bundle
    ]
    if missing:
        raise ValueError(f"bundle.json lacks {', '.join(missing)}")
    run = {**bundle["run"], "spec": bundle["spec"], "imported_from": _origin(bundle, folder)}
    if not RUN_ID.fullmatch(str(run["id"])) or ".." in run["id"]:
        raise ValueError(f"bundle run id {run['id']!r} is not a run id (such as 20261126-142233-resnet20-a1b2c3)")
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.strip()]
    try:
        store.get(run["id"])
    except KeyError:
        pass
    else:
        raise ValueError(f"run {run['id']!r} is already in {store.path}")
    target = store.run_dir(run["id"])
    shutil.rmtree(target, ignore_errors=True)  # the leftovers of an import killed half-way
    staging = Path(tempfile.mkdtemp(dir=store.home, prefix=".import-"))
    for name in ARTIFACTS:
        if (folder / name).is_file():
            shutil.copy2(folder / name, staging / name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    try:
        store.import_run(run, events, bundle.get("result"))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return run["id"]


def _layers(report: Path) -> list[dict[str, Any]]:
    if not report.is_file():
        return []
    return json.loads(report.read_text()).get("layers", [])


def _origin(bundle: dict[str, Any], folder: Path) -> str:
    host = (bundle.get("environment") or {}).get("host") or "unknown host"
    return f"{host}:{folder.resolve()}"
