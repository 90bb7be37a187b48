"""The Dask executor against a LocalCluster started here: runs, events, artifacts, cancel, bad addresses."""

import json
import os
import socket

import pytest

distributed = pytest.importorskip("distributed")

from snows_core.runs import RunStore  # noqa: E402
from tests.cli_helpers import QUICK, SLOW, cli, solving, wait_for  # noqa: E402

pytestmark = pytest.mark.slow  # a Dask LocalCluster with worker processes


@pytest.fixture(scope="module")
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as local,
        distributed.Client(local) as client,
    ):
        yield local.scheduler_address, client


def test_a_sweep_runs_on_the_cluster_and_reaches_the_store(home, cluster):
    address, client = cluster
    p = cli("sweep", *QUICK, "--sparsity", "0.5,0.7", "--executor", "dask", "--scheduler", address)
    assert p.returncode == 0, p.stderr
    runs = p.stdout.strip().splitlines()[:-1]
    finished = [wait_for(run, lambda s: s["status"] in ("done", "failed", "cancelled")) for run in runs]
    assert [s["status"] for s in finished] == ["done", "done"], [s["error"] for s in finished]
    worker_pids = set(client.run(os.getpid).values())
    for s in finished:
        assert (s["executor"], s["scheduler"]) == ("dask", address) and s["worker_pid"] in worker_pids
        assert s["layers_done"] == s["layers_total"] == 2 and 0.5 < s["top1_final"] <= 1
        assert (home / "runs" / s["id"] / "model.safetensors").is_file()
    assert finished[0]["calib_digest"] == finished[1]["calib_digest"]  # one calibration sample for the sweep
    kinds = {e["kind"] for e in RunStore(home).events(runs[0])}
    assert {"worker", "run_started", "newton_step", "layer_done", "run_done"} <= kinds


def test_the_cli_the_local_queue_and_the_cluster_give_one_result(home, cluster, tmp_path):
    address, _ = cluster
    p = cli("prune", *QUICK, "--out", str(tmp_path / "cli"))
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    local = cli("submit", *QUICK).stdout.strip()
    remote = cli("submit", *QUICK, "--force", "--executor", "dask", "--scheduler", address).stdout.strip()
    assert local != remote
    for run in (local, remote):
        assert wait_for(run, lambda s: s["status"] in ("done", "failed", "cancelled"))["status"] == "done"
    store = RunStore(home)
    local_result, remote_result = store.result(local), store.result(remote)
    assert set(local_result) == set(remote_result) and set(local_result) <= set(report)
    assert store.get(local)["spec"] == store.get(remote)["spec"] == report["spec"]
    for key in ("top1_dense", "top1_mask_only", "top1_final", "calib_ids", "eval_images", "sparsity"):
        assert report[key] == local_result[key] == remote_result[key], key


def test_cancel_reaches_a_task_running_on_the_cluster(home, cluster):
    address, _ = cluster
    p = cli("submit", *SLOW, "--executor", "dask", "--scheduler", address)
    assert p.returncode == 0, p.stderr
    run = p.stdout.strip().splitlines()[-1]
    solving(run)
    assert cli("cancel", run).stdout.strip() == "running"
    cancelled = wait_for(run, lambda s: s["status"] != "running", timeout=300)
    # the task stops at its next Newton step, or (a step longer than the grace period) the bridge cancels it
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"].startswith(("cancelled by request", "cancelled on the cluster after the cancel request"))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--executor", "dask"], "--scheduler"),
        (["--executor", "dask", "--scheduler", "localhost:8786"], "tcp://"),
        (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:{port}"], "cannot be reached"),
        (["--scheduler", "tcp://127.0.0.1:8786"], "--executor dask"),
    ],
)
def test_bad_executor_settings_are_refused_and_store_nothing(home, flags, message):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = cli("submit", *QUICK, *[f.format(port=port) for f in flags])
    assert p.returncode != 0 and message in p.stderr
    assert json.loads(cli("list", "--json").stdout) == []
