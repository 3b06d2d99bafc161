"""The five norms: value, gradient and per-slice errors against numpy and finite differences.

Each norm's reference (`reference.norm_of`) is written from its definition:
"double" builds both Grams, "spectral" takes `eigvalsh`, and the gradients are
central differences of that reference or the closed forms of the literature,
never the identities the library computes with.
"""

import keras
import numpy as np
import pytest
import reference
from backends import compiled, to_numpy, value_and_grad

import keras_ortho

NORMS = ["l1", "fro", "double", "spectral", "coherence"]
MODES = ["auto", "columns", "rows"]


def separated(rng, rows, cols, top=3.0, ratio=0.5):
    """A matrix whose residual's eigenvalues `s_j^2 - 1` are `top * ratio**j`: a separated spectrum.

    In rows mode on a tall matrix the residual also has the eigenvalue -1,
    below `top` in magnitude.
    """
    k = min(rows, cols)
    return reference.with_singular_values(rng, rows, cols, np.sqrt(1 + top * ratio ** np.arange(k)))


def stacked(rng, shape, slice_axis):
    """A weight of `shape` whose every slice (along `slice_axis`, rank 3) has a separated spectrum."""
    if len(shape) == 2:
        return separated(rng, *shape)
    axis = 1 if slice_axis is None else slice_axis
    rest = [d for i, d in enumerate(shape) if i != axis]
    return np.stack([separated(rng, *rest) for _ in range(shape[axis])], axis=axis)


# Tall and wide, one matrix and stacks along either axis.
CASES = [((7, 5), None), ((5, 7), None), ((6, 3, 4), None), ((6, 3, 4), 0), ((3, 4, 6), None)]


def sample(rng, norm, shape, slice_axis):
    # The power iteration is exact to float64 rounding on a separated spectrum;
    # the other norms take any matrix.
    if norm == "spectral":
        return stacked(rng, shape, slice_axis)
    return rng.normal(scale=0.5, size=shape)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES)
@pytest.mark.parametrize("norm", NORMS)
def test_slice_errors_match_reference(rng, norm, shape, slice_axis, mode):
    w = sample(rng, norm, shape, slice_axis)
    got = to_numpy(keras_ortho.slice_errors(w, slice_axis=slice_axis, mode=mode, norm=norm))
    expected = reference.norm_errors(w, norm, slice_axis, mode)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-9)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES)
@pytest.mark.parametrize("norm", NORMS)
def test_penalty_and_its_autodiff_gradient_match_finite_differences(rng, norm, shape, slice_axis, mode):
    w = sample(rng, norm, shape, slice_axis)
    value, grad = value_and_grad(
        lambda x: keras_ortho.ortho_penalty(x, 0.3, slice_axis=slice_axis, mode=mode, norm=norm), w
    )
    np.testing.assert_allclose(value, reference.norm_penalty(w, norm, 0.3, slice_axis, mode), rtol=1e-9)
    numeric = reference.numeric_gradient(lambda x: reference.norm_penalty(x, norm, 0.3, slice_axis, mode), w)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(7, 5), (5, 7)])
def test_closed_forms_of_the_literature(rng, shape, mode):
    """SO: 4 P G; DSO: 4 P (P^T P - I) + 4 (P P^T - I) P; SRIP: 2 s P u u^T from eigh."""
    p = separated(rng, *shape)
    g = reference.residual(p, mode)
    columns = reference.resolve_mode(p, mode) == "columns"
    expected = {
        "fro": 4 * (p @ g if columns else g @ p),
        "double": 4 * p @ reference.residual(p, "columns") + 4 * reference.residual(p, "rows") @ p,
        "spectral": reference.spectral_gradient(p, mode),
    }
    for norm, gradient in expected.items():
        got = to_numpy(keras_ortho.ortho_gradient(p, 1.0, mode=mode, norm=norm))
        # The power iteration's eigenvector is off by about 0.5**32 here.
        tolerance = 1e-8 if norm == "spectral" else 1e-12
        np.testing.assert_allclose(got, gradient, rtol=tolerance, atol=tolerance, err_msg=norm)


