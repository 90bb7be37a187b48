"""Background runs: RunSpec (what to run), RunStore (SQLite WAL store of runs, events and results)."""

from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStatus, RunStore, StoreError, snows_home

__all__ = ["RunSpec", "RunStore", "RunStatus", "StoreError", "snows_home"]
