"""Our SNOWS at the official code's settings, side by side with the official code, on the shared ResNet-20.

With `--official DIR` (a checkout of mazumder-lab/SNOWS, e.g. the snapshot the `fetch` tool brings) both run
here, one after the other, on the same masks and calibration images: the official `solve_for_W_given_Z`
(CNN_pruning/prune/SNOWS.py), driven block by block as its `prune_unstructured_global` drives it (each block's
calibration input is the pruned network's so far; no warm start: the masked dense weights), in its own
ResNet-20 with the shared weights and option-A shortcuts; then ours, `prune_model` with `targets="official"`.
The settings: K=3, 20 CG iterations, 2 Newton steps per layer, 256 calibration images in one batch, uniform
magnitude masks on the 18 block convs. Without `--official` the official figures measured apart are printed.
The script prints:

1. the K=3 window loss of four layers at the mask-only state (every layer masked, nothing refit), ours next
   to the official code's as measured apart;
2. per sparsity: top-1 on the 1,017 shared test images and pruning seconds of the official code and of ours
   (for `--modes` targets and, in official mode, each `--preconditioners` value of `preconditioner` and each
   `--fractions` value of `curvature_fraction` below 1), the speed-up
   (official seconds / ours) and dense-forward-equivalents (DFE: seconds / one dense forward over the
   calibration images, measured in the same process).

    .venv/bin/python scripts/official_compare.py [--official DIR] [--shared ../shared] [--sparsity 0.9,0.7]
        [--modes official,pruned-input,dense] [--preconditioners none,gram] [--fractions 1,0.5,0.25] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core import PruneConfig, prune_model
from snows_core.events import Event, LayerStarted
from snows_core.io.data import load_npz
from snows_core.measure.metrics import top1
from snows_core.models import create_model
from snows_core.models.resnet_cifar import ShortcutA

#: The official code's settings, in PruneConfig fields.
OFFICIAL_SETTINGS = dict(k=3, cg_iters=20, newton_passes=2, warm_start=False, cg_tol=1e-3, damping=1e-4)
#: Measured with the official code on this CPU, 2026-11-28: top-1 on the 1,017 test images and DFE
#: (67.7 s and 69.7 s of pruning against a dense forward of 206 and 251 ms).
OFFICIAL_TOP1 = {0.9: (0.4533, 328), 0.7: (0.9056, 277)}
OFFICIAL_MASK_LOSS = {
    "layer1.0.conv1": 1.78769,
    "layer1.0.conv2": 1.10828,
    "layer2.0.conv2": 3.07286,
    "layer3.2.conv2": 1.25016,
}


def dense_forward_seconds(model: torch.nn.Module, calib: torch.Tensor) -> float:
    """Median seconds of one dense forward over the calibration images (after a warm-up)."""
    times = []
    with torch.no_grad():
        for _ in range(6):
            tic = time.perf_counter()
            model(calib)
            times.append(time.perf_counter() - tic)
    return statistics.median(times[1:])


def load_official(folder: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """The official code's SNOWS, helpers and model modules, imported from a checkout of mazumder-lab/SNOWS."""
    if "joblib" not in sys.modules:
        try:
            import joblib  # noqa: F401
        except ImportError:  # SNOWS.py imports joblib at the top and never uses it in what runs here
            sys.modules["joblib"] = types.SimpleNamespace(delayed=None, Parallel=None)
    sys.path[:0] = [str(folder / "CNN_pruning" / "prune"), str(folder / "CNN_pruning" / "model")]
    import helpers
    import resnet_cifar10_manual

    return _module_up_to_its_first_error(folder / "CNN_pruning" / "prune" / "SNOWS.py"), helpers, resnet_cifar10_manual


def _module_up_to_its_first_error(path: Path) -> types.ModuleType:
    """The module at `path`, or, when it does not compile, its source up to the top-level function holding the
    error. The official SNOWS.py (mazumder-lab/SNOWS at a74a61b and since) ends in `prune_and_update`, whose
    body is all comments: an IndentationError at import. Everything the solve uses is defined before it."""
    source = path.read_text()
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as err:
        lines = source.splitlines()
        cut = max(i for i, line in enumerate(lines[: err.lineno]) if line.startswith("def "))
        code = compile("\n".join(lines[:cut]), str(path), "exec")
    module = types.ModuleType(path.stem)
    module.__file__ = str(path)
    exec(code, module.__dict__)
    return module


def official_model(model_module: types.ModuleType, ours: torch.nn.Module) -> torch.nn.Module:
    """The official code's ResNet-20 holding our (the shared) weights, its shortcuts made option A like ours."""
    theirs = model_module.resnet20()
    for stage in (theirs.layer2, theirs.layer3):
        stage[0].downsample = ShortcutA(stage[0].conv1.in_channels, stage[0].conv1.out_channels, 2)
    state = {key.replace("linear.", "fc."): value for key, value in ours.state_dict().items()}
    theirs.load_state_dict(state)
    theirs.name = "resnet20_cifar10"  # how its helpers pick their ResNet-20 code paths
    return theirs.eval()  # its parameters require grad, as in its own driver