@pytest.mark.parametrize("norm", NORMS)
def test_ortho_gradient_matches_finite_differences_of_the_reference(rng, norm):
    w = sample(rng, norm, (6, 3, 4), None)
    numeric = reference.numeric_gradient(lambda x: reference.norm_penalty(x, norm, 0.7), w)
    np.testing.assert_allclose(to_numpy(keras_ortho.ortho_gradient(w, 0.7, norm=norm)), numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm", ["l1", "fro", "double"])
def test_mean_reduction_averages_over_each_grams_entries(rng, norm, mode):
    w = rng.normal(scale=0.5, size=(6, 3, 4))
    value, grad = value_and_grad(lambda x: keras_ortho.ortho_penalty(x, 2.0, mode=mode, reduction="mean", norm=norm), w)
    np.testing.assert_allclose(value, reference.norm_penalty(w, norm, 2.0, None, mode, "mean"), rtol=1e-9)
    eps = 1e-6
    index = (1, 2, 3)
    step = np.zeros_like(w)
    step[index] = eps
    numeric = (
        reference.norm_penalty(w + step, norm, 2.0, None, mode, "mean")
        - reference.norm_penalty(w - step, norm, 2.0, None, mode, "mean")
    ) / (2 * eps)
    np.testing.assert_allclose(grad[index], numeric, rtol=1e-5)


def test_power_iteration_finds_the_eigenvalue_of_largest_magnitude(rng):
    """Against `eigh`, with the spectrum separated by a ratio of 0.5, either sign leading."""
    positive = [separated(rng, 40, 16) for _ in range(4)]
    # Singular value 0.1 gives the eigenvalue -0.99; the others at most +0.3.
    negative = [reference.with_singular_values(rng, 40, 16, [0.1] + [np.sqrt(1.3)] * 2 + [1.1] * 13) for _ in range(4)]
    w = np.stack(positive + negative, axis=1)
    got = to_numpy(keras_ortho.slice_errors(w, norm="spectral"))
    expected = reference.norm_errors(w, "spectral")
    np.testing.assert_allclose(expected[4:], 0.99, rtol=1e-9)  # the negative one leads there
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_orthonormal_slices_measure_zero_except_doubles_floor(rng):
    q = np.linalg.qr(rng.normal(size=(9, 4)))[0]
    # Orthonormal in exact arithmetic too, so that sign(G) = 0 exactly ("l1" and
    # "coherence" follow the signs of QR's rounding otherwise).
    exact = np.eye(9)[:, rng.permutation(9)[:4]] * rng.choice([-1.0, 1.0], size=4)
    for norm in ["l1", "fro", "spectral", "coherence"]:
        np.testing.assert_allclose(to_numpy(keras_ortho.slice_errors(q, norm=norm)), [0.0], atol=1e-12)
        np.testing.assert_array_equal(to_numpy(keras_ortho.ortho_gradient(exact, norm=norm)), 0.0)
    # Q Q^T - I of a 9 x 4 Q has five eigenvalues -1: the floor of "double" is rows - cols.
    np.testing.assert_allclose(to_numpy(keras_ortho.slice_errors(q, norm="double")), [9 - 4], rtol=1e-12)


def test_coherence_gradient_sits_on_the_largest_entry_alone(rng):
    p = rng.normal(scale=0.5, size=(8, 5))
    g = reference.residual(p, "columns")
    j, k = np.unravel_index(np.argmax(np.abs(g)), g.shape)
    picked = np.zeros_like(g)
    picked[j, k] += np.sign(g[j, k])
    picked[k, j] += np.sign(g[j, k])
    np.testing.assert_allclose(to_numpy(keras_ortho.ortho_gradient(p, norm="coherence")), p @ picked, rtol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_compiled_runs_agree_with_eager(rng, norm):
    w = sample(rng, norm, (6, 3, 4), None).astype("float32")
    eager = to_numpy(keras_ortho.ortho_penalty(w, 0.5, norm=norm))
    runs = compiled(lambda x: keras_ortho.ortho_penalty(x, 0.5, norm=norm))
    assert runs
    for way, run in runs.items():
        np.testing.assert_allclose(to_numpy(run(keras.ops.convert_to_tensor(w))), eager, rtol=1e-5, err_msg=way)


# --- The regularizer ------------------------------------------------------------


def test_norm_is_checked_with_the_value_received():
    with pytest.raises(ValueError, match=r"norm.*Received: norm='l2'"):
        keras_ortho.OrthoRegularizer(norm="l2")
    with pytest.raises(ValueError, match=r"reduction.*norm='spectral'"):
        keras_ortho.OrthoRegularizer(norm="spectral", reduction="mean")
    with pytest.raises(ValueError, match=r"norm"):
        keras_ortho.slice_errors(np.eye(3), norm="max")
    with pytest.raises(ValueError, match=r"norm"):
        keras_ortho.OrthoLogger(norm="L1")


@pytest.mark.parametrize("norm", NORMS)
def test_config_carries_the_norm(norm):
    regularizer = keras_ortho.OrthoRegularizer(0.2, norm=norm)
    config = regularizer.get_config()
    assert config["norm"] == norm
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(regularizer))
    assert restored.norm == norm and restored.get_config() == config


def test_config_without_norm_loads_as_l1():
    config = {"factor": 0.1, "slice_axis": None, "mode": "auto", "reduction": "sum"}
    assert keras_ortho.OrthoRegularizer.from_config(config).norm == "l1"


def _separated_dense_model(rng, norm, factor):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(4, use_bias=False, kernel_regularizer=keras_ortho.OrthoRegularizer(factor, norm=norm)),
            keras.layers.Dense(3, use_bias=False, kernel_regularizer=keras_ortho.OrthoRegularizer(factor, norm=norm)),
        ]
    )
    for layer in model.layers:
        layer.kernel.assign(separated(rng, *layer.kernel.shape).astype("float32"))
    return model


