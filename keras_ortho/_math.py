"""The five orthogonality norms of a stack of matrices, their analytic gradients and per-slice values.

For a stack `Phi` of `m` matrices (see `_slicing` for how a weight becomes
one), each `rows x cols`, and its residual in columns mode

    G_i = Phi_i^T Phi_i - I        (rows mode: G_i = Phi_i Phi_i^T - I)

each norm measures a slice by one number and sums over slices:

| norm          | per slice                                    | gradient (columns mode)   |
|---------------|----------------------------------------------|---------------------------|
| `"l1"`        | `sum_jk |G_i|_jk` (the seed)                  | `2 Phi_i sign(G_i)`       |
| `"fro"`       | `||G_i||_F^2` (SO)                           | `4 Phi_i G_i`             |
| `"double"`    | `||Phi_i^T Phi_i - I||_F^2 + ||Phi_i Phi_i^T - I||_F^2` (DSO) | `8 Phi_i G_i` |
| `"spectral"`  | `sigma_max(G_i) = |lambda|_max` (SRIP)       | `2 s Phi_i u u^T`         |
| `"coherence"` | `max_jk |G_i|_jk` (MC)                        | `Phi_i (E + E^T)`         |

In rows mode each gradient is the same symmetric matrix applied from the
left (`2 sign(G_i) Phi_i`, ...). Where the notes below do not say otherwise,
`sign(0) = 0`.

* `"double"` is the same on both sides, whatever `mode`. With `s <= L` the two
  sides of `Phi_i`, `||G_L||_F^2 = ||G_s||_F^2 + (L - s)` (both expand to
  `||Phi^T Phi||_F^2 - 2 ||Phi||_F^2` plus the identity's trace), so it is
  computed from the smaller Gram alone: `2 ||G_s||_F^2 + (L - s)`. Its floor is
  `L - s`, not 0, for a slice that is not square. Its gradient
  `4 Phi G_c + 4 G_r Phi` is `8 Phi G_s` by the same identity
  (`Phi G_c = G_r Phi = Phi Phi^T Phi - Phi`).
* `"spectral"`: `G_i` is symmetric, so its largest singular value is its
  eigenvalue `lambda` of largest magnitude, with unit eigenvector `u` and sign
  `s`. `u` comes from `POWER_ITERATIONS` steps of the power iteration from a
  fixed start, and the value is the Rayleigh quotient `|u^T G_i u|`; the
  gradient is that of the eigenvalue, exact at an exact eigenvector. After
  `t` steps, with `r = |lambda_2 / lambda_1|` (the runner-up in magnitude over
  the largest), the eigenvector's error shrinks like `r^t` and the value's
  like `r^(2t)`: with 32 steps and `r <= 0.7`, about 1e-5 for the gradient and
  1e-10 for the value. Eigenvalues nearly tied in magnitude converge slowly;
  the value is then a lower bound, close to both. No vector is kept between
  calls: the regularizer stays stateless (nothing in the model's variables,
  the same under `stateless_call` and JAX's jit), and 32 steps of `k^2` each
  cost little beside the `rows * k^2` of the Gram.
* `"coherence"`: `E` is one at the largest `|G_i|_jk` and zero elsewhere,
  times that entry's sign. `G_i` is symmetric, so the largest entry comes as a
  pair `(j, k)`, `(k, j)`, and `E + E^T` is the same whichever of the two is
  found. Of entries tied otherwise, the one the backend's `argmax` returns is
  taken (the first in row-major order on JAX and PyTorch); such ties are a
  set of measure zero off orthonormal slices, where `E` is 0.

The gradient reaches the backend's autodiff through its custom-gradient
mechanism and reuses the forward pass's Gram, so training never
differentiates through it nor builds it twice.

`reduction="mean"` divides what a norm sums over by the number of entries:
`"l1"` and `"fro"` by `k * k`, the Gram's size; `"double"` each side by its own
size. `"spectral"` and `"coherence"` measure one entry and take no reduction.

**A convolution as an operator** (`_conv`): where the math takes a `mode`,
an `OperatorLayout(grid, block)` instead makes each slice `X` a polyphase
kernel, `rows x prod(grid) * block`, whose operator's Gram has the blocks
`M_delta = sum_{p - p' = delta} X_p^T X_p'`. "l1" and "fro" measure the
stacked `M_delta - [delta = 0] I` as they measure `G_i`, and their gradients
are `2 X S` and `4 X S`, `S` the signs (the residuals) laid back on the block
diagonals of `X^T X` (`_OperatorNorm`). "mean" divides by the block row's
`num_offsets * block^2` entries.

Written once in `keras.ops` over the backend's Gram, `minus_identity` and
symmetric product (`_backend`).
"""

