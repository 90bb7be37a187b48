"""Tangent programs: the exact Hessian of a piecewise-linear K-window without differentiating twice.

A window made of convolutions and linears with fixed weights, eval-mode BatchNorms (affine maps), ReLU(6)s,
residual adds, pooling, zero padding and reshapes is piecewise linear in the layer output z, and the
layer is linear in its weights. So the SNOWS objective L(W) = sum_t mean((f_t(W) - y_t)^2) has the
Hessian

    H = sum_t (2 / numel(y_t)) J_t^T J_t,   J_t = (d f_t / d z) (d z / d W),

exactly wherever no ReLU input sits on its kink (their second derivative vanishes everywhere else):
the Gauss-Newton matrix *is* the Hessian. J v is one pass of the window's tangent program (each
ReLU replaced by its gate, input > 0, at the current point; each BatchNorm by its scale; a value read
from outside the window by zero) on layer(x, V) without its bias, and J^T u is the backward pass of that
linear program. A product costs the convolutions of one forward and one backward pass: the pruned
layer and the window are never differentiated twice (SNOWS Sec. 3; Martens 2010 on such products).

`tangent_program(window)` builds the program once per window, or says why the window has none (GELU,
softmax, LayerNorm, max-pooling, a product of two values that both depend on z, ...): those windows
keep double backpropagation.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snows_core.engine.columns import linear_part
from snows_core.engine.window import FrozenBatchNorm

__all__ = ["TangentProgram", "tangent_program"]

Tangent = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]

# Linear ops applied to the tangent as they are to the value (their other arguments are constants).
_SAME_FUNCTIONS = {
    operator.getitem,
    torch.flatten,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
    torch.mean,
    torch.sum,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
}
_SAME_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "mean",
    "sum",
}
_SAME_MODULES = (nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)
_SHAPE_METHODS = {"size", "dim"}  # values that depend on a tensor's shape only: constants of the program
_RELU = {F.relu, torch.relu, "relu", F.relu6}
_ADD = {operator.add, torch.add, operator.sub, torch.sub}
_SCALE = {operator.mul, torch.mul, operator.truediv, torch.div}


@dataclass(frozen=True)
class _Step:
    """One node of the tangent program: `rule` says how its tangent follows from its arguments'.

    A "scaling" step stands for a chain of pointwise factors (BatchNorm scales, ReLU gates, adds of a value
    from outside the window, which contribute none): its tangent is `source`'s times the product of the
    factors of the nodes in `factors`, one multiply where the chain had one per node.
    """

    node: fx.Node
    rule: str  # input, same, scale, add, conv, linear, scaling
    source: fx.Node | None = None
    factors: tuple[fx.Node, ...] = ()


class TangentProgram:
    """The linearisation of one window, evaluated at a point by `at`."""

    def __init__(self, window: fx.GraphModule, steps: list[_Step], saved: set[fx.Node], taps: Sequence[fx.Node]):
        self.window, self.steps, self.saved, self.taps = window, steps, saved, list(taps)
        self.modules = dict(window.named_modules())
        self.factors = {f: self._factor_kind(f) for step in steps for f in step.factors}

    def _factor_kind(self, node: fx.Node) -> str:
        module = self.modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, FrozenBatchNorm):
            return "affine"
        return "gate6" if isinstance(module, nn.ReLU6) or node.target is F.relu6 else "gate"

    def at(self, z: torch.Tensor, *externals: object) -> tuple[tuple[torch.Tensor, ...], Tangent]:
        """The window's taps at z (differentiable as the window is) and its tangent map t -> J t, one
        tangent per tap, a linear program of what the window computed at z."""
        recorder = _Recorder(self.window, self)
        taps = recorder.run(z, *externals)
        values, factors = recorder.values, recorder.factors
        multipliers = {
            step.node: math.prod((factors[f] for f in step.factors[1:]), start=factors[step.factors[0]])
            for step in self.steps
            if step.factors
        }
        return tuple(taps), lambda t: self._tangent(t, values, multipliers)

    def _tangent(
        self, t: torch.Tensor, values: dict[fx.Node, object], multipliers: dict[fx.Node, torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        tangents: dict[fx.Node, torch.Tensor] = {}

        def arg(a: object) -> object:
            return fx.node.map_arg(a, lambda n: tangents[n] if n in tangents else values[n])

        for step in self.steps:
            node, rule = step.node, step.rule
            if rule == "input":
                out = t
            elif rule == "scaling":
                out = tangents[step.source] * multipliers[node] if step.factors else tangents[step.source]
            elif rule == "add":
                a, b = (tangents.get(x) if isinstance(x, fx.Node) else None for x in node.args[:2])
                out = -b if a is None else (a - b if node.target in (operator.sub, torch.sub) else a + b)
            elif rule in ("conv", "linear"):
                module = self.modules[node.target]
                out = linear_part(module, tangents[node.args[0]], module.weight)
            else:  # same, scale: the node's own op with the tangent in place of its varying argument
                out = self._call(node, arg(node.args), arg(node.kwargs))
            tangents[node] = out
        return tuple(tangents[n] for n in self.taps)

    def _call(self, node: fx.Node, args: tuple, kwargs: dict) -> torch.Tensor:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)


class _Recorder(fx.Interpreter):
    """Runs the window and keeps what its tangent program reads: factors (ReLU gates, BatchNorm scales
    shaped to broadcast) and constant operands."""

    def __init__(self, window: fx.GraphModule, program: TangentProgram) -> None:
        super().__init__(window)
        self.program = program
        self.values: dict[fx.Node, object] = {}
        self.factors: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        kind = self.program.factors.get(n)
        if kind == "gate":
            self.factors[n] = (value > 0).to(value.dtype)  # relu(x) > 0 exactly where x > 0
        elif kind == "gate6":
            self.factors[n] = ((value > 0) & (value < 6)).to(value.dtype)  # relu6's slope is 1 on (0, 6)
        elif kind == "affine":
            scale, _ = self.program.modules[n.target].affine()
            self.factors[n] = scale.detach().view((1, -1) + (1,) * (value.dim() - 2))
        if n in self.program.saved:
            self.values[n] = value.detach() if torch.is_tensor(value) else value
        return value


def tangent_program(window: fx.GraphModule) -> TangentProgram | str:
    """The window's tangent program, or why it has none (a sentence naming the first node in the way)."""
    modules = dict(window.named_modules())
    carrying: set[fx.Node] = set()
    rules: dict[fx.Node, str] = {}
    saved: set[fx.Node] = set()
    placeholders = [n for n in window.graph.nodes if n.op == "placeholder"]
    for node in window.graph.nodes:
        if node.op == "output":
            taps = list(node.args[0])
            continue
        if node is placeholders[0]:
            rule = "input"
        elif not any(a in carrying for a in node.all_input_nodes) or _is_shape(node):
            continue  # a constant of the program: its value comes from the window's run when read
        else:
            rule = _rule(node, modules, carrying)
            if rule.startswith("no tangent"):
                return f"{rule} (node {node.name})"
            if rule in ("same", "scale"):
                saved.update(a for a in node.all_input_nodes if a not in carrying)
            if rule == "add" and _passes_through(node, carrying) is not None:
                rule = "pass"
        carrying.add(node)
        rules[node] = rule
    return TangentProgram(window, _fused(rules, carrying, set(taps)), saved, taps)


