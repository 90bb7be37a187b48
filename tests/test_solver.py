"""CG against torch.linalg.solve, Armijo, and Hessian-vector products against explicit Hessians."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.engine.graph import PrunedPath, prunable_nodes, trace
from snows_core.engine.problem import LayerProblem, layer_problem
from snows_core.engine.solver import (
    CGResult,
    armijo_backtracking,
    cg_trace,
    conjugate_gradient,
    exact_curvature,
    gauss_newton_curvature,
    tangent_curvature,
    tap_loss,
)
from snows_core.engine.tangent import TangentProgram
from snows_core.masks import unstructured_mask

torch.set_default_dtype(torch.float32)


def random_spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64)


def test_cg_matches_linalg_solve():
    a, b = random_spd(30), torch.randn(30, dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=200, tol=1e-12, damping=0.5)
    expected = torch.linalg.solve(a + 0.5 * torch.eye(30, dtype=torch.float64), b)
    torch.testing.assert_close(result.x, expected, rtol=1e-8, atol=1e-10)
    assert result.iters <= 60 and result.residual <= 1e-12


def test_cg_stops_at_max_iters_and_reports_residual():
    a, b = random_spd(50, seed=1), torch.randn(50, dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=3, tol=0.0, damping=0.0)
    true_residual = (b - a @ result.x).norm() / b.norm()
    assert result.iters == 3
    assert result.residual == pytest.approx(true_residual.item(), rel=1e-6)


def test_cg_returns_steepest_descent_on_negative_curvature():
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    result = conjugate_gradient(lambda v: -v, b, max_iters=10, tol=1e-9, damping=0.0)
    assert torch.equal(result.x, b) and result.iters == 1


def test_preconditioned_cg_matches_linalg_solve_in_fewer_products():
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, 4, 40, dtype=torch.float64)  # badly scaled: plain CG needs many products
    a = scales[:, None] * random_spd(40, seed=4) * scales[None, :] / 40
    b = torch.randn(40, generator=g, dtype=torch.float64)
    system = a + 0.5 * torch.eye(40, dtype=torch.float64)
    expected = torch.linalg.solve(system, b)
    jacobi = system.diagonal()
    plain = conjugate_gradient(lambda v: a @ v, b, max_iters=400, tol=1e-10, damping=0.5)
    preconditioned = conjugate_gradient(
        lambda v: a @ v, b, max_iters=400, tol=1e-10, damping=0.5, precondition=lambda r: r / jacobi
    )
    torch.testing.assert_close(preconditioned.x, expected, rtol=1e-7, atol=1e-9)
    assert preconditioned.stop == "tolerance" and preconditioned.iters < plain.iters / 2
    true_residual = (b - system @ preconditioned.x).norm() / b.norm()  # the rule reads the true residual
    assert preconditioned.residual == pytest.approx(true_residual.item(), rel=1e-4, abs=1e-12)
    exact = conjugate_gradient(lambda v: a @ v, b, max_iters=1, tol=0.0, damping=0.5, precondition=lambda r: r)
    assert torch.equal(exact.x, conjugate_gradient(lambda v: a @ v, b, max_iters=1, tol=0.0, damping=0.5).x)


def test_with_the_exact_inverse_as_preconditioner_cg_takes_one_product():
    a, b = random_spd(12, seed=5), torch.randn(12, dtype=torch.float64)
    inverse = torch.linalg.inv(a + 0.25 * torch.eye(12, dtype=torch.float64))
    result = conjugate_gradient(
        lambda v: a @ v, b, max_iters=5, tol=1e-9, damping=0.25, precondition=lambda r: inverse @ r
    )
    assert result.iters == 1 and result.stop == "tolerance"
    torch.testing.assert_close(result.x, inverse @ b, rtol=1e-9, atol=1e-12)


def test_the_cg_trace_is_each_iterates_residual_and_model_decrease():
    a, b = random_spd(8, seed=2), torch.randn(8, dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=5, tol=0.0, damping=0.25)
    system = a + 0.25 * torch.eye(8, dtype=torch.float64)
    for k in range(1, 6):  # the k-th iterate, recomputed by running CG k iterations
        x = conjugate_gradient(lambda v: a @ v, b, max_iters=k, tol=0.0, damping=0.25).x
        assert result.residuals[k - 1] == pytest.approx(((b - system @ x).norm() / b.norm()).item(), rel=1e-8)
        assert result.decrease[k - 1] == pytest.approx((b @ x - 0.5 * x @ system @ x).item(), rel=1e-8)
    assert result.stop == "cap" and result.decrease == sorted(result.decrease)  # CG never raises the model
    exact = torch.linalg.solve(system, b)
    converged = conjugate_gradient(lambda v: a @ v, b, max_iters=100, tol=1e-10, damping=0.25)
    assert converged.stop == "tolerance" and converged.residuals[-1] <= 1e-10
    assert converged.decrease[-1] == pytest.approx(0.5 * (b @ exact).item(), rel=1e-8)  # m(0) - m(x*) = b'x*/2
    assert conjugate_gradient(lambda v: -v, b, max_iters=9, tol=0.0, damping=0.0).stop == "negative curvature"
    assert conjugate_gradient(lambda v: v, 0 * b, max_iters=9, tol=0.0, damping=0.0).stop == "zero gradient"


def test_a_long_cg_trace_is_thinned_to_bounded_rows_keeping_the_last():
    result = CGResult(torch.zeros(1), 500, 0.1, [1 / (i + 1) for i in range(500)], list(range(500)), "cap")
    rows = cg_trace(result, points=64)
    assert len(rows) == 64 and rows[0] == [1, 1.0, 0.0] and rows[-1] == [500, 0.002, 499.0]
    assert cg_trace(CGResult(torch.zeros(1), 2, 0.5, [0.123456, 0.5], [1.0, 2.0]))[0] == [1, 0.1235, 1.0]


def test_armijo_takes_the_full_newton_step_on_a_quadratic():
    alpha, loss, trials = armijo_backtracking(lambda a: (1.0 - a) ** 2, 1.0, slope=-2.0)
    assert alpha == 1.0 and loss == 0.0 and trials == [(1.0, 0.0, True)]


def test_armijo_shrinks_then_gives_up_without_a_step():
    calls = []
    alpha, loss, trials = armijo_backtracking(lambda a: calls.append(a) or 5.0, 1.0, slope=-1.0)
    assert (alpha, loss) == (0.0, 1.0)
    assert len(calls) == 50 and [t[0] for t in trials] == calls and not any(t[2] for t in trials)
    assert calls[1] == pytest.approx(0.9) and calls[2] == pytest.approx(0.81)


def tiny_problem(model: nn.Module, layer: str, k: int, sparsity: float = 0.5):
    gm = trace(model)
    node = next(n for n in prunable_nodes(gm) if n.target == layer)
    x = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    path = PrunedPath(gm, x, batch_size=6)
    mask = unstructured_mask(gm.get_submodule(layer).weight.abs(), sparsity)
    problem, window = layer_problem(gm, node, path, k=k, mask=mask, batch_size=6)
    dense = problem.dense_weight
    perturbed = dense + 0.3 * torch.randn(dense.shape, generator=torch.Generator().manual_seed(4), dtype=dense.dtype)
    return problem, perturbed[mask].detach(), window


def curvatures(problem: LayerProblem, free: torch.Tensor):
    batch = slice(0, problem.n)
    kwargs = dict(
        layer_of=lambda w: problem.layer_output(problem.weight_of(w), batch),
        window_of=lambda z: problem.window_taps(z, batch),
    )
    taps_of = lambda w: problem.taps(problem.weight_of(w), batch)  # noqa: E731
    products = {
        "exact": exact_curvature(taps_of, problem.reference, free, **kwargs),
        "gauss-newton": gauss_newton_curvature(taps_of, problem.reference, free, **kwargs),
    }
    if isinstance(problem.tangent, TangentProgram):
        kwargs = dict(
            layer_of=kwargs["layer_of"],
            linear_layer_of=lambda w: problem.linear_output(problem.weight_of(w), batch),
            window_at=lambda z: problem.window_at(z, batch),
        )
        products["tangent"] = tangent_curvature(taps_of, problem.reference, free, **kwargs)
    return taps_of, products


@pytest.mark.parametrize("layer,k,crosses", [("c2", 0, set()), ("c2", 2, {"add", "relu"}), ("c1", 3, {"add"})])
def test_hvp_matches_explicit_hessian(tiny_resnet, layer, k, crosses):
    problem, free, window = tiny_problem(tiny_resnet.double(), layer, k)
    ops = {str(n.target) for n in window.module.graph.nodes} | {n.name for n in window.module.graph.nodes}
    assert all(any(c in o for o in ops) for c in crosses)
    taps_of, curv = curvatures(problem, free)
    assert "tangent" in curv  # ReLU windows are piecewise linear
    loss_of = lambda w: tap_loss(taps_of(w), problem.reference)  # noqa: E731
    hessian = torch.autograd.functional.hessian(loss_of, free)  # (n_free, n_free), built entry by entry
    gradient = torch.func.grad(loss_of)(free)
    v = torch.randn(free.shape, dtype=free.dtype, generator=torch.Generator().manual_seed(5))
    for name, c in curv.items():
        torch.testing.assert_close(c.hvp(v), hessian @ v, rtol=1e-7, atol=1e-9, msg=name)
        torch.testing.assert_close(c.grad, gradient, rtol=1e-7, atol=1e-9, msg=name)
        assert c.loss == pytest.approx(loss_of(free).item(), rel=1e-9)


def test_gauss_newton_is_the_psd_part_for_smooth_windows():
    """With GELU the exact Hessian has a residual term; Gauss-Newton drops it (and stays PSD)."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3)).double().eval()
    gm = trace(model)
    node = prunable_nodes(gm)[1]
    x = torch.randn(7, 4, dtype=torch.float64)
    path = PrunedPath(gm, x, 7)
    mask = unstructured_mask(gm.get_submodule(node.target).weight.abs(), 0.5)
    problem, _ = layer_problem(gm, node, path, k=2, mask=mask, batch_size=7)
    free = problem.dense_weight[mask] + 0.5
    taps_of, curv = curvatures(problem, free)
    eye = torch.eye(free.numel(), dtype=torch.float64)
    gn = torch.stack([curv["gauss-newton"].hvp(e) for e in eye])
    exact = torch.stack([curv["exact"].hvp(e) for e in eye])
    jac = torch.autograd.functional.jacobian(lambda w: taps_of(w)[-1], free).reshape(-1, free.numel())
    jac0 = torch.autograd.functional.jacobian(lambda w: taps_of(w)[0], free).reshape(-1, free.numel())
    jac1 = torch.autograd.functional.jacobian(lambda w: taps_of(w)[1], free).reshape(-1, free.numel())
    n = [t.numel() for t in problem.reference]
    expected = 2 * (jac0.T @ jac0 / n[0] + jac1.T @ jac1 / n[1] + jac.T @ jac / n[2])
    torch.testing.assert_close(gn, expected, rtol=1e-7, atol=1e-10)
    assert torch.linalg.eigvalsh(gn).min() > -1e-10
    assert not torch.allclose(gn, exact)