import math

import numpy as np
from keras import ops

from keras_ortho import _backend
from keras_ortho._conv import OperatorLayout, num_offsets, offset_matrix
from keras_ortho._slicing import auto_mode

NORMS = ("l1", "fro", "double", "spectral", "coherence")
# What each norm measures of a slice, as tables and axes name it.
MEASURES = {
    "l1": "sum |G_i|",
    "fro": "||G_i||_F^2",
    "double": "||G_i||_F^2 + ||G_i'||_F^2",
    "spectral": "|lambda|_max(G_i)",
    "coherence": "max |G_i|",
}
# What each norm measures of a convolution's operator (one group's `M_delta` at every offset).
OPERATOR_MEASURES = {"l1": "sum |M_delta - I|", "fro": "sum ||M_delta - I||_F^2"}
# The norms that sum over the Gram's entries, so that "mean" can average them.
SUMMING_NORMS = ("l1", "fro", "double")
# The norms of a convolution's operator (`operator=True`).
OPERATOR_NORMS = ("l1", "fro")
POWER_ITERATIONS = 32
# From this block side on, an operator Gram's block diagonals are summed by a
# product with a 0/1 matrix (`_conv.offset_matrix`), below it by index
# shuffling (`_diagonal_sums`). Measured on ResNet50's and ConvNeXtTiny's
# convolutions (benchmarks/operator_cost.py, TensorFlow, 2-core EPYC): the
# product cost 2.2 s against 3.6 s for ResNet50 (blocks of 64 to 512, where it
# is one large matrix product), the shuffling 156 ms against 250 ms for
# ConvNeXtTiny (blocks of 1, where the product is a batch of vector products).
_SUMS_BY_PRODUCT_FROM = 16
_GOLDEN_ANGLE = 2.399963229728653  # pi (3 - sqrt(5))
_TINY = float(np.finfo(np.float32).tiny)


def gram_residual(phi, mode):
    """`G_i = Phi_i^T Phi_i - I` ("columns") or `Phi_i Phi_i^T - I` ("rows").

    Args:
        phi: `(m, rows, cols)` stack of matrices, or one `(rows, cols)` matrix.
        mode: "columns" or "rows".

    Returns:
        `(m, k, k)` residuals (`(k, k)` for one matrix), `k = cols` or `rows`.
    """
    backend = _backend.current()
    return backend.minus_identity(backend.gram(phi, mode))


def slice_values(phi, mode, norm="l1"):
    """Each slice's measure under `norm`, unscaled: `(m, rows, cols) -> (m,)`, `(rows, cols) -> ()`.

    `mode` is "columns", "rows", or an `OperatorLayout` (a convolution's operator).
    """
    return _norm(norm, mode).values(phi, mode)


def _norm(norm, mode):
    return _OPERATOR_NORMS[norm] if isinstance(mode, OperatorLayout) else _NORMS[norm]


def stack_penalty(phi, mode, norm="l1", reduction="sum", factor=1.0):
    """`factor` times the sum over slices of each slice's measure, as a scalar whose gradient is
    `penalty_gradient(..., scale=factor)`.

    The factor (a Python float) rides inside the custom gradient, in the forward
    pass's value and the backward pass's scale: autodiff records no product of
    its own for it, nor runs one backward (on eager PyTorch, a node and two
    dispatches per weight and step).
    """
    return _backend.current().with_gradient(phi, (mode, norm, reduction, factor), _forward, _backward)


def stack_value(phi, mode, norm="l1", reduction="sum", factor=1.0):
    """`stack_penalty`'s value alone, with no gradient of its own (for a caller that supplies one)."""
    return _forward(phi, (mode, norm, reduction, factor))[0]


def penalty_gradient(phi, mode, norm="l1", reduction="sum", scale=1.0):
    """The closed-form gradient of `scale * stack_penalty(phi, mode, norm, reduction)`.

    Args:
        phi: `(m, rows, cols)` stack, or one matrix.
        mode: "columns" or "rows".
        norm, reduction: see the module docstring.
        scale: a Python float or a scalar tensor of `phi`'s dtype.

    Returns:
        A tensor shaped like `phi`.
    """
    options = (mode, norm, reduction, 1.0)
    return _backward(phi, _forward(phi, options)[1], options, scale)


