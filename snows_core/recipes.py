"""Named recipes: the PruneConfigs this project recommends, by name, for the Launch presets, the CLI and benchmarks.

A recipe is a function of the caller's overrides (``sparsity``, ``pattern``, any PruneConfig field) that returns
a validated `PruneConfig`: ``get_recipe("best", sparsity=0.95)`` is the best one-shot recipe this project knows at
95%, ``get_recipe("best", pattern="2:4")`` at 2:4. An override always wins over the recipe's own value; a recipe
may choose its other fields by the target (N:M or unstructured), which is why recipes are functions rather than
dicts. The figures behind each choice are in the README's frontier section (`benchmarks/bench_frontier.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from snows_core.config import PruneConfig
from snows_core.registry import Registry

__all__ = ["Recipe", "register_recipe", "get_recipe", "list_recipes", "recipe_summary"]


@dataclass(frozen=True)
class Recipe:
    name: str
    fields: Callable[[dict[str, Any]], dict[str, Any]]  # the recipe's own field values, given the overrides
    summary: str


_RECIPES: Registry[Recipe] = Registry("recipe", ordered=True)
PLAIN_CG = {"preconditioner": "none", "cg_iters": 10}


def register_recipe(name: str, summary: str) -> Callable:
    """Decorator registering `fn(overrides) -> {field: value}` (the recipe's choices; overrides then win)."""
    return _RECIPES.decorator(name, lambda fn: Recipe(name, fn, summary))


def get_recipe(name: str, **overrides: Any) -> PruneConfig:
    """The PruneConfig of recipe `name` with `overrides` applied (ValueError naming an unknown recipe or field)."""
    recipe = _RECIPES.get(name)
    known = {f.name for f in fields(PruneConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"recipe {name!r}: unknown PruneConfig field(s) {unknown}; known fields: {sorted(known)}")
    values = {**recipe.fields(overrides), **overrides}
    if values.get("pattern", "unstructured") != "unstructured" and "sparsity" not in overrides:
        values["sparsity"] = None  # N:M implies it
    return PruneConfig(**values)


def list_recipes() -> list[str]:
    """Recipe names, simplest first."""
    return _RECIPES.names()


def recipe_summary(name: str) -> str:
    return _RECIPES.get(name).summary


def _unstructured(overrides: dict[str, Any]) -> bool:
    return overrides.get("pattern", "unstructured") == "unstructured"


@register_recipe("default", "SNOWS K=3 on magnitude masks, one pass: seconds on ResNet-20, near dense up to 80%")
def _default(overrides: dict[str, Any]) -> dict[str, Any]:
    return {}


@register_recipe("teaching", "90% magnitude + SNOWS K=3 on 128 images: a point made in seconds")
def _teaching(overrides: dict[str, Any]) -> dict[str, Any]:
    return {"sparsity": 0.9, "mask": "magnitude", "k": 3, "n_calib": 128}


@register_recipe(
    "best",
    "the best one-shot recipe measured here: OBC masks in 5 gradual stages with SNOWS K=3 (unstructured); "
    "magnitude + SNOWS K=3 in one pass for N:M",
)
def _best(overrides: dict[str, Any]) -> dict[str, Any]:
    if not _unstructured(overrides):
        return {"mask": "magnitude", "k": 3, "n_calib": 256, **PLAIN_CG}
    # window-obc tied with obc on the validation split at 90% and 95% (README, frontier II): the simpler one stays.
    # Its figures were measured with plain CG of 10 products per Newton step, the default before "gram"
    return {"sparsity": 0.9, "mask": "obc", "k": 3, "stages": 5, "n_calib": 256, **PLAIN_CG}


@register_recipe(
    "official",
    "the official SNOWS code's objective and settings: magnitude masks, 90%, K=3, 2 Newton passes of CG 20, "
    "no warm start",
)
def _official(overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "sparsity": 0.9,
        "mask": "magnitude",
        "k": 3,
        "targets": "official",
        "newton_passes": 2,
        "cg_iters": 20,
        "preconditioner": "none",
        "warm_start": False,
        "n_calib": 256,
    }
