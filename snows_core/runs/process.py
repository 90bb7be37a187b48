"""Process plumbing shared by both run backends (the local queue and the Dask bridge), below both.

- `exclusive`: a non-blocking exclusive file lock, held for a block: one dispatcher per home, one
  Dask bridge per scheduler.
- `start_detached`: start ``python -m module`` in its own session unless a live one holds the lock.
- `cancel_on_step`: the event sink wrapper that raises `RunCancelled` at the first Newton step after a
  cancel request, the only place a run checks for one.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from snows_core.events import Event, EventSink

__all__ = ["RunCancelled", "exclusive", "start_detached", "cancel_on_step"]


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


def cancel_on_step(run_id: str, record: EventSink, cancelled: Callable[[], bool]) -> EventSink:
    """An event sink that passes every event to `record`, then raises RunCancelled after a Newton step
    once `cancelled()` says so."""

    def on_event(event: Event) -> None:
        record(event)
        if event.kind == "newton_step" and cancelled():
            raise RunCancelled(run_id)

    return on_event