def _forward(phi, options):
    mode, norm, reduction, factor = options
    return _norm(norm, mode).forward(phi, mode, reduction, factor)


def _backward(phi, saved, options, upstream):
    mode, norm, reduction, factor = options
    return _norm(norm, mode).backward(phi, saved, mode, reduction, _times_factor(upstream, factor))


def _times_factor(x, factor):
    """`x * factor`, with no product for a factor of 1 (one dispatch fewer on eager PyTorch)."""
    return x if factor == 1.0 else x * factor


def _times(phi, symmetric, mode, scale):
    return _backend.current().times_symmetric(phi, symmetric, mode, scale)


def _reduction_weight(residual, reduction):
    """What the summed norm is multiplied by: 1 for "sum", `1 / (k * k)` (one over the Gram's entries) for "mean"."""
    return 1.0 if reduction == "sum" else 1.0 / residual.shape[-1] ** 2


def _batch_sum(x):
    return ops.sum(x, axis=(-2, -1))


class _Entrywise:
    """`sum_jk f(G_i)_jk`, whose gradient is `Phi_i f'(G_i)` plus its transpose's share.

    `G_i` is symmetric and depends on `Phi_i` through both of its sides, so
    the gradient is `2 Phi_i f'(G_i)`: `2 Phi_i sign(G_i)` for `|.|`,
    `4 Phi_i G_i` for `(.)^2`. The forward pass keeps `direction(G_i)`
    (`sign(G_i)`, `G_i`), and the backward pass multiplies by it with the
    scale `slope * c` (2 for `|.|`, 4 for `(.)^2`). The forward pass's value,
    `sum f(G)` over every entry, is `total(G)` where a backend has it in one
    reduction, and `sum(measure(G))` otherwise.
    """

    def __init__(self, measure, direction, slope, total=None):
        self.measure, self.direction, self.slope = measure, direction, slope
        self.total = total or (lambda residual: ops.sum(measure(residual)))

    def values(self, phi, mode):
        return _batch_sum(self.measure(gram_residual(phi, mode)))

    def forward(self, phi, mode, reduction, factor):
        residual = gram_residual(phi, mode)
        # One product by both constants, none where it is 1.
        value = _times_factor(self.total(residual), factor * _reduction_weight(residual, reduction))
        # Last: the direction may be written over the residual.
        return value, self.direction(residual)

    def backward(self, phi, direction, mode, reduction, scale):
        # The scale goes into the product (no pass of its own on PyTorch).
        return _times(phi, direction, mode, self.slope * _reduction_weight(direction, reduction) * scale)


_L1 = _Entrywise(
    ops.abs,
    lambda residual: _backend.current().sign_of_residual(residual),
    2,
    total=lambda residual: _backend.current().sum_of_abs(residual),
)
_Frobenius = _Entrywise(ops.square, lambda residual: residual, 4)


class _Double:
    """Both sides, `a ||G_s||_F^2 + b` from the smaller Gram; gradient `4 a Phi G_s`."""

    @staticmethod
    def _side(phi):
        rows, cols = phi.shape[-2], phi.shape[-1]
        return auto_mode(rows, cols), min(rows, cols), max(rows, cols)

    @staticmethod
    def _weights(small, large, reduction):
        """`(a, b)` of the per-slice value `a ||G_s||^2 + b`."""
        if reduction == "sum":
            return 2.0, float(large - small)
        return 1.0 / small**2 + 1.0 / large**2, (large - small) / large**2

    @classmethod
    def values(cls, phi, mode):
        side, small, large = cls._side(phi)
        a, b = cls._weights(small, large, "sum")
        return a * _batch_sum(ops.square(gram_residual(phi, side))) + b

    @classmethod
    def forward(cls, phi, mode, reduction, factor):
        side, small, large = cls._side(phi)
        a, b = cls._weights(small, large, reduction)
        residual = gram_residual(phi, side)
        slices = phi.shape[0] if len(phi.shape) == 3 else 1
        return factor * a * ops.sum(ops.square(residual)) + factor * slices * b, residual

    @classmethod
    def backward(cls, phi, residual, mode, reduction, scale):
        side, small, large = cls._side(phi)
        a, _ = cls._weights(small, large, reduction)
        return _times(phi, residual, side, 4 * a * scale)


