"""The ``local`` backend: one dispatcher per $SNOWS_HOME serves the queue with worker processes here.

- The dispatcher is one detached process per $SNOWS_HOME (it holds an exclusive lock on
  ``dispatcher.lock``; a second one exits at once). It serves queued runs in FIFO order, starting each
  in a worker process forked from a fork server that has imported torch and the engine but never touched
  CUDA (CUDA cannot be re-initialised in a child forked after it was), or, with ``SNOWS_SPARE=off``, a
  spawned one: one at a time per GPU, up to $SNOWS_CPU_WORKERS (default 1) on CPU, and exits when idle.
  Each worker on a GPU machine is given the lowest-numbered free GPU: a spec whose device is "auto" or
  "cuda" runs on ``cuda:N`` (the stored spec, and its hash, stay as submitted); an explicit "cuda:N" or
  "cpu" is kept.
- A warm queue: the dispatcher keeps one *spare* worker started ahead of need (torch, the engine and the
  models imported, nothing claimed) and hands it the next claimed run through a pipe, so a run starts
  at once, and forks a replacement at once. One run per process stays the rule (a worker that ran a run
  exits). The spare holds no run slot and no claim: killed, it loses nothing (the next tick starts
  another); when the dispatcher goes (idle exit, or killed: the pipe closes) the spare goes with it.
  ``SNOWS_SPARE=off`` switches the spare and the fork server off.
- An idle queue keeps its dispatcher (and spare) for ``SNOWS_IDLE_SECONDS`` (default 60) after its last
  run, so the next run of an exploring user starts warm; then both exit. ``<home>/dispatcher.json``
  names the live dispatcher's pid, its spare's and whether the spare is ready.
- A worker marks its run running, streams events into the store, beats every few seconds, and ends
  the run done, failed (with the traceback) or cancelled. A cancel request stored on the run is
  honoured at the next Newton step; the dispatcher terminates a worker that ignores it.

torch and the pipeline are imported inside the dispatcher and the workers only: `ensure_dispatcher` is
what every reader of the store calls when runs wait, and it must not cost a torch import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from snows_core.events import Event
from snows_core.io.atomic import replaced
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

__all__ = [
    "ensure_dispatcher",
    "dispatch",
    "dispatcher_state",
    "idle_seconds",
    "spare_enabled",
    "worker_main",
    "spare_main",
    "free_gpu",
    "placed",
]

DISK_FULL_BYTES = 1 << 20  # less free space than this where the store lives reads as a full disk
IDLE_SECONDS = 60.0  # how long an idle local queue stays warm (see the module docstring)
SPARE_READY = "ready"  # what a spare says once its imports are done
SPARE_STOP_SECONDS = 5.0  # how long the dispatcher waits for its spare to end before it lets the lock go


def ensure_dispatcher(home: Path) -> None:
    """Start a detached dispatcher for `home` unless one holds the lock."""
    start_detached(home / "dispatcher.lock", home / "dispatcher.log", "snows_core.runs.local", str(home))


def dispatch(home: Path) -> None:
    """Serve the queue until it has been empty and idle for a few seconds (one dispatcher per home)."""
    store = RunStore(home)

    def queued() -> bool:
        return store.has_queued("local")

    serve_exclusively(home / "dispatcher.lock", lambda: _serve(store, home, queued), queued)


def idle_seconds() -> float:
    """How long an idle local queue keeps its dispatcher and spare: $SNOWS_IDLE_SECONDS, default IDLE_SECONDS."""
    return max(0.0, float(os.environ.get("SNOWS_IDLE_SECONDS", IDLE_SECONDS)))


def spare_enabled() -> bool:
    return os.environ.get("SNOWS_SPARE", "on").lower() != "off"


def dispatcher_state(home: Path) -> dict[str, Any] | None:
    """{"pid": the dispatcher's, "spare": its idle spare's or None, "spare_ready": whether that spare's imports
    are done} as the live dispatcher last wrote it; None when none has (or the file is being replaced)."""
    try:
        return json.loads((Path(home) / "dispatcher.json").read_text())
    except (OSError, ValueError):
        return None


def _context() -> Any:
    """Where worker processes come from. With the warm queue, a fork server that imported torch and the engine
    once (`multiprocessing`'s "forkserver", its preload the pipeline): a worker or spare is then a fork of it, a
    few milliseconds, where a spawned one spends seconds importing, and on a small machine those imports take
    the cores from the run in progress. The server itself never touches CUDA, so its forks may. Without the warm
    queue (``SNOWS_SPARE=off``), "spawn" as before: each worker a fresh interpreter."""
    if not spare_enabled():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["snows_core.runs.pipeline"])
    multiprocessing.forkserver.ensure_running()  # its imports overlap the dispatcher's own (the GPU count's)
    return ctx


def _serve(store: RunStore, home: Path, queued: Callable[[], bool]) -> None:
    ctx = _context()
    workers: dict[str, multiprocessing.Process] = {}
    gpus: dict[str, int] = {}  # run id -> the GPU its worker was given
    n_gpus = _gpu_count()
    spare = _Spare(ctx, home)

    def tick() -> bool:
        _collect(store, workers)
        for run_id in set(gpus) - set(workers):
            del gpus[run_id]
        while len(workers) < (n_gpus or _cpu_slots()):
            run = store.claim_next(pid=0, executor="local")
            if run is None:
                break
            gpu = free_gpu(gpus.values(), n_gpus)
            assignment = (str(home), run["id"], run["started"], gpu)
            process = spare.take(assignment)
            if process is None:  # no spare waiting: a worker process of its own, as without the warm queue
                process = ctx.Process(target=worker_main, args=assignment, daemon=False)
                process.start()
            store.adopt(run["id"], process.pid, run["started"])
            workers[run["id"]] = process
            if gpu is not None:
                gpus[run["id"]] = gpu
        spare.keep()
        return bool(workers) or queued()

    try:
        serve_until_idle(tick, idle_seconds())
    finally:
        spare.stop()


class _Spare:
    """The dispatcher's one worker process started ahead of need (`spare_main`), and the pipe that hands it a
    claimed run. `take` hands over or answers None (no live spare: the caller starts a worker as before)."""

    def __init__(self, ctx: Any, home: Path) -> None:
        self.ctx, self.home = ctx, Path(home)
        self.process: multiprocessing.Process | None = None
        self.pipe: Connection | None = None
        self.ready = False  # the spare has said its imports are done
        self._announce()

    def keep(self) -> None:
        """Start a spare unless a live one waits (a killed one is reaped first); note when it is ready."""
        if self.process is not None and not self.process.is_alive():
            self._drop()
        if self.process is None and spare_enabled():
            self.pipe, theirs = self.ctx.Pipe()
            self.process = self.ctx.Process(target=spare_main, args=(str(self.home), theirs), daemon=False)
            self.process.start()
            theirs.close()  # the spare holds the only other end: a dispatcher that dies closes the pipe
            self._announce()
        elif self.process is not None and not self.ready and self._said_ready():
            self.ready = True
            self._announce()

    def _said_ready(self) -> bool:
        try:
            return self.pipe.poll() and self.pipe.recv() == SPARE_READY
        except (EOFError, OSError):  # died meanwhile: the next keep reaps it
            return False

    def take(self, assignment: tuple[str, str, float, int | None]) -> multiprocessing.Process | None:
        """Hand `assignment` (worker_main's arguments) to the spare; the spare's process, now the run's worker."""
        if self.process is None or not self.process.is_alive():
            return None
        try:
            self.pipe.send(assignment)
        except OSError:  # died since is_alive: it read nothing, so the run is the caller's to start
            self._drop()
            return None
        process, self.process, self.ready = self.process, None, False
        self.pipe.close()
        self._announce()
        return process

    def stop(self) -> None:
        """End an idle spare (it holds no claim) as the dispatcher leaves."""
        if self.process is not None:
            self.process.terminate()
            self.process.join(SPARE_STOP_SECONDS)
            self._drop()
        with contextlib.suppress(OSError):
            (self.home / "dispatcher.json").unlink()

    def _drop(self) -> None:
        self.process.join(0)
        self.pipe.close()
        self.process = self.pipe = None
        self.ready = False
        self._announce()

    def _announce(self) -> None:
        spare = self.process.pid if self.process is not None else None
        state = {"pid": os.getpid(), "spare": spare, "spare_ready": self.ready}
        with replaced(self.home / "dispatcher.json") as temporary:
            temporary.write_text(json.dumps(state))


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


def spare_main(home: str, pipe: Connection) -> None:
    """Process entry of a spare: import what every run needs, then wait for the dispatcher to hand over a
    claimed run (`worker_main`'s arguments) and run it; exit when the pipe closes first (dispatcher gone)."""
    import snows_core.runs.pipeline  # noqa: F401  (torch, the engine, the models: the seconds a spare saves)

    with contextlib.suppress(OSError):  # a dispatcher that handed over a run before this may have closed its end
        pipe.send(SPARE_READY)
    try:
        assignment = pipe.recv()
    except (EOFError, OSError):
        return
    finally:
        pipe.close()
    worker_main(*assignment)


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
