"""RunSpec and the SQLite run store (the first slice of background runs)."""

import multiprocessing
import re
import time

import pytest

from snows_core import PruneConfig
from snows_core.runs import RunSpec, RunStatus, RunStore


def spec(**config) -> RunSpec:
    return RunSpec(model="mlp", config=PruneConfig(**{"sparsity": 0.5, "n_calib": 64, **config}))


def test_spec_round_trips_and_hashes_stably():
    a = spec(k=1)
    assert RunSpec.from_dict(a.to_dict()) == a
    assert a.dataset == "fashion-mnist"  # the model's own
    assert a.content_hash() == spec(k=1).content_hash()
    assert a.content_hash() != spec(k=2).content_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", a.content_hash())


@pytest.mark.parametrize("reconstruction", ["none", "lstsq"])
def test_updates_without_depth_hash_alike_from_every_entry_point(reconstruction):
    from snows_core.cli import _parser, _run_spec
    from snows_core.runs.sweep import grid_specs

    argv = ["submit", "--model", "mlp", "--sparsity", "0.5", "--n-calib", "64", "--reconstruction", reconstruction]
    from_cli = _run_spec(_parser().parse_args(argv))  # the CLI's default K is 3
    from_sweep = grid_specs(spec(k=3), {"reconstruction": [reconstruction]})[0]
    assert from_cli.config.k == from_sweep.config.k == spec(reconstruction=reconstruction, k=5).config.k == 0
    assert from_cli.content_hash() == from_sweep.content_hash()
    assert spec(reconstruction="snows", k=3).config.k == 3  # SNOWS keeps its depth


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"model": "no_such_model"}, "model"),
        ({"model": "mlp", "dataset": "mnist"}, "dataset"),
        ({"model": "mlp", "eval_size": 0}, "eval_size"),
        ({"model": "mlp", "trajectory": "yes"}, "trajectory"),
    ],
)
def test_bad_specs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RunSpec(**kwargs)


def test_runs_move_through_the_queue_in_order(tmp_path):
    store = RunStore(tmp_path)
    first, second = store.create(spec(k=1), "v1"), store.create(spec(k=1), "v1")
    assert first != second and re.fullmatch(r"\d{8}-\d{6}-mlp-[0-9a-f]{6}", first)
    assert [r["status"] for r in store.list()] == ["queued", "queued"]
    claimed = store.claim_next(pid=4242)
    assert claimed["id"] == first and claimed["status"] == "running" and claimed["worker_pid"] == 4242
    store.append_event(first, "layer_started", {"layer": "1"})
    store.append_event(first, "layer_done", {"layer": "1"})
    events = store.events(first)
    assert [e["kind"] for e in events] == ["layer_started", "layer_done"]
    assert store.events(first, after=events[0]["id"])[0]["kind"] == "layer_done"
    store.finish(first, RunStatus.DONE, {"top1_final": 0.9})
    assert store.get(first)["status"] == "done" and store.result(first) == {"top1_final": 0.9}
    assert store.claim_next(pid=1)["id"] == second
    assert store.claim_next(pid=1) is None


def test_cancel_queued_at_once_and_running_by_request(tmp_path):
    store = RunStore(tmp_path)
    running, queued = store.create(spec(), "v1"), store.create(spec(), "v1")
    store.claim_next(pid=1)
    assert store.request_cancel(queued) == "cancelled"
    assert store.request_cancel(running) == "running"
    assert store.cancel_requested(running)  # the worker learns of the request at its next step
    assert not store.cancel_requested(store.create(spec(), "v1"))
    with pytest.raises(KeyError):
        store.request_cancel("nope")


def test_only_done_runs_of_the_same_version_are_reused(tmp_path):
    store = RunStore(tmp_path)
    s = spec()
    run = store.create(s, "v1")
    assert store.find_done(s.content_hash(), "v1") is None
    store.claim_next(pid=1)
    store.finish(run, RunStatus.FAILED, error="boom")
    assert store.find_done(s.content_hash(), "v1") is None
    done = store.create(s, "v1")
    store.claim_next(pid=1)
    store.finish(done, RunStatus.DONE, {})
    assert store.find_done(s.content_hash(), "v1") == done
    assert store.find_done(s.content_hash(), "v2") is None


