"""A convolution kernel as the operator it applies: shape logic and numpy math, no framework.

A Keras convolution with kernel `K` of shape `(*spatial, cin, cout)` and
strides `s` (`D` spatial axes) maps an image `x` to

    y[p, o] = sum_{d, c} x[s p + d, c] K[d, c, o]

a linear operator `A` from `n^D cin` inputs to `(n / s)^D cout` outputs. On
a periodic image (circular padding), or away from the border of a padded one,
`A` commutes with shifts by `s`, and its Gram matrices are block Toeplitz: one
block row, the same at every position, says all of them.

**Polyphase.** Write `d = s d' + r` with `0 <= r < s`. Then
`y[p] = sum_{d', r} x_r[p + d'] K[s d' + r]` with `x_r[q] = x[s q + r]`: a
stride-1 convolution of the `s^D` phases of `x`, with kernel
`K'[d', (r, c), o] = K[s d' + r, c, o]` of spatial size `k' = ceil(k / s)`
(taps past `k` are 0) and `C = s^D cin` input channels.

**The Grams' blocks.** With `X_p` the block of `K'` at kernel position `p`,
`B` columns wide (`B = cout`, rows `C`, for `A A^T`; the transposed blocks,
`B = C`, rows `cout`, for `A^T A`), each block of the Gram at offset
`delta` (each coordinate in `-(k' - 1) .. k' - 1`) is

    M_delta = sum_{p - p' = delta} X_p^T X_p'          (B x B)

the kernel correlated with itself at every offset (Wang et al. 2020's
`Conv(K, K)`). `A` has orthonormal rows (columns) exactly when
`M_0 = I` and every other `M_delta = 0`, so the seed's penalty carries over:

    L = factor * sum_delta sum_jk |M_delta - [delta = 0] I|_jk
    dL/dX_p = 2 factor sum_p' X_p' sign(M_{p' - p} - [p' = p] I)

that is, with `X = [X_1 .. X_P]` (`R x P B`), `H = X^T X` its Gram,
`M` the sums of `H`'s blocks along its block diagonals and `S` the signs
`sign(M - I)` laid back along them (a symmetric `P B x P B` matrix),
`dL/dX = 2 factor X S`: the matrix penalty's gradient `2 Phi sign(G)`, with
`sign(G)` replaced by `S`.

**When an orthogonal convolution exists** (Achour, Malgouyres and Mamalet
2022, "Existence, stability and scalability of orthogonal convolutional neural
networks", JMLR 23, for circular padding): with `cin`, `cout` per group,

* orthonormal rows (`A A^T = I`) need `cout <= cin prod(min(k_i, s_i))`: as
  many outputs as inputs the kernel reads per position;
* orthonormal columns (`A^T A = I`) need `cout >= cin prod(s_i)` and
  `k_i >= s_i` on every axis (else some inputs are never read).

"auto" takes rows when `cout <= cin prod(s_i)`, columns otherwise. Dilation
changes neither: a dilated convolution of stride 1 is independent
convolutions, with the undilated kernel, on interleaved sub-grids.

**Singular values** (Sedghi, Gupta and Long 2019, "The singular values of
convolutional layers", ICLR): on a circular `n^D` image, the DFT
block-diagonalizes `A`; its singular values are those of the `C x cout`
matrices `K'^(w) = sum_d' K'[d'] exp(-2 pi i <w, d'> / (n / s))`, one per
frequency `w` of the `(n / s)^D` grid of outputs.
"""

import functools
import itertools
import math
from typing import NamedTuple

import numpy as np


class ConvGeometry(NamedTuple):
    """What a convolution does with its kernel, beyond the kernel's shape.

    `strides` per spatial axis; `groups` of a grouped convolution (kernel
    `(*spatial, cin / groups, cout)`, group `j` writing outputs
    `j cout / groups .. (j + 1) cout / groups`); `per_channel` for a depthwise
    kernel `(*spatial, channels, multiplier)`, one group per channel;
    `transposed` for a transposed convolution, whose kernel
    `(*spatial, filters, cin)` is that of the convolution it is the adjoint of
    (`filters` in, `cin` out).
    """

    strides: tuple[int, ...]
    groups: int = 1
    per_channel: bool = False
    transposed: bool = False


class OperatorLayout(NamedTuple):
    """What the math needs of an `OperatorPlan`: the polyphase kernel's `grid` and the Gram's `block` side."""

    grid: tuple[int, ...]
    block: int


