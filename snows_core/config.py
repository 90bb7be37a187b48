"""PruneConfig: the one typed, frozen, JSON-serialisable description of a pruning job.

Every field is validated in ``__post_init__`` so that bad input is refused with a ``ValueError`` that
names the field before any work starts. ``to_dict``/``from_dict`` carry a schema version so stored
configs stay readable when fields are added.

Defaults are chosen for quality per second on a 2-core CPU (measured on ResNet-20/CIFAR-10, see the
README's benchmark table): K=3 reaches past the next ReLU and conv of a basic block (K=6 and K=10
scored no better); the least-squares warm start (MP+) removes most of the error for the price of one
Gram matrix; from there one Newton pass with 10 CG iterations lands within 0.2% of the K=3 optimum
(more iterations, 25 or 50, or more passes changed top-1 by under a point at several times the cost).
The official code's defaults (damping 1e-4, CG tol 1e-3, 500 CG iterations, 3 passes, batch 512)
are reachable through the same fields, and targets="official" gives its objective.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from snows_core.io import catalog

SCHEMA_VERSION = 3  # 2: newton_steps became newton_passes; 3: the solver's defaults became CG 5 with "gram"

PATTERNS_HELP = '"unstructured" or "N:M" with 0 < N <= M, such as "2:4"'
CURVATURES = ("exact", "gauss-newton")
PRECONDITIONERS = ("none", "gram")
PRE_3_DEFAULTS = {"cg_iters": 10, "preconditioner": "none"}  # what schema 1 and 2 meant by a missing field
TARGETS = ("dense", "pruned-input", "official")
DEVICES_HELP = '"auto", "cpu", "cuda" or "cuda:N"'
_NM = re.compile(r"^(\d+):(\d+)$")
#: Upper bounds on the counts a typo can blow up (a run of 10^12 stages would hold its worker for ever); each
#: is far above what any recipe uses (the official SNOWS code: K up to 40, 500 CG iterations, 3 passes).
MAXIMA = {"k": 1000, "newton_passes": 1000, "cg_iters": 100_000, "stages": 100, "batch_size": 1 << 20}


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """(N, M) for an "N:M" pattern, None for "unstructured"; raises ValueError on anything else."""
    if pattern == "unstructured":
        return None
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ValueError(f"pattern must be {PATTERNS_HELP}; got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n <= m:
        raise ValueError(f"pattern {pattern!r} is invalid: N:M needs 0 < N <= M (N kept out of every M)")
    return n, m


@dataclass(frozen=True)
class PruneConfig:
    """What to prune, how to choose the mask, and how to reconstruct the surviving weights.

    Attributes:
        sparsity: fraction of weights zeroed in each pruned layer (or overall, with "global").
            For N:M patterns it may be omitted (None) and is then 1 - N/M.
        pattern: "unstructured" or "N:M" (N kept in every group of M consecutive input channels).
        allocation: how many weights each layer keeps (`snows_core.masks.list_allocations()`): "uniform"
            (every layer at `sparsity`), "global" (one ranking over all layers), "lamp" (LAMP scores
            ranked globally) or "sensitivity" (a per-layer scan, then the least summed loss).
        layer_sparsity_cap: with a non-uniform allocation, no layer is pruned beyond this fraction.
        mask: mask method name from the registry (magnitude, random, wanda, sparsegpt, custom, ...).
        reconstruction: "none" (mask only), "lstsq" (layer-wise least squares) or "snows".
        k: operations after the layer whose outputs are reconstructed too (0: the layer's own output).
        n_calib: calibration images used (the first n_calib of those passed in).
        batch_size: images per Newton step.
        newton_passes: passes over the calibration set per layer (one Newton step per mini-batch).
        cg_iters: most conjugate-gradient iterations per Newton step.
        cg_tol: CG stops when the residual falls below cg_tol times the gradient norm (below cg_tol
            itself with targets="official").
        damping: added to the Hessian's diagonal in CG (and, scaled alike, the lstsq ridge).
        curvature: "exact" (double backprop) or "gauss-newton" (J^T J: the exact Hessian almost
            everywhere when the window is piecewise linear, as in ReLU CNNs; PSD otherwise).
        curvature_fraction: share of each mini-batch's images (drawn afresh every Newton step) on which
            the CG curvature products are taken; the gradient and the line search use the whole batch
            (Martens 2010). Products cost in proportion.
        preconditioner: "gram" (the default) or "none" (plain CG): preconditioned CG with, per output row,
            the exact Hessian of the layer's own output term (its input Gram on the row's kept inputs, plus
            damping), factored once per layer. Same products, same stopping rule on the true residual: fewer
            products to meet it (at K=0 one: there that Hessian is the whole one), and 5 preconditioned
            iterations reach what 10 plain ones did (README, "The default solve").
        warm_start: start SNOWS from the layer-wise least-squares solution ("MP+").
        targets: "dense": reconstruct the dense network's own activations at the window's taps, so
            the error of every earlier layer is compensated too; "pruned-input": the dense window
            applied to the pruned path's inputs, so only this layer's error is; "official": the
            official SNOWS code's objective: the dense network run from the input of the block that
            holds the layer (on the pruned path), taps at convs and activations only (never the
            logits), and CG stopping on an absolute residual below cg_tol.
        layers: layer names to prune; None means every Conv2d/Linear but the first and the last.
        stages: passes over the network that reach the sparsity gradually (pass i of S at
            sparsity * (1 - (1 - i/S)^3), Zhu & Gupta 2017); each re-chooses the masks from the
            reconstructed weights (nested: a pruned weight never returns) and reconstructs again.
        seed: seeds random masks and the order of mini-batches.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    """

    sparsity: float | None = 0.5
    pattern: str = "unstructured"
    allocation: str = "uniform"
    layer_sparsity_cap: float = 0.98
    mask: str = "magnitude"
    reconstruction: str = "snows"
    k: int = 3
    n_calib: int = 256
    batch_size: int = 256
    newton_passes: int = 1
    cg_iters: int = 5
    cg_tol: float = 1e-3
    damping: float = 1e-4
    curvature: str = "exact"
    curvature_fraction: float = 1.0
    preconditioner: str = "gram"
    warm_start: bool = True
    targets: str = "dense"
    layers: tuple[str, ...] | None = None
    stages: int = 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.layers is not None and not isinstance(self.layers, tuple):
            if isinstance(self.layers, str | bytes) or not isinstance(self.layers, Iterable):
                raise ValueError(f"layers must be a list of layer names or None; got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(self.layers))
        nm = parse_nm(self.pattern)
        if nm is not None and self.sparsity is None:
            object.__setattr__(self, "sparsity", 1.0 - nm[0] / nm[1])
        self._check()

    def _check(self) -> None:
        nm = parse_nm(self.pattern)
        _require_number("sparsity", self.sparsity, "a number in [0, 1)")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1); got {self.sparsity}")
        if nm is not None and not math.isclose(self.sparsity, 1.0 - nm[0] / nm[1], abs_tol=1e-6):
            raise ValueError(
                f"sparsity {self.sparsity} does not match pattern {self.pattern!r}, "
                f"which zeroes {1 - nm[0] / nm[1]:g}: omit sparsity or set it to 1 - N/M"
            )
        _require_choice("allocation", self.allocation, catalog.names("allocation"))
        if nm is not None and self.allocation != "uniform":
            raise ValueError('allocation must be "uniform" with an N:M pattern (every layer holds N of each M)')
        _require_number("layer_sparsity_cap", self.layer_sparsity_cap, "a number in (0, 1)")
        if not 0.0 < self.layer_sparsity_cap < 1.0 or self.layer_sparsity_cap < self.sparsity:
            raise ValueError(f"layer_sparsity_cap must be in [sparsity, 1); got {self.layer_sparsity_cap}")
        _require_choice("mask", self.mask, catalog.names("mask"))
        _require_choice("reconstruction", self.reconstruction, catalog.names("reconstruction"))
        _require_choice("curvature", self.curvature, CURVATURES)
        _require_choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        _require_choice("targets", self.targets, TARGETS)
        for name in ("k", "n_calib", "batch_size", "newton_passes", "cg_iters", "stages", "seed"):
            _require_int(name, getattr(self, name), minimum=0 if name in ("k", "seed") else 1)
            if getattr(self, name) > MAXIMA.get(name, 2**63):
                raise ValueError(f"{name} must be at most {MAXIMA[name]:,}; got {getattr(self, name):,}")
        _require_number("curvature_fraction", self.curvature_fraction, "a number in (0, 1]")
        if not 0.0 < self.curvature_fraction <= 1.0:
            raise ValueError(f"curvature_fraction must be in (0, 1]; got {self.curvature_fraction}")
        for name in ("cg_tol", "damping"):
            _require_number(name, getattr(self, name), "a number >= 0")
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.stages > 1 and catalog.entry("mask", self.mask)["user_supplied"]:
            raise ValueError(
                f"stages must be 1 with mask {self.mask!r}: its masks are fixed, there is nothing to re-choose"
            )
        if not isinstance(self.warm_start, bool):
            raise ValueError(f"warm_start must be true or false; got {self.warm_start!r}")
        if self.layers is not None and not all(isinstance(n, str) for n in self.layers):
            raise ValueError(f"layers must be a list of layer names or None; got {self.layers!r}")
        if not isinstance(self.device, str) or not re.match(r"^(auto|cpu|cuda(:\d+)?)$", self.device):
            raise ValueError(f"device must be {DEVICES_HELP}; got {self.device!r}")

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for N:M patterns, None for unstructured."""
        return parse_nm(self.pattern)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the schema version."""
        out = asdict(self)
        out["layers"] = list(self.layers) if self.layers is not None else None
        return {"schema_version": SCHEMA_VERSION, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        """Inverse of `to_dict`; refuses unknown fields and newer schema versions."""
        data = upgrade_config_dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PruneConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict in today's field names, without its schema_version (no validation, no imports).

    Schema 1 called `newton_passes` `newton_steps`. Before schema 3 the defaults were plain CG of 10 products
    (`PRE_3_DEFAULTS`): an older dict without those fields (written before they existed) ran them. ValueError if
    the dict is newer than this library.
    """
    version = data.get("schema_version", SCHEMA_VERSION)
    data = pop_schema_version(data, SCHEMA_VERSION)
    if isinstance(version, int) and version < 2 and "newton_steps" in data:
        data["newton_passes"] = data.pop("newton_steps")
    if isinstance(version, int) and version < 3:
        data = {**PRE_3_DEFAULTS, **data}
    return data


def pop_schema_version(data: dict[str, Any], current: int) -> dict[str, Any]:
    """A copy of `data` without its schema_version; ValueError if that version is newer than `current`."""
    data = dict(data)
    version = data.pop("schema_version", current)
    if not isinstance(version, int) or version > current:
        raise ValueError(f"schema_version {version!r} is newer than this library's ({current})")
    return data


def _require_choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _require_number(name: str, value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {what}; got {value!r}")


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**63:
        # 2**63: what a torch generator, SQLite and every JSON reader hold exactly
        raise ValueError(f"{name} must be an integer >= {minimum} (and below 2**63); got {value!r:.40}")
