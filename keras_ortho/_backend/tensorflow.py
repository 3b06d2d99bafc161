"""TensorFlow: `tf.custom_gradient`, and Grams built from their upper block triangle."""

import keras
import tensorflow as tf

# Gram matrices of side >= _BLOCKED_FROM are built from their upper block
# triangle, in blocks of side _GRAM_BLOCK. Measured on a 2-core AVX-512 Xeon
# with oneDNN (benchmarks/run.py, "Symmetric Gram" in its results): 256 beat
# 128 and 512, and at side 512 the copies cost more than they save.
_GRAM_BLOCK = 256
_BLOCKED_FROM = 1024


def to_tensor(w):
    # Also turns a trainable Keras or tf variable into a read of its value,
    # which tf.custom_gradient accepts in eager mode (a variable it refuses).
    return tf.convert_to_tensor(w)


def _product(a, b, mode):
    """`a^T b` ("columns") or `a b^T` ("rows"), batched; the transposes are matmul flags."""
    if mode == "columns":
        return tf.linalg.matmul(a, b, adjoint_a=True)
    return tf.linalg.matmul(a, b, adjoint_b=True)


def reshape(x, shape):
    return tf.reshape(x, shape)


def transpose(x, perm):
    return tf.transpose(x, perm)


def gram(phi, mode):
    """The Gram, from side `_BLOCKED_FROM` on assembled from its upper block triangle.

    The side is cut into blocks of `_GRAM_BLOCK` columns (rows) of `Phi_i`; only
    the blocks on and above the diagonal are multiplied, those below are their
    transposes: about `(b + 1) / (2 b)` of the multiply-adds for `b` blocks.
    """
    axis = -1 if mode == "columns" else -2
    side = phi.shape[axis]
    if side < _BLOCKED_FROM or side <= _GRAM_BLOCK:
        return _product(phi, phi, mode)
    sizes = [_GRAM_BLOCK] * (side // _GRAM_BLOCK) + [side % _GRAM_BLOCK] * (side % _GRAM_BLOCK > 0)
    parts = tf.split(phi, sizes, axis=axis)
    upper = {(i, j): _product(parts[i], parts[j], mode) for i in range(len(parts)) for j in range(i, len(parts))}
    block_rows = [
        tf.concat(
            [upper[i, j] if i <= j else tf.linalg.matrix_transpose(upper[j, i]) for j in range(len(parts))],
            axis=-1,
        )
        for i in range(len(parts))
    ]
    return tf.concat(block_rows, axis=-2)


def minus_identity(gram):
    return tf.linalg.set_diag(gram, tf.linalg.diag_part(gram) - 1)


def matmul(a, b):
    return tf.linalg.matmul(a, b)


def times_symmetric(phi, symmetric, mode, scale=None):
    if scale is not None:
        # Keras's multiply: a Python float scale keeps float64 at float64.
        symmetric = keras.ops.multiply(symmetric, scale)
    if mode == "columns":
        return tf.linalg.matmul(phi, symmetric)
    return tf.linalg.matmul(symmetric, phi)


def svd_factors(phi):
    _, u, v = tf.linalg.svd(phi, full_matrices=False)
    return u, tf.linalg.matrix_transpose(v)


def sign_of_residual(x):
    return tf.sign(x)


def sum_of_abs(x):
    return tf.reduce_sum(tf.abs(x))


def with_gradient(phi, options, forward, backward):
    @tf.custom_gradient
    def function(phi):
        value, saved = forward(phi, options)
        return value, lambda upstream: backward(phi, saved, options, upstream)

    return function(phi)


def gated(x, scale, options, value, gradient):
    @tf.custom_gradient
    def function(x, scale):
        def backward(upstream):
            taken = lambda: gradient(x, scale, options, upstream)  # noqa: E731
            return tf.cond(scale > 0, taken, lambda: tf.zeros_like(x)), tf.zeros_like(scale)

        return tf.cond(scale > 0, lambda: value(x, scale, options), lambda: tf.zeros((), x.dtype)), backward

    return function(x, scale)


def for_measuring(fn, jit_compile):
    # No Python control flow on tensors to convert: without AutoGraph, tracing
    # does not try (and warn) to convert the backend lookup's importlib call.
    return tf.function(fn, jit_compile=jit_compile, autograph=False)


def is_chief(model):
    """Asks the model's strategy: False on the non-chief workers of a cluster."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return bool(strategy.extended.should_save_summary)


def adjoint(fn, x, y):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x)
    return tape.gradient(out, x, output_gradients=tf.convert_to_tensor(y, out.dtype))


def complex_singular_values(real, imag):
    return tf.linalg.svd(tf.complex(real, imag), compute_uv=False)


def dynamo_compiling():
    return False


def outside_dynamo(fn):
    return fn