def test_delete_forgets_the_run_its_events_result_and_artifacts(tmp_path):
    store = RunStore(tmp_path)
    run, kept = store.create(spec(), "v1"), store.create(spec(), "v1")
    store.claim_next(pid=1)
    store.append_event(run, "layer_done", {"layer": "1"})
    store.finish(run, RunStatus.DONE, {"top1_final": 0.9})
    store.run_dir(run).mkdir(parents=True)
    (store.run_dir(run) / "model.safetensors").write_bytes(b"weights")
    store.delete(run)
    assert [r["id"] for r in store.list()] == [kept]
    assert store.events(run) == [] and store.result(run) is None and not store.run_dir(run).exists()


def test_a_local_run_dies_with_its_process_and_a_dask_task_by_silence(tmp_path):
    store = RunStore(tmp_path)
    alive, dead = store.create(spec(), "v1"), store.create(spec(k=1), "v1")
    remote = store.create(spec(k=2), "v1", executor="dask", scheduler="tcp://h:8786")
    store.claim_next(pid=1)
    store.claim_next(pid=2)
    store.claim_next(pid=7, executor="dask", scheduler="tcp://h:8786")
    assert store.mark_dead(lambda pid, since: pid == 1, stale_after=60) == [dead]
    assert store.get(dead)["status"] == "failed" and store.get(dead)["error"] == "worker died"
    time.sleep(0.05)
    # silent for longer than stale_after: the local run with a live process stays, the Dask task fails
    assert store.mark_dead(lambda pid, since: True, stale_after=0.01) == [remote]
    assert store.get(alive)["status"] == "running"


def test_a_run_claimed_by_a_dispatcher_that_died_before_its_worker_started_is_queued_again(tmp_path):
    store = RunStore(tmp_path)
    first, second = store.create(spec(), "v1"), store.create(spec(k=1), "v1")
    claim = store.claim_next(pid=0)["started"]  # the dispatcher dies here, before its worker announces itself
    assert store.mark_dead(lambda pid, since: True, stale_after=60) == []
    assert store.get(first)["status"] == "running"  # not silent for long yet
    time.sleep(0.05)
    assert store.mark_dead(lambda pid, since: True, stale_after=0.01) == []  # none of it ran: nothing ended
    run = store.get(first)
    assert run["status"] == "queued" and run["worker_pid"] is None and run["started"] is None
    assert store.claim_next(pid=0)["id"] == first  # back at its place, ahead of the run queued after it
    assert not store.adopt(first, 4242, claim)  # the first claim's worker, starting late, must not run it
    assert store.adopt(first, 4343, store.get(first)["started"]) and store.get(first)["worker_pid"] == 4343
    assert store.get(second)["status"] == "queued"


def test_a_run_whose_worker_is_gone_after_a_cancel_request_ends_cancelled(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(spec(), "v1")
    store.claim_next(pid=1)
    assert store.request_cancel(run) == "running"
    assert store.mark_dead(lambda pid, since: False, stale_after=60) == [run]  # terminated after the grace
    assert store.get(run)["status"] == "cancelled" and "cancelled by request" in store.get(run)["error"]


def test_a_late_result_for_a_run_already_failed_is_refused(tmp_path):
    from snows_core.runs.process import finish_or_log

    store = RunStore(tmp_path)
    run = store.create(spec(), "v1")
    store.claim_next(pid=1)
    assert store.mark_dead(lambda pid, since: False, stale_after=60) == [run]
    store.run_dir(run).mkdir(parents=True)
    (store.run_dir(run) / "model.safetensors").write_bytes(b"weights written by the stalled worker")
    assert store.finish(run, RunStatus.DONE, {"top1_final": 0.9}) is False
    finish_or_log(store, run, RunStatus.DONE, {"top1_final": 0.9})
    assert store.get(run)["status"] == "failed" and store.result(run) is None
    assert not store.run_dir(run).exists()
    store.delete(run)
    finish_or_log(store, run, RunStatus.DONE, {"top1_final": 0.9})  # deleted meanwhile: logged, nothing raised
    assert not store.has(run)


def test_a_pid_counts_as_our_worker_only_if_its_process_is_older_than_the_last_heartbeat():
    import os
    import subprocess
    import sys

    from snows_core.runs.process import pid_alive

    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), since=time.time())
    assert not pid_alive(os.getpid(), since=time.time() - 10 * 24 * 3600)  # this process is younger: a reuse
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


def _submit_many(home: str, n: int) -> None:
    store = RunStore(home)
    for i in range(n):
        store.create(spec(seed=i), "v1")


