"""Export and import of run bundles, the pruning trajectory, and what a result records for fair comparison."""

import csv
import json
import sqlite3

import pytest
from safetensors.torch import load_file

from snows_core import PruneConfig
from snows_core.data import load_dataset
from snows_core.metrics import evaluate
from snows_core.models import create_model
from snows_core.runs import RunSpec, RunStatus, RunStore
from snows_core.runs.bundle import export_bundle, import_bundle
from snows_core.runs.pipeline import execute

SPEC = RunSpec(model="mlp", config=PruneConfig(sparsity=0.7, k=1, n_calib=64), eval_size=300, trajectory=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A store holding one done mlp run computed in this process (no worker needed)."""
    home = tmp_path_factory.mktemp("home")
    store = RunStore(home)
    run = store.create(SPEC, "test")
    store.claim_next(pid=1)
    result = execute(SPEC, store.run_dir(run), lambda e: store.append_event(run, e.kind, e.to_dict()))
    store.finish(run, RunStatus.DONE, result)
    return store, run


def test_the_trajectory_ends_at_the_final_and_mask_only_accuracies(finished):
    store, run = finished
    result = store.result(run)
    points = result["trajectory"]
    assert [p["layer"] for p in points] == list(result["layer_sparsity"])
    assert points[-1]["top1"] == result["top1_final"]
    assert points[-1]["top1_mask_only"] == result["top1_mask_only"]
    assert [e["index"] for e in store.events(run) if e["kind"] == "evaluation"] == list(range(len(points)))


def test_a_result_records_what_makes_runs_comparable(finished):
    store, run = finished
    result = store.result(run)
    assert len(result["calib_ids"]) == 64 and len(set(result["calib_ids"])) == 64
    assert result["eval_subset"] == "fashion-mnist:test[:300]" and result["eval_images"] == 300
    env = result["environment"]
    assert env["torch"] and env["snows_core"] and env["device"] == "cpu" and "git_commit" in env


def test_exported_weights_reproduce_the_stored_top1_exactly(finished, tmp_path):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    bundle = json.loads((out / "bundle.json").read_text())
    assert bundle["spec"] == SPEC.to_dict() and bundle["environment"]["torch"]
    model = create_model("mlp", pretrained=False)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    test = load_dataset("fashion-mnist", "test")
    assert evaluate(model, test, limit=SPEC.eval_size)["top1"] == store.result(run)["top1_final"]
    masks = load_file(str(out / "masks.safetensors"))
    for name, keep in masks.items():
        assert not model.get_submodule(name).weight[~keep].any()  # pruned entries are exactly zero
    with open(out / "layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert (
        [r["name"] for r in rows] == list(masks) == [r["name"] for r in json.loads((out / "layers.json").read_text())]
    )
    assert float(rows[0]["loss_after"]) <= float(rows[0]["loss_before"])


def test_an_imported_bundle_is_a_done_run_with_its_events_and_artifacts(finished, tmp_path):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    other = RunStore(tmp_path / "other-home")
    assert import_bundle(other, out) == run
    imported = other.get(run)
    assert imported["status"] == "done" and imported["imported_from"].endswith(str(out))
    assert imported["spec_hash"] == store.get(run)["spec_hash"]
    assert other.result(run) == store.result(run)
    assert [e["kind"] for e in other.events(run)] == [e["kind"] for e in store.events(run)]
    assert (other.run_dir(run) / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already"):
        import_bundle(other, out)
    assert len(other.list()) == 1


def test_export_refuses_unfinished_runs_and_import_refuses_non_bundles(tmp_path):
    store = RunStore(tmp_path / "home")
    queued = store.create(SPEC, "test")
    with pytest.raises(ValueError, match="queued"):
        export_bundle(store, queued, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="bundle.json"):
        import_bundle(store, tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bundle.json").write_text(json.dumps({"format": "zip"}))
    with pytest.raises(ValueError, match="format"):
        import_bundle(store, tmp_path / "bad")
    assert len(store.list()) == 1 and not (store.home / "runs").exists()


@pytest.mark.parametrize("bad_id", ["../../outside", "20261126-142233-..", "x"])
def test_import_refuses_run_ids_that_are_not_ids(finished, tmp_path, bad_id):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["run"]["id"] = bad_id
    (out / "bundle.json").write_text(json.dumps(manifest))
    (tmp_path / "outside").mkdir()
    other = RunStore(tmp_path / "home" / "deep")
    with pytest.raises(ValueError, match="not a run id"):
        import_bundle(other, out)
    assert (tmp_path / "outside").exists() and other.list() == []


def test_a_store_from_the_previous_version_gains_the_new_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "runs.db")
    db.execute(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, spec TEXT NOT NULL, spec_hash TEXT NOT NULL, version TEXT "
        "NOT NULL, status TEXT NOT NULL, sweep_id TEXT, worker_pid INTEGER, heartbeat REAL, created REAL NOT "
        "NULL, started REAL, finished REAL, error TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0, "
        "cancel_time REAL)"
    )
    db.execute(
        "INSERT INTO runs (id, spec, spec_hash, version, status, created) VALUES ('old', ?, 'h', 'v', 'done', 1.0)",
        (json.dumps(SPEC.to_dict()),),
    )
    db.commit()
    db.close()
    store = RunStore(tmp_path)
    old = store.get("old")
    assert old["executor"] == "local" and old["imported_from"] is None
    assert store.create(SPEC, "v") in {r["id"] for r in store.list()}


def test_a_store_that_kept_the_scheduler_in_the_executor_column_is_migrated_in_place(tmp_path):
    RunStore(tmp_path)
    db = sqlite3.connect(tmp_path / "runs.db")
    db.execute("ALTER TABLE runs DROP COLUMN scheduler")  # the layout of the version before
    for run_id, executor in (("here", "local"), ("there", "tcp://10.0.0.5:8786")):
        db.execute(
            "INSERT INTO runs (id, spec, spec_hash, version, status, created, executor) "
            "VALUES (?, ?, 'h', 'v', 'done', 1.0, ?)",
            (run_id, json.dumps(SPEC.to_dict()), executor),
        )
    db.commit()
    db.close()
    store = RunStore(tmp_path)
    assert [(r["id"], r["executor"], r["scheduler"]) for r in store.list()] == [
        ("here", "local", None),
        ("there", "dask", "tcp://10.0.0.5:8786"),
    ]
    assert RunStore(tmp_path).list(executor="dask", scheduler="tcp://10.0.0.5:8786")[0]["id"] == "there"


def test_a_bundle_from_before_the_scheduler_column_imports_as_a_dask_run(finished, tmp_path):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    manifest = json.loads((out / "bundle.json").read_text())
    del manifest["run"]["scheduler"]
    manifest["run"]["executor"] = "tcp://10.0.0.5:8786"
    (out / "bundle.json").write_text(json.dumps(manifest))
    other = RunStore(tmp_path / "other-home")
    imported = other.get(import_bundle(other, out))
    assert (imported["executor"], imported["scheduler"]) == ("dask", "tcp://10.0.0.5:8786")
