"""Sweeps: a grid over spec fields, validated as a whole before anything is stored, queued under one id.

K only matters to SNOWS, so a run reconstructed with none or lstsq is stored with k=0 (RunSpec says so)
and the grid keeps one of each; every run of a sweep shares the seed (hence the calibration images) and the
evaluation subset unless those are swept on purpose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStore

__all__ = ["grid_specs", "sweep_id", "submit_all", "MAX_SWEEP_RUNS"]

MAX_SWEEP_RUNS = 1000  # more is a typo, not a plan: refused before a single spec is built


def grid_specs(base: RunSpec, axes: dict[str, Sequence[Any]]) -> list[RunSpec]:
    """Every combination of the PruneConfig values in `axes` applied to `base` (each validated), duplicates dropped;
    more than MAX_SWEEP_RUNS combinations are refused before any is built."""
    combinations = math.prod(len(values) for values in axes.values())
    if combinations > MAX_SWEEP_RUNS:
        sizes = " x ".join(f"{len(values)} {name}" for name, values in axes.items() if len(values) > 1)
        raise ValueError(f"the sweep has {combinations:,} runs ({sizes}): at most {MAX_SWEEP_RUNS:,}; split it")
    specs: dict[str, RunSpec] = {}
    for values in itertools.product(*axes.values()):
        changes = dict(zip(axes, values, strict=True))
        if changes.get("pattern", base.config.pattern) != "unstructured":
            changes["sparsity"] = None  # N:M implies the sparsity
        spec = dataclasses.replace(base, config=dataclasses.replace(base.config, **changes))  # normalised by RunSpec
        specs.setdefault(spec.content_hash(), spec)
    return list(specs.values())


def sweep_id(specs: Sequence[RunSpec]) -> str:
    """A short id naming this exact set of specs."""
    return "sweep-" + hashlib.sha256("".join(s.content_hash() for s in specs).encode()).hexdigest()[:8]


def submit_all(
    store: RunStore,
    specs: Sequence[RunSpec],
    *,
    force: bool = False,
    executor: str = "local",
    scheduler: str | None = None,
) -> tuple[str | None, list[str]]:
    """Queue `specs` (one sweep id when there are several) and return (sweep id, run ids in order). Every
    spec passes the door before any is stored (its inputs once per distinct input, its memory forecast
    unless `force`): a bad value anywhere on a swept axis stores nothing."""
    from snows_core.runs.door import check_memory, check_runnable
    from snows_core.runs.executor import submit

    for spec in {spec.inputs_key(): spec for spec in specs}.values():
        check_runnable(spec)
    for spec in specs if not force else ():
        check_memory(spec)
    group = sweep_id(specs) if len(specs) > 1 else None
    return group, [
        submit(store, spec, force=force, sweep_id=group, executor=executor, scheduler=scheduler, checked=True)
        for spec in specs
    ]
