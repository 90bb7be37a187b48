"""Export and import of run bundles, the pruning trajectory, and what a result records for fair comparison."""

import csv
import io
import json
import multiprocessing
import re
import sqlite3
import stat
import zipfile

import pytest
from safetensors.torch import load_file

from snows_core import PruneConfig
from snows_core.io.data import load_dataset
from snows_core.measure.metrics import evaluate
from snows_core.models import create_model
from snows_core.runs import RunSpec, RunStatus, RunStore
from snows_core.runs.bundle import export_bundle, export_zip, import_bundle, import_zip
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


def tamper(out, edit) -> None:
    manifest = json.loads((out / "bundle.json").read_text())
    (out / "bundle.json").write_text(json.dumps(edit(manifest)))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: {**m, "result": "poison"}, "result must be an object"),
        (lambda m: {**m, "run": {**m["run"], "created": "yesterday"}}, "'created' has the wrong type"),
        (lambda m: {**m, "run": {**m["run"], "finished": [1]}}, "'finished' has the wrong type"),
        (lambda m: {**m, "result": {**m["result"], "top1_final": "0.9"}}, "'top1_final' has the wrong type"),
        (lambda m: {**m, "run": {**m["run"], "status": "running"}}, "only finished runs"),
        (lambda m: {**m, "run": [m["run"]]}, "run must be an object"),
        (lambda m: [m], "bundle.json must be an object"),
        (lambda m: {**m, "spec": "mlp"}, "spec must be an object"),
        (lambda m: {**m, "run": {**m["run"], "created": 1e300}}, "created must be a time"),
        (lambda m: {**m, "run": {**m["run"], "created": -1e18}}, "created must be a time"),
        (lambda m: {**m, "run": {**m["run"], "finished": float("inf")}}, "finished must be a time"),
        (lambda m: {**m, "result": {**m["result"], "top1_final": 1e300}}, "top1_final must lie in [0, 1]"),
        (lambda m: {**m, "result": {**m["result"], "sparsity": -5}}, "sparsity must lie in [0, 1]"),
        (lambda m: {**m, "result": {**m["result"], "seconds": -1}}, "seconds must be a finite number >= 0"),
        (lambda m: {**m, "spec": {**m["spec"], "extra": 1}}, "unknown run spec field(s) ['extra']"),
        (lambda m: {**m, "spec": {k: v for k, v in m["spec"].items() if k != "model"}}, "a run spec needs a model"),
        (lambda m: {**m, "spec": {**m["spec"], "config": "fast"}}, "config must be an object; got str"),
        (lambda m: {**m, "spec": {**m["spec"], "config": [1]}}, "config must be an object; got list"),
        (lambda m: {**m, "spec": {**m["spec"], "config": {"layers": 5}}}, "layers must be a list of layer names"),
    ],
)
def test_an_ill_typed_bundle_is_refused_and_stores_nothing(finished, tmp_path, edit, message):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    tamper(out, edit)
    other = RunStore(tmp_path / "other")
    with pytest.raises(ValueError, match=re.escape(message)):
        import_bundle(other, out)
    assert other.list() == [] and not (other.home / "runs").exists()


@pytest.mark.parametrize("report", ["[1, 2]", '{"layers": [1]}', '{"layers": "all"}'])
def test_a_bundle_whose_report_is_not_a_report_is_refused(finished, tmp_path, report):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    (out / "report.json").write_text(report)
    other = RunStore(tmp_path / "other")
    with pytest.raises(ValueError, match="report.json"):
        import_bundle(other, out)
    assert other.list() == []


def test_a_run_whose_stored_report_is_broken_still_exports(finished, tmp_path):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    imported = import_bundle(RunStore(tmp_path / "other"), out)
    other = RunStore(tmp_path / "other")
    (other.run_dir(imported) / "report.json").write_text('{"layers": [1]}')  # imported before the check existed
    again = export_bundle(other, imported, tmp_path / "again")
    assert json.loads((again / "layers.json").read_text()) == [] and (again / "bundle.json").is_file()


