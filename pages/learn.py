"""Learn: SNOWS for a class: masks (unstructured and N:M), what a K-window reaches, Newton-CG in two
dimensions, and one layer's Newton-CG solve."""

from __future__ import annotations

import streamlit as st

from pages.common import ACTIVE, REFRESH_SECONDS, store, zoo
from snows_core.dashboard import charts
from snows_core.dashboard.frames import steps_frame
from snows_core.dashboard.teach import LEARN_SPEC, mask_example, newton_cg_2d, window_chains
from snows_core.runs.executor import submit
from snows_core.runs.store import FINAL

st.title("Learn: how SNOWS prunes")

st.header("1. A mask")
st.markdown(
    "Pruning zeroes weights. A **mask** says which survive (blue). Magnitude keeps the largest |w|; "
    "Wanda weighs |w| by how large the matching input is. **Unstructured** masks may keep any weights; "
    "**N:M** keeps N of every M consecutive inputs of each output, a pattern sparse tensor cores run fast."
)
left, right = st.columns(2)
sparsity = left.slider("Unstructured sparsity", 0.1, 0.95, 0.5, 0.05)
left.plotly_chart(
    charts.mask_heatmap(mask_example("unstructured", sparsity), f"unstructured, {sparsity:.0%} zero"), key="mask_u"
)
nm = right.selectbox("N:M pattern", ["2:4", "1:4", "4:8"])
right.plotly_chart(charts.mask_heatmap(mask_example(nm), f"{nm}: groups of {nm.split(':')[1]} inputs"), key="mask_nm")

st.header("2. What the K-window reaches")
st.markdown(
    "After the mask, SNOWS re-fits each pruned layer's surviving weights so the dense network's activations "
    "are reconstructed not only at the layer's output but up to **K** operations deeper. The table lists, "
    "for every layer it prunes, the chain of counted operations its objective spans."
)
a, b = st.columns([2, 1])
model = a.selectbox("Model", zoo(), key="learn_model")
k = b.slider("K", 0, 6, 3, key="learn_k")


@st.cache_data(show_spinner="Tracing the model...")
def chains(name: str, depth: int):
    return window_chains(name, depth)


try:
    st.dataframe(chains(model, k), hide_index=True)
except ValueError as err:
    st.error(str(err))

st.header("3. Newton-CG in two dimensions")
st.markdown(
    "Near its solution each layer's loss is close to a quadratic, f(w) = ½ wᵀHw. A **Newton step** jumps to "
    "its minimum, w − H⁻¹g; SNOWS never forms H but runs **conjugate gradient** on H d = −g with Hessian-vector "
    "products. The first CG iterate is the best step along −g (the gradient step); in two dimensions the "
    "second is the exact Newton step. Then the **Armijo line search** tries step sizes 1, 0.9, 0.81, ... until "
    "the loss falls enough. Stretch the bowl with the eigenvalues; understate the curvature (as a small "
    "curvature sample can) and watch the full step overshoot and the search backtrack."
)
controls, plot = st.columns([1, 2])
low = controls.slider("Eigenvalue λ₁", 0.1, 10.0, 1.0, 0.1, key="learn_eig1")
high = controls.slider("Eigenvalue λ₂", 0.1, 20.0, 10.0, 0.1, key="learn_eig2")
angle = controls.slider("Rotation of the bowl (degrees)", 0, 90, 30, key="learn_angle")
x0 = controls.slider("Start w₁", -3.0, 3.0, 2.5, 0.1, key="learn_x0")
y0 = controls.slider("Start w₂", -3.0, 3.0, 1.0, 0.1, key="learn_y0")
iters = controls.radio("CG iterations", [1, 2], index=1, horizontal=True, key="learn_cg_iters")
scale = controls.slider(
    "Curvature the products see (× H)", 0.2, 1.5, 1.0, 0.05, key="learn_scale", help="1: exact Hessian products"
)
step = newton_cg_2d((low, high), (x0, y0), angle=angle, cg_iters=iters, curvature_scale=scale)
plot.plotly_chart(charts.plot_newton_cg_2d(step), key="learn_2d")
accepted = step.trials[step.trials["accepted"]]
tries = f"{len(step.trials)} trial{'s' if len(step.trials) > 1 else ''}"
outcome = (
    f"accepted α = {accepted['alpha'].iloc[0]:.3g} after {tries}, landing at f = {accepted['loss'].iloc[0]:.3g}"
    if not accepted.empty
    else f"found no step in {tries}"
)
plot.write(
    f"Start: f = {step.cg['loss'].iloc[0]:.3g}. After {len(step.cg) - 1} CG iteration{'s' if len(step.cg) > 2 else ''} "
    f"the full step reaches f = {step.cg['loss'].iloc[-1]:.3g}; the line search {outcome}."
)

st.header("4. One layer's Newton-CG solve, step by step")
st.markdown(
    "Each Newton step solves H d = -g for the free weights by conjugate gradient, with exact Hessian-vector "
    "products (never forming H), then a backtracking line search picks the step size. Here: the 512-to-256 "
    "linear layer of the Fashion-MNIST MLP at 90% sparsity, K = 2, six Newton steps. It runs in the "
    "background queue like any other run (a few seconds)."
)
run_id = st.session_state.get("learn_run")
if st.button("Run the tiny solve", icon=":material/play_arrow:"):
    run_id = st.session_state["learn_run"] = submit(store(), LEARN_SPEC)

if run_id:

    @st.fragment(run_every=REFRESH_SECONDS if store().get(run_id)["status"] in ACTIVE else None)
    def solve() -> None:
        status = store().get(run_id)["status"]
        steps = steps_frame(store().events(run_id))
        if steps.empty:
            st.info(f"The run is {status}...")
            return
        last = int(steps["step"].max())
        shown = st.slider("Newton step", 0, last, last, key="learn_step") if last > 0 else 0
        visible = steps[steps["step"] <= shown]
        st.plotly_chart(charts.loss_curves(visible), key="learn_loss")
        row = steps[steps["step"] == shown].iloc[0]
        if shown == 0:
            st.write(f"Start (after the least-squares warm start): loss {row['loss']:.4g}.")
        else:
            st.write(
                f"Step {shown}: CG ran {int(row['cg_iters'])} iterations (relative residual {row['cg_residual']:.2g}), "
                f"the line search accepted step size {row['step_size']:.3g}, and the loss fell to {row['loss']:.4g}."
            )
        if status in FINAL and status != st.session_state.get("learn_status"):
            st.session_state["learn_status"] = status
            st.rerun()

    solve()
