"""Launch: pick a model, mask method(s), pattern, sparsity and K; see the cost forecast; queue the run or sweep."""

from __future__ import annotations

import json

import streamlit as st

from pages.common import model_label, open_run, store, zoo
from snows_core.config import PRECONDITIONERS, TARGETS, PruneConfig
from snows_core.dashboard.forecast import forecast, probe
from snows_core.engine.reconstruct import list_reconstructions
from snows_core.io.data import list_datasets
from snows_core.masks import list_allocations, list_mask_methods
from snows_core.models import model_info
from snows_core.recipes import get_recipe, recipe_summary
from snows_core.runs import RunSpec
from snows_core.runs.door import check_runnable
from snows_core.runs.executor import reusable_run
from snows_core.runs.sweep import grid_specs, submit_all

DEFAULTS = PruneConfig()
OWN_DATASET = "(the model's own)"
PRESETS = {  # label -> the recipe (`snows_core.recipes`) with its overrides, then the form's other fields
    "Teaching demo (under a minute on a laptop CPU)": {
        "recipe": ("teaching", {}),
        "model": "resnet20",
        "eval_size": 1000,
    },
    "Magnitude vs Wanda at K = 0 and 3 (resnet20)": {
        "recipe": ("default", {}),
        "model": "resnet20",
        "masks": ["magnitude", "wanda"],
        "sparsities": "0.5, 0.7, 0.9",
        "ks": "0, 3",
        "eval_size": 1000,
    },
    "Best at high sparsity: OBC masks, 90% in 5 gradual stages (resnet20)": {
        "recipe": ("best", {"sparsity": 0.9}),
        "model": "resnet20",
        "eval_size": 1000,
    },
    "Best at 2:4 (resnet20)": {
        "recipe": ("best", {"pattern": "2:4"}),
        "model": "resnet20",
        "eval_size": 1000,
    },
    "Official SNOWS: the paper code's objective and settings, 90% (resnet20)": {
        "recipe": ("official", {}),
        "model": "resnet20",
        "eval_size": 1000,
    },
    "Paper: ResNet-20 CIFAR-10": {
        "recipe": ("default", {"sparsity": 0.9}),
        "model": "resnet20_cifar10",
        "dataset": "cifar10",
        "eval_size": 0,
    },
}
FORM_DEFAULTS = {
    "model": "resnet20",
    "dataset": OWN_DATASET,
    "masks": ["magnitude"],
    "reconstructions": ["snows"],
    "pattern_kind": "unstructured",
    "nm": "2:4",
    "allocation": DEFAULTS.allocation,
    "stages": DEFAULTS.stages,
    "sparsities": "0.5",
    "ks": str(DEFAULTS.k),
    "n_calib": DEFAULTS.n_calib,
    "batch_size": DEFAULTS.batch_size,
    "newton_passes": DEFAULTS.newton_passes,
    "cg_iters": DEFAULTS.cg_iters,
    "cg_tol": DEFAULTS.cg_tol,
    "damping": DEFAULTS.damping,
    "warm_start": DEFAULTS.warm_start,
    "targets": DEFAULTS.targets,
    "curvature_fraction": DEFAULTS.curvature_fraction,
    "preconditioner": DEFAULTS.preconditioner,
    "seeds": str(DEFAULTS.seed),
    "device": DEFAULTS.device,
    "eval_size": 1000,
    "trajectory": False,
    "measure_speed": False,
    "data_root": "",
}
FORM_CONFIG_FIELDS = (  # form fields named and typed as PruneConfig's
    "stages",
    "n_calib",
    "batch_size",
    "newton_passes",
    "cg_iters",
    "cg_tol",
    "damping",
    "warm_start",
    "targets",
    "curvature_fraction",
    "preconditioner",
    "device",
)
SAVED = "launch_form"  # plain state: Streamlit drops widget state while another page is shown
saved = st.session_state.setdefault(SAVED, {})
for key, value in FORM_DEFAULTS.items():
    st.session_state.setdefault(key, saved.get(key, value))


def recipe_form(name: str, **overrides: object) -> dict:
    """The form's fields for recipe `name` with `overrides`: the form then builds exactly its config."""
    config = get_recipe(name, **overrides)
    nm = config.pattern != "unstructured"
    return {
        "masks": [config.mask],
        "reconstructions": [config.reconstruction],
        "pattern_kind": "N:M" if nm else "unstructured",
        "nm": config.pattern if nm else FORM_DEFAULTS["nm"],
        "allocation": config.allocation,
        "sparsities": f"{config.sparsity:g}",
        "ks": str(config.k),
        "seeds": str(config.seed),
        **{field: getattr(config, field) for field in FORM_CONFIG_FIELDS},
    }


def apply_preset() -> None:
    preset = dict(PRESETS.get(st.session_state["preset"], {}))
    name, overrides = preset.pop("recipe", ("default", {}))
    for key, value in {**FORM_DEFAULTS, **recipe_form(name, **overrides), **preset}.items():
        st.session_state[key] = value