class _Spectral:
    """`|lambda|_max` of `G_i` by power iteration; gradient `2 s Phi_i u u^T`."""

    @staticmethod
    def _eigenpair(residual):
        """`(lambda, u)`: the Rayleigh quotient and unit column `(..., k, 1)` after `POWER_ITERATIONS` steps."""
        k = residual.shape[-1]
        matmul = _backend.current().matmul
        # A fixed start, the same on every backend and call: no state to carry.
        # Entries `cos(2.39996 j + 0.5)` (steps of the golden angle) spread over
        # [-1, 1] like random ones, so the start is not orthogonal to the
        # eigenvector sought but by design; built with `ops`, so that compiled
        # PyTorch traces it without leaving the graph.
        start = ops.cos(ops.arange(k, dtype=residual.dtype) * _GOLDEN_ANGLE + 0.5)
        # The cast: Keras's JAX `cos` gives float32 even for float64 input.
        start = ops.cast(start / ops.sqrt(ops.sum(ops.square(start))), residual.dtype)
        vector = ops.broadcast_to(ops.expand_dims(start, -1), (*residual.shape[:-1], 1))

        def step(_, vector):
            vector = matmul(residual, vector)
            length = ops.sqrt(ops.sum(ops.square(vector), axis=-2, keepdims=True))
            # A zero residual (an orthonormal slice) gives a zero vector: value and
            # gradient 0. An addition, not `maximum`, which Keras's PyTorch
            # backend computes in float32 for float64 tensors.
            return vector / (length + _TINY)

        vector = ops.fori_loop(0, POWER_ITERATIONS, step, vector)
        return ops.sum(vector * matmul(residual, vector), axis=(-2, -1)), vector

    @classmethod
    def values(cls, phi, mode):
        return ops.abs(cls._eigenpair(gram_residual(phi, mode))[0])

    @classmethod
    def forward(cls, phi, mode, reduction, factor):
        eigenvalue, vector = cls._eigenpair(gram_residual(phi, mode))
        sign = ops.expand_dims(ops.expand_dims(ops.sign(eigenvalue), -1), -1)
        return _times_factor(ops.sum(ops.abs(eigenvalue)), factor), ops.concatenate([sign * vector, vector], axis=-1)

    @staticmethod
    def backward(phi, factors, mode, reduction, scale):
        # 2 s Phi u u^T, as the rank-one product it is: no Gram-sized matmul.
        return _times_low_rank(phi, factors[..., :1] * (2 * scale), factors[..., 1:], mode)