def _fused(rules: dict[fx.Node, str], carrying: set[fx.Node], taps: set[fx.Node]) -> list[_Step]:
    """The steps, each chain of pointwise factors (affine, gate, pass) merged into one "scaling" step.

    A chain continues through a node that is no tap and whose one user is pointwise too, so every tangent
    the program still needs is computed."""
    pointwise = ("affine", "gate", "pass")
    steps: list[_Step] = []
    chains: dict[fx.Node, tuple[fx.Node, tuple[fx.Node, ...]]] = {}
    for node, rule in rules.items():
        if rule not in pointwise:
            steps.append(_Step(node, rule))
            continue
        source = _passes_through(node, carrying) if rule == "pass" else node.args[0]
        head, factors = chains.pop(source, (source, ()))
        factors = factors if rule == "pass" else (*factors, node)
        users = list(node.users)
        if node not in taps and len(users) == 1 and rules.get(users[0]) in pointwise:
            chains[node] = (head, factors)
        else:
            steps.append(_Step(node, "scaling", head, factors))
    return steps


def _passes_through(node: fx.Node, carrying: set[fx.Node]) -> fx.Node | None:
    """For an add (or a subtraction of a constant) with one varying operand: that operand, the node's tangent."""
    varying = [a for a in node.args[:2] if isinstance(a, fx.Node) and a in carrying]
    if len(varying) == 1 and not (node.target in (operator.sub, torch.sub) and varying[0] is not node.args[0]):
        return varying[0]
    return None


def _is_shape(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _SHAPE_METHODS) or (
        node.op == "call_function" and node.target is getattr
    )


def _rule(node: fx.Node, modules: dict[str, nn.Module], carrying: set[fx.Node]) -> str:
    """How `node`'s tangent follows from its arguments' (node depends on z), or 'no tangent: why'."""
    if node.op == "call_module":
        return _module_rule(modules[node.target])
    target = node.target
    if _hashable_in(target, _RELU):
        return "gate"
    if node.op == "call_method":
        return "same" if target in _SAME_METHODS else f"no tangent: method {target}"
    if _hashable_in(target, _ADD):
        return "add" if "alpha" not in node.kwargs else "no tangent: add with alpha"
    if _hashable_in(target, _SCALE):
        varying = [isinstance(a, fx.Node) and a in carrying for a in node.args[:2]]
        divisor = target in (operator.truediv, torch.div) and varying[1]
        if all(varying) or divisor:
            return "no tangent: a product or quotient of values that depend on the layer"
        return "scale"
    if target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return "same" if mode == "constant" and not value else "no tangent: padding with non-zero values"
    if _hashable_in(target, _SAME_FUNCTIONS):
        return "same"
    return f"no tangent: {getattr(target, '__name__', target)}"


def _module_rule(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, FrozenBatchNorm):
        return "affine"
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "gate"
    if isinstance(module, _SAME_MODULES) or (isinstance(module, nn.Dropout) and not module.training):
        return "same"
    return f"no tangent: {type(module).__name__}"


def _hashable_in(target: object, table: set) -> bool:
    try:
        return target in table
    except TypeError:
        return False
