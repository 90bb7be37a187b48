"""The K-deep lookahead window of a layer, cut out of a torch.fx trace of any model.

SNOWS (Lucas & Mazumder, ICLR 2025, Sec. 3) reconstructs not only a layer's output o_0 but the outputs
o_1 .. o_K of the K operations that follow it. Here the model is traced once with torch.fx; for layer
l the window is every node that depends on l, in topological order, up to the K-th *counted* operation
(the table below). Values the window reads from outside (a residual shortcut, the class token, ...)
are its external inputs, taken from the pruned network's forward; constants (parameters read with
``get_attr``, shapes) are copied into the window. The window is a GraphModule with signature
``window(z, *externals) -> (o_0, ..., o_K)`` where z is the layer's output, so the solver can
differentiate through it without touching any module.

What counts as an operation (OPERATION_KINDS) follows the official SNOWS code, which counts Conv2d and
ReLU modules in CNNs and attention outputs, Linear and GELU in ViTs. We count the same kinds wherever
they appear (modules, ``F.relu`` and ``torch.relu`` calls, ``x.relu()``), plus the other activations
used by modern nets (SiLU, Hardswish, sigmoid gates of squeeze-excite). Residual merges, normalisation,
pooling and reshapes are not counted: they sit inside the window but are not taps, so K means the same
here as in the paper (K=3 after conv1 of a basic block reaches relu, conv2 and the block's output relu).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snows_core.engine.graph import descendants

__all__ = [
    "OPERATION_KINDS",
    "OFFICIAL_KINDS",
    "operation_kind",
    "Window",
    "build_window",
    "build_tail",
    "block_inputs",
    "FrozenBatchNorm",
]

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)
_ACTIVATION_FUNCTIONS = (F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, torch.relu, torch.sigmoid)
_ACTIVATION_METHODS = ("relu", "relu_", "sigmoid", "tanh")

#: One table: what each traced node counts as when K operations are counted (None: not counted).
OPERATION_KINDS: dict[object, str] = {
    nn.Conv2d: "conv",
    nn.Linear: "linear",
    nn.MultiheadAttention: "attention",
    F.scaled_dot_product_attention: "attention",
    F.softmax: "attention",
    torch.softmax: "attention",
    "softmax": "attention",
    **dict.fromkeys(_ACTIVATION_MODULES, "activation"),
    **dict.fromkeys(_ACTIVATION_FUNCTIONS, "activation"),
    **dict.fromkeys(_ACTIVATION_METHODS, "activation"),
}

#: The kinds the official SNOWS code counts in CNNs (hooks on Conv2d and ReLU modules; never the classifier).
OFFICIAL_KINDS = ("conv", "activation")


def operation_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The kind this node counts as (conv, linear, activation, attention), or None."""
    if node.op == "call_module":
        module_type = type(modules[node.target])
        return next((kind for cls, kind in _module_kinds() if issubclass(module_type, cls)), None)
    if node.op in ("call_function", "call_method"):
        try:
            return OPERATION_KINDS.get(node.target)
        except TypeError:  # unhashable targets count as nothing
            return None
    return None


def _module_kinds() -> list[tuple[type, str]]:
    return [(key, kind) for key, kind in OPERATION_KINDS.items() if isinstance(key, type)]


@dataclass
class Window:
    """Layer `layer`'s K-window: ``module(z, *externals) -> taps``; ops lists (node name, kind) per tap."""

    layer: str
    module: fx.GraphModule
    externals: list[fx.Node]
    taps: list[fx.Node]
    ops: list[tuple[str, str]] = field(default_factory=list)


def build_window(gm: fx.GraphModule, layer_node: fx.Node, k: int, kinds: Collection[str] | None = None) -> Window:
    """Cut the window of `layer_node` reaching K counted operations deeper (fewer at the network's end).

    `kinds` restricts what counts (and becomes a tap) to those operation kinds; None counts every kind.
    """
    modules = dict(gm.named_modules())
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    downstream = descendants(layer_node)
    taps, ops = [layer_node], [(layer_node.name, operation_kind(layer_node, modules) or "layer")]
    for node in sorted(downstream, key=order.get):
        if len(taps) > k:
            break
        kind = operation_kind(node, modules)
        if kind is not None and (kinds is None or kind in kinds):
            taps.append(node)
            ops.append((node.name, kind))
    inside = _ancestors_within(taps, downstream | {layer_node})
    module, externals = _window_module(gm, layer_node, inside, taps, _constant_nodes(gm), order)
    return Window(layer_node.target, module, externals, taps, ops)