@pytest.mark.parametrize("norm", NORMS)
def test_fit_step_follows_the_norms_gradient(rng, norm):
    """One SGD step with a data loss of zero moves each kernel by -lr * factor * dL/dW (finite differences)."""
    factor, lr = 0.05, 0.1
    model = _separated_dense_model(rng, norm, factor)
    before = [to_numpy(layer.kernel).astype(np.float64) for layer in model.layers]
    expected_losses = [reference.norm_penalty(w, norm, factor) for w in before]
    np.testing.assert_allclose([float(to_numpy(x)) for x in model.losses], expected_losses, rtol=1e-5)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=lambda y, p: 0.0 * keras.ops.sum(p), jit_compile=True)
    model.fit(np.ones((4, 6), "float32"), np.zeros((4, 3), "float32"), batch_size=4, epochs=1, verbose=0)
    for w, layer in zip(before, model.layers, strict=True):
        eps = 1e-6
        numeric = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            step = np.zeros_like(w)
            step[index] = eps
            numeric[index] = (
                reference.norm_penalty(w + step, norm, factor) - reference.norm_penalty(w - step, norm, factor)
            ) / (2 * eps)
        np.testing.assert_allclose(to_numpy(layer.kernel), w - lr * numeric, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["fro", "spectral"])
def test_logger_records_the_regularizers_own_measure(rng, norm):
    model = _separated_dense_model(rng, norm, 1e-3)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    logger = keras_ortho.OrthoLogger()
    model.fit(np.ones((8, 6), "float32"), np.zeros((8, 3), "float32"), epochs=1, verbose=0, callbacks=[logger])
    assert len(logger.errors) == 2
    for path, layer in zip(logger.watched_paths, model.layers, strict=True):
        expected = reference.norm_errors(to_numpy(layer.kernel), norm)
        np.testing.assert_allclose(logger.errors[path][-1], expected, rtol=1e-4)
