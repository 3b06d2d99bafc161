"""ortho_penalty, ortho_gradient and slice_errors against the numpy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ortho
import reference

# (shape, slice_axis): ranks 2 to 5, default and explicit (also negative) axes,
# with slices that are tall (columns mode) and wide (rows mode).
CASES = [
    ((7, 5), None),
    ((5, 7), None),
    ((7, 5), 0),
    ((7, 5), -1),
    ((6, 3, 4), None),
    ((3, 4, 6), None),
    ((6, 3, 4), 0),
    ((6, 3, 4), -1),
    ((3, 3, 4, 5), None),
    ((3, 3, 4, 5), 2),
    ((2, 3, 2, 3, 4), None),
    ((2, 3, 2, 3, 4), -2),
]
MODES = ["auto", "columns", "rows"]


def weights(rng, shape, dtype="float64"):
    return rng.normal(scale=0.5, size=shape).astype(dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES)
def test_slice_errors_match_reference(rng, shape, slice_axis, mode):
    w = weights(rng, shape)
    got = keras_ortho.slice_errors(w, slice_axis=slice_axis, mode=mode)
    np.testing.assert_allclose(
        got.numpy(), reference.slice_errors(w, slice_axis, mode), rtol=1e-12
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES)
def test_penalty_and_tape_gradient_match_reference(rng, shape, slice_axis, mode):
    w = tf.constant(weights(rng, shape))
    with tf.GradientTape() as tape:
        tape.watch(w)
        value = keras_ortho.ortho_penalty(w, 0.3, slice_axis=slice_axis, mode=mode)
    grad = tape.gradient(value, w)
    np.testing.assert_allclose(
        value.numpy(), reference.penalty(w.numpy(), 0.3, slice_axis, mode), rtol=1e-12
    )
    np.testing.assert_allclose(
        grad.numpy(),
        reference.gradient(w.numpy(), 0.3, slice_axis, mode),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES)
def test_closed_form_gradient_matches_reference(rng, shape, slice_axis, mode):
    w = weights(rng, shape)
    grad = keras_ortho.ortho_gradient(w, 0.3, slice_axis=slice_axis, mode=mode)
    assert grad.shape == w.shape and grad.dtype == tf.float64
    np.testing.assert_allclose(
        grad.numpy(),
        reference.gradient(w, 0.3, slice_axis, mode),
        rtol=1e-12,
        atol=1e-12,
    )


def test_rank3_follows_the_index_formula(rng):
    """dL/dPhi[a,i,b] = 2 f sum_j Phi[a,i,j] sign(sum_k Phi[k,i,j] Phi[k,i,b] - d_jb)."""
    w = weights(rng, (8, 3, 5))
    gram = np.einsum("kij,kib->ijb", w, w) - np.eye(5)
    expected_value = 0.7 * np.abs(gram).sum()
    expected_grad = 2 * 0.7 * np.einsum("aij,ijb->aib", w, np.sign(gram))
    np.testing.assert_allclose(keras_ortho.ortho_penalty(w, 0.7), expected_value, rtol=1e-12)
    np.testing.assert_allclose(
        keras_ortho.ortho_gradient(w, 0.7), expected_grad, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", [((5, 3), None), ((4, 3, 5), None), ((2, 2, 3, 2), 1)])
def test_gradient_matches_central_finite_differences(rng, shape, slice_axis, mode):
    w = weights(rng, shape)
    eps = 1e-6

    def penalty(x):
        return keras_ortho.ortho_penalty(x, 0.5, slice_axis=slice_axis, mode=mode).numpy()

    numeric = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        step = np.zeros_like(w)
        step[index] = eps
        numeric[index] = (penalty(w + step) - penalty(w - step)) / (2 * eps)
    analytic = keras_ortho.ortho_gradient(w, 0.5, slice_axis=slice_axis, mode=mode)
    np.testing.assert_allclose(analytic.numpy(), numeric, rtol=1e-6, atol=1e-6)


def test_errors_times_factor_sum_to_the_penalty(rng):
    w = weights(rng, (9, 4, 6), "float32")
    errors = keras_ortho.slice_errors(w)
    assert errors.shape == (4,)
    assert float(keras_ortho.ortho_penalty(w, 0.25)) == pytest.approx(
        0.25 * float(tf.reduce_sum(errors)), rel=1e-6
    )


def test_orthonormal_slices_have_zero_error(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 8, 5)))  # 3 slices, orthonormal columns
    w = np.moveaxis(q, 0, 1)  # (8, 3, 5): slice i is w[:, i, :]
    np.testing.assert_allclose(keras_ortho.slice_errors(w), np.zeros(3), atol=1e-12)


def test_sign_of_zero_is_zero():
    # The diagonal of I^T I - I is exactly 0, off-diagonals too: no subgradient.
    w = np.eye(4)[:, :3]
    np.testing.assert_array_equal(keras_ortho.ortho_gradient(w), np.zeros((4, 3)))


@pytest.mark.parametrize(
    "shape,mode", [((1100, 1030), "columns"), ((1030, 1100), "rows"), ((2, 1024, 1040), "auto")]
)
def test_wide_grams_built_from_blocks_match_reference(rng, shape, mode):
    """Grams of side >= 1024 are assembled from their upper block triangle."""
    w = tf.constant(weights(rng, shape) / np.sqrt(shape[0]))
    with tf.GradientTape() as tape:
        tape.watch(w)
        value = keras_ortho.ortho_penalty(w, 0.1, mode=mode)
    np.testing.assert_allclose(value, reference.penalty(w.numpy(), 0.1, mode=mode), rtol=1e-10)
    np.testing.assert_allclose(
        tape.gradient(value, w), reference.gradient(w.numpy(), 0.1, mode=mode), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        keras_ortho.slice_errors(w, mode=mode), reference.slice_errors(w.numpy(), mode=mode), rtol=1e-10
    )


def test_auto_never_builds_the_larger_gram():
    # An Embedding-sized table: a 200000 x 200000 Gram would need 160 GB.
    w = tf.random.normal((200_000, 8), dtype=tf.float32)
    assert keras_ortho.slice_errors(w).shape == (1,)
    assert keras_ortho.ortho_gradient(w).shape == w.shape


# --- Execution modes ----------------------------------------------------------


@pytest.mark.parametrize("shape,slice_axis", [((7, 5), None), ((6, 3, 4), None), ((3, 3, 4, 5), 2)])
def test_eager_graph_and_xla_agree(rng, shape, slice_axis):
    w = tf.constant(weights(rng, shape, "float32"))

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = keras_ortho.ortho_penalty(x, 0.1, slice_axis=slice_axis)
        return value, tape.gradient(value, x)

    eager = value_and_grad(w)
    graph = tf.function(value_and_grad)(w)
    xla = tf.function(value_and_grad, jit_compile=True)(w)
    for other in (graph, xla):
        np.testing.assert_allclose(other[0], eager[0], rtol=1e-5)
        np.testing.assert_allclose(other[1], eager[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_variable", [tf.Variable, keras.Variable], ids=["tf", "keras"])
def test_trainable_variable_in_eager_mode(rng, make_variable):
    w = weights(rng, (6, 3, 4), "float32")
    variable = make_variable(w)
    with tf.GradientTape() as tape:
        value = keras_ortho.ortho_penalty(variable, 0.1)
    grad = tape.gradient(value, variable)
    np.testing.assert_allclose(grad, reference.gradient(w, 0.1), rtol=1e-5, atol=1e-6)


# --- Precision ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_weights_are_reduced_in_float32(rng, dtype):
    w = tf.cast(weights(rng, (16, 2, 8), "float32"), dtype)
    as_float32 = tf.cast(w, tf.float32).numpy()
    errors = keras_ortho.slice_errors(w)
    assert errors.dtype == tf.float32
    np.testing.assert_allclose(errors, reference.slice_errors(as_float32), rtol=1e-5)

    with tf.GradientTape() as tape:
        tape.watch(w)
        value = keras_ortho.ortho_penalty(w, 0.1)
    grad = tape.gradient(value, w)
    assert value.dtype == w.dtype and grad.dtype == w.dtype
    # One rounding to the 16-bit dtype, of a value computed in float32.
    rtol = 1e-2 if dtype == "bfloat16" else 1e-3
    np.testing.assert_allclose(float(value), reference.penalty(as_float32, 0.1), rtol=rtol)
    expected = reference.gradient(as_float32, 0.1)
    np.testing.assert_allclose(
        tf.cast(grad, tf.float32), expected, rtol=rtol, atol=rtol * np.abs(expected).max()
    )


def test_float64_stays_float64(rng):
    w = weights(rng, (5, 3))
    assert keras_ortho.ortho_penalty(w).dtype == tf.float64
    assert keras_ortho.slice_errors(w).dtype == tf.float64
