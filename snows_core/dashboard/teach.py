"""What the Learn page shows, computed here so the UI holds no tensors.

- `mask_example`: one small weight matrix pruned unstructured and N:M (groups of M along the inputs);
- `window_chains`: for each pruned layer of a model, the chain of operations its K-window spans;
- `LEARN_SPEC`: the tiny run whose Newton-CG solve the page steps through (it goes to the queue);
- `newton_cg_2d`: one Newton-CG step on a 2-D quadratic, by the library's own CG and Armijo search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from snows_core.config import PruneConfig
from snows_core.engine.graph import default_layers, prunable_nodes, trace
from snows_core.engine.solver import armijo_backtracking, conjugate_gradient
from snows_core.engine.window import build_window
from snows_core.masks import nm_mask, unstructured_mask
from snows_core.models import create_model
from snows_core.runs.spec import RunSpec

__all__ = ["mask_example", "window_chains", "LEARN_SPEC", "NewtonCG2D", "newton_cg_2d"]

LEARN_SPEC = RunSpec(  # plain CG, as the lesson explains it (H d = -g, nothing preconditioned)
    model="mlp",
    config=PruneConfig(
        sparsity=0.9,
        mask="magnitude",
        k=2,
        n_calib=128,
        newton_passes=6,
        cg_iters=10,
        preconditioner="none",
        layers=("3",),
        seed=0,
    ),
    eval_size=1000,
)


def mask_example(pattern: str, sparsity: float = 0.5, rows: int = 8, cols: int = 16, seed: int = 0) -> pd.DataFrame:
    """A (rows, cols) magnitude mask (1 = kept) of seeded random weights: "unstructured" at `sparsity`, or "N:M"."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))  # (out, in)
    if pattern == "unstructured":
        keep = unstructured_mask(weight.abs(), sparsity)
    else:
        n, m = (int(part) for part in pattern.split(":"))
        keep = nm_mask(weight.abs(), n, m)
    return pd.DataFrame(keep.int().numpy(), index=[f"out {i}" for i in range(rows)], columns=list(range(cols)))


def window_chains(model: str, k: int) -> pd.DataFrame:
    """One row per layer SNOWS prunes by default: the counted operations its K-window reaches."""
    gm = trace(create_model(model, pretrained=False))
    nodes = {n.target: n for n in prunable_nodes(gm)}
    rows = []
    for name in default_layers(gm):
        window = build_window(gm, nodes[name], k)
        rows.append(
            {
                "layer": name,
                "reaches": " → ".join(f"{node} ({kind})" for node, kind in window.ops),
                "operations": len(window.ops) - 1,
            }
        )
    return pd.DataFrame(rows, columns=["layer", "reaches", "operations"])


@dataclass(frozen=True)
class NewtonCG2D:
    """One Newton-CG step on f(w) = w'Hw / 2 from `start`: what the explorer draws.

    `grid` holds f on a square around the minimum (x, y, f columns); `cg` the CG iterates start + d_k,
    k = 0..iters; `gradient` the steepest-descent point (the exact line minimum along -g); `newton` the
    exact Newton point start - H^-1 g (the minimum, 0); `trials` the Armijo trials along the CG direction.
    """

    grid: pd.DataFrame
    start: tuple[float, float]
    cg: pd.DataFrame
    gradient: tuple[float, float]
    newton: tuple[float, float]
    trials: pd.DataFrame


def newton_cg_2d(
    eigenvalues: tuple[float, float],
    start: tuple[float, float],
    *,
    angle: float = 30.0,
    cg_iters: int = 2,
    curvature_scale: float = 1.0,
    extent: float = 3.0,
    points: int = 61,
) -> NewtonCG2D:
    """Newton-CG on the quadratic with Hessian H = R diag(eigenvalues) R' (R a rotation by `angle`
    degrees): CG on (s H) d = -g, s = `curvature_scale` (below 1 the products understate the curvature,
    as a small curvature sample can, so the full step overshoots and the line search backtracks)."""
    theta = math.radians(angle)
    rotation = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64
    )
    hessian = rotation @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ rotation.T  # (2, 2)
    w0 = torch.tensor(start, dtype=torch.float64)  # (2,)

    def loss(w: torch.Tensor) -> float:
        return 0.5 * (w @ hessian @ w).item()

    grad = hessian @ w0  # (2,)
    iterates = [torch.zeros(2, dtype=torch.float64)]
    for k in range(1, cg_iters + 1):  # each iterate is CG stopped after k products
        solve = conjugate_gradient(lambda v: curvature_scale * (hessian @ v), -grad, max_iters=k, tol=0.0, damping=0.0)
        iterates.append(solve.x)
        if solve.stop != "cap":
            break
    direction = iterates[-1]
    search = armijo_backtracking(lambda a: loss(w0 + a * direction), loss(w0), (grad @ direction).item())
    cauchy = (grad @ grad / (grad @ hessian @ grad)).item()  # exact line minimum along -g
    axis = np.linspace(-extent, extent, points)
    x, y = np.meshgrid(axis, axis)
    h = hessian.numpy()
    f = 0.5 * (h[0, 0] * x**2 + 2 * h[0, 1] * x * y + h[1, 1] * y**2)
    cg = pd.DataFrame(
        [
            {"k": k, "x": (w0 + d)[0].item(), "y": (w0 + d)[1].item(), "loss": loss(w0 + d)}
            for k, d in enumerate(iterates)
        ]
    )
    trials = pd.DataFrame(
        [
            {
                "alpha": a,
                "x": (w0 + a * direction)[0].item(),
                "y": (w0 + a * direction)[1].item(),
                "loss": v,
                "accepted": ok,
            }
            for a, v, ok in search.trials
        ],
        columns=["alpha", "x", "y", "loss", "accepted"],
    )
    return NewtonCG2D(
        grid=pd.DataFrame({"x": x.ravel(), "y": y.ravel(), "f": f.ravel()}),
        start=(float(start[0]), float(start[1])),
        cg=cg,
        gradient=tuple((w0 - cauchy * grad).tolist()),
        newton=(0.0, 0.0),
        trials=trials,
    )