@pytest.mark.slow
def test_two_processes_submitting_at_once_lose_nothing(tmp_path):
    RunStore(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_submit_many, args=(str(tmp_path), 20)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    runs = RunStore(tmp_path).list()
    assert len(runs) == 40 and len({r["id"] for r in runs}) == 40


def test_cancel_on_step_records_everything_and_stops_only_after_a_newton_step():
    from snows_core.events import LayerStarted, NewtonStep
    from snows_core.runs.process import RunCancelled, cancel_on_step

    seen, flag = [], {"cancel": False}
    on_event = cancel_on_step("r1", seen.append, lambda: flag["cancel"])
    on_event(NewtonStep("a", 1))
    flag["cancel"] = True
    on_event(LayerStarted("b"))  # not a step: no check yet
    with pytest.raises(RunCancelled, match="r1"):
        on_event(NewtonStep("b", 1))
    assert [e.kind for e in seen] == ["newton_step", "layer_started", "newton_step"]


@pytest.mark.parametrize(
    "executor,scheduler,message",
    [
        ("slurm", None, "executor must be one of 'local', 'dask'; got 'slurm'"),
        ("local", "tcp://127.0.0.1:8786", "only used with --executor dask"),
        ("dask", None, "--executor dask needs --scheduler"),
    ],
)
def test_a_submit_to_a_backend_that_cannot_serve_it_stores_nothing(tmp_path, executor, scheduler, message):
    from snows_core.runs.executor import submit

    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        submit(store, spec(), executor=executor, scheduler=scheduler)
    assert store.list() == []


def test_runs_are_claimed_per_backend_and_scheduler(tmp_path):
    store = RunStore(tmp_path)
    a = store.create(spec(), "v", executor="dask", scheduler="tcp://a:8786")
    b = store.create(spec(k=1), "v", executor="dask", scheduler="tcp://b:8786")
    here = store.create(spec(k=2), "v")
    assert store.has_queued("local") and store.has_queued("dask", "tcp://b:8786")
    assert not store.has_queued("dask", "tcp://c:8786") and not store.has_queued("dask")
    assert store.claim_next(pid=1, executor="dask", scheduler="tcp://b:8786")["id"] == b
    assert store.claim_next(pid=1)["id"] == here
    assert store.claim_next(pid=1) is None
    assert [r["id"] for r in store.list(RunStatus.QUEUED.value)] == [a]
    assert not store.has_queued("local") and not store.has_queued("dask", "tcp://b:8786")


def test_a_corrupt_store_is_a_one_line_error_with_exit_code_2(tmp_path, monkeypatch, capsys):
    from snows_core.cli import main
    from snows_core.runs import StoreError

    (tmp_path / "runs.db").write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreError, match="file is not a database"):
        RunStore(tmp_path)
    monkeypatch.setenv("SNOWS_HOME", str(tmp_path))
    for command in (["list"], ["status", "some-run"], ["cancel", "some-run"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot open the run store") and err.count("\n") == 1


def test_a_read_only_store_can_be_listed_but_not_changed(tmp_path, monkeypatch, capsys):
    """As root chmod binds nothing, so the store is told the home is not writable (as os.access says for others)."""
    import json

    from snows_core.cli import main

    store = RunStore(tmp_path)
    run = store.create(spec(), "v1")
    store.claim_next(pid=999_999_999)  # a dead worker that only a writable store would reap
    monkeypatch.setenv("SNOWS_HOME", str(tmp_path))
    monkeypatch.setattr("os.access", lambda path, mode: False)
    assert RunStore(tmp_path).readonly
    assert main(["list", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [run]
    assert main(["status", run]) == 0 and "running" in capsys.readouterr().out
    assert main(["cancel", run]) == 2 and "read-only here" in capsys.readouterr().err
    monkeypatch.undo()
    assert RunStore(tmp_path).get(run)["status"] == "running" and not RunStore(tmp_path).get(run)["cancel_requested"]


def test_an_upload_is_stored_once_per_content_and_removed_when_no_run_uses_it(tmp_path):
    import os

    store = RunStore(tmp_path)
    first = store.save_upload(b"weights", "mine.safetensors")
    assert store.save_upload(b"weights", "renamed.safetensors") == first and first.suffix == ".safetensors"
    other = store.save_upload(b"other weights", "b.th")
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == sorted([first.name, other.name])
    used = RunSpec(model="mlp", config=PruneConfig(sparsity=0.5, n_calib=64), checkpoint=str(first))
    run = store.create(used, "v1")
    assert store.remove_unused_uploads() == []  # fresh: maybe waiting for its Launch click
    for path in (first, other):
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert store.remove_unused_uploads() == [other] and first.exists()
    store.delete(run)
    assert not first.exists()


def test_a_worker_whose_claim_is_gone_runs_nothing(tmp_path):
    from snows_core.runs.local import worker_main

    store = RunStore(tmp_path)
    run = store.create(spec(), "v1")
    claim = store.claim_next(pid=0)["started"]
    store.mark_dead(lambda pid, since: True, stale_after=-1.0)  # queued again before its worker started
    worker_main(str(tmp_path), run, claim)
    assert store.get(run)["status"] == "queued" and store.get(run)["worker_pid"] is None and store.events(run) == []


@pytest.mark.parametrize("name", ["what?", "a#b", "100%", "sp ace"])
def test_a_read_only_store_whose_path_holds_uri_characters_is_read(tmp_path, monkeypatch, name):
    home = tmp_path / name
    run = RunStore(home).create(spec(), "v1")
    monkeypatch.setattr("os.access", lambda path, mode: False)
    store = RunStore(home)
    assert store.readonly and [r["id"] for r in store.list()] == [run]


def test_a_run_deleted_at_any_moment_leaves_the_dispatcher_serving(tmp_path):
    """Deleted after its worker ended, while it runs, or between the claim and the worker's start."""
    from snows_core.runs.local import _collect

    class Worker:
        def __init__(self, alive: bool) -> None:
            self.alive, self.exitcode, self.terminated = alive, 0, False

        def is_alive(self) -> bool:
            return self.alive

        def join(self, timeout: float | None = None) -> None:
            self.alive = False

        def terminate(self) -> None:
            self.terminated = True

    store = RunStore(tmp_path)
    ended, running, waiting = (store.create(spec(seed=i), "v1") for i in range(3))
    workers = {}
    for run_id, alive in ((ended, False), (running, True)):
        assert store.claim_next(pid=0)["id"] == run_id
        workers[run_id] = Worker(alive)
    store.finish(ended, RunStatus.DONE, {})
    store.delete(ended)  # what the Runs page's Delete does the moment a run is done
    store.delete(running)
    live = dict(workers)
    _collect(store, live)
    assert live == {} and workers[running].terminated and not workers[ended].terminated
    assert store.claim_next(pid=0)["id"] == waiting  # the queue goes on


def test_an_empty_snows_home_means_the_default_not_the_current_folder(monkeypatch):
    from pathlib import Path

    from snows_core.runs import snows_home

    monkeypatch.setenv("SNOWS_HOME", "")
    assert snows_home() == Path.home() / ".snows"


def test_a_worker_that_runs_out_of_disk_records_disk_full_in_one_line(tmp_path, monkeypatch):
    import errno

    import snows_core.runs.pipeline
    from snows_core.runs.local import worker_main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    monkeypatch.setattr(snows_core.runs.pipeline, "execute", full)
    store = RunStore(tmp_path)
    store.create(spec(), "v1")
    run = store.claim_next(pid=0)
    worker_main(str(tmp_path), run["id"], run["started"])
    ended = store.get(run["id"])
    assert ended["status"] == "failed" and ended["error"].startswith("disk full: [Errno 28] No space left on device")
    assert "\n" not in ended["error"]


def test_a_dead_worker_on_a_full_disk_is_recorded_as_such(tmp_path, monkeypatch):
    import shutil

    from snows_core.runs.local import _death

    store = RunStore(tmp_path)
    assert _death(store, -9) == "worker died (exit code -9)"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    assert _death(store, -9) == "worker died (exit code -9); the disk holding the run store is full"


def test_list_and_status_answer_when_the_store_cannot_be_written(tmp_path, monkeypatch, capsys):
    import json
    import sqlite3

    from snows_core.cli import main

    store = RunStore(tmp_path)
    run = store.create(spec(), "v1")
    monkeypatch.setenv("SNOWS_HOME", str(tmp_path))

    def disk_full(self):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(RunStore, "_migrate", disk_full)  # opening for writing fails, as on a full disk
    assert main(["list", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [run]
    assert main(["status", run]) == 0 and "queued" in capsys.readouterr().out


def test_a_worker_whose_run_was_deleted_between_claim_and_start_exits_quietly(tmp_path):
    from snows_core.runs.local import worker_main

    store = RunStore(tmp_path)
    queued, claimed = (store.create(spec(seed=i), "v1") for i in range(2))
    store.delete(queued)  # deleted while it waited: the queue just loses it
    run = store.claim_next(pid=0)
    assert run["id"] == claimed
    store.delete(claimed)
    worker_main(str(tmp_path), claimed, run["started"])  # adopts nothing: returns without running or writing
    assert store.list() == [] and not store.run_dir(claimed).exists()
