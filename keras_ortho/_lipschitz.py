"""Upper bounds on the L2 operator norm of linear layers, and the Lipschitz constants of the rest.

Shape logic and small numpy constants here; the kernel-dependent work
(`operator_norm_bound`, `matrix_norm`) in `keras.ops`, compiled by the backend.

**A convolution with zero padding.** Keras pads the image (or not: "valid")
and slides the kernel with strides `s`: along each spatial axis, an image of
`n` pixels padded to `L` (`L = n` for "valid"; `n` plus the padding "same" or
"causal" adds) gives the outputs `p = 0 .. out - 1`, which read the padded
pixels `s p + d <= L - 1`. Put the padded image into a periodic one of
`N = ceil(L / s) s` pixels, zeros past `L`: the circular convolution on `N`
reads the same pixels for those outputs (none wraps) and computes more. So

    A_zero = P C_N E         ||A_zero|| <= ||C_N||

with `E` (the embedding) an isometry and `P` (keeping the outputs) a
projection. `||C_N||` is the largest singular value over the `N / s`
frequencies of the polyphase kernel (`_conv`, Sedghi, Gupta and Long 2019),
which makes it a sound bound for Keras's padding, where the circular
operator on the image's own size `n` is not one (its wrapped taps are not
the zeros Keras reads). A transposed convolution is the adjoint of a
convolution whose "full" output it crops: the same bound, on
`L = (m - 1) s + k` for an input of `m` pixels. Dilation is a kernel with
zeros between its taps.

**Each frequency's norm, from above** (Delattre, Barthelemy, Araujo and
Allauzen 2023, "Efficient bound of Lipschitz constant for convolutional
layers by Gram iteration", ICML). For a matrix `K` with Gram `G_0 = K^H K`,
`G_{t+1} = G_t^2` has `lambda_max(G_t) = sigma_max(K)^(2^(t+1))`, and a norm
is at least the spectral norm:

    sigma_max(K) <= ||G_T||_F ^ (1 / 2^(T+1))

which approaches `sigma_max(K)` from above: at most `r^(1 / 2^(T+1))` times
it, `r` the rank (1.05 at `T = 6`, `r = 512`). Each `G_t` is rescaled to unit
Frobenius norm and the scales kept as logarithms, so nothing overflows.
"""

import math
from typing import NamedTuple

import keras
import numpy as np

from keras_ortho import _conv, ops

# float32 rounding (a relative 6e-8 per operation, growing with the sums in each product, halved by each
# root the Gram iteration takes): every computed bound is raised by this factor, 30 times float32's epsilon.
ROUNDING_MARGIN = 1.0 + 2.0**-18

# L2 Lipschitz constants of Keras's activations by name: the supremum of |f'| (of the Jacobian's norm for
# softmax, Gao and Pavel 2017, Proposition 4), rounded up where it is not a round number.
ACTIVATIONS = {
    "linear": 1.0,
    "relu": 1.0,
    "relu6": 1.0,
    "tanh": 1.0,
    "sigmoid": 0.25,
    "hard_sigmoid": 1.0 / 6.0,
    "softsign": 1.0,
    "softplus": 1.0,
    "softmax": 1.0,
    "elu": 1.0,  # alpha = 1: slopes alpha e^x < 1 below 0
    "selu": 1.0507009873554805 * 1.6732632423543772,  # scale * alpha, its slope just below 0
    "gelu": 1.1290,  # x Phi(x): 1.12897 at x = sqrt(2); its tanh approximation, 1.12880
    "silu": 1.0999,  # x sigmoid(x): 1.09984 at x = 2.3994
    "swish": 1.0999,
    "leaky_relu": 1.0,  # Keras's default slope 0.2
}


class LinearGeometry(NamedTuple):
    """A convolution as `operator_norm_bound` reads it.

    `plan` is the polyphase plan of the (dilated) kernel as a convolution
    (`_conv.OperatorPlan`, rows mode); `periods` the periodic image's size
    `N / s` per axis on which it is bounded; `dilation` the zeros put between
    taps (`dilation - 1`).
    """

    plan: _conv.OperatorPlan
    periods: tuple[int, ...]
    dilation: tuple[int, ...]