@pytest.mark.parametrize(
    "line,message",
    [
        ("[1, 2]", "line 1 must be an object with a kind"),
        ('{"kind": "newton_step", "time": 1.0, "loss": "low"}', "'loss' has the wrong type"),
        ('{"kind": "layer_done", "time": "noon"}', "time must be a number"),
        ("{not json", "line 1 is not JSON"),
        ('{"kind": "layer_done", "time": NaN}', "time must be a number"),
    ],
)
def test_an_events_line_that_is_not_an_event_is_refused(finished, tmp_path, line, message):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    (out / "events.jsonl").write_text(line + "\n")
    other = RunStore(tmp_path / "other")
    with pytest.raises(ValueError, match=re.escape(message)):
        import_bundle(other, out)
    assert other.list() == []


def test_an_imported_run_is_never_a_cache_hit_for_a_local_submit(finished, tmp_path):
    store, run = finished
    other = RunStore(tmp_path / "other")
    import_bundle(other, export_bundle(store, run, tmp_path / "bundle"))
    assert store.find_done(SPEC.content_hash(), "test") == run
    assert other.get(run)["status"] == "done" and other.find_done(SPEC.content_hash(), "test") is None


def _import_racing(home: str, folder: str, barrier, outcomes) -> None:
    barrier.wait()
    try:
        outcomes.put(import_bundle(RunStore(home), folder))
    except ValueError as err:
        outcomes.put(f"refused: {err}")


def test_two_concurrent_imports_of_one_bundle_give_one_run_and_one_refusal(finished, tmp_path):
    store, run = finished
    out = export_bundle(store, run, tmp_path / "bundle")
    ctx = multiprocessing.get_context("spawn")
    for trial in range(3):
        home = tmp_path / f"home-{trial}"
        RunStore(home)
        barrier, outcomes = ctx.Barrier(2), ctx.Queue()
        racers = [ctx.Process(target=_import_racing, args=(str(home), str(out), barrier, outcomes)) for _ in "ab"]
        for racer in racers:
            racer.start()
        results = sorted(outcomes.get(timeout=120) for _ in racers)
        for racer in racers:
            racer.join(timeout=60)
        assert results[0] == run and results[1].startswith("refused") and "already" in results[1]
        assert [r["id"] for r in RunStore(home).list()] == [run]
        assert sorted(p.name for p in (home / "runs").iterdir()) == [run]  # no staging folder left
        assert (home / "runs" / run / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_a_zip_round_trips_and_hostile_archives_are_refused_before_extraction(finished, tmp_path):
    store, run = finished
    data = export_zip(store, run)
    other = RunStore(tmp_path / "other")
    assert import_zip(other, data) == run and other.result(run) == store.result(run)

    def archive(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
            for info, payload in entries:
                out.writestr(info, payload)
        return buffer.getvalue()

    manifest = zipfile.ZipFile(io.BytesIO(data)).read(f"{run}/bundle.json")
    link = zipfile.ZipInfo(f"{run}/model.safetensors")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    hostile = {
        "symbolic link": [(f"{run}/bundle.json", manifest), (link, b"/etc/passwd")],
        "not a bundle file name": [(f"{run}/bundle.json", manifest), ("/abs/model.safetensors", b"x")],
        "at most 16": [(f"{run}/bundle.json", manifest)] + [(f"{run}/f{i}", b"x") for i in range(20)],
        "exactly one run bundle": [(f"{run}/x.json", b"{}")],
        "refused": [(f"{run}/bundle.json", manifest), (f"{run}/model.safetensors", bytes(100 << 20))],
    }
    fresh = RunStore(tmp_path / "fresh")
    for message, entries in hostile.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            import_zip(fresh, archive(entries))
    with pytest.raises(ValueError, match="not a zip archive"):
        import_zip(fresh, b"PK\x03\x04 truncated")
    assert fresh.list() == [] and not (fresh.home / "runs").exists()


def test_export_into_an_existing_file_is_refused_in_one_line(finished, tmp_path, monkeypatch, capsys):
    from snows_core.cli import main

    store, run = finished
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    with pytest.raises(ValueError, match="is a file"):
        export_bundle(store, run, taken)
    monkeypatch.setenv("SNOWS_HOME", str(store.home))
    assert main(["export", run, "--out", str(taken)]) == 2
    assert "is a file" in capsys.readouterr().err and taken.read_text() == "keep me"
