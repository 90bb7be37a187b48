"""Background runs through the CLI: submit, status, list, cancel, reuse, and faults (each a test)."""

import json
import os
import signal
import time

import pytest

from snows_core.runs import RunSpec, RunStore
from tests.cli_helpers import QUICK, SLOW, cli, solving, status, submit, wait_for

pytestmark = pytest.mark.slow  # real dispatcher and worker processes


def test_submit_runs_to_done_and_an_identical_spec_is_reused(home):
    run = submit(*QUICK)
    done = wait_for(run, lambda s: s["status"] in ("done", "failed", "cancelled"))
    assert done["status"] == "done", done["error"]
    assert 0.5 < done["top1_final"] <= 1 and done["top1_dense"] >= done["top1_final"] - 0.05
    assert done["layers_done"] == done["layers_total"] == 2
    assert {"model.safetensors", "masks.safetensors", "report.json"} <= {
        p.name for p in (home / "runs" / run).iterdir()
    }
    assert submit(*QUICK) == run  # cache hit: same spec and library version
    assert submit(*QUICK, "--force") != run
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["id"] == run and len(listed) == 2


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--sparsity", "1.5"], "sparsity"),
        (["--model", "no_such_model"], "model"),
        (["--k", "-1"], "k"),
        (["--n-calib", "0"], "n_calib"),
        (["--pattern", "5:4"], "pattern"),
        (["--mask", "nope"], "mask"),
    ],
)
def test_bad_submissions_are_refused_and_store_nothing(home, flags, field):
    p = cli("submit", *QUICK, *flags)
    assert p.returncode != 0 and field in p.stderr
    assert json.loads(cli("list", "--json").stdout) == []


def test_a_killed_worker_fails_its_run_and_the_queue_goes_on(home):
    run = submit(*SLOW)
    running = solving(run)
    os.kill(running["worker_pid"], signal.SIGKILL)
    failed = wait_for(run, lambda s: s["status"] != "running", timeout=300)
    assert failed["status"] == "failed" and "worker died" in failed["error"]
    after = submit(*QUICK)
    assert wait_for(after, lambda s: s["status"] in ("done", "failed"))["status"] == "done"


def test_a_stopped_worker_outlives_its_silence_and_resumes(home, monkeypatch):
    from snows_core.runs import process

    run = submit(*SLOW)
    pid = solving(run)["worker_pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # silent for longer than the (shortened) stale time: a stalled, not a dead, worker
        monkeypatch.setattr(process, "STALE_SECONDS", 0.5)
        assert process.fail_dead(RunStore(home)) == [] and status(run)["status"] == "running"
    finally:
        os.kill(pid, signal.SIGCONT)
    steps = len([e for e in RunStore(home).events(run) if e["kind"] == "newton_step"])
    wait_for(run, lambda s: len([e for e in RunStore(home).events(run) if e["kind"] == "newton_step"]) > steps)
    cli("cancel", run)
    assert wait_for(run, lambda s: s["status"] != "running", timeout=300)["status"] == "cancelled"


def test_cancel_stops_a_running_run(home):
    run = submit(*SLOW)
    solving(run)
    assert cli("cancel", run).stdout.strip() == "running"
    cancelled = wait_for(run, lambda s: s["status"] != "running", timeout=300)
    # at its next Newton step, or (a step slower than the grace period on a loaded box) terminated
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"].startswith(("cancelled by request", "terminated after the cancel request"))


def test_queued_runs_left_without_a_dispatcher_are_served_once_anyone_looks(home):
    store = RunStore(home)
    spec = RunSpec.from_dict({"model": "mlp", "eval_size": 200, "config": {"sparsity": 0.5, "k": 1, "n_calib": 64}})
    runs = [store.create(spec, "0.1.0") for _ in range(2)]  # queued with no dispatcher alive (it was killed)
    assert [r["status"] for r in store.list()] == ["queued", "queued"]
    for run in runs:  # `status` is a reader: it starts a dispatcher
        assert wait_for(run, lambda s: s["status"] in ("done", "failed"))["status"] == "done"


def test_a_sweep_queues_the_grid_with_one_sweep_id_and_reuses_done_runs(home):
    p = cli("sweep", *QUICK, "--sparsity", "0.3,0.5", "--mask", "magnitude,random")
    assert p.returncode == 0, p.stderr
    *runs, summary = p.stdout.strip().splitlines()
    assert len(set(runs)) == 4 and summary.endswith(": 4 runs")
    finished = [wait_for(run, lambda s: s["status"] in ("done", "failed")) for run in runs]
    assert all(s["status"] == "done" for s in finished)
    assert len({s["sweep_id"] for s in finished}) == 1
    configs = {(s["spec"]["config"]["sparsity"], s["spec"]["config"]["mask"]) for s in finished}
    assert configs == {(0.3, "magnitude"), (0.3, "random"), (0.5, "magnitude"), (0.5, "random")}
    assert {s["spec"]["config"]["seed"] for s in finished} == {0}  # one calibration sample for all
    again = cli("sweep", *QUICK, "--sparsity", "0.3,0.5", "--mask", "magnitude,random").stdout.strip().splitlines()
    assert again[:-1] == runs  # done runs are reused
    bad = cli("sweep", *QUICK, "--sparsity", "0.5,1.5")
    assert bad.returncode != 0 and "sparsity" in bad.stderr and len(json.loads(cli("list", "--json").stdout)) == 4
