"""The penalty, its analytic gradient and the per-slice errors of a stack of matrices.

For a stack `Phi` of `m` matrices (see `_slicing` for how a weight becomes one),
in columns mode:

    G_i = Phi_i^T Phi_i - I
    L = factor * sum_i sum_jk |G_i|_jk
    dL/dPhi_i = 2 * factor * Phi_i @ sign(G_i)

and in rows mode `G_i = Phi_i Phi_i^T - I`, `dL/dPhi_i = 2 factor sign(G_i) Phi_i`.
`sign(0) = 0`, the subgradient `abs` has in every backend. The gradient reaches
the backend's autodiff through its custom-gradient mechanism and reuses the
forward pass's `G_i`, so training never differentiates through the Gram matrix
nor builds it twice.

Written once in `keras.ops` over the backend's Gram, `minus_identity` and sign
product (`_backend`).
"""

from keras import ops

from keras_ortho import _backend


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


def slice_sums(residual):
    """`sum_jk |G_i|_jk` for each slice: `(m, k, k) -> (m,)`, `(k, k) -> ()`."""
    return ops.sum(ops.abs(residual), axis=(-2, -1))


def residual_gradient(phi, residual, mode, scale):
    """`2 scale Phi_i sign(G_i)` ("columns") or `2 scale sign(G_i) Phi_i` ("rows").

    Args:
        phi: the stack (or one matrix) the residual came from.
        residual: its residual from `gram_residual`.
        mode: "columns" or "rows".
        scale: a Python float or a scalar tensor of the residual's dtype;
            `factor` times the upstream gradient.

    Returns:
        The gradient of `scale * sum |G|` with respect to `phi`, shaped like it.
    """
    # The sign matrix is never larger than phi in auto mode, so it takes the scale.
    signs = ops.sign(residual) * (2 * scale)
    return _backend.current().times_signs(phi, signs, mode)


def stack_penalty(phi, mode):
    """`sum_i sum_jk |G_i|_jk` as a scalar whose gradient is `residual_gradient`."""
    return _backend.current().with_gradient(phi, mode, _value_and_residual, residual_gradient)


def _value_and_residual(phi, mode):
    residual = gram_residual(phi, mode)
    return ops.sum(ops.abs(residual)), residual
