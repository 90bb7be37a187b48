"""A layer's input columns and their Gram matrices: what least squares and SparseGPT read of the data.

A Linear layer's columns are its input features; a Conv2d's are the im2col columns (input channel,
kernel row, kernel column), per group, so one code path serves both: the layer's output row o is
W_o . x for every column x. Gram matrices accumulate in float64 over mini-batches of float32 products.
`linear_part` is the layer's output without its bias, the map from its weight that these moments, the
curvature products and the tangent programs differentiate.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "layer_columns",
    "input_grams",
    "columns_unsupported",
    "linear_part",
    "row_groups",
    "solve_on_kept",
    "kept_blocks",
    "KeptFactors",
    "spd_solve",
]


def columns_unsupported(module: nn.Module) -> str | None:
    """Why the layer has no input columns here (None when it has)."""
    if isinstance(module, nn.Linear):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is neither Linear nor Conv2d"
    if isinstance(module.padding, str):
        return f"its padding is {module.padding!r}; only numeric padding is supported"
    if module.padding_mode != "zeros":
        return f"its padding_mode is {module.padding_mode!r}; only 'zeros' is supported"
    return None


def layer_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input columns, (groups, d, n*L): im2col for a conv, features for a Linear.

    A conv's im2col is one copy of strided windows of the padded input, read a row of output positions at
    a time, in either memory format (F.unfold and then grouping its result read every value twice).
    """
    reason = columns_unsupported(module)
    if reason:
        raise ValueError(f"no input columns for {module}: {reason}")
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T[None]  # (1, in, rows)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, module.dilation, module.padding
    padded = F.pad(x, (pw, pw, ph, ph))  # (n, C, H + 2ph, W + 2pw), NCHW or channels-last
    n, c, height, width = padded.shape
    out_h, out_w = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    s = padded.stride()
    windows = padded.as_strided((c, kh, kw, n, out_h, out_w), (s[1], s[2] * dh, s[3] * dw, s[0], s[2] * sh, s[3] * sw))
    cols = windows.reshape(module.groups, c // module.groups * kh * kw, n * out_h * out_w)  # (groups, d, n*L)
    # reshape may return a strided view (a 1x1 conv on channels-last input), whose Gram product rounds differently
    return cols.contiguous()


def input_grams(
    module: nn.Module, x: torch.Tensor, x_reference: torch.Tensor, weight: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """G = X X^T, (groups, d, d), and the cross moment X Y^T, (groups, d, out/groups), both float64, and
    the output's numel.

    X are the columns of `x` (the pruned path) and Y = W X_t the target output: `weight` (the dense
    weight; no bias) applied to the columns X_t of `x_reference`. X Y^T = (X X_t^T) W^T is what least
    squares and SparseGPT's dense-target start read of the cross-Gram. Where a group has fewer outputs than
    inputs (convs) it is one pass of the layer and a d x out product rather than a second d x d Gram;
    otherwise (a ViT's qkv or fc1) the cross-Gram times W^T. With x_reference is x it is G W^T.
    """
    groups = module.groups if isinstance(module, nn.Conv2d) else 1
    rows = weight.reshape(groups, weight.shape[0] // groups, -1)  # (groups, out/g, d)
    same = x_reference is x
    through_outputs = not same and rows.shape[1] < rows.shape[2]
    gram, cross, numel_out = 0, 0, 0
    for chunk, chunk_t in zip(x.split(batch_size), x_reference.split(batch_size), strict=True):
        cols = layer_columns(module, chunk)  # (groups, d, n*L)
        gram = gram + (cols @ cols.transpose(1, 2)).double()
        if through_outputs:
            cross = cross + (cols @ _output_columns(module, chunk_t, weight, groups).transpose(1, 2)).double()
        elif not same:
            cross = cross + (cols @ layer_columns(module, chunk_t).transpose(1, 2)).double()  # (groups, d, d)
        numel_out += cols.shape[-1] * weight.shape[0]
    if not through_outputs:  # a d x d cross-Gram (G itself when the inputs are the same) times W^T
        cross = (gram if same else cross) @ rows.transpose(1, 2).double()
    return gram, cross, numel_out


def linear_part(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's output on `x` with `weight` and no bias: the part that is linear in the weight."""
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, None)
    return F.linear(x, weight)


def _output_columns(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The layer's output without bias, (groups, out/g, n*L), its columns in `layer_columns` order."""
    y = linear_part(module, x, weight)  # (n, out, H', W') or (..., out)
    if isinstance(module, nn.Linear):
        return y.reshape(-1, weight.shape[0]).T[None]  # (1, out, rows)
    return y.flatten(2).unflatten(1, (groups, -1)).permute(1, 2, 0, 3).flatten(2)  # (groups, out/g, n*L)


def row_groups(rows: int, groups: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(rows,): the group each output row belongs to, rows split evenly over `groups` in order."""
    return torch.arange(rows, device=device) // (rows // groups)


def solve_on_kept(
    system: torch.Tensor, group_of_row: torch.Tensor, keep: torch.Tensor, rhs: torch.Tensor, ridge: float = 0.0
) -> torch.Tensor:
    """Per row r, v_S = (A_SS + ridge I)^-1 rhs_S on its kept inputs S (zero elsewhere), A = system[group_of_row[r]].

    `system` (groups, d, d) symmetric positive (semi)definite, `keep` (rows, d) 0/1, `rhs` (rows, d). Each
    row's system is solved on its first `width` inputs in kept-first order (its kept ones, then pruned ones
    whose identity rows decouple): a kept fraction f costs f^3 of the full d x d solve.
    """
    solved = torch.zeros_like(rhs)
    for idx, cols, s, block in kept_blocks(system, group_of_row, keep, ridge):
        solved[idx] = solved[idx].scatter(1, cols, spd_solve(block, s * rhs[idx].gather(1, cols)) * s)
    return solved


def kept_blocks(
    system: torch.Tensor, group_of_row: torch.Tensor, keep: torch.Tensor, ridge: float = 0.0
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The rows' kept systems in chunks of rows: (rows, their kept-first columns (c, w), the 0/1 keep of those
    (c, w), A_SS + ridge I padded with identity rows (c, w, w)), as `solve_on_kept` solves them."""
    d = system.shape[-1]
    width = max(1, int(keep.sum(1).max()))
    order = torch.argsort(keep, dim=1, descending=True, stable=True)[:, :width]  # (rows, width)
    chunk = max(1, 2**24 // (width * d))  # bound the gathered rows (c, w, d) to ~128 MB in float64
    for start in range(0, keep.shape[0], chunk):
        idx = slice(start, start + chunk)
        cols, group = order[idx], group_of_row[idx]  # (c, w), (c,)
        c, w = cols.shape
        picked = system.reshape(-1, d).index_select(0, (group[:, None] * d + cols).flatten())  # (c*w, d): A_S rows
        block = picked.view(c, w, d).gather(2, cols[:, None, :].expand(c, w, w))  # (c, w, w): A_SS
        s = keep[idx].gather(1, cols)  # (c, w)
        block.mul_(s[:, :, None]).mul_(s[:, None, :]).diagonal(dim1=1, dim2=2).add_(1 - s + ridge * s)
        yield idx, cols, s, block


class KeptFactors:
    """`solve_on_kept` for many right-hand sides: every row's kept system factored once (Cholesky), so each
    `solve(rhs)` is two triangular solves per row. A row whose system is singular solves as the identity."""

    def __init__(self, system: torch.Tensor, group_of_row: torch.Tensor, keep: torch.Tensor, ridge: float = 0.0):
        self.chunks = []
        for idx, cols, s, block in kept_blocks(system, group_of_row, keep, ridge):
            factor, info = torch.linalg.cholesky_ex(block)  # (c, w, w), (c,)
            singular = info > 0
            if singular.any():  # an identity factor: that row's solve returns its kept right-hand side
                factor[singular] = torch.eye(block.shape[-1], dtype=block.dtype, device=block.device)
            self.chunks.append((idx, cols, s, factor))

    @staticmethod
    def footprint(keep: torch.Tensor, itemsize: int = 8) -> int:
        """Bytes the factors of rows `keep` (rows, d) take."""
        width = max(1, int(keep.sum(1).max()))
        return keep.shape[0] * width * width * itemsize

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """(rows, d) -> per row (A_SS + ridge I)^-1 rhs_S on its kept inputs, zero elsewhere (singular rows: rhs_S)."""
        solved = torch.zeros_like(rhs)
        for idx, cols, s, factor in self.chunks:
            out = torch.cholesky_solve((s * rhs[idx].gather(1, cols))[..., None], factor)[..., 0] * s  # (c, w)
            solved[idx] = solved[idx].scatter(1, cols, out)
        return solved


def spd_solve(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Batched SPD solve by Cholesky; a singular system (no ridge, a dead input) falls back to the pseudo-inverse.

    Cholesky rather than LU: batched LU (torch.linalg.solve) returns garbage pivots in this torch/MKL build
    once torch.set_num_threads has been called, as the run workers do.
    """
    factor, info = torch.linalg.cholesky_ex(system)  # (c, d, d), (c,)
    solution = torch.cholesky_solve(rhs[..., None], factor)[..., 0]  # (c, d)
    singular = info > 0
    if singular.any():
        solution[singular] = (torch.linalg.pinv(system[singular], hermitian=True) @ rhs[singular, :, None])[..., 0]
    return solution
