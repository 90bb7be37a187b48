"""The engine: one layer's problem and its solution, for any traced network.

- `graph`: the traced network, its prunable layers and the pruned path's activation cache;
- `window`: a layer's K-deep window cut out of the trace;
- `problem`: the `LayerProblem`, one layer in one pass from its mask to its reconstruction;
- `columns`: a layer's input columns and their Gram matrices (least squares, SparseGPT, OBC);
- `tangent`: a window's tangent program (exact curvature products without double backprop);
- `solver`: conjugate gradient, curvature products and the Armijo line search;
- `reconstruct`: the registered reconstructions (none, lstsq, snows);
- `device`: the torch device a config names.
"""