class OperatorPlan(NamedTuple):
    """How to read a kernel of `shape` as `num_slices` (one per group) matrices `X` of `rows x positions*block`.

    The kernel is padded with zeros on each spatial axis by `pad` (to a
    multiple of the stride), reshaped to `view`, transposed by `perm` and
    reshaped to `(num_slices, rows, prod(grid) * block)`. `grid` is the
    polyphase kernel's spatial size `k'`. `mode` is of the convolution `A`
    whose kernel this is (for a transposed layer, the layer's rows are `A`'s
    columns). `impossible` says why no kernel of this shape gives an orthogonal
    operator in `mode`, or is None.
    """

    shape: tuple[int, ...]
    pad: tuple[int, ...]
    view: tuple[int, ...]
    perm: tuple[int, ...]
    num_slices: int
    rows: int
    grid: tuple[int, ...]
    block: int
    mode: str
    impossible: str | None

    @property
    def cols(self):
        return math.prod(self.grid) * self.block

    @property
    def single_vectors(self):
        """Whether the operator is a 1x1 kernel's single vector per group: no offset, a block of side 1."""
        return self.block == 1 and math.prod(self.grid) == 1


def plan_operator(shape, geometry, mode="auto"):
    """Plans the operator view of a convolution kernel (`OperatorPlan`).

    Args:
        shape: the kernel's shape, `(*spatial, cin_or_1, cout)`.
        geometry: the layer's `ConvGeometry`.
        mode: "auto", "rows" or "columns": orthonormal rows or columns of the
            layer's operator.
    """
    shape = tuple(int(d) for d in shape)
    spatial, strides = shape[:-2], tuple(int(s) for s in geometry.strides)
    dims = len(spatial)
    if len(strides) != dims:
        raise ValueError(f"A kernel of shape {shape} has {dims} spatial axes; received strides={strides}")
    if geometry.per_channel:
        groups, cin, cout = shape[-2], 1, shape[-1]
    else:
        groups, cin = geometry.groups, shape[-2]
        cout = shape[-1] // groups
    grid = tuple(-(-k // s) for k, s in zip(spatial, strides, strict=True))
    phases = math.prod(strides)
    if mode == "auto":
        mode = "rows" if cout <= cin * phases else "columns"
    elif geometry.transposed:
        mode = "columns" if mode == "rows" else "rows"  # the layer is A^T

    # In rows mode an axis whose kernel is shorter than its stride keeps only the phases its taps
    # fill: the others are rows of zeros, which change no block of A A^T.
    kept = tuple(k if mode == "rows" and k < s else s for k, s in zip(spatial, strides, strict=True))
    pad = tuple(g * s - k for g, s, k in zip(grid, kept, spatial, strict=True))
    view = sum(((g, s) for g, s in zip(grid, kept, strict=True)), ()) + (cin, groups, cout)
    polyphase, phase, channel_in, group, channel_out = (
        tuple(range(0, 2 * dims, 2)),
        tuple(range(1, 2 * dims, 2)),
        2 * dims,
        2 * dims + 1,
        2 * dims + 2,
    )
    if mode == "rows":  # X_p = K'[p]: rows (phase, cin), block cout
        perm = (group, *phase, channel_in, *polyphase, channel_out)
        rows, block = math.prod(kept) * cin, cout
    else:  # X_p = K'[p]^T: rows cout, block (phase, cin)
        perm = (group, channel_out, *polyphase, *phase, channel_in)
        rows, block = cout, phases * cin
    return OperatorPlan(
        shape, pad, view, perm, groups, rows, grid, block, mode, _impossible(spatial, strides, cin, cout, mode)
    )


def _impossible(spatial, strides, cin, cout, mode):
    """Why no kernel of this shape gives orthonormal rows (columns), or None."""
    read = cin * math.prod(min(k, s) for k, s in zip(spatial, strides, strict=True))
    if mode == "rows" and cout > read:
        return (
            f"orthonormal rows need cout <= cin * prod(min(kernel_size, strides)) = {read} outputs "
            f"per position, and there are {cout}"
        )
    inputs = cin * math.prod(strides)
    if mode == "columns" and cout < inputs:
        return f"orthonormal columns need cout >= cin * prod(strides) = {inputs}, and cout is {cout}"
    if mode == "columns" and any(k < s for k, s in zip(spatial, strides, strict=True)):
        return (
            f"orthonormal columns need kernel_size >= strides on every axis (else some inputs are never "
            f"read); kernel_size={tuple(spatial)}, strides={tuple(strides)}"
        )
    return None


@functools.lru_cache(maxsize=256)
def offset_matrix(grid):
    """`T`, `(num_offsets, P * P)`, of zeros and ones: `T[delta, pair] = 1` where the pair's `p - p' = delta`.

    Pairs are in row-major order over `(p_1, p'_1, ..., p_D, p'_D)` (`p`, `p'`
    positions of the `grid`), offsets over `(delta_1, ..., delta_D)`, each
    from `-(g - 1)` to `g - 1`: the zero offset is the middle one.
    """
    axes = [range(g) for g in grid for _ in range(2)]
    widths = [2 * g - 1 for g in grid]
    matrix = np.zeros((math.prod(widths), math.prod(grid) ** 2))
    for column, pair in enumerate(itertools.product(*axes)):
        delta = [pair[2 * a] - pair[2 * a + 1] + grid[a] - 1 for a in range(len(grid))]
        matrix[np.ravel_multi_index(delta, widths), column] = 1.0
    return matrix


def num_offsets(grid):
    """`prod(2 g - 1)`: the blocks of a Gram's block row."""
    return math.prod(2 * g - 1 for g in grid)


def to_operator_stack(kernel, plan):
    """A numpy kernel -> `(num_slices, rows, cols)`, as the backends' `ops.to_operator_stack` does."""
    kernel = np.pad(kernel, [(0, p) for p in plan.pad] + [(0, 0), (0, 0)])
    return np.transpose(kernel.reshape(plan.view), plan.perm).reshape(plan.num_slices, plan.rows, plan.cols)


def extreme_singular_values(kernel, geometry, input_size):
    """`(largest, smallest)` singular value of the layer's operator on a circular image of `input_size`, in numpy.

    `conv_singular_values` computes the same on the backend; this float64
    form is what it computed before, and `benchmarks/lipschitz.py` times it
    as the baseline on the host.

    Sedghi, Gupta and Long 2019, generalized to strides by the polyphase
    kernel (module docstring): the operator is block diagonal in the DFT
    basis, with one `C x cout` block per frequency of the output grid, and
    one operator per group. The smallest is that of the thin SVD (of the
    `min(outputs, inputs)` values). A transposed convolution has those of
    the convolution it is the adjoint of. Along an axis where the polyphase
    kernel has one tap (a 1x1 kernel, or a stride as long as the kernel),
    every frequency gives the same block: one of them stands for all.

    Args:
        kernel: the kernel, a numpy array `(*spatial, cin, cout)`.
        geometry: the layer's `ConvGeometry`.
        input_size: the image's spatial size, one int per spatial axis,
            each a multiple of its stride (of the output size, for a
            transposed convolution: the size of `A`'s input).

    Returns:
        `(largest, smallest)`, Python floats.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    plan = plan_operator(kernel.shape, geometry._replace(transposed=False), "rows")
    # X: (groups, C, P * cout), P the polyphase positions in row-major order.
    transform = to_operator_stack(kernel, plan).reshape(plan.num_slices, plan.rows, *plan.grid, plan.block)
    transform = transform.astype(np.complex128)
    sizes = [n // s if g > 1 else 1 for n, s, g in zip(input_size, geometry.strides, plan.grid, strict=True)]
    # A real kernel's blocks at w and -w are conjugate, with the same singular values: along the
    # last axis that has frequencies, the first half of them stands for all.
    last = max((a for a, g in enumerate(plan.grid) if g > 1), default=None)
    for axis, (size, g) in enumerate(zip(sizes, plan.grid, strict=True)):
        # The DFT along one axis as a product: taps past `size` wrap around, as on the torus.
        frequencies = np.arange(size // 2 + 1 if axis == last else size)
        phase = np.exp(-2j * np.pi * np.outer(frequencies, np.arange(g)) / size)
        transform = np.moveaxis(np.tensordot(transform, phase, axes=([2 + axis], [1])), -1, 2 + axis)
    # After the loop the frequency axes sit where the positions were, in order.
    blocks = np.moveaxis(transform, 1, -2).reshape(-1, plan.rows, plan.block)
    # The eigenvalues of the smaller Gram are the squared singular values (cheaper than an SVD).
    gram = (
        blocks.conj().transpose(0, 2, 1) @ blocks
        if plan.rows >= plan.block
        else blocks @ blocks.conj().transpose(0, 2, 1)
    )
    values = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    return float(values.max()), 0.0 if has_unread_phases(kernel.shape, geometry, plan) else float(values.min())


def has_unread_phases(shape, geometry, plan):
    """Whether input phases no tap reads (a kernel shorter than its stride) were left out of `plan`'s rows.

    They add zero singular values, which the smallest of the thin SVD must count.
    """
    cin = 1 if geometry.per_channel else shape[-2]
    return min(cin * math.prod(geometry.strides), plan.block) > min(plan.rows, plan.block)