def test_hvp_exact_beyond_1e5_free_weights():
    """A layer with 131,072 free weights: products agree with central differences of the gradient.

    The window (linear, ReLU, linear) is piecewise linear, so its gradient is piecewise linear in the
    weights and a central difference over a tiny step is exact up to rounding.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).double().eval()
    model.requires_grad_(False)
    gm = trace(model)
    node = prunable_nodes(gm)[1]
    x = torch.randn(32, 64, dtype=torch.float64)
    path = PrunedPath(gm, x, 32)
    mask = unstructured_mask(gm.get_submodule(node.target).weight.abs(), 0.5)
    problem, _ = layer_problem(gm, node, path, k=2, mask=mask, batch_size=32)
    free = problem.dense_weight[mask]
    assert free.numel() == 131_072
    taps_of, curv = curvatures(problem, free)
    assert "tangent" in curv  # ReLU windows are piecewise linear
    loss_of = lambda w: tap_loss(taps_of(w), problem.reference)  # noqa: E731
    v = torch.randn(free.shape, dtype=free.dtype)
    grad_of, step = torch.func.grad(loss_of), 1e-6
    expected = (grad_of(free + step * v) - grad_of(free - step * v)) / (2 * step)
    for name, c in curv.items():
        torch.testing.assert_close(c.hvp(v), expected, rtol=1e-6, atol=1e-9, msg=name)


def test_tap_loss_normalises_each_tap_by_its_own_size():
    taps = [torch.ones(2), torch.ones(8)]
    targets = [torch.zeros(2), torch.zeros(8)]
    assert tap_loss(taps, targets).item() == 2.0
    assert F.mse_loss(torch.cat(taps), torch.cat(targets)).item() == 1.0