def padded_length(n, k, s, padding):
    """`L`: the length of the padded input a convolution of size `n`, kernel `k`, stride `s` reads from.

    Keras's "same" pads `max((ceil(n / s) - 1) s + k - n, 0)` in all, "causal"
    `k - 1` on the left, "valid" nothing.
    """
    if padding == "valid":
        return n
    if padding == "causal":
        return n + k - 1
    if padding == "same":
        out = -(-n // s)
        return n + max((out - 1) * s + k - n, 0)
    raise ValueError(f"Unknown padding {padding!r}: Keras's are 'valid', 'same' and 'causal'")


def conv_geometry(shape, geometry, input_size, padding, dilation):
    """The `LinearGeometry` of a kernel of `shape` with `_conv.ConvGeometry` `geometry`.

    `input_size` is the spatial size of the layer's input (of its output,
    for the convolution a transposed layer is the adjoint of, see the module
    docstring, which it is computed from here: the layer's input size `m`).
    """
    spatial = tuple(int(k) for k in shape[:-2])
    dilation = tuple(int(r) for r in dilation)
    effective = tuple(r * (k - 1) + 1 for k, r in zip(spatial, dilation, strict=True))
    strides = tuple(int(s) for s in geometry.strides)
    if geometry.transposed:
        lengths = tuple((m - 1) * s + k for m, s, k in zip(input_size, strides, effective, strict=True))
    else:
        lengths = tuple(padded_length(n, k, s, padding) for n, k, s in zip(input_size, effective, strides, strict=True))
    periods = tuple(-(-length // s) for length, s in zip(lengths, strides, strict=True))
    plan = _conv.plan_operator((*effective, *shape[-2:]), geometry._replace(transposed=False), "rows")
    return LinearGeometry(plan, periods, dilation)


def frequency_table(geometry, dtype="float32"):
    """`(cos, sin)`, each `(F, P)`: `2 pi <w, d> / N` for the `F` frequencies `w` that stand for all.

    `P` positions `d` of the polyphase kernel in row-major order. Along an
    axis with one tap every frequency gives the same matrix (one stands for
    all); a real kernel's matrices at `w` and `-w` are conjugate, so the last
    axis with taps keeps half of its frequencies.
    """
    grid = geometry.plan.grid
    last = max((a for a, g in enumerate(grid) if g > 1), default=None)
    axes = []
    for axis, (g, period) in enumerate(zip(grid, geometry.periods, strict=True)):
        count = 1 if g == 1 else period // 2 + 1 if axis == last else period
        axes.append(np.arange(count)[:, None] * np.arange(g)[None, :] / period)
    # The angle of each (frequency, position) pair: the sum over axes, as an outer sum.
    angle = np.zeros((1, 1))
    for table in axes:
        angle = (angle[:, None, :, None] + table[None, :, None, :]).reshape(
            angle.shape[0] * table.shape[0], angle.shape[1] * table.shape[1]
        )
    angle = 2 * np.pi * angle
    return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)


def dilate(kernel, dilation):
    """The kernel with `r - 1` zeros between taps along each spatial axis (`keras.ops`)."""
    for axis, r in enumerate(dilation):
        if r == 1:
            continue
        shape = list(kernel.shape)
        k = shape[axis]
        zeros = keras.ops.zeros([*shape[: axis + 1], r - 1, *shape[axis + 1 :]], kernel.dtype)
        spread = keras.ops.concatenate([keras.ops.expand_dims(kernel, axis + 1), zeros], axis=axis + 1)
        spread = keras.ops.reshape(spread, [*shape[:axis], k * r, *shape[axis + 1 :]])
        kernel = keras.ops.take(spread, np.arange(r * (k - 1) + 1), axis=axis)
    return kernel


def operator_norm_bound(kernel, geometry, cos, sin, iterations):
    """An upper bound on `||C_N||`, the circular operator's norm (module docstring), as a scalar tensor.

    Args:
        kernel: the layer's kernel `(*spatial, cin, cout)`, float32.
        geometry: its `LinearGeometry`.
        cos, sin: its `frequency_table`, as tensors.
        iterations: `T` of the Gram iteration.
    """
    real, imag = frequency_matrices(dilate(kernel, geometry.dilation), geometry.plan, cos, sin)
    return complex_norm_bound(real, imag, iterations)


def frequency_matrices(kernel, plan, cos, sin):
    """`(real, imag)`, each `(F, groups, rows, block)`: the polyphase matrix of each frequency of `frequency_table`.

    `K(w) = sum_d X_d e^(-2 pi i <w, d> / N)` over the polyphase positions
    `d` of the stack `X` `(groups, rows, P * block)`, as the penalty reads it.
    """
    stack = ops.to_stack(kernel, plan)
    x = keras.ops.reshape(stack, (plan.num_slices, plan.rows, math.prod(plan.grid), plan.block))
    real = keras.ops.einsum("fp,grpb->fgrb", cos, x)
    imag = -keras.ops.einsum("fp,grpb->fgrb", sin, x)
    return real, imag


def complex_norm_bound(real, imag, iterations):
    """`max` over a batch of complex matrices `real + i imag` (`(..., rows, cols)`) of a bound on `sigma_max`."""
    tr = lambda m: keras.ops.swapaxes(m, -1, -2)  # noqa: E731
    if real.shape[-2] >= real.shape[-1]:  # the smaller Gram: K^H K
        gr = keras.ops.matmul(tr(real), real) + keras.ops.matmul(tr(imag), imag)
        gi = keras.ops.matmul(tr(real), imag) - keras.ops.matmul(tr(imag), real)
    else:  # K K^H
        gr = keras.ops.matmul(real, tr(real)) + keras.ops.matmul(imag, tr(imag))
        gi = keras.ops.matmul(imag, tr(real)) - keras.ops.matmul(real, tr(imag))
    return keras.ops.sqrt(hermitian_norm_bound(gr, gi, iterations))


def hermitian_norm_bound(gr, gi, iterations):
    """`max` over a batch of Hermitian matrices `gr + i gi` of `||G^(2^T)||_F^(1 / 2^T) >= lambda_max(G)`."""
    tiny = 1e-30
    batch = tuple(gr.shape[:-2])
    axes = (-2, -1)
    log_scale = keras.ops.zeros(batch, "float32")
    for _ in range(iterations):
        norm = keras.ops.sqrt(keras.ops.sum(gr * gr + gi * gi, axis=axes)) + tiny
        gr, gi = gr / norm[..., None, None], gi / norm[..., None, None]
        log_scale = 2.0 * (log_scale + keras.ops.log(norm))
        # G^2 for G = gr + i gi Hermitian (gr symmetric, gi antisymmetric): gi gr = -(gr gi)^T, so three
        # products make it, not four.
        cross = keras.ops.matmul(gr, gi)
        gr, gi = keras.ops.matmul(gr, gr) - keras.ops.matmul(gi, gi), cross - keras.ops.swapaxes(cross, -1, -2)
    norm = keras.ops.sqrt(keras.ops.sum(gr * gr + gi * gi, axis=axes)) + tiny
    log_bound = (log_scale + keras.ops.log(norm)) / 2.0**iterations
    return keras.ops.exp(keras.ops.max(log_bound)) * ROUNDING_MARGIN**2


def matrix_norm(matrices):
    """The largest singular value over a batch of real matrices `(..., rows, cols)`, by SVD, with the margin."""
    values = keras.ops.svd(matrices, compute_uv=False)
    return keras.ops.max(values) * ROUNDING_MARGIN


def einsum_operator(equation, kernel_shape):
    """How an `EinsumDense` kernel acts: `(batch_axes, in_axes, out_axes)` of the kernel's axes, or a reason.

    The layer computes `einsum(equation, x, kernel)`. Kernel axes in the
    input and the output index independent matrices (their norm is the
    largest one's); axes in the input only are summed (the matrix's rows);
    in the output only, its columns. An input axis the output drops, and the
    kernel does not hold, sums over positions: not a bound this module gives.
    """
    inputs, output = equation.split("->")
    left, right = inputs.split(",")
    left, right, output = (s.replace("...", "") for s in (left, right, output))
    dropped = set(left) - set(right) - set(output)
    if dropped:
        return None, f"its equation {equation!r} sums the input over {sorted(dropped)}"
    summed = set(right) - set(left) - set(output)
    if summed:
        return None, f"its equation {equation!r} sums the kernel over {sorted(summed)}"
    batch = [i for i, a in enumerate(right) if a in left and a in output]
    rows = [i for i, a in enumerate(right) if a in left and a not in output]
    cols = [i for i, a in enumerate(right) if a not in left]
    if len(batch) + len(rows) + len(cols) != len(kernel_shape):
        return None, f"its equation {equation!r} does not match a kernel of shape {tuple(kernel_shape)}"
    return (batch, rows, cols), None
