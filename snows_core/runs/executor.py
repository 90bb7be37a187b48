"""Submitting runs: `submit` stores a run (or reuses a done one) once it has passed the door (`snows_core.runs.door`)
and makes sure its backend serves it; `tend_queue`, what every reader calls, keeps the queue served.

A backend is where queued runs compute, chosen by name from a small registry:

- ``local``: this machine's dispatcher and worker processes (`snows_core.runs.local`); no address.
- ``dask``: a bridge to an existing Dask scheduler (`snows_core.runs.dask_executor`); needs its address.

A run row keeps the backend's name in ``executor`` and the scheduler address, if any, in ``scheduler``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snows_core import __version__
from snows_core.registry import Registry
from snows_core.runs import process
from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStore

__all__ = ["Backend", "list_backends", "get_backend", "check_backend", "submit", "reusable_run", "tend_queue"]


@dataclass(frozen=True)
class Backend:
    """Where runs compute (named by its registry key). `ensure(home, scheduler)` makes sure a server serves
    its queued runs; `reach(scheduler)` refuses an address that does not answer (none without an address)."""

    needs_scheduler: bool
    ensure: Callable[[Path, str | None], None]
    reach: Callable[[str], None] | None = None


def _ensure_local(home: Path, _: str | None) -> None:
    from snows_core.runs.local import ensure_dispatcher  # the backends import torch: only when a run is queued

    ensure_dispatcher(home)


def _ensure_dask(home: Path, scheduler: str | None) -> None:
    from snows_core.runs.dask_executor import ensure_bridge

    ensure_bridge(home, scheduler)


def _reach_dask(scheduler: str) -> None:
    from snows_core.runs.dask_executor import check_scheduler

    check_scheduler(scheduler)


_BACKENDS: Registry[Backend] = Registry("executor", ordered=True)
_BACKENDS.add("local", Backend(False, _ensure_local))
_BACKENDS.add("dask", Backend(True, _ensure_dask, _reach_dask))


def list_backends() -> list[str]:
    return _BACKENDS.names()


def get_backend(name: str) -> Backend:
    return _BACKENDS.get(name)


def check_backend(executor: str, scheduler: str | None = None, *, reach: bool = True) -> Backend:
    """The backend named `executor`, refusing settings it cannot serve before anything is stored: a
    missing or unexpected scheduler address and, with `reach`, one that does not answer."""
    backend = get_backend(executor)
    if backend.needs_scheduler and not scheduler:
        raise ValueError(f"--executor {executor} needs --scheduler tcp://HOST:8786")
    if scheduler and not backend.needs_scheduler:
        raise ValueError("a scheduler address (--scheduler) is only used with --executor dask")
    if scheduler and reach and backend.reach is not None:
        backend.reach(scheduler)
    return backend


def tend_queue(store: RunStore) -> list[str]:
    """What every reader calls: fail the running runs whose worker is gone, and start a dispatcher when
    local runs wait with none alive (the last one was killed): no queued run depends on a next submit."""
    dead = process.fail_dead(store)
    if not store.readonly and store.has_queued("local"):
        _ensure_local(store.home, None)
    return dead


def reusable_run(store: RunStore, spec: RunSpec) -> str | None:
    """The run a submit of `spec` would reuse instead of computing: done, same spec hash, this library version."""
    return store.find_done(spec.content_hash(), __version__)


def submit(
    store: RunStore,
    spec: RunSpec,
    *,
    force: bool = False,
    sweep_id: str | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    checked: bool = False,
) -> str:
    """Queue `spec` (or reuse a run that ended done with the same spec and version) and return the run id.

    The spec passes the door first (`door.check_inputs`: its inputs, and its memory forecast unless
    `force`; `checked=True` when the caller already did, as `submit_all` does). `force` also recomputes a
    spec that already ended done. `executor` names the backend (`list_backends()`);
    whether its scheduler answers is the caller's check (`check_backend`), made once for a whole sweep.
    """
    backend = check_backend(executor, scheduler, reach=False)
    if not checked:
        from snows_core.runs.door import check_inputs  # reads checkpoints: not for the store's readers

        check_inputs(spec, force=force)
    if not force:
        done = reusable_run(store, spec)
        if done is not None:
            return done
    run_id = store.create(spec, __version__, sweep_id, executor, scheduler)
    backend.ensure(store.home, scheduler)
    return run_id
