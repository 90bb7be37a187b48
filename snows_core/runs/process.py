"""Process plumbing shared by both run backends (the local queue and the Dask bridge), below both.

- `exclusive`: a non-blocking exclusive file lock, held for a block: one dispatcher per home, one
  Dask bridge per scheduler.
- `start_detached`: start ``python -m module`` in its own session unless a live one holds the lock.
- `serve_until_idle`: the server loop both backends run: tick until nothing has been busy for
  `IDLE_EXIT_SECONDS`.
- `cancel_on_step`: the event sink wrapper that raises `RunCancelled` at the first Newton step after a
  cancel request, the only place a run checks for one.
- `reap`: liveness is pid plus heartbeat; any reader fails the running runs whose worker died.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from snows_core.events import Event, EventSink
from snows_core.runs.store import RunStore

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_SECONDS",
    "CANCEL_GRACE_SECONDS",
    "IDLE_EXIT_SECONDS",
    "RunCancelled",
    "exclusive",
    "start_detached",
    "serve_until_idle",
    "cancel_on_step",
    "reap",
    "pid_alive",
]

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 30.0  # a running run with no heartbeat this long is failed
CANCEL_GRACE_SECONDS = 10.0  # after a cancel request, stop a worker that has not stopped by itself
IDLE_EXIT_SECONDS = 5.0
TICK_SECONDS = 0.2


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
    """Run ``python -m module args`` detached from this process, unless a live one holds `lock_path`."""
    with exclusive(lock_path) as free:
        if not free:
            return
    with open(log_path, "a") as log:  # the child keeps its own copy of the descriptor
        subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )


def serve_until_idle(tick: Callable[[], bool]) -> None:
    """Call `tick` every TICK_SECONDS until it has answered "not busy" for IDLE_EXIT_SECONDS in a row."""
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < IDLE_EXIT_SECONDS:
        if tick():
            idle_since = time.monotonic()
        time.sleep(TICK_SECONDS)


def cancel_on_step(run_id: str, record: EventSink, cancelled: Callable[[], bool]) -> EventSink:
    """An event sink that passes every event to `record`, then raises RunCancelled after a Newton step
    once `cancelled()` says so."""

    def on_event(event: Event) -> None:
        record(event)
        if event.kind == "newton_step" and cancelled():
            raise RunCancelled(run_id)

    return on_event


def reap(store: RunStore) -> list[str]:
    """Fail the running runs whose worker process is gone or silent."""
    return store.mark_dead(pid_alive, STALE_SECONDS)


def pid_alive(pid: int | None) -> bool:
    """Whether the local process `pid` runs (and is no zombie); a claimed run with no pid yet counts as alive."""
    if not pid:
        return True
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
