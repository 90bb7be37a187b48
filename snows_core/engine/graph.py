"""The traced network: torch.fx tracing of any model, its prunable layers, and the pruned path's activation cache.

`trace` turns a model into a GraphModule that shares its submodules (and weights); `prunable_nodes` lists its
Conv2d/Linear calls and `default_layers` the ones pruned unless the user names others. `PrunedPath` holds the
values of every node on the calibration set for the network as it is being pruned, computed on demand and
released as the layer loop moves past them: the inputs every layer problem reads.

Untraceable blocks can be registered as leaves (`register_leaf_module`), as timm does for FX.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = [
    "PRUNABLE_TYPES",
    "register_leaf_module",
    "trace",
    "prunable_nodes",
    "default_layers",
    "descendants",
    "PrunedPath",
]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

_LEAF_MODULES: set[type[nn.Module]] = set()


def register_leaf_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Decorator/function: trace `cls` as one opaque call instead of tracing through it."""
    _LEAF_MODULES.add(cls)
    return cls


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, tuple(_LEAF_MODULES)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace `model` with torch.fx; the GraphModule shares the model's submodules (and weights)."""
    try:
        graph = _Tracer().trace(model, concrete_args=_optional_arguments(model))
    except Exception as err:  # fx raises many types; all mean the same to the user
        where = _innermost_module(err)
        raise ValueError(
            f"cannot trace {type(model).__name__} with torch.fx{where}: {err}. Register the block that "
            "fails with snows_core.engine.graph.register_leaf_module so it is traced as one call."
        ) from err
    inputs = [n for n in graph.nodes if n.op == "placeholder" and not n.args]  # args hold a fixed default
    if len(inputs) != 1:
        raise ValueError(f"the model must take exactly one input tensor; its forward reads {len(inputs)}")
    return fx.GraphModule(model, graph, type(model).__name__)


def _optional_arguments(model: nn.Module) -> dict[str, object]:
    """Forward arguments after the first that have defaults (masks, flags) are fixed at their defaults."""
    parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _innermost_module(err: Exception) -> str:
    for frame, _ in reversed(list(traceback.walk_tb(err.__traceback__))):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module):
            return f" (in module {type(owner).__name__})"
    return ""


def prunable_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """call_module nodes of Conv2d/Linear layers, in topological order."""
    modules = dict(gm.named_modules())
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], PRUNABLE_TYPES)]


def default_layers(gm: fx.GraphModule) -> list[str]:
    """Every Conv2d/Linear except the first one (it sees the input) and the last (the classifier)."""
    names = [n.target for n in prunable_nodes(gm)]
    return list(dict.fromkeys(names[1:-1]))


def descendants(node: fx.Node) -> set[fx.Node]:
    """Every node computed from `node` (the graph's output excepted)."""
    seen, stack = set(), [node]
    while stack:
        for user in stack.pop().users:
            if user not in seen and user.op != "output":
                seen.add(user)
                stack.append(user)
    return seen


class PrunedPath:
    """Node values of the network being pruned on the calibration set, computed on demand.

    Values are cached; when a layer's weight changes, `invalidate` drops everything downstream of it,
    and `release_before` drops values no later node reads, so memory holds only the live frontier.
    """

    def __init__(self, gm: fx.GraphModule, inputs: torch.Tensor, batch_size: int) -> None:
        self.gm, self.inputs, self.batch_size = gm, inputs, batch_size
        self.order = {node: i for i, node in enumerate(gm.graph.nodes)}
        self.interpreter = fx.Interpreter(gm)
        self.names = {node.name: node for node in gm.graph.nodes}
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.env: dict[fx.Node, object] = {n: n.args[0] if n.args else inputs for n in placeholders}

    def seeded(self, values: dict[str, object]) -> PrunedPath:
        """A path over the same graph whose nodes named in `values` hold those values; the rest is computed
        from them (and from the input where nothing seeded lies between)."""
        path = PrunedPath(self.gm, self.inputs, self.batch_size)
        path.env.update({self.names[name]: value for name, value in values.items()})
        return path

    def node(self, name: str) -> fx.Node:
        """The node called `name` (traces of identical models name their nodes alike)."""
        return self.names[name]

    def value(self, node: fx.Node) -> object:
        """The value of `node` (all images), computing missing ancestors in topological order."""
        if node not in self.env:
            missing = [n for n in self._ancestors(node) if n not in self.env]
            for n in sorted(missing, key=self.order.get):
                self.env[n] = self._run(n)
        return self.env[node]

    def values(self, nodes: Iterable[fx.Node]) -> list[object]:
        return [self.value(n) for n in nodes]

    def invalidate(self, node: fx.Node) -> None:
        """Forget `node` and everything computed from it."""
        for stale in descendants(node) | {node}:
            self.env.pop(stale, None)

    def release_before(self, node: fx.Node) -> None:
        """Forget values whose every reader comes before `node` in topological order."""
        position = self.order[node]
        for cached in list(self.env):
            if cached.op != "placeholder" and all(self.order[u] < position for u in cached.users):
                del self.env[cached]

    def _ancestors(self, node: fx.Node) -> set[fx.Node]:
        seen, stack = set(), [node]
        while stack:
            n = stack.pop()
            if n in seen or n in self.env:
                continue
            seen.add(n)
            stack.extend(n.all_input_nodes)
        return seen

    @torch.no_grad()
    def _run(self, node: fx.Node) -> object:
        self.interpreter.env = self.env
        args, kwargs = self.interpreter.fetch_args_kwargs_from_env(node)
        run = getattr(self.interpreter, node.op)
        if node.op != "call_module" or not isinstance(self.gm.get_submodule(node.target), PRUNABLE_TYPES):
            return run(node.target, args, kwargs)
        # Convs and linears run in mini-batches to bound their workspace memory.
        (x,) = args
        return torch.cat([run(node.target, (chunk,), kwargs) for chunk in x.split(self.batch_size)])
