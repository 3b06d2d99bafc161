"""JAX: `jax.custom_vjp`, and float32 products at full precision.

On GPUs JAX may run float32 matmuls in TF32 (10-bit mantissa) by default. The
penalty's gradient is `sign(G)`, and near orthonormal weights the entries of `G`
are far below TF32's rounding of a Gram entry, so their signs would be noise:
the products here ask for full precision, as TensorFlow and PyTorch compute
float32 matmuls by default.
"""

import functools

import jax
import jax.numpy as jnp
import keras

_PRECISION = jax.lax.Precision.HIGHEST


def to_tensor(w):
    return keras.ops.convert_to_tensor(w)


def reshape(x, shape):
    return jnp.reshape(x, shape)


def transpose(x, perm):
    return jnp.transpose(x, perm)


def gram(phi, mode):
    if mode == "columns":
        return jnp.matmul(jnp.swapaxes(phi, -1, -2), phi, precision=_PRECISION)
    return jnp.matmul(phi, jnp.swapaxes(phi, -1, -2), precision=_PRECISION)


def minus_identity(gram):
    # XLA fuses the subtraction into one pass over the Gram.
    return gram - jnp.eye(gram.shape[-1], dtype=gram.dtype)


def matmul(a, b):
    return jnp.matmul(a, b, precision=_PRECISION)


def times_symmetric(phi, symmetric, mode, scale=None):
    # `S` (sign(G), G, u u^T, ...) is symmetric. Its transpose is what keeps a
    # sharded kernel's gradient local: with columns sharded over devices, GSPMD
    # shards `S` by rows (G = Phi_shard^T Phi), so `Phi S^T` contracts over
    # an unsharded axis, and `Phi S` would all-reduce a kernel-sized sum
    # (benchmarks/collectives.py). XLA fuses the scale into the pass that
    # produces `S`.
    symmetric = jnp.swapaxes(symmetric, -1, -2)
    if scale is not None:
        symmetric = symmetric * scale
    if mode == "columns":
        return jnp.matmul(phi, symmetric, precision=_PRECISION)
    return jnp.matmul(symmetric, phi, precision=_PRECISION)


# On CPU, JAX's default SVD is LAPACK's divide and conquer (gesdd), which can
# fail to converge on a float32 slice whose singular values cluster near 1, as
# the constraint's slices do after each step, and JAX then returns NaN (a
# 64 x 64 slice with singular values in [0.9995, 1.016], met training a tanh
# MLP). From JAX 0.5.3 the CPU takes the QR-based algorithm (gesvd), which
# converges on those; before, a slice whose SVD came back non-finite is
# recomputed from the eigendecomposition of its Gram. GPUs keep the default
# (cuSOLVER's Jacobi for small slices).
_CPU_QR = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit()) >= (0, 5, 3)


def svd_factors(phi):
    if jax.default_backend() != "cpu":
        u, _, vh = jnp.linalg.svd(phi, full_matrices=False)
        return u, vh
    if _CPU_QR:
        u, _, vh = jax.lax.linalg.svd(phi, full_matrices=False, algorithm=jax.lax.linalg.SvdAlgorithm.QR)
        return u, vh
    u, _, vh = jnp.linalg.svd(phi, full_matrices=False)
    failed = ~(jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(vh)))
    return jax.lax.cond(failed, lambda: _svd_factors_by_eigh(phi), lambda: (u, vh))


def _svd_factors_by_eigh(phi):
    """`(U, V^T)` from `eigh` of the smaller Gram, for slices of full rank: `Phi V = U S`."""
    wide = phi.shape[-2] < phi.shape[-1]
    x = jnp.swapaxes(phi, -1, -2) if wide else phi
    squares, v = jnp.linalg.eigh(jnp.matmul(jnp.swapaxes(x, -1, -2), x, precision=_PRECISION))
    singular = jnp.sqrt(jnp.clip(squares, jnp.finfo(phi.dtype).tiny, None))
    u = jnp.matmul(x, v, precision=_PRECISION) / singular[..., None, :]
    vh = jnp.swapaxes(v, -1, -2)
    return (jnp.swapaxes(vh, -1, -2), jnp.swapaxes(u, -1, -2)) if wide else (u, vh)


def sign_of_residual(x):
    return jnp.sign(x)


def sum_of_abs(x):
    # XLA fuses the two into one pass.
    return jnp.sum(jnp.abs(x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def with_gradient(phi, options, forward, backward):
    return forward(phi, options)[0]


def _with_gradient_forward(phi, options, forward, backward):
    value, saved = forward(phi, options)
    return value, (phi, saved)


def _with_gradient_backward(options, forward, backward, residuals, upstream):
    phi, saved = residuals
    return (backward(phi, saved, options, upstream),)


with_gradient.defvjp(_with_gradient_forward, _with_gradient_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def gated(x, scale, options, value, gradient):
    return jax.lax.cond(scale > 0, lambda: value(x, scale, options), lambda: jnp.zeros((), x.dtype))


def _gated_forward(x, scale, options, value, gradient):
    # The taken branch computes the value and the gradient together, as the
    # plain penalty does (XLA shares their Gram), and keeps the gradient for
    # the backward pass, which is then one product by the upstream scalar and
    # needs no branch of its own. The branch not taken produces a zero
    # gradient, the one a skipped step adds into the data gradient anyway.
    def taken():
        return value(x, scale, options), gradient(x, scale, options, jnp.ones((), x.dtype))

    def skipped():
        return jnp.zeros((), x.dtype), jnp.zeros_like(x)

    result, kept = jax.lax.cond(scale > 0, taken, skipped)
    return result, (kept, scale)


def _gated_backward(options, value, gradient, residuals, upstream):
    kept, scale = residuals
    return kept * upstream.astype(kept.dtype), jnp.zeros_like(scale)


gated.defvjp(_gated_forward, _gated_backward)


def for_measuring(fn, jit_compile):
    # JAX has no graph mode short of jit, and op-by-op dispatch is the slow path.
    return jax.jit(fn)


def is_chief(model):
    return jax.process_index() == 0


def adjoint(fn, x, y):
    out, pullback = jax.vjp(fn, jnp.asarray(x))
    return pullback(jnp.asarray(y, out.dtype))[0]


def complex_singular_values(real, imag):
    return jnp.linalg.svd(jax.lax.complex(real, imag), compute_uv=False)


def dynamo_compiling():
    return False


def outside_dynamo(fn):
    return fn
