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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def separate_cluster(tmp_path_factory):
    """`dask scheduler` and `dask worker` started as the README says, each its own process from the set-up's venv,
    in a folder away from the repository: they import snows_core as installed, never from their working folder."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    dask = str(Path(sys.executable).parent / "dask")
    folder, address = tmp_path_factory.mktemp("cluster"), f"tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = open(folder / "cluster.log", "w")  # noqa: SIM115  (closed after both processes end)
    port = address.rsplit(":", 1)[1]
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"], cwd=folder, env=env, stderr=log
    )
    worker = subprocess.Popen(
        [dask, "worker", address, "--nthreads", "1", "--no-dashboard"], cwd=folder, env=env, stderr=log
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with distributed.Client(address, timeout="5s") as client:
                    if client.scheduler_info()["workers"]:
                        break
            except (OSError, TimeoutError):
                pass
            assert time.time() < deadline, (folder / "cluster.log").read_text()[-2000:]
            time.sleep(1)
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(30)
        log.close()


def test_a_run_goes_through_a_scheduler_and_worker_started_by_hand(home, separate_cluster):
    p = cli("submit", *QUICK, "--executor", "dask", "--scheduler", separate_cluster)
    assert p.returncode == 0, p.stderr
    run = p.stdout.strip()
    status = wait_for(run, lambda s: s["status"] in ("done", "failed", "cancelled"))
    assert status["status"] == "done", status["error"]
    assert (home / "runs" / run / "model.safetensors").is_file()


def test_a_cluster_with_another_snows_core_is_refused_before_anything_is_stored(home, cluster, monkeypatch):
    from snows_core.runs import dask_executor

    monkeypatch.setattr(dask_executor, "__version__", "9.9.9")
    with pytest.raises(ValueError, match="has snows_core 0.1.0, this one is 9.9.9: install this repository there"):
        dask_executor.check_scheduler(cluster[0])
    assert RunStore(home).list() == []


def test_the_version_probe_runs_where_snows_core_cannot_be_imported():
    import subprocess
    import sys

    import cloudpickle

    from snows_core.runs.dask_executor import _VERSION_PROBE

    code = (
        "import sys, cloudpickle; sys.modules['snows_core'] = None; print(cloudpickle.loads(sys.stdin.buffer.read())())"
    )
    out = subprocess.run([sys.executable, "-c", code], input=cloudpickle.dumps(_VERSION_PROBE), capture_output=True)
    assert out.stdout.decode().startswith("cannot import snows_core"), out.stderr.decode()
