"""Type checks for what enters the store from outside (a run bundle): the run row, the result and events.

Every field a reader of the store relies on is checked against its type before anything is stored, so a
bundle with ``"result": "poison"`` or ``"created": "yesterday"`` is refused at the door instead of
breaking `list` and every dashboard page afterwards. Events are checked against the dataclass of their
kind in `snows_core.events` (fields present must have the declared types; unknown kinds need only a
kind and a time).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from snows_core.events import EVENT_TYPES
from snows_core.runs.store import FINAL

__all__ = ["check_run", "check_result", "check_event", "check_report", "conforms"]

Number = float  # JSON numbers: int or float (never bool)

RUN_FIELDS: dict[str, Any] = {
    "id": str,
    "status": str,
    "version": str,
    "created": Number,
    "started": Number | None,
    "finished": Number | None,
    "error": str | None,
    "sweep_id": str | None,
    "executor": str,
    "scheduler": str | None,
    "spec_hash": str,
}
REQUIRED_RUN_FIELDS = ("id", "status", "version", "created")
TIME_FIELDS = ("created", "started", "finished")
LATEST_TIME = 253_402_300_799  # the last second of year 9999: the calendar a datetime holds
FRACTIONS = ("top1_dense", "top1_mask_only", "top1_final", "sparsity")  # in [0, 1], as is each layer_sparsity
COUNTS = ("eval_images", "prune_seconds", "seconds", "peak_mem")  # never negative
RESULT_FIELDS: dict[str, Any] = {
    "top1_dense": Number,
    "top1_mask_only": Number,
    "top1_final": Number,
    "eval_images": int,
    "eval_subset": str,
    "calib_ids": list[int],
    "calib_digest": str,
    "sparsity": Number,
    "layer_sparsity": dict[str, Number],
    "allocation": dict[str, Any] | None,
    "trajectory": list[dict[str, Any]],
    "prune_seconds": Number,
    "seconds": Number,
    "peak_mem": Number,
    "device": str,
    "environment": dict[str, Any] | None,
}


def conforms(value: Any, hint: Any) -> bool:
    """Whether the JSON value `value` has type `hint` (str, int, float, None, Any, unions, list[...],
    tuple[...], dict[str, ...]); a float accepts an int, nothing accepts a bool but bool."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, list) and (not args or all(conforms(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and conforms(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_run(run: Any) -> None:
    """Refuse a bundle's run row that lacks a field or has one of the wrong type, or has not finished."""
    if not isinstance(run, dict):
        raise ValueError(f"bundle run must be an object; got {type(run).__name__}")
    missing = [key for key in REQUIRED_RUN_FIELDS if key not in run]
    if missing:
        raise ValueError(f"bundle.json lacks {', '.join(missing)}")
    _check_fields("bundle run", run, RUN_FIELDS)
    for key in TIME_FIELDS:
        value = run.get(key)
        if value is not None and not (math.isfinite(value) and 0 <= value <= LATEST_TIME):
            raise ValueError(f"bundle run {key} must be a time (seconds since 1970, before year 10000); got {value!r}")
    if run["status"] not in FINAL:
        raise ValueError(f"only finished runs can be imported; this one is {run['status']!r}")


def check_result(result: Any, status: str) -> None:
    """Refuse a result that is not an object of the result fields' types (a done run must have one)."""
    if result is None and status != "done":
        return
    if not isinstance(result, dict):
        raise ValueError(f"bundle result must be an object; got {type(result).__name__}")
    _check_fields("bundle result", result, RESULT_FIELDS)
    fractions = {key: result.get(key) for key in FRACTIONS} | {
        f"layer_sparsity[{name!r}]": value for name, value in (result.get("layer_sparsity") or {}).items()
    }
    for key, value in fractions.items():
        if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"bundle result {key} must lie in [0, 1]; got {value!r}")
    for key in COUNTS:
        value = result.get(key)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"bundle result {key} must be a finite number >= 0; got {value!r}")


def check_report(report: Any) -> None:
    """Refuse a report.json that is not an object whose "layers" (when present) is a list of objects."""
    if not isinstance(report, dict):
        raise ValueError(f"report.json must be an object; got {type(report).__name__}")
    layers = report.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ValueError("report.json layers must be a list of objects, one per layer")


def check_event(event: Any, line: int) -> None:
    """Refuse an events.jsonl line that is not an event: an object with a kind, a time and, for a known
    kind, fields of its dataclass's types."""
    where = f"events.jsonl line {line}"
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
        raise ValueError(f"{where} must be an object with a kind")
    if not conforms(event.get("time"), Number) or not math.isfinite(event["time"]):
        raise ValueError(f"{where}: time must be a number; got {event.get('time')!r}")
    kind = EVENT_TYPES.get(event["kind"])
    if kind is not None:
        _check_fields(where, event, typing.get_type_hints(kind))


def _check_fields(where: str, row: dict[str, Any], fields: dict[str, Any]) -> None:
    for key, hint in fields.items():
        if key in row and typing.get_origin(hint) is not typing.ClassVar and not conforms(row[key], hint):
            raise ValueError(f"{where} field {key!r} has the wrong type: {row[key]!r:.60}")
