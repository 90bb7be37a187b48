"""Command line: ``python -m snows_core prune ...`` prunes a model and writes weights, masks and a report.

The library reports through events; this module alone turns them into a progress bar (stderr) and a
per-layer table (stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from snows_core.config import PruneConfig
from snows_core.events import Event
from snows_core.io import catalog
from snows_core.runs import RunSpec, RunStore, StoreError, snows_home
from snows_core.runs.executor import check_backend, list_backends, submit, tend_queue
from snows_core.runs.spec import RUN_KINDS

if TYPE_CHECKING:
    from snows_core.report import PruneResult

__all__ = ["main", "add_model_arguments", "add_config_arguments", "config_from_args", "layer_table"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)  # KeyError quotes
        return 2


def _parser() -> argparse.ArgumentParser:
    """The command line, built without importing torch (names come from the catalog snapshot): the store's
    commands and `submit` stay light."""
    parser = argparse.ArgumentParser(prog="python -m snows_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_run_commands(commands)
    _add_store_commands(commands)
    return parser


def _add_run_commands(commands: argparse._SubParsersAction) -> None:
    prune = commands.add_parser("prune", help="prune a model and write the result to a folder")
    prune.set_defaults(command=_prune)
    add_model_arguments(prune)
    prune.add_argument("--out", type=Path, default=Path("out/prune"), help="folder for weights, masks, report")
    add_run_arguments(prune)
    add_config_arguments(prune)

    for name, command, grid, summary in (
        ("submit", _submit, False, "queue a run in the background; prints its id last"),
        ("sweep", _sweep, True, "queue a grid of runs (comma-separated values on any config flag)"),
    ):
        queue = commands.add_parser(name, help=summary)
        queue.set_defaults(command=command)
        add_model_arguments(queue)
        add_run_arguments(queue)
        queue.add_argument(
            "--force",
            action="store_true",
            help="recompute even if an identical run is done, and queue it even if the memory forecast says it "
            "will not fit",
        )
        queue.add_argument("--executor", choices=list_backends(), default="local", help="where runs compute")
        queue.add_argument(
            "--kind",
            choices=RUN_KINDS,
            default="prune",
            help="prune, or sensitivity: each layer pruned alone at a grid of sparsities and measured",
        )
        queue.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://HOST:8786")
        add_config_arguments(queue, grid=grid)


def _add_store_commands(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="a run's status (and result when done)")
    status.set_defaults(command=_status)
    status.add_argument("run")
    status.add_argument("--json", action="store_true")

    cancel = commands.add_parser("cancel", help="cancel a queued or running run")
    cancel.set_defaults(command=_cancel)
    cancel.add_argument("run")

    listing = commands.add_parser("list", help="all runs, oldest first")
    listing.set_defaults(command=_list)
    listing.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="write a finished run's bundle (spec, environment, report, weights)")
    export.set_defaults(command=_export)
    export.add_argument("run")
    export.add_argument("--out", type=Path, required=True, help="bundle folder (created; must be empty)")

    importer = commands.add_parser("import", help="add a run bundle (e.g. from another machine) to the store")
    importer.set_defaults(command=_import)
    importer.add_argument("folder", type=Path)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How a run is scored, the same for prune, submit and sweep: --eval-size, --trajectory, --measure-speed."""
    default = RunSpec.__dataclass_fields__["eval_size"].default
    help_text = f"test images scored (default {default}; 0: all)"
    parser.add_argument("--eval-size", type=int, default=default, help=help_text)
    parser.add_argument("--trajectory", action="store_true", help="also score the network after every layer")
    parser.add_argument(
        "--measure-speed",
        action="store_true",
        help="also time the pruned model against its dense execution and size its weights (dense vs sparse)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What to prune and on which data: --model, --checkpoint, --dataset, --data-root."""
    models, datasets = ", ".join(catalog.names("model")), ", ".join(catalog.names("dataset"))
    parser.add_argument("--model", default="resnet20", help=f"{models}, or timm:NAME/torchvision:NAME")
    parser.add_argument("--checkpoint", default=None, help="weights to load instead of the shipped ones")
    parser.add_argument("--dataset", default=None, help=f"{datasets} (default: the model's own)")
    parser.add_argument("--data-root", default=None, help="where the dataset is: an .npz file or a folder")


CONFIG_FLAGS: dict[str, type] = {  # PruneConfig fields with a flag, and the type of one value
    "sparsity": float,  # fraction zeroed; N:M implies it
    "pattern": str,  # unstructured or N:M such as 2:4
    "allocation": str,  # uniform, global, lamp or sensitivity
    "mask": str,  # magnitude, random, wanda, sparsegpt
    "reconstruction": str,  # none, lstsq, snows
    "k": int,
    "n_calib": int,
    "batch_size": int,
    "newton_passes": int,
    "cg_iters": int,
    "cg_tol": float,
    "damping": float,
    "curvature": str,  # exact or gauss-newton
    "curvature_fraction": float,  # share of each batch the CG products see
    "preconditioner": str,  # none or gram (CG preconditioned by the layer's own Gram)
    "targets": str,  # dense, pruned-input or official
    "stages": int,  # passes that reach the sparsity gradually
    "seed": int,
    "device": str,  # auto, cpu, cuda
}


FLAG_ALIASES = {"newton_passes": ("--newton-steps",)}  # the field's name before config schema 2


def add_config_arguments(parser: argparse.ArgumentParser, grid: bool = False) -> None:
    """One flag per PruneConfig field, and --recipe; with `grid`, each field flag takes a comma-separated list.
    A flag left out takes the recipe's value (`snows_core.recipes`), else PruneConfig's default."""
    from snows_core.recipes import list_recipes, recipe_summary

    defaults = PruneConfig()
    recipes = "; ".join(f"{name}: {recipe_summary(name)}" for name in list_recipes()).replace("%", "%%")
    parser.add_argument("--recipe", choices=list_recipes(), default=None, help=f"start from a named recipe ({recipes})")
    for name, cast in CONFIG_FLAGS.items():
        default = None if name == "sparsity" else getattr(defaults, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            *FLAG_ALIASES.get(name, ()),
            type=_comma_list(cast) if grid else cast,
            default=None,
            help=f"PruneConfig.{name} (default: the recipe's, else {default!r})"
            + ("; comma-separated values are swept" if grid else ""),
        )
    parser.add_argument(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start SNOWS from the layer-wise least-squares fit (default: the recipe's, else on)",
    )


def _comma_list(cast: type):
    def parse(text: str) -> list:
        try:
            values = [cast(item) for item in text.split(",") if item]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of {cast.__name__}") from err
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} holds no value")
        return values

    return parse


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """Build (and so validate) the PruneConfig named by --recipe and the flags given; a flag wins over the recipe.
    Without a recipe a field left out is PruneConfig's default (sparsity 0.5, or implied by an N:M pattern)."""
    from snows_core.recipes import get_recipe

    names = [*CONFIG_FLAGS, "warm_start"]
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return get_recipe(getattr(args, "recipe", None) or "default", **values)  # "default" is PruneConfig's defaults


def _prune(args: argparse.Namespace) -> int:
    """The spec the flags name, run in this process by the same pipeline as queued runs."""
    from snows_core.runs.door import check_runnable
    from snows_core.runs.pipeline import run_spec

    spec = _run_spec(args)
    check_runnable(spec)
    _check_out(args.out)
    with ProgressBar() as bar:
        result, summary = run_spec(spec, bar)
    print(layer_table(result))
    print(
        f"top-1: dense {summary['top1_dense']:.4f} -> mask only {summary['top1_mask_only']:.4f} -> final "
        f"{summary['top1_final']:.4f}  sparsity {result.sparsity:.3f}  {result.seconds:.1f}s"
    )
    if "speed" in summary:
        from snows_core.measure.speed_report import SpeedReport

        speed = summary["speed"]
        if "error" in speed:
            print(f"speed: {speed['error']}")
        else:
            figures = SpeedReport.from_dict(speed).figures()
            print(f"speed: {figures['headline']}; {figures['latency']}; {figures['size']}. {figures['reason']}")
    result.save(args.out, {**summary, "spec": spec.to_dict()})
    print(f"wrote {args.out}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    spec = _run_spec(args)
    check_backend(args.executor, args.scheduler)
    print(submit(RunStore(), spec, force=args.force, executor=args.executor, scheduler=args.scheduler))
    return 0


def _run_spec(args: argparse.Namespace) -> RunSpec:
    """The RunSpec named by the model, data and config flags (validated on construction)."""
    return RunSpec(
        model=args.model,
        config=config_from_args(args),
        dataset=args.dataset,
        eval_size=args.eval_size or None,
        trajectory=args.trajectory,
        checkpoint=args.checkpoint,
        data_root=args.data_root,
        kind=getattr(args, "kind", "prune"),
        measure_speed=args.measure_speed,
    )


def _check_out(folder: Path) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be written (it is created here)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; give a folder for the weights, masks and report")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"--out {folder} cannot be written: {err.strerror or err}") from None


def _sweep(args: argparse.Namespace) -> int:
    """Every combination of the listed values, validated first, queued as one sweep (see runs.sweep)."""
    from snows_core.runs.sweep import grid_specs, submit_all

    axes = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    base = _run_spec(argparse.Namespace(**{**vars(args), **{name: values[0] for name, values in axes.items()}}))
    specs = grid_specs(base, {name: values for name, values in axes.items() if len(values) > 1})
    check_backend(args.executor, args.scheduler)
    group, runs = submit_all(RunStore(), specs, force=args.force, executor=args.executor, scheduler=args.scheduler)
    print("\n".join(runs))
    print(f"{group or 'sweep'}: {len(runs)} run{'s' if len(runs) != 1 else ''}")
    return 0


def _status(args: argparse.Namespace) -> int:
    store = _reaped_store()
    (run,) = _run_summaries(store, [store.get(args.run)])
    if args.json:
        print(json.dumps(run))
    else:
        print("\n".join(f"{key}: {value}" for key, value in run.items() if key not in ("spec", "calib_ids")))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    print(RunStore().request_cancel(args.run))
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _reaped_store()
    runs = _run_summaries(store, store.list())
    if args.json:
        print(json.dumps(runs))
        return 0
    print(f"{'run':<44} {'status':<10} {'mask':<10} {'sparsity':>8} {'k':>3} {'top-1':>7}")
    for run in runs:
        config = run["spec"]["config"]
        top1 = f"{run['top1_final']:.4f}" if run.get("top1_final") is not None else ""
        print(
            f"{run['id']:<44} {run['status']:<10} {config['mask']:<10} {config['sparsity']:>8.3f} "
            f"{config['k']:>3} {top1:>7}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from snows_core.runs.bundle import export_bundle

    print(export_bundle(RunStore(), args.run, args.out))
    return 0


def _import(args: argparse.Namespace) -> int:
    from snows_core.runs.bundle import import_bundle

    print(import_bundle(RunStore(), args.folder))
    return 0


def _reaped_store() -> RunStore:
    """The store for a reader (list, status), its queue tended first; where tending cannot write (a full disk)
    the store is opened read-only instead: the readers still answer."""
    try:
        store = RunStore()
        tend_queue(store)
        return store
    except StoreError as err:
        if not (snows_home() / "runs.db").is_file():  # no store to read either: say why it cannot be opened
            raise
        try:
            return RunStore(readonly=True)
        except StoreError:  # it cannot be read either (a corrupt file): the first reason is the one to give
            raise err from None


def _run_summaries(store: RunStore, runs: list[dict]) -> list[dict]:
    """Each run row plus its result and progress through the layers, JSON-ready (one query for all progress)."""
    progress = store.progress()
    summaries = []
    for run in runs:
        layers_done, layers_total = progress.get(run["id"], (0, None))
        summary = {**run, "layers_done": layers_done, "layers_total": layers_total}
        summaries.append({**summary, **(store.result(run["id"]) or {})})
    return summaries


class ProgressBar:
    """An `on_event` callback drawing one tqdm bar over the layers."""

    def __enter__(self) -> ProgressBar:
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="layer", file=sys.stderr, dynamic_ncols=True)
        self.stages = 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def __call__(self, event: Event) -> None:
        if event.kind == "run_started":
            self.bar.reset(total=len(event.layers) * event.stages)
            self.stages = event.stages
        elif event.kind == "layer_scanned":
            self.bar.set_description(f"sensitivity scan {event.index + 1}/{event.n_layers}")
        elif event.kind == "layer_started":
            self.bar.set_description(event.layer + (f" (pass {event.stage}/{self.stages})" if self.stages > 1 else ""))
        elif event.kind == "newton_step":
            self.bar.set_postfix(loss=f"{event.loss_after:.4g}", cg=event.cg_iters)
        elif event.kind == "layer_done":
            self.bar.update(1)


def layer_table(result: PruneResult) -> str:
    """The per-layer report as an aligned text table."""
    head = f"{'layer':<22} {'sparsity':>8} {'loss before':>12} {'loss after':>12} {'newton':>6} {'cg':>5} {'sec':>7}"
    rows = [head, "-" * len(head)]
    for r in result.layers:
        rows.append(
            f"{r.name:<22} {r.sparsity:>8.3f} {r.loss_before:>12.5g} {r.loss_after:>12.5g} "
            f"{r.newton_steps:>6} {r.cg_iters:>5} {r.seconds:>7.2f}"
        )
    rows.extend(f"{r.name:<22} skipped: {r.skipped}" for r in result.skipped)
    return "\n".join(rows)
