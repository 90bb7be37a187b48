"""The guided lesson: six steps from a mask that breaks a network to the trade-off curve, each one point made by
a run or two small enough to finish in seconds on a laptop CPU (no Streamlit here: the Lesson page draws it).

Every step names its runs as RunSpecs (the zoo's ResNet-20, 128 calibration images, 1,000 test images: the
teaching recipe's scale), so a step launches them through the queue, or reuses them when a run with the same
spec is done (`executor.submit`), and `lesson_specs()` lists all of them for pre-warming before class.
`step_text` fills a step's sentences with its runs' results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snows_core import __version__
from snows_core.recipes import get_recipe
from snows_core.runs.executor import reusable_run
from snows_core.runs.spec import RunSpec
from snows_core.runs.store import RunStore

__all__ = ["LessonStep", "LESSON", "lesson_specs", "known_run", "step_runs", "step_text"]

MODEL = "resnet20"


def _spec(**overrides: Any) -> RunSpec:
    """A run at the teaching recipe's scale (ResNet-20, 128 calibration images), `overrides` applied."""
    return RunSpec(model=MODEL, config=get_recipe("teaching", **overrides))


@dataclass(frozen=True)
class LessonStep:
    """One step: its runs (labelled), what the page draws (`view`), and its sentences: `before` while the
    runs are not done, `after` with `{label.field}` placeholders for their results (`step_text`)."""

    key: str
    title: str
    runs: dict[str, RunSpec]
    view: str  # "accuracy", "solve", "masks", "stages" or "sweep"
    before: str
    after: str


SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95)

LESSON: tuple[LessonStep, ...] = (
    LessonStep(
        "collapse",
        "Prune 90% of the weights",
        {"mask": _spec(reconstruction="none")},
        "accuracy",
        "Zero the 90% smallest weights of every convolution of a trained ResNet-20 (magnitude pruning) and "
        "score it on 1,000 test images, with nothing else done.",
        "The dense network scores {mask.top1_dense}; with 90% of its weights gone it scores {mask.top1_final}. "
        "The surviving weights were tuned for a network that no longer exists: each layer's output drifts, and "
        "the drift compounds layer after layer.",
    ),
    LessonStep(
        "layerwise",
        "Re-fit each layer to its own output",
        {"lstsq": _spec(reconstruction="lstsq")},
        "accuracy",
        "Keep the same mask, but re-fit each layer's surviving weights by least squares so that the layer "
        "reproduces the dense layer's output on 128 calibration images (K = 0: the layer alone).",
        "Layer-wise least squares lifts top-1 from {lstsq.top1_mask_only} (the mask alone) to "
        "{lstsq.top1_final}: each layer now matches its own output, but not what the layers after it need.",
    ),
    LessonStep(
        "k-deep",
        "Reconstruct K operations deeper (SNOWS)",
        {"snows": _spec()},
        "solve",
        "SNOWS re-fits each layer so that the dense network's activations up to K = 3 operations deeper are "
        "reconstructed. The objective is no longer quadratic: a Newton step solves H d = -g by conjugate "
        "gradient with exact Hessian-vector products, then a line search picks the step. Watch one solve.",
        "With K = 3 top-1 reaches {snows.top1_final}, from {snows.top1_mask_only} with the mask alone. The "
        "charts show each layer's K-window loss per Newton step and, for one layer, the CG residual falling "
        "iteration by iteration.",
    ),
    LessonStep(
        "masks",
        "Two masks, side by side",
        {"magnitude": _spec(), "obc": _spec(mask="obc")},
        "masks",
        "Which weights to keep matters as much as how they are re-fitted. Magnitude keeps the largest |w|; OBC "
        "(Optimal Brain Compression) removes one weight at a time, the one whose loss the layer can best "
        "absorb, re-fitting the rest after each. Both then get SNOWS K = 3.",
        "Magnitude + SNOWS: {magnitude.top1_final}; OBC + SNOWS: {obc.top1_final}. The chart shows, layer by "
        "layer, how much of the kept weights the two masks share (Jaccard index; 1 = the same mask).",
    ),
    LessonStep(
        "stages",
        "At 95%: prune in stages",
        {"one pass": _spec(sparsity=0.95), "3 stages": _spec(sparsity=0.95, stages=3)},
        "stages",
        "At 95% sparsity one cut is too much at once. Gradual stages prune to 67%, 91% and then 95%, "
        "re-fitting with SNOWS after each, so every cut starts from a network that still works.",
        "One pass: {one pass.top1_final}; three stages: {3 stages.top1_final}, in {3 stages.seconds} against "
        "{one pass.seconds}.",
    ),
    LessonStep(
        "trade-off",
        "Where the trade-off bends",
        {f"{s:.0%}": _spec(sparsity=s) for s in SWEEP},
        "sweep",
        "Magnitude + SNOWS K = 3 at 50%, 70%, 80%, 90% and 95% sparsity: five small runs, the curve of "
        "accuracy against how much was pruned.",
        "From 50% to 80% top-1 barely moves ({50%.top1_final} to {80%.top1_final}); from 90% "
        "({90%.top1_final}) to 95% ({95%.top1_final}) it falls: the knee of the curve is where a method earns "
        "its keep.",
    ),
)


def lesson_specs() -> list[RunSpec]:
    """Every run of the lesson, each once, in step order: what pre-warming submits."""
    unique: dict[str, RunSpec] = {}
    for step in LESSON:
        for spec in step.runs.values():
            unique.setdefault(spec.content_hash(), spec)
    return list(unique.values())


def known_run(store: RunStore, spec: RunSpec) -> str | None:
    """The run of `spec` in `store`: a done one a submit would reuse, else a queued or running one, else None."""
    return reusable_run(store, spec) or store.find_active(spec.content_hash(), __version__)


def step_runs(store: RunStore, step: LessonStep) -> dict[str, str | None]:
    """Each of the step's runs in `store` (`known_run`; None: not launched yet)."""
    return {label: known_run(store, spec) for label, spec in step.runs.items()}


def step_text(step: LessonStep, results: dict[str, dict[str, Any]]) -> str:
    """`step.after` with each `{label.field}` filled from `results` ({label: a run's result}): accuracies as
    percentages, seconds as whole seconds."""
    text = step.after
    for label, result in results.items():
        for field, value in result.items():
            shown = f"{value:.0f} s" if field == "seconds" else f"{value:.1%}" if isinstance(value, float) else value
            text = text.replace(f"{{{label}.{field}}}", str(shown))
    return text
