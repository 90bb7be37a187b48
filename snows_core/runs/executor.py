"""The run queue: `submit` stores a run and makes sure a dispatcher serves the queue.

- The dispatcher is one detached process per $SNOWS_HOME (it holds an exclusive lock on
  ``dispatcher.lock``; a second one exits at once). It serves queued runs in FIFO order, starting each
  in a worker process of the ``spawn`` context (CUDA cannot be re-initialised in a forked child): one
  at a time per GPU, up to $SNOWS_CPU_WORKERS (default 1) on CPU, and exits when idle.
- A worker marks its run running, streams events into the store, beats every few seconds, and ends
  the run done, failed (with the traceback) or cancelled. A cancel request stored on the run is
  honoured at the next Newton step; the dispatcher terminates a worker that ignores it.
- Liveness is pid plus heartbeat: any reader calls `reap`, which fails running runs whose worker died.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from snows_core import __version__
from snows_core.events import Event
from snows_core.runs.process import RunCancelled, cancel_on_step, exclusive, start_detached
from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStatus, RunStore

__all__ = [
    "submit",
    "reusable_run",
    "reap",
    "ensure_dispatcher",
    "dispatch",
    "worker_main",
]

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 30.0  # a running run with no heartbeat this long is failed
CANCEL_GRACE_SECONDS = 10.0  # after a cancel request, terminate a worker that has not stopped
IDLE_EXIT_SECONDS = 5.0


def reusable_run(store: RunStore, spec: RunSpec) -> str | None:
    """The run a submit of `spec` would reuse instead of computing: done, same spec hash, this library version."""
    return store.find_done(spec.content_hash(), __version__)


def submit(
    store: RunStore, spec: RunSpec, *, force: bool = False, sweep_id: str | None = None, executor: str = "local"
) -> str:
    """Queue `spec` (or reuse a run that ended done with the same spec and version) and return the run id.

    `executor` is "local" (this machine's queue) or the address of a Dask scheduler (see dask_executor).
    """
    if not force:
        done = reusable_run(store, spec)
        if done is not None:
            return done
    run_id = store.create(spec, __version__, sweep_id, executor)
    if executor == "local":
        ensure_dispatcher(store.home)
    else:
        from snows_core.runs.dask_executor import ensure_bridge

        ensure_bridge(store.home, executor)
    return run_id


def reap(store: RunStore) -> list[str]:
    """Fail the running runs whose worker process is gone or silent."""
    return store.mark_dead(_pid_alive, STALE_SECONDS)


def ensure_dispatcher(home: Path) -> None:
    """Start a detached dispatcher for `home` unless one holds the lock."""
    start_detached(home / "dispatcher.lock", home / "dispatcher.log", "snows_core.runs.executor", str(home))


def dispatch(home: Path) -> None:
    """Serve the queue until it has been empty and idle for a few seconds (one dispatcher per home)."""
    store = RunStore(home)
    with exclusive(home / "dispatcher.lock") as held:
        if not held:
            return
        ctx = multiprocessing.get_context("spawn")
        workers: dict[str, multiprocessing.Process] = {}
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < IDLE_EXIT_SECONDS:
            _collect(store, workers)
            while len(workers) < _slots():
                run = store.claim_next(pid=0, executor="local")
                if run is None:
                    break
                process = ctx.Process(target=worker_main, args=(str(home), run["id"]), daemon=False)
                process.start()
                store.set_worker(run["id"], process.pid)
                workers[run["id"]] = process
            if workers or store.list(RunStatus.QUEUED.value, executor="local"):
                idle_since = time.monotonic()
            time.sleep(0.2)


def _collect(store: RunStore, workers: dict[str, multiprocessing.Process]) -> None:
    reap(store)
    for run_id, process in list(workers.items()):
        run = store.get(run_id)
        if not process.is_alive():
            process.join()
            del workers[run_id]
            if run["status"] == RunStatus.RUNNING.value:
                store.finish(run_id, RunStatus.FAILED, error=f"worker died (exit code {process.exitcode})")
        elif run["cancel_requested"] and time.time() - (run["cancel_time"] or time.time()) > CANCEL_GRACE_SECONDS:
            process.terminate()
            process.join(5)
            store.finish(run_id, RunStatus.CANCELLED, error="terminated after the cancel request")
            del workers[run_id]


def _slots() -> int:
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, int(os.environ.get("SNOWS_CPU_WORKERS", "1")))


def worker_main(home: str, run_id: str) -> None:
    """Process entry: run one claimed run and record how it ended."""
    store = RunStore(home)
    store.set_worker(run_id, os.getpid())
    _limit_threads()
    stop = threading.Event()
    threading.Thread(target=_beat, args=(store, run_id, stop), daemon=True).start()
    spec = RunSpec.from_dict(store.get(run_id)["spec"])

    def record(event: Event) -> None:
        store.append_event(run_id, event.kind, event.to_dict())

    # liveness is the beat thread's job; a step only reads the cancel flag
    on_event = cancel_on_step(run_id, record, lambda: store.cancel_requested(run_id))

    try:
        from snows_core.runs.pipeline import execute

        result = execute(spec, store.run_dir(run_id), on_event)
        store.finish(run_id, RunStatus.DONE, result)
    except RunCancelled:
        store.finish(run_id, RunStatus.CANCELLED, error="cancelled by request")
    except BaseException:
        store.finish(run_id, RunStatus.FAILED, error=traceback.format_exc())
    finally:
        stop.set()


def _beat(store: RunStore, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        store.heartbeat(run_id)


def _limit_threads() -> None:
    """Share the CPU cores among the workers: oversubscribed OpenMP threads slow small ops many-fold."""
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // _slots()))


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return True  # claimed, worker not started yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


if __name__ == "__main__":
    dispatch(Path(sys.argv[1]))
