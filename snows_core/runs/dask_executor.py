"""Cluster runs on Dask distributed: each run is one task on an existing cluster (SLURM, PBS, Kubernetes...).

The store stays on this machine. A *bridge*, one detached local process per ($SNOWS_HOME, scheduler),
owns the store side:

- it claims the queued dask runs whose scheduler is its own and submits one task each, asking for a
  ``GPU`` worker resource when any worker of the cluster advertises one;
- it drains a ``distributed.Queue`` into the store (tasks put their progress events there), beats the
  heartbeat of every run it holds, and relays a stored cancel request as a ``distributed.Event`` that
  the task checks between Newton steps (cancelling the future after a grace period as the fallback);
- when a task ends it writes the returned artifacts into $SNOWS_HOME/runs/<run_id>/ and ends the run
  done, failed (with the remote traceback) or cancelled; it exits once nothing is left to serve.

If the bridge dies its runs stop beating and any reader fails them ("worker died"), like local ones.
Dask is optional: ``pip install dask distributed`` (requirements-dev.txt installs it for CI).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from snows_core import __version__
from snows_core.runs.pipeline import execute
from snows_core.runs.process import (
    CANCEL_GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    cancel_on_step,
    finish_or_log,
    serve_exclusively,
    serve_until_idle,
    start_detached,
)
from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStatus, RunStore

__all__ = ["check_scheduler", "ensure_bridge", "bridge", "run_task"]

CONNECT_TIMEOUT = "10s"


def check_scheduler(address: str) -> None:
    """Refuse, before anything is stored, an address that is not a reachable Dask scheduler, or a cluster whose
    scheduler or workers cannot import this snows_core version (the scheduler unpickles every task's graph)."""
    distributed = _distributed()
    if not address.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        raise ValueError(f"scheduler must be an address such as tcp://HOST:8786; got {address!r}")
    try:
        with distributed.Client(address, timeout=CONNECT_TIMEOUT) as client:
            found = {"the scheduler": client.run_on_scheduler(_VERSION_PROBE)}
            found |= {f"worker {worker}": version for worker, version in client.run(_VERSION_PROBE).items()}
    except (OSError, TimeoutError) as err:
        raise ValueError(f"scheduler {address} cannot be reached: {err}") from err
    wrong = {where: version for where, version in found.items() if version != __version__}
    if wrong:
        where, version = next(iter(wrong.items()))
        raise ValueError(
            f"{where} of {address} {version if version.startswith('cannot') else f'has snows_core {version}'}, "
            f"this one is {__version__}: install this repository there (pip install -e PATH) and start "
            "the scheduler and workers from that environment (see the README's Dask section)"
        )


def _version_probe() -> Any:
    """A function that reports the snows_core version where it runs, sent by value: the other side needs no
    snows_core to unpickle it (a function of this module would be sent by reference)."""
    source = (
        "def probe():\n"
        "    try:\n"
        "        import snows_core\n"
        "    except ImportError as err:\n"
        "        return f'cannot import snows_core ({err})'\n"
        "    return snows_core.__version__\n"
    )
    namespace: dict[str, Any] = {"__name__": "snows_version_probe"}
    exec(source, namespace)  # a module no other process has: cloudpickle sends the function's code itself
    return namespace["probe"]


_VERSION_PROBE = _version_probe()


def ensure_bridge(home: Path, address: str) -> None:
    """Start a detached bridge for (`home`, `address`) unless one holds its lock."""
    start_detached(
        _lock_path(home, address), home / "dask-bridge.log", "snows_core.runs.dask_executor", str(home), address
    )


def bridge(home: Path, address: str) -> None:
    """Serve the runs queued for `address` until none is left (one bridge per home and scheduler)."""
    distributed = _distributed()
    store = RunStore(home)

    def serve() -> None:
        with distributed.Client(address, timeout=CONNECT_TIMEOUT) as client:
            _Bridge(store, address, client).serve()

    def queued() -> bool:
        return store.has_queued("dask", address)

    serve_exclusively(_lock_path(home, address), serve, queued)


class _Bridge:
    """The bridge's state: the futures it holds, keyed by run id, and the events queue they feed."""

    def __init__(self, store: RunStore, address: str, client: Any) -> None:
        distributed = _distributed()
        self.store, self.address, self.client = store, address, client
        self.queue = distributed.Queue(f"snows-events-{uuid.uuid4().hex}", client=client)
        self.futures: dict[str, Any] = {}
        self.cancel_seen: dict[str, float] = {}
        self.resources = {"GPU": 1} if _cluster_has_gpus(client) else None
        self.last_beat = time.monotonic()

    def serve(self) -> None:
        serve_until_idle(self._tick)

    def _tick(self) -> bool:
        self._submit_queued()
        finished = [run_id for run_id, future in self.futures.items() if future.done()]
        self._drain()  # after noting which finished, so their last events are stored before they end
        for run_id in finished:
            self._finish(run_id, self.futures.pop(run_id))
        if time.monotonic() - self.last_beat > HEARTBEAT_SECONDS:
            self._beat()
            self.last_beat = time.monotonic()
        return bool(self.futures) or self.store.has_queued("dask", self.address)

    def _submit_queued(self) -> None:
        while (run := self.store.claim_next(pid=os.getpid(), executor="dask", scheduler=self.address)) is not None:
            self.futures[run["id"]] = self.client.submit(
                run_task,
                run["spec"],
                run["id"],
                self.queue.name,
                key=f"snows-{run['id']}",
                resources=self.resources,
                pure=False,
            )

    def _drain(self) -> None:
        by_run: dict[str, list[dict[str, Any]]] = {}
        for run_id, event in self.queue.get(batch=True):
            if event["kind"] == "worker":
                self.store.set_worker(run_id, event["pid"])
            by_run.setdefault(run_id, []).append(event)
        for run_id, events in by_run.items():
            if self.store.has(run_id):  # a run deleted meanwhile takes no more events
                self.store.append_events(run_id, events)

    def _beat(self) -> None:
        distributed = _distributed()
        for run_id, future in self.futures.items():
            self.store.heartbeat(run_id)
            if not self.store.has(run_id):
                future.cancel()  # deleted: nobody reads what it would compute
                continue
            if not self.store.cancel_requested(run_id):
                continue
            first = self.cancel_seen.setdefault(run_id, time.monotonic())
            distributed.Event(_cancel_name(run_id), client=self.client).set()
            if time.monotonic() - first > CANCEL_GRACE_SECONDS:
                future.cancel()  # the fallback: the task ignored the request

    def _finish(self, run_id: str, future: Any) -> None:
        if future.cancelled():
            finish_or_log(
                self.store, run_id, RunStatus.CANCELLED, error="cancelled on the cluster after the cancel request"
            )
        elif future.status == "error":
            error = future.exception()
            if type(error).__name__ == "RunCancelled":
                finish_or_log(self.store, run_id, RunStatus.CANCELLED, error="cancelled by request")
            else:
                text = "".join(traceback.format_exception(type(error), error, future.traceback()))
                finish_or_log(self.store, run_id, RunStatus.FAILED, error=text)
        elif not self.store.has(run_id):
            pass  # deleted while it ran: its artifacts have nowhere to go
        else:
            outcome = future.result()
            out_dir = self.store.run_dir(run_id)
            out_dir.mkdir(parents=True, exist_ok=True)
            for name, data in outcome["files"].items():
                (out_dir / name).write_bytes(data)
            finish_or_log(self.store, run_id, RunStatus.DONE, outcome["result"])
        _distributed().Event(_cancel_name(run_id), client=self.client).clear()


def run_task(spec: dict[str, Any], run_id: str, queue_name: str) -> dict[str, Any]:
    """The Dask task: run one spec on a worker, streaming events to the bridge; returns result and artifacts."""
    distributed = _distributed()
    queue = distributed.Queue(queue_name)
    cancel = distributed.Event(_cancel_name(run_id))
    queue.put((run_id, {"kind": "worker", "time": time.time(), "pid": os.getpid(), "host": socket.gethostname()}))

    def record(event) -> None:
        queue.put((run_id, {**event.to_dict(), "time": time.time()}))

    on_event = cancel_on_step(run_id, record, cancel.is_set)

    with tempfile.TemporaryDirectory(prefix="snows-") as tmp:
        result = execute(RunSpec.from_dict(spec), Path(tmp), on_event)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    return {"result": result, "files": files}


def _cluster_has_gpus(client: Any) -> bool:
    workers = client.scheduler_info().get("workers", {}).values()
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers)


def _cancel_name(run_id: str) -> str:
    return f"snows-cancel-{run_id}"


def _lock_path(home: Path, address: str) -> Path:
    return home / f"dask-{hashlib.sha256(address.encode()).hexdigest()[:8]}.lock"


def _distributed():
    try:
        import distributed
    except ImportError as err:
        raise ValueError("the dask executor needs Dask: pip install dask distributed") from err
    return distributed


if __name__ == "__main__":
    bridge(Path(sys.argv[1]), sys.argv[2])
