"""The ``local`` backend: one dispatcher per $SNOWS_HOME serves the queue with worker processes here.

- The dispatcher is one detached process per $SNOWS_HOME (it holds an exclusive lock on
  ``dispatcher.lock``; a second one exits at once). It serves queued runs in FIFO order, starting each
  in a worker process of the ``spawn`` context (CUDA cannot be re-initialised in a forked child): one
  at a time per GPU, up to $SNOWS_CPU_WORKERS (default 1) on CPU, and exits when idle. Each worker on a
  GPU machine is given the lowest-numbered free GPU: a spec whose device is "auto" or "cuda" runs on
  ``cuda:N`` (the stored spec, and its hash, stay as submitted); an explicit "cuda:N" or "cpu" is kept.
- A worker marks its run running, streams events into the store, beats every few seconds, and ends
  the run done, failed (with the traceback) or cancelled. A cancel request stored on the run is
  honoured at the next Newton step; the dispatcher terminates a worker that ignores it.

torch and the pipeline are imported inside the dispatcher and the workers only: `ensure_dispatcher` is
what every reader of the store calls when runs wait, and it must not cost a torch import.
"""

from __future__ import annotations

import dataclasses
import errno
import multiprocessing
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from snows_core.events import Event
from snows_core.runs.process import (
    CANCEL_GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    RunCancelled,
    cancel_on_step,
    fail_dead,
    finish_or_log,
    serve_exclusively,
    serve_until_idle,
    start_detached,
)
from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStatus, RunStore

__all__ = ["ensure_dispatcher", "dispatch", "worker_main", "free_gpu", "placed"]

DISK_FULL_BYTES = 1 << 20  # less free space than this where the store lives reads as a full disk


def ensure_dispatcher(home: Path) -> None:
    """Start a detached dispatcher for `home` unless one holds the lock."""
    start_detached(home / "dispatcher.lock", home / "dispatcher.log", "snows_core.runs.local", str(home))


def dispatch(home: Path) -> None:
    """Serve the queue until it has been empty and idle for a few seconds (one dispatcher per home)."""
    store = RunStore(home)

    def queued() -> bool:
        return store.has_queued("local")

    serve_exclusively(home / "dispatcher.lock", lambda: _serve(store, home, queued), queued)


def _serve(store: RunStore, home: Path, queued: Callable[[], bool]) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers: dict[str, multiprocessing.Process] = {}
    gpus: dict[str, int] = {}  # run id -> the GPU its worker was given
    n_gpus = _gpu_count()

    def tick() -> bool:
        _collect(store, workers)
        for run_id in set(gpus) - set(workers):
            del gpus[run_id]
        while len(workers) < (n_gpus or _cpu_slots()):
            run = store.claim_next(pid=0, executor="local")
            if run is None:
                break
            gpu = free_gpu(gpus.values(), n_gpus)
            process = ctx.Process(target=worker_main, args=(str(home), run["id"], run["started"], gpu), daemon=False)
            process.start()
            store.adopt(run["id"], process.pid, run["started"])
            workers[run["id"]] = process
            if gpu is not None:
                gpus[run["id"]] = gpu
        return bool(workers) or queued()

    serve_until_idle(tick)


def _collect(store: RunStore, workers: dict[str, multiprocessing.Process]) -> None:
    """Reap ended workers and cancelled runs; a run deleted meanwhile (at any moment) just loses its worker."""
    fail_dead(store)
    for run_id, process in list(workers.items()):
        run = store.find(run_id)
        if not process.is_alive():
            process.join()
            del workers[run_id]
            if run is not None and run["status"] == RunStatus.RUNNING.value:
                store.finish(run_id, RunStatus.FAILED, error=_death(store, process.exitcode))
        elif run is None:  # deleted while it ran: nobody reads what it would write, and nothing it wrote stays
            process.terminate()
            process.join(5)
            del workers[run_id]
            shutil.rmtree(store.run_dir(run_id), ignore_errors=True)
        elif run["cancel_requested"] and time.time() - (run["cancel_time"] or time.time()) > CANCEL_GRACE_SECONDS:
            process.terminate()
            process.join(5)
            store.finish(run_id, RunStatus.CANCELLED, error="terminated after the cancel request")
            del workers[run_id]


def _death(store: RunStore, exitcode: int | None) -> str:
    """Why a worker ended without recording its run: its exit code, and a full disk when the store's is."""
    full = shutil.disk_usage(store.home).free < DISK_FULL_BYTES
    return f"worker died (exit code {exitcode})" + ("; the disk holding the run store is full" if full else "")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cpu_slots() -> int:
    return max(1, int(os.environ.get("SNOWS_CPU_WORKERS", "1")))


def free_gpu(busy: Iterable[int], n_gpus: int) -> int | None:
    """The lowest-numbered GPU no worker holds (None without GPUs, or when all are held)."""
    taken = set(busy)
    return next((gpu for gpu in range(n_gpus) if gpu not in taken), None)


def placed(spec: RunSpec, gpu: int | None) -> RunSpec:
    """`spec` as its worker runs it on `gpu`: "auto" and "cuda" become "cuda:<gpu>"; anything else is kept."""
    if gpu is None or spec.config.device not in ("auto", "cuda"):
        return spec
    return dataclasses.replace(spec, config=dataclasses.replace(spec.config, device=f"cuda:{gpu}"))


def worker_main(home: str, run_id: str, claimed: float, gpu: int | None = None) -> None:
    """Process entry: run the run claimed at `claimed` (on `gpu`, when the dispatcher gave it one) and record how
    it ended; nothing when that claim is gone (the run was queued again: its dispatcher died before this worker
    announced itself, and another worker may hold it now)."""
    store = RunStore(home)
    if not store.adopt(run_id, os.getpid(), claimed):
        return
    _limit_threads()
    stop = threading.Event()
    threading.Thread(target=_beat, args=(store, run_id, stop), daemon=True).start()
    run = store.find(run_id)
    if run is None:  # deleted between the claim and this start
        stop.set()
        return
    spec = placed(RunSpec.from_dict(run["spec"]), gpu)

    def record(event: Event) -> None:
        store.append_event(run_id, event.kind, event.to_dict())

    # liveness is the beat thread's job; a step only reads the cancel flag
    on_event = cancel_on_step(run_id, record, lambda: store.cancel_requested(run_id))

    try:
        from snows_core.runs.cache import store_cache
        from snows_core.runs.pipeline import execute

        with store_cache(store.home / "cache"):  # what every run of this store computes alike, computed once
            result = execute(spec, store.run_dir(run_id), on_event)
        finish_or_log(store, run_id, RunStatus.DONE, result)
    except RunCancelled:
        finish_or_log(store, run_id, RunStatus.CANCELLED, error="cancelled by request")
    except OSError as err:  # the machine's, not the code's: one line, "disk full" where it is
        reason = "disk full" if err.errno == errno.ENOSPC else type(err).__name__
        finish_or_log(store, run_id, RunStatus.FAILED, error=f"{reason}: {err}")
    except BaseException:
        finish_or_log(store, run_id, RunStatus.FAILED, error=traceback.format_exc())
    finally:
        stop.set()


def _beat(store: RunStore, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        store.heartbeat(run_id)


def _limit_threads() -> None:
    """Share the CPU cores among the workers: oversubscribed OpenMP threads slow small ops many-fold."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // _cpu_slots()))


if __name__ == "__main__":
    dispatch(Path(sys.argv[1]))