def build_tail(gm: fx.GraphModule, layer_node: fx.Node) -> Window:
    """The rest of the network after `layer_node`: ``module(z, *externals) -> (output,)``, the model's output only."""
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    result = output.args[0]
    if not isinstance(result, fx.Node):
        raise ValueError(f"the model must return one tensor to measure its output; it returns {type(result).__name__}")
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    inside = _ancestors_within([result], descendants(layer_node) | {layer_node})
    if result not in inside:
        raise ValueError(f"the model's output does not depend on {layer_node.target}")
    module, externals = _window_module(gm, layer_node, inside, [result], _constant_nodes(gm), order)
    return Window(layer_node.target, module, externals, [result], [(result.name, "output")])


def block_inputs(gm: fx.GraphModule, layer_node: fx.Node) -> list[fx.Node]:
    """The values entering the module that holds the layer (a residual block, say): what the block reads
    from outside itself, in topological order. For a layer held by the model itself, the model's input."""
    owners = list(layer_node.meta.get("nn_module_stack", {}))
    block = owners[-2] if len(owners) > 1 else None
    if block is None:
        return [n for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    inside = {n for n in gm.graph.nodes if block in n.meta.get("nn_module_stack", {})}
    reads = {arg for n in inside for arg in n.all_input_nodes if arg not in inside and arg.op != "get_attr"}
    return [n for n in gm.graph.nodes if n in reads]


def _ancestors_within(taps: list[fx.Node], allowed: set[fx.Node]) -> set[fx.Node]:
    seen, stack = set(), list(taps)
    while stack:
        node = stack.pop()
        if node in seen or node not in allowed:
            continue
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return seen


def _constant_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value does not depend on the input (get_attr and what is computed from them only)."""
    constant: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr" or (
            node.op in ("call_function", "call_method", "call_module")
            and all(arg in constant for arg in node.all_input_nodes)
            and node.all_input_nodes
        ):
            constant.add(node)
    return constant


def _window_module(
    gm: fx.GraphModule,
    layer_node: fx.Node,
    inside: set[fx.Node],
    taps: list[fx.Node],
    constants: set[fx.Node],
    order: dict[fx.Node, int],
) -> tuple[fx.GraphModule, list[fx.Node]]:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {layer_node: graph.placeholder("z")}
    externals: list[fx.Node] = []

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            if node in constants:
                copy_constant(node)
            else:
                env[node] = graph.placeholder(f"ext_{node.name}")
                externals.append(node)
        return env[node]

    def copy_constant(node: fx.Node) -> None:
        for arg in node.all_input_nodes:
            lookup(arg)
        env[node] = graph.node_copy(node, lookup)

    for node in sorted(inside - {layer_node}, key=order.get):
        env[node] = graph.node_copy(node, lookup)
    graph.output(tuple(env[t] for t in taps))
    window = fx.GraphModule(gm, graph, f"Window_{layer_node.name}")
    _freeze_batchnorms(window)
    return window, externals


class FrozenBatchNorm(nn.Module):
    """An eval-mode BatchNorm as the per-channel affine map it is: x * scale + shift.

    Same values as the module it wraps (up to rounding), but its second derivative is free, where
    autograd's batch-norm double backward runs the training-mode formula (about 30% of a K=3 window's
    Hessian-vector product on ResNet-20).
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), (C,) each: the map x -> x * scale + shift per channel."""
        bn = self.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
        shift = -bn.running_mean * scale  # (C,)
        if bn.affine:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)


def _freeze_batchnorms(window: fx.GraphModule) -> None:
    """Swap the window's eval-mode BatchNorms (running statistics in use) for `FrozenBatchNorm`."""
    for node in window.graph.nodes:
        if node.op != "call_module":
            continue
        module = window.get_submodule(node.target)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training and module.track_running_stats:
            parent, _, leaf = node.target.rpartition(".")
            setattr(window.get_submodule(parent), leaf, FrozenBatchNorm(module))
