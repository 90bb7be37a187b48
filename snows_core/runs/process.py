"""Process plumbing shared by both run backends (the local queue and the Dask bridge), below both.

- `exclusive`: a non-blocking exclusive file lock, held for a block: one dispatcher per home, one
  Dask bridge per scheduler.
- `start_detached`: start ``python -m module`` in its own session unless a live one holds the lock.
- `serve_exclusively`: one server per lock, which looks at the queue once more after letting the lock
  go, so a submit that lands while it leaves is never stranded; `serve_until_idle`: the loop both
  backends serve with, ticking until nothing has been busy for `IDLE_EXIT_SECONDS`.
- `cancel_on_step`: the event sink wrapper that raises `RunCancelled` at the first Newton step after a
  cancel request, the only place a run checks for one.
- `fail_dead`: any reader fails the running runs whose worker is gone: a local worker when its process is
  (`pid_alive`), a Dask task when silent for `stale_seconds()`, which grows with the machine's load; a
  local run claimed by a dispatcher that died before the worker announced itself is queued again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from snows_core.events import Event, EventSink
from snows_core.runs.store import RunStatus, RunStore

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_SECONDS",
    "CANCEL_GRACE_SECONDS",
    "IDLE_EXIT_SECONDS",
    "RunCancelled",
    "exclusive",
    "start_detached",
    "serve_exclusively",
    "serve_until_idle",
    "cancel_on_step",
    "finish_or_log",
    "fail_dead",
    "stale_seconds",
    "pid_alive",
]

LOG = logging.getLogger("snows_core.runs")
HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 30.0  # a run without a local pid, silent this long on an idle machine, is failed
CANCEL_GRACE_SECONDS = 10.0  # after a cancel request, stop a worker that has not stopped by itself
IDLE_EXIT_SECONDS = 5.0
TICK_SECONDS = 0.2
LOG_MAX_BYTES = 1 << 20  # a server's log is rotated when it starts past this size
PID_START_SLACK = 2.0  # the boot time in /proc/stat is whole seconds


class RunCancelled(Exception):
    """Raised from the event callback when the run's cancel request is seen."""


@contextmanager
def exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold the exclusive lock on `lock_path` for the block; yields False (holding nothing) if another has it."""
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True  # closing the file releases the lock


def start_detached(lock_path: Path, log_path: Path, module: str, *args: str) -> None:
    """Run ``python -m module args`` detached from this process, unless a live one holds `lock_path`; its
    output goes to `log_path` (moved to ``<log>.1`` first when past LOG_MAX_BYTES)."""
    with exclusive(lock_path) as free:
        if not free:
            return
    if log_path.is_file() and log_path.stat().st_size > LOG_MAX_BYTES:
        log_path.replace(log_path.with_name(log_path.name + ".1"))  # one old log kept; a live writer keeps its file
    with open(log_path, "a") as log:  # the child keeps its own copy of the descriptor
        subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )


def serve_exclusively(lock_path: Path, serve: Callable[[], None], pending: Callable[[], bool]) -> None:
    """Run `serve` holding the lock at `lock_path` (returning at once if another server holds it); once the
    lock is let go, serve again if `pending()` says work is queued.

    A submit commits its row, then starts a server unless the lock is held. If it found the lock held by
    a server on its way out, that server's look at the queue after releasing the lock sees the row: the
    second look is what makes a lost wake-up impossible.
    """
    while True:
        with exclusive(lock_path) as held:
            if not held:
                return
            serve()
        if not pending():
            return


def serve_until_idle(tick: Callable[[], bool], idle_seconds: float | None = None) -> None:
    """Call `tick` every TICK_SECONDS until it has answered "not busy" for `idle_seconds` (default
    IDLE_EXIT_SECONDS) in a row."""
    idle_for = IDLE_EXIT_SECONDS if idle_seconds is None else idle_seconds
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < idle_for:
        if tick():
            idle_since = time.monotonic()
        time.sleep(TICK_SECONDS)


CANCEL_POINTS = ("newton_step", "layer_sensitivity")  # events after which a run may stop cleanly


def cancel_on_step(run_id: str, record: EventSink, cancelled: Callable[[], bool]) -> EventSink:
    """An event sink that passes every event to `record`, then raises RunCancelled after a Newton step (or a
    layer of a sensitivity analysis) once `cancelled()` says so."""

    def on_event(event: Event) -> None:
        record(event)
        if event.kind in CANCEL_POINTS and cancelled():
            raise RunCancelled(run_id)

    return on_event


def finish_or_log(store: RunStore, run_id: str, status: RunStatus, result: dict | None = None, error: str = "") -> None:
    """End the run; if it had already ended (failed as dead while its worker was stalled), log the late
    outcome instead of writing it under that end, and remove the artifacts it left."""
    if not store.finish(run_id, status, result, error):
        ended = store.get(run_id)["status"] if store.has(run_id) else "and was deleted"
        LOG.warning("run %s already ended %s; its worker's late outcome (%s) is not stored", run_id, ended, status)
        if status == RunStatus.DONE:
            shutil.rmtree(store.run_dir(run_id), ignore_errors=True)


def fail_dead(store: RunStore) -> list[str]:
    """Fail the running runs whose worker is gone (see the module docstring); a read-only store is left as is."""
    return [] if store.readonly else store.mark_dead(pid_alive, stale_seconds())


def stale_seconds() -> float:
    """How long a run may be silent: STALE_SECONDS, times the load per core when the machine is busier
    (a loaded box delays heartbeats and slow spawns alike)."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return STALE_SECONDS * max(1.0, load)


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` runs (no zombie) and, given `since` (a time the worker was known alive: its
    last heartbeat), started no later than that: a younger process has only inherited the number."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the number now belongs to another user
        return False
    stat = _stat(pid)
    if stat is None:
        return True
    if stat[0] == "Z":
        return False
    return since is None or _start_time(stat) <= since + PID_START_SLACK


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(stat: list[str]) -> float:
    """A process's start, in seconds since the epoch: boot time plus field 22 of stat (clock ticks)."""
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:5] == "btime")
    return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
