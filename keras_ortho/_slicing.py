"""Which matrices a weight tensor holds: shape logic only, no framework.

A weight `w` is read as a stack of `m` matrices `Phi_i`, each `rows x cols`:

* rank 3 `(l, m, n)`: `Phi_i = w[:, i, :]`, slices along axis 1 (EinsumDense,
  MultiHeadAttention query/key/value kernels `(d_model, heads, head_dim)`).
* a MultiHeadAttention output projection `(heads, head_dim, d_model)`
  (a variable whose path ends in `attention_output/kernel`): slices along
  axis 0, one per head, so all four projection kernels are treated per head.
* any other rank: one slice, `w` reshaped to `(prod(shape[:-1]), shape[-1])`
  (Dense and Embedding `(l, n)`, Conv kernels `(kh, kw, cin, cout)`).
* `slice_axis=k` overrides the above: slices along axis `k`; each slice keeps
  the remaining axes in order, rows are all of them but the last, columns the
  last.

The mode says which Gram matrix is compared with the identity:
`"columns"` uses `Phi_i^T Phi_i` (`cols x cols`), `"rows"` uses
`Phi_i Phi_i^T` (`rows x rows`), and `"auto"` picks columns when
`rows >= cols` and rows otherwise, so that the penalty can reach zero and the
larger Gram is never built.
"""

import math
from typing import NamedTuple, Optional, Tuple

MODES = ("auto", "columns", "rows")

# The sublayer name Keras's MultiHeadAttention gives its output projection.
_ATTENTION_OUTPUT = ("attention_output", "kernel")


class SlicePlan(NamedTuple):
    """How to view a tensor of `shape` as `num_slices` matrices.

    `perm` is the transpose that brings the slice axis first, or None when a
    reshape alone gives the `(num_slices, rows, cols)` stack.
    """

    shape: Tuple[int, ...]
    perm: Optional[Tuple[int, ...]]
    num_slices: int
    rows: int
    cols: int
    mode: str

    @property
    def gram_size(self):
        """Side of each Gram matrix: `cols` in columns mode, `rows` in rows mode."""
        return self.cols if self.mode == "columns" else self.rows


def is_attention_output(path):
    """True for the path of a MultiHeadAttention output projection kernel."""
    return path is not None and tuple(path.split("/")[-2:]) == _ATTENTION_OUTPUT


def default_slice_axis(rank, path=None):
    """The slice axis used when the user gives none; None means one slice."""
    if rank >= 3 and is_attention_output(path):
        return 0
    if rank == 3:
        return 1
    return None


def plan_slices(shape, slice_axis=None, mode="auto", path=None):
    """Plans the `(num_slices, rows, cols)` view of a tensor of `shape`.

    Arguments are assumed valid in type (see `_validation`); the shape-dependent
    checks (rank >= 2, `slice_axis` within the rank) are made here.

    Args:
        shape: the tensor's static shape, a sequence of ints.
        slice_axis: None for the default slicing, or the axis to slice along.
        mode: "auto", "columns" or "rows".
        path: the Keras variable path, when known (for the attention rule).

    Returns:
        A `SlicePlan` with `mode` resolved to "columns" or "rows".
    """
    shape = tuple(int(d) for d in shape)
    rank = len(shape)
    if rank < 2:
        raise ValueError(
            "keras_ortho needs a weight of rank >= 2 (a matrix or a stack of "
            f"matrices). Received: w.shape={shape}"
        )
    if slice_axis is None:
        axis = default_slice_axis(rank, path)
    elif -rank <= slice_axis < rank:
        axis = slice_axis % rank
    else:
        raise ValueError(
            f"Argument `slice_axis` must be an axis of the weight, in "
            f"[{-rank}, {rank - 1}] for a weight of shape {shape}. "
            f"Received: slice_axis={slice_axis}"
        )

    if axis is None:
        perm, num_slices, rest = None, 1, shape
    else:
        others = tuple(i for i in range(rank) if i != axis)
        rest = tuple(shape[i] for i in others)
        num_slices = shape[axis]
        # Moving an axis past leading axes of size 1 does not move any data.
        moves_data = math.prod(shape[:axis]) > 1
        perm = (axis,) + others if moves_data else None
    rows, cols = math.prod(rest[:-1]), rest[-1]

    if mode == "auto":
        mode = "columns" if rows >= cols else "rows"
    return SlicePlan(shape, perm, num_slices, rows, cols, mode)
