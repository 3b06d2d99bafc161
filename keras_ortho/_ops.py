"""The orthogonality penalty, its analytic gradient and the per-slice errors.

For a stack of matrices `Phi_i` (see `_slicing` for how a tensor is sliced),
in columns mode:

    G_i = Phi_i^T Phi_i - I
    L = factor * sum_i sum_jk |G_i|_jk
    dL/dPhi_i = 2 * factor * Phi_i @ sign(G_i)

and in rows mode `G_i = Phi_i Phi_i^T - I`, `dL/dPhi_i = 2 factor sign(G_i) Phi_i`.
`sign(0) = 0`, the subgradient `tf.abs` uses. The gradient reaches TensorFlow
through `tf.custom_gradient` and reuses the forward pass's `G_i`, so training
never differentiates through the Gram matrix nor builds it twice.

16-bit floats are reduced in float32; float32 and float64 in their own dtype.
"""

import tensorflow as tf

from keras_ortho import _validation
from keras_ortho._slicing import plan_slices

# --- Batched math on a (num_slices, rows, cols) stack ------------------------

# Gram matrices of side >= _BLOCKED_FROM are built from their upper block
# triangle, in blocks of side _GRAM_BLOCK. Measured on a 2-core AVX-512 Xeon
# with oneDNN (benchmarks/run.py, "Symmetric Gram" in its results): 256 beat
# 128 and 512, and at side 512 the copies cost more than they save.
_GRAM_BLOCK = 256
_BLOCKED_FROM = 1024


def _product(a, b, mode):
    """`a^T b` ("columns") or `a b^T` ("rows"), batched."""
    if mode == "columns":
        return tf.linalg.matmul(a, b, adjoint_a=True)
    return tf.linalg.matmul(a, b, adjoint_b=True)


