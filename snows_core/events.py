"""Typed progress events emitted by `prune_model` through its `on_event` callback.

The library never prints: the CLI draws a progress bar from these, the run store writes them as rows,
and the dashboard plots them. Every event has a `kind` and turns into a flat JSON-ready dict.
An exception raised by the callback stops the run cleanly between Newton steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

__all__ = [
    "Event",
    "RunStarted",
    "LayerStarted",
    "NewtonStep",
    "LayerDone",
    "LayerSkipped",
    "RunDone",
    "Allocated",
    "LayerScanned",
    "LayerSensitivity",
    "Evaluation",
    "EventSink",
    "EVENT_TYPES",
]


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    layers: list[str] = field(default_factory=list)
    device: str = "cpu"
    stages: int = 1  # passes over the layers: progress is out of len(layers) * stages


@dataclass(frozen=True)
class Allocated(Event):
    """Each layer's final sparsity, chosen before the first layer is pruned (and the scan behind it, if any)."""

    kind: ClassVar[str] = "allocation"
    allocation: str = "uniform"
    sparsities: dict[str, float] = field(default_factory=dict)
    scan: dict[str, Any] | None = None


@dataclass(frozen=True)
class LayerScanned(Event):
    """One layer of a sensitivity scan: its loss pruned alone at each sparsity of the grid."""

    kind: ClassVar[str] = "layer_scanned"
    layer: str = ""
    index: int = 0
    n_layers: int = 0
    sparsities: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LayerSensitivity(Event):
    """One layer of a sensitivity analysis: pruned alone at each sparsity (the rest dense), the chosen
    update applied, and measured. Per sparsity: the K-window loss with the mask alone and after the update,
    the allocation's output loss, top-1 on the test subset, the largest logit change against the dense
    network, the nonzero weights the mask removed, and `checks`: why a cell with no effect on the logits
    is not simply robust (empty when it has an effect)."""

    kind: ClassVar[str] = "layer_sensitivity"
    layer: str = ""
    index: int = 0
    n_layers: int = 0
    sparsities: list[float] = field(default_factory=list)
    window_loss_mask: list[float] = field(default_factory=list)
    window_loss: list[float] = field(default_factory=list)
    output_loss: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    logit_change: list[float] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    top1_dense: float = 0.0
    numel: int = 0


@dataclass(frozen=True)
class LayerStarted(Event):
    kind: ClassVar[str] = "layer_started"
    layer: str = ""
    index: int = 0
    n_layers: int = 0
    window: list[str] = field(default_factory=list)
    loss_before: float = 0.0
    stage: int = 1


@dataclass(frozen=True)
class NewtonStep(Event):
    """One Newton step of a layer: the loss before and after, and the trace of its CG solve and line search.

    `cg_trace` holds [iteration, relative residual, model decrease] rows (every iteration up to
    `solver.TRACE_POINTS`, evenly thinned beyond, the last always kept); `cg_stop` is one of
    `solver.CG_STOPS`; `line_search` holds the Armijo trials as [alpha, loss, accepted (1 or 0)].
    """

    kind: ClassVar[str] = "newton_step"
    layer: str = ""
    step: int = 0
    loss: float = 0.0
    loss_after: float = 0.0
    cg_iters: int = 0
    cg_residual: float = 0.0
    step_size: float = 0.0
    seconds: float = 0.0
    stage: int = 1
    cg_stop: str = ""
    cg_trace: list[list[float]] = field(default_factory=list)
    line_search: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class LayerDone(Event):
    kind: ClassVar[str] = "layer_done"
    layer: str = ""
    index: int = 0
    n_layers: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    stage: int = 1


@dataclass(frozen=True)
class LayerSkipped(Event):
    kind: ClassVar[str] = "layer_skipped"
    layer: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RunDone(Event):
    kind: ClassVar[str] = "run_done"
    seconds: float = 0.0
    sparsity: float = 0.0


@dataclass(frozen=True)
class Evaluation(Event):
    """Top-1 of the network with the first `index + 1` pruned layers final and the rest dense (the trajectory)."""

    kind: ClassVar[str] = "evaluation"
    layer: str = ""
    index: int = 0
    top1: float = 0.0
    top1_mask_only: float = 0.0
    images: int = 0


EventSink = Callable[[Event], None]

EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in Event.__subclasses__()}  # kind -> its dataclass
