"""Masks: which weights each layer keeps. One module per family, and the allocation of counts to layers.

Convention: a mask is a bool tensor shaped like the weight, True = weight kept (torchao's convention;
sparsegpt's ``mask1`` marks the opposite).

Scoring and selection are separate. A scored mask method only scores (higher = more important):
``magnitude``, ``random``, ``wanda`` and ``custom`` (see `snows_core.masks.scored`).

Methods chosen *in the layer loop* see the pruned path and move the weights while they choose: they
run just before the layer's reconstruction, on its pruned-path input, and return the mask together
with their own weights, which become the reconstruction's starting point:
- ``sparsegpt``: Frantar & Alistarh 2023, OBS updates column by column (`snows_core.masks.sparsegpt`).
- ``obc``: Frantar & Alistarh 2022, exact OBS one weight at a time per row, the layer's prune count split
  over rows by their step losses (`snows_core.masks.obc`); wider than 1024 input columns per group, in blocks
  of columns with the later ones re-fitted to each block's choices.
- ``window-obc``: OBC under the K-window's Kronecker-factored curvature: rows weighed by what the window
  needs of each output channel, and a joint re-fit across rows (`snows_core.masks.window_obc`).

How many weights each layer keeps is the allocation's business (`snows_core.masks.allocation`:
uniform, global, lamp, sensitivity; `list_allocations()`); in-loop methods are allocated by |W|.

Both kinds take the layer's `LayerProblem` (`snows_core.engine.problem`); their registry is
`snows_core.masks.method`, and the OBS algebra SparseGPT and OBC share is `snows_core.masks.obs`.

Selection (`snows_core.masks.select`):
- unstructured: each layer keeps its top `keep` scores, the count its allocation and the pass give it.
- N:M: in every group of M consecutive input channels (per output channel and kernel position,
  weight (out, in, kh, kw) grouped along ``in``; for Linear along input features) keep the top N.
  This is the layout that sparse tensor cores accelerate.
"""

from snows_core.masks import obc, scored, sparsegpt, window_obc  # noqa: F401  (register the methods)
from snows_core.masks.allocation import list_allocations
from snows_core.masks.method import MaskChoice, MaskMethod, get_mask_method, list_mask_methods, register_mask_method
from snows_core.masks.scored import input_column_sq_norms
from snows_core.masks.select import holds_nm, nm_mask, nm_skip_reason, top_count_mask, unstructured_mask

__all__ = [
    "MaskMethod",
    "MaskChoice",
    "list_allocations",
    "register_mask_method",
    "get_mask_method",
    "list_mask_methods",
    "unstructured_mask",
    "nm_mask",
    "holds_nm",
    "top_count_mask",
    "nm_skip_reason",
    "input_column_sq_norms",
]
