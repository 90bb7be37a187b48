"""Tangent programs of piecewise-linear windows: the window's Jacobian exactly, refusals that name the node,
and Newton-CG with them equal to Newton-CG by double backprop."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.config import PruneConfig
from snows_core.engine.graph import PrunedPath, prunable_nodes, trace
from snows_core.engine.problem import layer_problem
from snows_core.engine.reconstruct import get_reconstruction
from snows_core.engine.tangent import TangentProgram
from snows_core.masks import unstructured_mask


class EveryLinearOp(nn.Module):
    """A window through every op a tangent program knows: BatchNorm, ReLU as module, function and method, ReLU6,
    option-A shortcut (slicing, zero padding), a strided conv, scaling by a buffer, subtraction, division by a
    constant, an add of a value from outside, pooling, flatten and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.bn(self.layer(x)))
        short = F.pad(a[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        b = self.down(a).relu() * self.gain - short / 2
        c = torch.relu(b + x[:, :1, ::2, ::2])
        return self.fc(F.relu6(20 * F.adaptive_avg_pool2d(c, 1).flatten(1)))


def window_of(model: nn.Module, k: int, layer: str = "layer", x: torch.Tensor | None = None):
    gm = trace(model.double().eval())
    node = next(n for n in prunable_nodes(gm) if n.target == layer)
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) if x is None else x
    mask = unstructured_mask(gm.get_submodule(layer).weight.abs(), 0.5)
    problem, window = layer_problem(gm, node, PrunedPath(gm, x, x.shape[0]), k=k, mask=mask, batch_size=x.shape[0])
    return problem, window


def test_the_tangent_map_is_the_windows_jacobian_through_every_supported_op():
    model = EveryLinearOp()
    with torch.no_grad():  # BatchNorm statistics and affine parameters away from the identity
        model.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        model.bn.running_var.copy_(torch.tensor([0.5, 1.5, 1.0, 2.0]))
        model.bn.weight.copy_(torch.tensor([0.7, 1.2, -0.4, 1.0]))
    problem, window = window_of(model, k=20)
    program = problem.tangent
    assert isinstance(program, TangentProgram)
    rules = {step.rule for step in program.steps}
    assert rules == {"input", "scaling", "same", "conv", "scale", "add", "linear"}
    batch = slice(0, problem.n)
    z = problem.layer_output(problem.dense_weight, batch)
    externals = [e[batch] if torch.is_tensor(e) and e.dim() else e for e in problem.externals]
    t = torch.randn(z.shape, dtype=z.dtype, generator=torch.Generator().manual_seed(1))
    taps, tangent = program.at(z, *externals)
    expected_taps, expected = torch.func.jvp(lambda u: window.module(u, *externals), (z,), (t,))
    assert len(taps) == len(window.taps) == 7  # layer, act, down, two ReLUs, ReLU6, fc
    capped = taps[-2]
    assert ((capped > 0) & (capped < 6)).any() and (capped == 6).any()  # ReLU6 both passes and caps
    for got, want in zip(taps, expected_taps, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(tangent(t), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


class Smooth(nn.Module):
    def __init__(self, middle: nn.Module) -> None:
        super().__init__()
        self.layer, self.middle, self.out = nn.Linear(4, 6), middle, nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.middle(self.layer(x)))


class Square(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * h


@pytest.mark.parametrize(
    "middle,named",
    [(nn.GELU(), "GELU (node middle)"), (nn.LayerNorm(6), "LayerNorm"), (Square(), "product or quotient")],
)
def test_a_window_with_a_curved_op_has_no_program_and_says_which_node(middle, named):
    x = torch.randn(7, 4, dtype=torch.float64)
    problem, _ = window_of(Smooth(middle), k=3, x=x)
    assert isinstance(problem.tangent, str)
    assert problem.tangent.startswith("no tangent") and named in problem.tangent


def test_max_pooling_has_no_program():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 2))
    problem, _ = window_of(model, k=3, layer="0")
    assert problem.tangent == "no tangent: MaxPool2d (node _1)"


def test_newton_cg_with_tangent_products_equals_newton_cg_by_double_backprop(tiny_resnet):
    config = PruneConfig(sparsity=0.7, k=3, cg_iters=8, newton_passes=2, batch_size=3, n_calib=6)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    problem, _ = window_of(tiny_resnet, k=3, layer="c1", x=x)
    assert isinstance(problem.tangent, TangentProgram)
    snows = get_reconstruction("snows")
    with_tangent = snows(problem, config, lambda event: None)
    problem._tangent = "no tangent: switched off for the test"
    by_double_backprop = snows(problem, config, lambda event: None)
    assert with_tangent.newton_steps == by_double_backprop.newton_steps == 2  # one batch, two passes
    assert with_tangent.cg_iters == by_double_backprop.cg_iters
    torch.testing.assert_close(with_tangent.weight, by_double_backprop.weight, rtol=1e-9, atol=1e-12)
    assert with_tangent.loss == pytest.approx(by_double_backprop.loss, rel=1e-9)


def test_conv_problems_on_the_cpu_hold_channels_last_values(tiny_resnet):
    problem, _ = window_of(tiny_resnet, k=3, layer="c1")
    assert problem.x.is_contiguous(memory_format=torch.channels_last)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in problem.reference if t.dim() == 4)
    linear, _ = window_of(tiny_resnet, k=1, layer="fc")
    assert linear.x.dim() == 2 and linear.x.is_contiguous()


def test_pointwise_chains_become_one_multiply_and_adds_of_outside_values_none(tiny_resnet):
    """c1 -> bn1 -> relu (a tap) -> c2 -> + x (from outside) -> relu (a tap): BatchNorm scale and gate in one
    multiply, the residual add nothing."""
    problem, _ = window_of(tiny_resnet, k=3, layer="c1")
    steps = [
        (s.node.name, s.rule, s.source and s.source.name, [f.name for f in s.factors]) for s in problem.tangent.steps
    ]
    assert steps == [
        ("z", "input", None, []),
        ("relu_1", "scaling", "z", ["bn1", "relu_1"]),
        ("c2", "conv", None, []),
        ("relu_2", "scaling", "c2", ["relu_2"]),
    ]
