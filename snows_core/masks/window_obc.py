"""Window-OBC: OBC masks under the K-window's Kronecker-factored curvature (K-FAC; as LLM Surgeon and CAP).

SNOWS re-fits a layer against its K-window, L(W) = sum_t mean((f_t(W X) - y_t)^2), yet OBC (like every other
mask method) chooses the weights to drop under the layer's own output error ||(W - W*) X||^2, where every output
channel counts the same. Near the start W*, the window's Gauss-Newton curvature in the weights, Kronecker-factored
(Martens & Grosse 2015), is

    L(W* + D) - L(W*) ~ tr(G D A D^T),   A = X X^T, the layer's input Gram (OBC's H / 2),
                                        G = sum over images and positions p of J_p^T J_p   (out x out),

J_p the Jacobian of the window's taps (each weighted by one over its size, as in L) with respect to the layer's
output channels at position p. G says what an error in each output channel costs once it has gone through the
window (a channel that BatchNorm scales down or the next ReLU gates off costs little), and how channels make up
for each other. Under A (x) G, removing weight (i, j) with every other weight re-fitted costs (Optimal Brain
Surgeon, Hassibi & Stork 1993, in the Kronecker form of LLM Surgeon, van der Ouderaa et al., ICLR 2024)

    L_ij = w_ij^2 / ([G^-1]_ii [A^-1]_jj).

Window-OBC keeps OBC's exact trajectory along each row in A (a row's order does not depend on G), weighs row i's
losses by 1 / [G^-1]_ii in the layer's global selection, so the rows the window needs lose fewer weights, then
re-fits all kept weights jointly, min tr(G (W - W*) A (W - W*)^T) on the mask, by conjugate gradients on
Kronecker products (OBS's correlated update across rows). Gradual stages make it multi-shot, as LLM Surgeon:
each pass re-estimates G and A on the pruned path.

G comes from one JVP of the window per output channel on `CURVATURE_IMAGES` images, channel i's tangent a random
sign at every position (Rademacher), so that E[(J t_i) . (J t_j)] = sum_p J_p,i . J_p,j; with K = 0 (the window
is the layer's output itself) G is exactly a multiple of I and the method is OBC. G is damped by `G_DAMPING` of its
mean diagonal. A grouped conv's rows couple within their group only (no input Gram across groups is formed).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from snows_core.engine.problem import LayerProblem
from snows_core.engine.solver import conjugate_gradient
from snows_core.masks.method import MaskChoice, register_mask_method
from snows_core.masks.obc import obc_layer
from snows_core.masks.obs import RELATIVE_DAMPING, damped_hessian, layer_start

__all__ = ["output_curvature", "group_blocks", "kronecker_refit", "window_obc_layer", "CURVATURE_IMAGES", "G_DAMPING"]

CURVATURE_IMAGES = 32  # each image brings every position of its maps: 32 images are tens of thousands of samples
G_DAMPING = 0.01  # as OBC's damping of A: 1% of the mean diagonal
_CURVATURE_BYTES = 2**28  # a group of images' JVPs, one per channel, through the window: ~256 MB at a time
_WINDOW_DEPTH = 8  # values a window keeps per layer-output value, roughly (for sizing the groups)
_REFIT_ITERS = 200
_REFIT_TOL = 1e-8  # residual over the right-hand side's norm: the per-row start is exact when G is a multiple of I


def output_curvature(problem: LayerProblem, weight: torch.Tensor, images: int = CURVATURE_IMAGES) -> torch.Tensor:
    """G (out, out) float64: the window's Gauss-Newton curvature in the layer's output channels at `weight`
    (shaped like the layer's), summed over the first `images` calibration images and every position.

    Images go a few at a time (a window acts on each image alone, so G is a sum over them), and the channels'
    JVPs of one group of images run as one vectorised call (`torch.func.vmap`)."""
    n = min(images, problem.n)
    z = problem.layer_output(weight, slice(0, 1)).detach()  # one image: the layer's output shape
    channel = 1 if isinstance(problem.module, nn.Conv2d) else z.dim() - 1
    out, per_image = z.shape[channel], z.numel()
    step = max(1, min(n, _CURVATURE_BYTES // (4 * out * per_image * _WINDOW_DEPTH)))  # images at a time
    generator = torch.Generator().manual_seed(0)
    g = torch.zeros(out, out, dtype=torch.float64, device=weight.device)
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode derivative
        for first in range(0, n, step):
            batch = slice(first, min(first + step, n))
            z = problem.layer_output(weight, batch).detach()  # (b, out, h, w) conv, (b, ..., out) linear
            shape = [1 if axis == channel else size for axis, size in enumerate(z.shape)]
            signs = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(z)  # (b, 1, h, w) conv
            eye = torch.eye(out, dtype=z.dtype, device=z.device)
            tangents = signs.unsqueeze(0) * eye.view(out, *[out if a == channel else 1 for a in range(z.dim())])
            jacobian = torch.func.vmap(lambda t, batch=batch, z=z: _tap_tangent(problem, z, t, batch))(tangents)
            g += (jacobian @ jacobian.T).double()  # (out, out)
    return g


def _tap_tangent(problem: LayerProblem, z: torch.Tensor, tangent: torch.Tensor, batch: slice) -> torch.Tensor:
    """J t: the window's taps moved by the layer-output tangent t, each over the square root of its size, flat."""
    _, moved = torch.func.jvp(lambda v: problem.window_taps(v, batch), (z,), (tangent,))
    return torch.cat([(t / math.sqrt(t.numel() * problem.n / t.shape[0])).flatten() for t in moved])


def group_blocks(curvature: torch.Tensor, groups: int, relative_damping: float = G_DAMPING) -> torch.Tensor:
    """G's diagonal blocks, one per group of rows (groups, out/g, out/g), scaled to mean diagonal 1 and damped."""
    mean = curvature.diagonal().mean()
    eye = lambda size: torch.eye(size, dtype=curvature.dtype, device=curvature.device)  # noqa: E731
    g = curvature / mean if mean > 0 else eye(curvature.shape[0])
    r = g.shape[0] // groups
    blocks = torch.stack([g[i * r : (i + 1) * r, i * r : (i + 1) * r] for i in range(groups)])  # (groups, r, r)
    return blocks + relative_damping * eye(r)


def kronecker_refit(
    start: torch.Tensor, target: torch.Tensor, hessian: torch.Tensor, curvature: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """min over W, zero outside `keep`, of sum_g tr(G_g (W_g - W*_g) H_g (W_g - W*_g)^T), by CG from `start`.

    Args:
        start, target (W*), keep: (groups, r, d) float64 (keep 0/1).
        hessian: (groups, d, d) H, positive definite; curvature: (groups, r, r) G, positive definite.
    """
    apply = lambda v: (curvature @ v.view(start.shape) @ hessian * keep).flatten()  # noqa: E731  (groups r d,)
    rhs = apply(target)
    x = (start * keep).flatten()
    correction = conjugate_gradient(  # the step from the start: the residual there is the right-hand side
        apply, rhs - apply(x), max_iters=_REFIT_ITERS, tol=_REFIT_TOL * rhs.norm().item(), damping=0.0, relative=False
    )
    return (x + correction.x).view(start.shape)


def window_obc_layer(
    problem: LayerProblem, weigh_rows: bool = True, joint_refit: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window-OBC on one layer of the loop: (keep-mask, weights), both shaped like the layer's weight. Its two
    parts can be switched off to see what each buys (both off: OBC)."""
    weight = problem.dense_weight
    gram, cross, _ = problem.grams  # (groups, d, d), (groups, d, out/g)
    rows = layer_start(problem, gram, cross)  # (groups, out/g, d)
    groups, r, d = rows.shape
    g = group_blocks(output_curvature(problem, rows.reshape(weight.shape).to(weight.dtype)), groups)  # (groups, r, r)
    row_weights = 1.0 / torch.linalg.inv(g).diagonal(dim1=1, dim2=2).flatten()  # (out,): 1 / [G^-1]_ii
    keep, solved = obc_layer(problem, row_weights if weigh_rows else None, rows)
    if not joint_refit:
        return keep, solved
    h, dead = damped_hessian(2 * gram, RELATIVE_DAMPING)  # OBC's H, as its refit
    kept = keep.reshape(groups, r, d).double()
    refit = kronecker_refit(solved.reshape(groups, r, d).double(), rows * ~dead[:, None, :], h, g, kept)
    return keep, refit.reshape(weight.shape).to(weight.dtype)


@register_mask_method(
    "window-obc",
    in_loop=True,
    summary="OBC under the K-window's Kronecker-factored curvature: rows weighed by what the window needs, a joint "
    "re-fit across rows (moves weights)",
)
def window_obc_choice(problem: LayerProblem) -> MaskChoice:
    return MaskChoice(*window_obc_layer(problem))
