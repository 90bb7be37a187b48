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

__all__ = ["check_run", "check_result", "check_event", "conforms"]

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
    if not math.isfinite(run["created"]):
        raise ValueError(f"bundle run created must be a time; got {run['created']!r}")
    if run["status"] not in FINAL:
        raise ValueError(f"only finished runs can be imported; this one is {run['status']!r}")


def check_result(result: Any, status: str) -> None:
    """Refuse a result that is not an object of the result fields' types (a done run must have one)."""
    if result is None and status != "done":
        return
    if not isinstance(result, dict):
        raise ValueError(f"bundle result must be an object; got {type(result).__name__}")
    _check_fields("bundle result", result, RESULT_FIELDS)


def check_event(event: Any, line: int) -> None:
    """Refuse an events.jsonl line that is not an event: an object with a kind, a time and, for a known
    kind, fields of its dataclass's types."""
    where = f"events.jsonl line {line}"
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
        raise ValueError(f"{where} must be an object with a kind")
    if not conforms(event.get("time"), Number):
        raise ValueError(f"{where}: time must be a number; got {event.get('time')!r}")
    kind = EVENT_TYPES.get(event["kind"])
    if kind is not None:
        _check_fields(where, event, typing.get_type_hints(kind))


def _check_fields(where: str, row: dict[str, Any], fields: dict[str, Any]) -> None:
    for key, hint in fields.items():
        if key in row and typing.get_origin(hint) is not typing.ClassVar and not conforms(row[key], hint):
            raise ValueError(f"{where} field {key!r} has the wrong type: {row[key]!r:.60}")