class _Coherence:
    """`max_jk |G_i|_jk`; gradient `Phi_i (E + E^T)` at the largest entry."""

    @staticmethod
    def _flat(residual):
        k = residual.shape[-1]
        return ops.reshape(residual, (*residual.shape[:-2], k * k))

    @classmethod
    def values(cls, phi, mode):
        return ops.max(ops.abs(cls._flat(gram_residual(phi, mode))), axis=-1)

    @classmethod
    def forward(cls, phi, mode, reduction, factor):
        residual = gram_residual(phi, mode)
        k = residual.shape[-1]
        flat = cls._flat(residual)
        magnitude = ops.abs(flat)
        index = ops.expand_dims(ops.argmax(magnitude, axis=-1), -1)
        largest = ops.take_along_axis(magnitude, index, axis=-1)
        sign = ops.sign(ops.take_along_axis(flat, index, axis=-1))
        row = ops.expand_dims(ops.one_hot(index[..., 0] // k, k, dtype=residual.dtype), -1)
        column = ops.expand_dims(ops.one_hot(index[..., 0] % k, k, dtype=residual.dtype), -1)
        # E + E^T = L R^T with L = s [e_j, e_k], R = [e_k, e_j].
        sign = ops.expand_dims(sign, -1)
        factors = ops.concatenate([sign * row, sign * column, column, row], axis=-1)
        return _times_factor(ops.sum(largest), factor), factors

    @staticmethod
    def backward(phi, factors, mode, reduction, scale):
        # Phi (E + E^T) as the rank-two product it is: no Gram-sized matmul.
        return _times_low_rank(phi, factors[..., :2] * scale, factors[..., 2:], mode)


def _times_low_rank(phi, left, right, mode):
    """`Phi_i L R^T` ("columns") or `L R^T Phi_i` ("rows"), for `L`, `R` of shape `(..., k, r)`, `r` small.

    Two thin products, reading `Phi_i` once and writing the result once,
    instead of building the `k x k` matrix `L R^T` and multiplying by it.
    """
    matmul = _backend.current().matmul
    if mode == "columns":
        return matmul(matmul(phi, left), ops.swapaxes(right, -1, -2))
    return matmul(left, matmul(ops.swapaxes(right, -1, -2), phi))


_NORMS = {"l1": _L1, "fro": _Frobenius, "double": _Double, "spectral": _Spectral, "coherence": _Coherence}


class _OperatorNorm:
    """An entrywise norm of a convolution's operator Gram, `sum_delta sum_jk f(M_delta - [delta = 0] I)_jk`.

    `X` is `(m, rows, P * block)`, `P = prod(grid)` kernel positions. The
    Gram `H = X^T X` holds `X_p^T X_p'` in block `(p, p')`; summed along each
    block diagonal it gives `M_delta`, and `f'(M - I)` laid back along them
    (the adjoint) is a symmetric `S`: the gradient is `slope X S`, as the
    matrix norms' `slope Phi f'(G)`. The sums are a product with a 0/1 matrix
    for large blocks, index shuffling for small ones
    (`_SUMS_BY_PRODUCT_FROM`). A 1x1 kernel (`P = 1`) is a matrix, and the
    sums are skipped.
    """

    def __init__(self, entrywise):
        self.entrywise = entrywise

    @staticmethod
    def _pairs_perm(dims):
        """`(m, *p, b, *p', b')` -> `(m, p_1, p'_1, ..., p_D, p'_D, b, b')`: each block contiguous, last."""
        return (0, *(i for a in range(dims) for i in (1 + a, dims + 2 + a)), dims + 1, 2 * dims + 2)

    @classmethod
    def _residual(cls, phi, layout):
        """`(m, offsets, block, block)`: each `M_delta`, minus `I` at the zero offset."""
        backend = _backend.current()
        slices, block, grid = phi.shape[0], layout.block, layout.grid
        gram = backend.gram(phi, "columns")
        if math.prod(grid) == 1:
            return backend.minus_identity(backend.reshape(gram, (slices, 1, block, block)))
        pairs = backend.transpose(
            backend.reshape(gram, (slices, *grid, block, *grid, block)), cls._pairs_perm(len(grid))
        )
        if block >= _SUMS_BY_PRODUCT_FROM:
            matrix = ops.convert_to_tensor(offset_matrix(grid), dtype=pairs.dtype)
            pairs = backend.matmul(matrix, backend.reshape(pairs, (slices, math.prod(grid) ** 2, block**2)))
        else:
            done = (slices,)  # the axes summed so far: (m, delta_1, ..., delta_a)
            for axis, k in enumerate(grid):
                rest = math.prod(grid[axis + 1 :]) ** 2 * block**2
                pairs = _diagonal_sums(backend.reshape(pairs, (math.prod(done), k, k, rest)))
                done += (2 * k - 1,)
        offsets = num_offsets(grid)
        sums = backend.reshape(pairs, (slices, offsets, block, block))
        identity = np.zeros((offsets, block, block))
        identity[offsets // 2] = np.eye(block)
        return sums - ops.convert_to_tensor(identity, dtype=sums.dtype)

    @classmethod
    def _laid_back(cls, direction, layout):
        """`S`, `(m, P * block, P * block)`: block `(p, p')` is `direction[delta = p - p']`."""
        backend = _backend.current()
        slices, block, grid = direction.shape[0], layout.block, layout.grid
        positions = math.prod(grid)
        if positions == 1:
            return backend.reshape(direction, (slices, block, block))
        dims, spread = len(grid), direction
        if block >= _SUMS_BY_PRODUCT_FROM:
            matrix = ops.convert_to_tensor(offset_matrix(grid).T, dtype=direction.dtype)
            spread = backend.matmul(matrix, backend.reshape(direction, (slices, num_offsets(grid), block**2)))
        else:
            for axis in reversed(range(dims)):
                before = slices * math.prod(2 * g - 1 for g in grid[:axis])
                spread = _diagonal_spread(backend.reshape(spread, (before, 2 * grid[axis] - 1, -1)))
        pairs = backend.reshape(spread, (slices, *(g for g in grid for _ in range(2)), block, block))
        inverse = sorted(range(2 * dims + 3), key=cls._pairs_perm(dims).__getitem__)
        return backend.reshape(backend.transpose(pairs, inverse), (slices, positions * block, positions * block))

    @staticmethod
    def _reduction_weight(layout, reduction):
        """1 for "sum", one over the entries of a block row of the operator's Gram for "mean"."""
        return 1.0 if reduction == "sum" else 1.0 / (num_offsets(layout.grid) * layout.block**2)

    def values(self, phi, layout):
        return ops.sum(self.entrywise.measure(self._residual(phi, layout)), axis=(1, 2, 3))

    def forward(self, phi, layout, reduction, factor):
        residual = self._residual(phi, layout)
        value = _times_factor(self.entrywise.total(residual), factor * self._reduction_weight(layout, reduction))
        return value, self.entrywise.direction(residual)

    def backward(self, phi, direction, layout, reduction, scale):
        scale = self.entrywise.slope * self._reduction_weight(layout, reduction) * scale
        return _times(phi, self._laid_back(direction, layout), "columns", scale)


_OPERATOR_NORMS = {"l1": _OperatorNorm(_L1), "fro": _OperatorNorm(_Frobenius)}


def _diagonal_sums(x):
    """`(n, k, k, v) -> (n, 2k - 1, v)`: the sums of `x[:, i, j]` over `i - j = delta`, `delta = -(k - 1) .. k - 1`.

    By index shuffling alone, no multiply: with its columns reversed, each
    row padded to `2k` and the whole re-read `2k - 1` wide, row `i` is shifted
    right by `i`, so that entry `(i, j)` lands in column `(k - 1) + i - j`.
    The `v` entries of each `(i, j)` stay contiguous and move together.
    """
    backend = _backend.current()
    n, k, _, v = x.shape
    x = ops.pad(ops.flip(x, axis=2), [(0, 0), (0, 0), (0, k), (0, 0)])
    x = backend.reshape(x, (n, 2 * k * k, v))[:, : k * (2 * k - 1)]
    return ops.sum(backend.reshape(x, (n, k, 2 * k - 1, v)), axis=1)


def _diagonal_spread(y):
    """The adjoint of `_diagonal_sums`: `(n, 2k - 1, v) -> (n, k, k, v)`, entry `(i, j)` is `y[:, k - 1 + i - j]`."""
    backend = _backend.current()
    n, width, v = y.shape
    k = (width + 1) // 2
    x = backend.reshape(ops.broadcast_to(ops.expand_dims(y, 1), (n, k, width, v)), (n, k * width, v))
    x = backend.reshape(ops.pad(x, [(0, 0), (0, k), (0, 0)]), (n, k, 2 * k, v))
    return ops.flip(x[:, :, :k], axis=2)


# --- The hard constraint: the nearest matrix with orthonormal columns (rows) ---

PROJECTIONS = ("svd", "newton_schulz")


def polar_factor(phi, mode, method="svd", iterations=None):
    """Each slice replaced by its polar factor: the nearest matrix with orthonormal columns (rows).

    For `Phi_i = U S V^T` (thin SVD) the polar factor is `U V^T`: of all
    matrices with orthonormal columns (rows, for a wide slice), the one
    nearest to `Phi_i` in Frobenius norm.

    * "svd": `U V^T` from the backend's SVD; exact to the dtype's rounding, for
      any slice (a rank-deficient one gets one of its nearest points).
    * "newton_schulz": matmuls only, which suit GPUs. From
      `X_0 = Phi_i / ||Phi_i||_F` (singular values in (0, 1]),
      `X_{t+1} = 1.5 X_t - 0.5 X_t X_t^T X_t` sends each singular value
      `sigma -> 1.5 sigma - 0.5 sigma^3`, which grows small ones by 1.5x per step
      and converges quadratically near 1, to `U V^T` itself. A singular value
      `sigma` of `X_0` needs about `log(1 / sigma) / log(1.5)` steps to approach
      1, then a few more: after 24 steps, within float32 rounding of 1 for
      slices whose condition number times `sqrt(k)` stays below about 1e3
      (`tests/test_constraint.py` measures it). A singular value of 0 stays 0.

    Args:
        phi: `(m, rows, cols)` stack, or one matrix.
        mode: "columns" (needs `rows >= cols`) or "rows" (needs `rows <= cols`).
        method: "svd" or "newton_schulz".
        iterations: steps of "newton_schulz".

    Returns:
        A tensor shaped like `phi`.
    """
    backend = _backend.current()
    if method == "svd":
        u, vh = backend.svd_factors(phi)
        return backend.matmul(u, vh)
    size = ops.sqrt(ops.sum(ops.square(phi), axis=(-2, -1), keepdims=True))
    x = phi / (size + _TINY)
    for _ in range(iterations):
        x = 1.5 * x - 0.5 * backend.times_symmetric(x, backend.gram(x, mode), mode)
    return x