def gram(phi, mode):
    """`Phi_i^T Phi_i` ("columns") or `Phi_i Phi_i^T` ("rows"), `(m, k, k)`.

    The Gram is symmetric. From side `_BLOCKED_FROM` on, its side is cut into
    blocks of `_GRAM_BLOCK` columns (rows) of `Phi_i`; only the blocks on and
    above the diagonal are multiplied, those below are their transposes: about
    `(b + 1) / (2 b)` of the multiply-adds for `b` blocks.
    """
    axis = -1 if mode == "columns" else -2
    side = phi.shape[axis]
    if side < _BLOCKED_FROM or side <= _GRAM_BLOCK:
        return _product(phi, phi, mode)
    sizes = [_GRAM_BLOCK] * (side // _GRAM_BLOCK) + [side % _GRAM_BLOCK] * (side % _GRAM_BLOCK > 0)
    parts = tf.split(phi, sizes, axis=axis)
    upper = {(i, j): _product(parts[i], parts[j], mode)
             for i in range(len(parts)) for j in range(i, len(parts))}
    block_rows = [
        tf.concat(
            [upper[i, j] if i <= j else tf.linalg.matrix_transpose(upper[j, i])
             for j in range(len(parts))],
            axis=-1,
        )
        for i in range(len(parts))
    ]
    return tf.concat(block_rows, axis=-2)


def gram_residual(phi, mode):
    """`G_i = Phi_i^T Phi_i - I` ("columns") or `Phi_i Phi_i^T - I` ("rows").

    Args:
        phi: `(m, rows, cols)` stack of matrices, or one `(rows, cols)` matrix.
        mode: "columns" or "rows".

    Returns:
        `(m, k, k)` residuals (`(k, k)` for one matrix), `k = cols` or `rows`.
    """
    product = gram(phi, mode)
    return tf.linalg.set_diag(product, tf.linalg.diag_part(product) - 1)


def slice_sums(residual):
    """`sum_jk |G_i|_jk` for each slice: `(m, k, k) -> (m,)`, `(k, k) -> ()`."""
    return tf.reduce_sum(tf.abs(residual), axis=[-2, -1])


def residual_gradient(phi, residual, mode, scale):
    """`2 scale Phi_i sign(G_i)` ("columns") or `2 scale sign(G_i) Phi_i` ("rows").

    Args:
        phi: the `(m, rows, cols)` stack (or one matrix) the residual came from.
        residual: its residual from `gram_residual`.
        mode: "columns" or "rows".
        scale: a Python float or a scalar tensor of the residual's dtype;
            `factor` times the upstream gradient.

    Returns:
        The gradient of `scale * sum |G|` with respect to `phi`, shaped like it.
    """
    # The sign matrix is never larger than phi in auto mode, so it takes the scale.
    signs = tf.sign(residual) * (2 * scale)
    if mode == "columns":
        return tf.linalg.matmul(phi, signs)
    return tf.linalg.matmul(signs, phi)


def _make_stack_penalty(mode):
    @tf.custom_gradient
    def stack_penalty(phi):
        """`sum_i sum_jk |G_i|_jk` with its analytic gradient."""
        residual = gram_residual(phi, mode)
        value = tf.reduce_sum(tf.abs(residual))

        def grad(upstream):
            return residual_gradient(phi, residual, mode, upstream)

        return value, grad

    return stack_penalty


_STACK_PENALTY = {mode: _make_stack_penalty(mode) for mode in ("columns", "rows")}


# --- From a user's tensor to the stack and back ------------------------------


def _prepare(w, slice_axis, mode):
    """Checks `w` and the options; returns `(tensor, plan, compute_dtype)`."""
    slice_axis = _validation.check_slice_axis(slice_axis)
    mode = _validation.check_mode(mode)
    path = getattr(w, "path", None)  # set on Keras variables
    # tf.convert_to_tensor also turns a trainable Keras or tf variable into a
    # read of its value, which tf.custom_gradient accepts in eager mode.
    tensor = tf.convert_to_tensor(w)
    if not tensor.dtype.is_floating:
        raise TypeError(
            "keras_ortho needs a floating-point weight. "
            f"Received: w.dtype={tensor.dtype.name}"
        )
    if tensor.shape.rank is None or not tensor.shape.is_fully_defined():
        raise ValueError(
            "keras_ortho needs a weight with a static shape. "
            f"Received: w.shape={tensor.shape}"
        )
    plan = plan_slices(tensor.shape.as_list(), slice_axis, mode, path=path)
    compute_dtype = tf.float32 if tensor.dtype.size < 4 else tensor.dtype
    return tensor, plan, compute_dtype


def _to_stack(tensor, plan, compute_dtype):
    """`w` -> `(num_slices, rows, cols)` in the compute dtype; `(rows, cols)` for one slice.

    A plain matmul of one matrix costs less than a batch of one (4% at
    1024 x 1024, a third on small kernels, measured), and the math above takes
    either.
    """
    tensor = tf.cast(tensor, compute_dtype)
    if plan.perm is not None:
        tensor = tf.transpose(tensor, plan.perm)
    if plan.num_slices == 1:
        return tf.reshape(tensor, (plan.rows, plan.cols))
    return tf.reshape(tensor, (plan.num_slices, plan.rows, plan.cols))


def _from_stack(stack, plan, dtype):
    """Inverse of `_to_stack`: the stack -> `w`'s shape and dtype."""
    if plan.perm is None:
        out = tf.reshape(stack, plan.shape)
    else:
        moved = tf.reshape(stack, [plan.shape[i] for i in plan.perm])
        inverse = sorted(range(len(plan.perm)), key=plan.perm.__getitem__)
        out = tf.transpose(moved, inverse)
    return tf.cast(out, dtype)


# --- Public functions ---------------------------------------------------------


def slice_errors(w, slice_axis=None, mode="auto"):
    """Distance from orthonormal of each slice: `sum_jk |G_i|_jk`, unscaled.

    `factor * sum(slice_errors(w))` equals `ortho_penalty(w, factor)` (up to
    the order of the float additions).

    Args:
        w: a float tensor, variable or array of rank >= 2. A Keras variable
            brings its path, which the attention-output rule needs.
        slice_axis: None for the default slicing, or the axis to slice along.
        mode: "auto", "columns" or "rows".

    Returns:
        A 1-D tensor of length `num_slices`, in float32 for 16-bit weights and
        in `w`'s dtype otherwise.

    Example:

        keras_ortho.slice_errors(np.eye(3)[:, :2])   # [0.]: orthonormal columns
        keras_ortho.slice_errors(attention_layer.trainable_weights[0])  # per head
    """
    tensor, plan, compute_dtype = _prepare(w, slice_axis, mode)
    stack = _to_stack(tensor, plan, compute_dtype)
    return tf.reshape(slice_sums(gram_residual(stack, plan.mode)), [plan.num_slices])


def ortho_penalty(w, factor=1.0, slice_axis=None, mode="auto"):
    """`factor * sum_i sum_jk |G_i|_jk`, differentiable with the analytic gradient.

    Same value and gradient as `OrthoRegularizer(factor, slice_axis, mode)(w)`.

    Args:
        w: a float tensor, variable or array of rank >= 2.
        factor: real number >= 0.
        slice_axis: None for the default slicing, or the axis to slice along.
        mode: "auto", "columns" or "rows".

    Returns:
        A scalar tensor in `w`'s dtype (reduced in float32 for 16-bit weights).
    """
    factor = _validation.check_factor(factor)
    tensor, plan, compute_dtype = _prepare(w, slice_axis, mode)
    stack = _to_stack(tensor, plan, compute_dtype)
    value = _STACK_PENALTY[plan.mode](stack)
    return tf.cast(factor * value, tensor.dtype)


def ortho_gradient(w, factor=1.0, slice_axis=None, mode="auto"):
    """The closed-form gradient of `ortho_penalty`, without a tape.

    Columns mode: `2 factor Phi_i sign(Phi_i^T Phi_i - I)`; rows mode:
    `2 factor sign(Phi_i Phi_i^T - I) Phi_i`, laid back into `w`'s layout.

    Args:
        w, factor, slice_axis, mode: as for `ortho_penalty`.

    Returns:
        A tensor of `w`'s shape and dtype.
    """
    factor = _validation.check_factor(factor)
    tensor, plan, compute_dtype = _prepare(w, slice_axis, mode)
    stack = _to_stack(tensor, plan, compute_dtype)
    residual = gram_residual(stack, plan.mode)
    grad = residual_gradient(stack, residual, plan.mode, factor)
    return _from_stack(grad, plan, tensor.dtype)
