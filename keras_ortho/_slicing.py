"""Which matrices a weight tensor holds: shape logic only, no framework.

A weight `w` is read as a stack of `m` matrices `Phi_i`, each `rows x cols`,
by a `Rule`: reshape `w` to the rule's `view` (the same data, some axis split
or merged), then take slices along the view's `slice_axis`; each slice keeps
the remaining axes in order, rows are all of them but the last, columns the
last. `keras_ortho._rules` gives the rule of each Keras layer's weights (one
matrix for Dense and Conv, per head, per gate, per channel); a tensor without
a layer gets `default_rule`:

* rank 3 `(l, m, n)`: `Phi_i = w[:, i, :]`, slices along axis 1;
* any other rank: one slice, `w` reshaped to `(prod(shape[:-1]), shape[-1])`.

`slice_axis=k` given by the user overrides the rule: slices of `w` itself
along axis `k`.

The mode says which Gram matrix is compared with the identity:
`"columns"` uses `Phi_i^T Phi_i` (`cols x cols`), `"rows"` uses
`Phi_i Phi_i^T` (`rows x rows`), and `"auto"` picks columns when
`rows >= cols` and rows otherwise, so that the penalty can reach zero and the
larger Gram is never built.
"""

import math
from typing import NamedTuple

MODES = ("auto", "columns", "rows")


class Rule(NamedTuple):
    """How a weight holds its matrices: reshaped to `view`, sliced along `slice_axis` of it.

    `view` None keeps the weight's shape; `slice_axis` None makes the whole
    view one matrix `(prod(view[:-1]), view[-1])`. `name` says it in words,
    for messages and the slicing table (docs/slicing.md). `conv` is the
    `_conv.ConvGeometry` of a convolution kernel (strides, groups), for the
    regularizer's `operator=True`; None for any other weight.
    """

    view: tuple[int, ...] | None
    slice_axis: int | None
    name: str
    conv: object = None


def default_rule(shape):
    """The rule of a tensor no layer rule covers: rank 3 per axis 1, else one matrix."""
    if len(shape) == 3:
        return Rule(None, 1, "slices along axis 1")
    return Rule(None, None, "one matrix")


def one_matrix(shape):
    """All axes but the last as rows: Dense, Conv kernels, Embedding."""
    return Rule((math.prod(shape[:-1]), shape[-1]), None, "one matrix")


def along(axis, name):
    """Slices of the weight itself along `axis` (heads, channels)."""
    return Rule(None, axis, name)


def per_group(shape, groups, what="gate"):
    """The last axis split into `groups` equal blocks of columns, one slice each.

    Slice `j` is `w[..., j*c:(j+1)*c]` read as a `(prod(shape[:-1]), c)` matrix,
    `c = shape[-1] / groups`: the gates of a recurrent kernel side by side, or
    the filter groups of a grouped convolution (`groups=g`, kernel
    `(*spatial, cin/g, cout)`, where group `j` sees only its `cin/g` inputs).
    """
    rows, cols = math.prod(shape[:-1]), shape[-1] // groups
    return Rule((rows, groups, cols), 1, f"per {what} ({groups})" if groups > 1 else "one matrix")


class SlicePlan(NamedTuple):
    """How to view a tensor of `shape` as `num_slices` matrices.

    The tensor is reshaped to `view` (equal to `shape` for most rules); `perm`
    is the transpose of the view that brings the slice axis first, or None
    when a reshape alone gives the `(num_slices, rows, cols)` stack.
    """

    shape: tuple[int, ...]
    view: tuple[int, ...]
    perm: tuple[int, ...] | None
    num_slices: int
    rows: int
    cols: int
    mode: str

    @property
    def gram_size(self):
        """Side of each Gram matrix: `cols` in columns mode, `rows` in rows mode (the benchmarks' yardsticks)."""
        return self.cols if self.mode == "columns" else self.rows

    @property
    def single_vectors(self):
        """Whether each slice is one vector (a Gram of side 1, `|v^T v - 1|`): only a norm, no angle to measure."""
        return self.gram_size == 1

    @property
    def impossible(self):
        """Why no slice of this shape has the orthonormal side `mode` names, or None.

        `rows x cols` with `rows < cols` has no orthonormal columns (its Gram
        `Phi^T Phi` has rank at most `rows`), nor `rows > cols` orthonormal rows.
        """
        if self.mode == "columns" and self.rows < self.cols or self.mode == "rows" and self.rows > self.cols:
            long_side = "columns than rows" if self.mode == "columns" else "rows than columns"
            return (
                f"a {self.rows}x{self.cols} slice has more {long_side}, so no matrix of its shape "
                f"has orthonormal {self.mode}"
            )
        return None


def plan_slices(shape, slice_axis=None, mode="auto", rule=None):
    """Plans the `(num_slices, rows, cols)` view of a tensor of `shape`.

    Arguments are assumed valid in type (see `_validation`); the shape-dependent
    checks (rank >= 2, `slice_axis` within the rank) are made here.

    Args:
        shape: the tensor's static shape, a sequence of ints.
        slice_axis: None for the rule, or the axis of `shape` to slice along.
        mode: "auto", "columns" or "rows".
        rule: the `Rule` of the weight's layer; None for `default_rule`.

    Returns:
        A `SlicePlan` with `mode` resolved to "columns" or "rows".
    """
    shape = tuple(int(d) for d in shape)
    rank = len(shape)
    if rank < 2:
        raise ValueError(
            f"keras_ortho needs a weight of rank >= 2 (a matrix or a stack of matrices). Received: w.shape={shape}"
        )
    if slice_axis is not None:
        if not -rank <= slice_axis < rank:
            raise ValueError(
                f"Argument `slice_axis` must be an axis of the weight, in "
                f"[{-rank}, {rank - 1}] for a weight of shape {shape}. "
                f"Received: slice_axis={slice_axis}"
            )
        view, axis = shape, slice_axis % rank
    else:
        rule = rule if rule is not None else default_rule(shape)
        view = tuple(rule.view) if rule.view is not None else shape
        if math.prod(view) != math.prod(shape):
            raise ValueError(f"Rule {rule} does not fit a weight of shape {shape}")
        axis = rule.slice_axis

    if axis is None:
        perm, num_slices, rest = None, 1, view
    else:
        others = tuple(i for i in range(len(view)) if i != axis)
        rest = tuple(view[i] for i in others)
        num_slices = view[axis]
        # Moving an axis past leading axes of size 1 does not move any data.
        moves_data = math.prod(view[:axis]) > 1
        perm = (axis,) + others if moves_data else None
    rows, cols = math.prod(rest[:-1]), rest[-1]

    if mode == "auto":
        mode = auto_mode(rows, cols)
    return SlicePlan(shape, view, perm, num_slices, rows, cols, mode)


def auto_mode(rows, cols):
    """What "auto" means for a `rows x cols` slice: the side whose Gram can be the identity."""
    return "columns" if rows >= cols else "rows"