def numbers(text: str, cast: type, field: str) -> list:
    try:
        values = [cast(item) for item in text.replace(" ", "").split(",") if item]
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise ValueError(f"{field}: give at least one value")
    return values


def uploaded_checkpoint() -> str | None:
    """Save an uploaded checkpoint under $SNOWS_HOME/uploads (once per content) and return its path."""
    upload = st.session_state.get("checkpoint")
    if upload is None:
        return None
    return str(store().save_upload(upload.getvalue(), upload.name))


def build_specs() -> list[RunSpec]:
    """The RunSpecs the form describes (validated; raises ValueError naming the field)."""
    s = st.session_state
    if not s["masks"]:
        raise ValueError("mask: pick at least one mask method")
    if not s["reconstructions"]:
        raise ValueError("reconstruction: pick at least one")
    nm = s["pattern_kind"] == "N:M"
    base = RunSpec(
        model=s["model"],
        dataset=None if s["dataset"] == OWN_DATASET else s["dataset"],
        config=PruneConfig(
            sparsity=None if nm else 0.5,
            pattern=s["nm"].strip() if nm else "unstructured",
            allocation=s["allocation"] if not nm else "uniform",
            stages=int(s["stages"]),
            mask=s["masks"][0],
            reconstruction=s["reconstructions"][0],
            n_calib=int(s["n_calib"]),
            batch_size=int(s["batch_size"]),
            newton_passes=int(s["newton_passes"]),
            cg_iters=int(s["cg_iters"]),
            cg_tol=float(s["cg_tol"]),
            damping=float(s["damping"]),
            warm_start=bool(s["warm_start"]),
            targets=s["targets"],
            curvature_fraction=float(s["curvature_fraction"]),
            preconditioner=s["preconditioner"],
            device=s["device"],
        ),
        eval_size=int(s["eval_size"]) or None,
        trajectory=bool(s["trajectory"]),
        measure_speed=bool(s["measure_speed"]),
        checkpoint=uploaded_checkpoint(),
        data_root=s["data_root"].strip() or None,
    )
    axes = {
        "mask": s["masks"],
        "reconstruction": s["reconstructions"],
        "k": numbers(s["ks"], int, "k"),
        "seed": numbers(s["seeds"], int, "seed"),
    }
    if not nm:
        axes["sparsity"] = numbers(s["sparsities"], float, "sparsity")
    specs = grid_specs(base, axes)
    checked_inputs(json.dumps(base.to_dict(), sort_keys=True))
    return specs


@st.cache_data(show_spinner="Checking the model and data...")
def checked_inputs(spec: str) -> None:
    """The door's device, model, checkpoint and data checks, remembered per spec (a failure is not cached,
    so a fixed input passes); memory is the forecast's business below."""
    check_runnable(RunSpec.from_dict(json.loads(spec)))


@st.cache_data(show_spinner="Probing the model (one forward pass)...")
def cached_probe(model: str, batch: int, device: str):
    return probe(model, batch, device)


st.title("Launch a pruning run")
st.caption(
    "SNOWS prunes with a mask from a prior method, then re-fits each pruned layer's surviving weights so "
    "the dense network's activations up to K operations deeper are reconstructed (Newton-CG)."
)
st.selectbox(
    "Preset",
    ["Custom", *PRESETS],
    key="preset",
    on_change=apply_preset,
    help="Fills the form from a named recipe (the same config as the command line's --recipe); change anything "
    "afterwards.",
)
if st.session_state["preset"] in PRESETS:
    recipe = PRESETS[st.session_state["preset"]]["recipe"][0]
    st.caption(f"Recipe `{recipe}`: {recipe_summary(recipe)}.")

left, right = st.columns(2)
with left:
    st.selectbox("Model", zoo(), key="model", format_func=model_label)
    info = model_info(st.session_state["model"])
    st.file_uploader(
        "Checkpoint (.th, .pt or .safetensors)" + ("" if info.weights is None else ": optional, your own weights"),
        type=["th", "pt", "pth", "safetensors"],
        key="checkpoint",
        help=info.checkpoint_hint or "Weights for this architecture to prune instead of the shipped ones.",
    )
    st.selectbox(
        "Dataset",
        [OWN_DATASET, *list_datasets()],
        key="dataset",
        format_func=lambda d: f"the model's own ({info.dataset})" if d == OWN_DATASET else d,
    )
    st.text_input("Data location", key="data_root", help="An .npz file or a folder; empty: the default location")
    st.multiselect(
        "Mask methods", [m for m in list_mask_methods() if m != "custom"], key="masks", help="Several: a sweep"
    )
    st.multiselect(
        "Reconstruction",
        list_reconstructions(),
        key="reconstructions",
        help="none: the mask alone; lstsq: layer-wise least squares; snows: the K-deep Newton-CG solve",
    )