def official_prune(
    snows: types.ModuleType, helpers: types.ModuleType, dense: torch.nn.Module, calib: torch.Tensor, masks: dict
) -> torch.nn.Module:
    """The official solve of every masked conv, block by block, as `prune_unstructured_global` runs it."""
    pruned = copy.deepcopy(dense)
    blocks = helpers.get_blocks(copy.deepcopy(dense))  # (name, block): the stem, the 9 blocks, the head
    names = [name for name, _ in blocks]
    with torch.no_grad():
        xdata = blocks[0][1](calib)  # (256, 16, 32, 32): the stem is not pruned
    for number in range(1, len(blocks) - 1):
        for conv in ("conv1", "conv2"):
            layer = f"{names[number]}.{conv}"
            weight = getattr(pruned.get_submodule(names[number]), conv).weight
            solved, _ = snows.solve_for_W_given_Z(
                Z=masks[layer],
                model=dense,
                model_update=pruned,
                xdata=xdata,
                block_number=number,
                k_step=OFFICIAL_SETTINGS["k"],
                total_blocks=len(blocks) - 1,
                device="cpu",
                N=None,
                M=None,
                w_warm=weight.detach() * masks[layer],
                conv_layer=conv,
                block_list=blocks,
                newton_steps=OFFICIAL_SETTINGS["newton_passes"],
                CG_iterations=OFFICIAL_SETTINGS["cg_iters"],
                batch_size=calib.shape[0],
                batching=False,
            )
            weight.data = solved.detach()
        with torch.no_grad():
            xdata = pruned.get_submodule(names[number])(xdata)  # the next block's input: the pruned network's
    return pruned


def mask_only_losses(model: torch.nn.Module, calib: torch.Tensor, targets: str) -> dict[str, float]:
    """Each layer's window loss before its update, with every layer masked at 90% and none refit."""
    losses: dict[str, float] = {}

    def record(event: Event) -> None:
        if isinstance(event, LayerStarted):
            losses[event.layer] = event.loss_before

    config = PruneConfig(sparsity=0.9, reconstruction="none", targets=targets, device="cpu", **OFFICIAL_SETTINGS)
    prune_model(model, calib, config, on_event=record)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("SNOWS_SHARED", "../shared")))
    parser.add_argument("--sparsity", default="0.9,0.7")
    parser.add_argument("--modes", default="official,pruned-input,dense", help="targets to compare")
    parser.add_argument("--fractions", default="1,0.5,0.25", help="curvature_fraction values, official mode")
    parser.add_argument("--preconditioners", default="none,gram", help="CG preconditioners, official mode")
    parser.add_argument("--official", type=Path, default=None, help="a checkout of mazumder-lab/SNOWS to run too")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = create_model("resnet20_cifar10", checkpoint=args.shared / "models" / "resnet20-cifar10.th")
    model.requires_grad_(False)
    calib = load_npz(args.shared / "data" / "cifar10-subset.npz", "train")[0][:256]
    test_x, test_y = load_npz(args.shared / "data" / "cifar10-subset.npz", "test")
    modes = args.modes.split(",")

    print("K=3 window loss at the mask-only state (90%, magnitude)\n")
    print("| layer | official code | " + " | ".join(f"ours, {m}" for m in modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    ours = {mode: mask_only_losses(model, calib, mode) for mode in modes}
    for layer, official in OFFICIAL_MASK_LOSS.items():
        print(f"| {layer} | {official:.5f} | " + " | ".join(f"{ours[m][layer]:.5f}" for m in modes) + " |")

    forward = dense_forward_seconds(model, calib)
    print(f"\nOfficial settings: {OFFICIAL_SETTINGS}; one dense forward over 256 images: {forward * 1e3:.1f} ms")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| sparsity | run | top-1 | seconds | DFE | official seconds / these |")
    print("|---|---|---|---|---|---|")
    official = load_official(args.official) if args.official else None
    for sparsity in map(float, args.sparsity.split(",")):
        official_seconds = None
        if official is not None:
            masks = prune_model(model, calib, PruneConfig(sparsity=sparsity, reconstruction="none", device="cpu")).masks
            snows, helpers, model_module = official
            theirs = official_model(model_module, model)
            tic = time.perf_counter()
            pruned = official_prune(snows, helpers, theirs, calib, masks)
            official_seconds = time.perf_counter() - tic
            accuracy = top1(pruned, test_x, test_y)
            cells = f"{accuracy:.4f} | {official_seconds:.1f} | {official_seconds / forward:.0f}"
            print(f"| {sparsity:.0%} | official code (run here) | {cells} | 1 |")
        elif sparsity in OFFICIAL_TOP1:
            official_top1, official_dfe = OFFICIAL_TOP1[sparsity]
            print(f"| {sparsity:.0%} | official code (measured apart) | {official_top1:.4f} | - | {official_dfe} | - |")
        runs = [(mode, 1.0, "none") for mode in modes if mode != "official"]
        if "official" in modes:
            official_runs = [("official", 1.0, name) for name in args.preconditioners.split(",")]
            official_runs += [("official", float(f), "none") for f in args.fractions.split(",") if float(f) < 1]
            runs = official_runs + runs
        for mode, fraction, preconditioner in runs:
            config = PruneConfig(
                sparsity=sparsity,
                targets=mode,
                curvature_fraction=fraction,
                preconditioner=preconditioner,
                device="cpu",
                **OFFICIAL_SETTINGS,
            )
            tic = time.perf_counter()
            result = prune_model(model, calib, config)
            seconds = time.perf_counter() - tic
            accuracy = top1(result.model, test_x, test_y)
            label = f"ours, targets={mode}" + (f", curvature_fraction={fraction:g}" if fraction < 1 else "")
            label += f", preconditioner={preconditioner}" if preconditioner != "none" else ""
            ratio = f"{official_seconds / seconds:.2f}" if official_seconds else "-"
            print(f"| {sparsity:.0%} | {label} | {accuracy:.4f} | {seconds:.1f} | {seconds / forward:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