with right:
    st.radio("Pattern", ["unstructured", "N:M"], key="pattern_kind", horizontal=True)
    if st.session_state["pattern_kind"] == "N:M":
        st.text_input("N:M", key="nm", help="Keep N of every M weights along the inputs, e.g. 2:4")
    else:
        st.text_input("Sparsities", key="sparsities", help="Fraction of weights zeroed; comma-separated for a sweep")
        st.radio(
            "Allocation",
            list_allocations(),
            key="allocation",
            horizontal=True,
            help="How many weights each layer keeps: uniform; global (one ranking over all layers); lamp "
            "(LAMP scores); sensitivity (a per-layer scan first, then the least summed loss)",
        )
    st.number_input(
        "Stages",
        min_value=1,
        key="stages",
        help="Passes that reach the sparsity gradually (cubic schedule), re-choosing the masks from the "
        "reconstructed weights each time. Costs about one run per stage.",
    )
    st.text_input("K (reconstruction depth)", key="ks", help="Operations deeper to reconstruct; comma-separated")
    st.number_input("Test images scored (0: all)", min_value=0, step=500, key="eval_size")
    st.checkbox("Record the accuracy trajectory (top-1 after every layer)", key="trajectory")
    st.checkbox(
        "Measure inference speed",
        key="measure_speed",
        help="Time the pruned model against its dense execution on the run's device and size its weights. "
        "Only NVIDIA GPUs have a sparse kernel (2:4, Linear layers); elsewhere the speed-up is 1.0x.",
    )

with st.expander("Advanced"):
    a, b, c = st.columns(3)
    a.number_input("Calibration images", min_value=1, step=64, key="n_calib")
    a.number_input("Batch size", min_value=1, step=64, key="batch_size")
    b.number_input("Newton passes", min_value=1, key="newton_passes")
    b.number_input("CG iterations", min_value=1, key="cg_iters")
    b.number_input("CG tolerance", min_value=0.0, format="%.1e", key="cg_tol")
    c.number_input("Damping", min_value=0.0, format="%.1e", key="damping")
    c.text_input(
        "Seeds",
        key="seeds",
        help="Each seed draws other calibration images; several repeat every run on each, and the Trade-offs "
        "charts show their mean and range. At 90% on ResNet-20 one recipe's top-1 spans 0.6-3 points "
        "across three calibration samples.",
    )
    c.selectbox("Device", ["auto", "cpu", "cuda"], key="device")
    a.checkbox("Least-squares warm start", key="warm_start")
    a.selectbox(
        "Targets",
        TARGETS,
        key="targets",
        help="dense: the dense network's own activations; pruned-input: the dense window on the pruned "
        "inputs; official: the official SNOWS code's objective (dense block from the pruned block input, "
        "no logits tap, absolute CG tolerance)",
    )
    c.number_input(
        "Curvature fraction",
        min_value=0.01,
        max_value=1.0,
        step=0.25,
        key="curvature_fraction",
        help="Share of each batch the CG products see (the gradient always sees all of it); 0.25 makes "
        "the official settings about 3x faster for under a point of top-1 on resnet20",
    )
    c.selectbox(
        "CG preconditioner",
        PRECONDITIONERS,
        key="preconditioner",
        help="gram (the default): CG preconditioned by the exact Hessian of the layer's own output (its input "
        "Gram per output row); the same products and stopping rule, met in fewer products: one at K = 0, and 5 "
        "reach what 10 plain ones did; none: plain CG (the official code's)",
    )

st.session_state[SAVED] = {key: st.session_state[key] for key in FORM_DEFAULTS}

try:
    specs = build_specs()
except (ValueError, FileNotFoundError) as err:
    st.error(str(err), icon=":material/error:")
    st.stop()

probed = cached_probe(specs[0].model, min(specs[0].config.batch_size, 64), specs[0].config.device)
reused = [spec for spec in specs if reusable_run(store(), spec)]
estimates = [forecast(spec, probed, store()) for spec in specs if spec not in reused]
kind = "run" if len(specs) == 1 else f"sweep of {len(specs)} runs"
st.subheader("Forecast")
if reused:
    st.write(f"{len(reused)} of the {len(specs)} already finished here with this exact spec: reused, not recomputed.")
if estimates:
    worst = max(estimates, key=lambda e: e.peak_bytes)
    total = sum(e.seconds for e in estimates)
    st.write(f"A {kind}: about **{total:.0f} s** in all on this machine; per run {worst.message()}.")
if estimates and not worst.fits:
    st.error("This does not fit in the memory available: lower the calibration images or the batch size.")
    st.stop()

if st.button("Launch", type="primary", icon=":material/rocket_launch:"):
    try:
        group, run_ids = submit_all(store(), specs)  # checks every spec's inputs again at the door
    except (ValueError, FileNotFoundError) as err:
        st.error(f"Nothing was queued: {err}")
        st.stop()
    st.session_state["launched"] = run_ids
    st.toast(f"Queued {len(run_ids)} run{'s' if len(run_ids) > 1 else ''}" + (f" ({group})" if group else ""))

launched = st.session_state.get("launched")
if launched:
    st.success(f"Queued: {', '.join(launched)}", icon=":material/check_circle:")
    go_runs, go_detail = st.columns(2)
    go_runs.page_link("pages/runs.py", label="Watch them on the Runs page", icon=":material/table_rows:")
    if go_detail.button("Open the run's live detail", icon=":material/monitoring:"):
        open_run(launched[-1])
