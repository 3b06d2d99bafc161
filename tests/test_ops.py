"""ortho_penalty, ortho_gradient and slice_errors against the numpy reference."""

import keras
import numpy as np
import pytest
import reference
from backends import compiled, only_on, to_numpy, value_and_grad, variable_grad
from test_norms import sample

import keras_ortho

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
    np.testing.assert_allclose(to_numpy(got), reference.slice_errors(w, slice_axis, mode), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES)
def test_penalty_and_autodiff_gradient_match_reference(rng, shape, slice_axis, mode):
    w = weights(rng, shape)
    value, grad = value_and_grad(lambda x: keras_ortho.ortho_penalty(x, 0.3, slice_axis=slice_axis, mode=mode), w)
    np.testing.assert_allclose(value, reference.penalty(w, 0.3, slice_axis, mode), rtol=1e-12)
    np.testing.assert_allclose(
        grad,
        reference.gradient(w, 0.3, slice_axis, mode),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES)
def test_closed_form_gradient_matches_reference(rng, shape, slice_axis, mode):
    w = weights(rng, shape)
    grad = keras_ortho.ortho_gradient(w, 0.3, slice_axis=slice_axis, mode=mode)
    assert tuple(grad.shape) == w.shape and keras.backend.standardize_dtype(grad.dtype) == "float64"
    np.testing.assert_allclose(
        to_numpy(grad),
        reference.gradient(w, 0.3, slice_axis, mode),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", CASES[::2])
def test_mean_reduction_divides_each_slice_by_its_gram_entries(rng, shape, slice_axis, mode):
    w = weights(rng, shape)
    value, grad = value_and_grad(
        lambda x: keras_ortho.ortho_penalty(x, 0.3, slice_axis=slice_axis, mode=mode, reduction="mean"), w
    )
    closed = keras_ortho.ortho_gradient(w, 0.3, slice_axis=slice_axis, mode=mode, reduction="mean")
    np.testing.assert_allclose(value, reference.mean_penalty(w, 0.3, slice_axis, mode), rtol=1e-12)
    expected = reference.mean_gradient(w, 0.3, slice_axis, mode)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(to_numpy(closed), expected, rtol=1e-12, atol=1e-14)
    # slice_errors stay the unreduced sums, whatever the regularizer's reduction.
    np.testing.assert_allclose(
        to_numpy(keras_ortho.slice_errors(w, slice_axis, mode)), reference.slice_errors(w, slice_axis, mode), rtol=1e-12
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_lazy_penalty_is_the_scaled_penalty_and_nothing_where_the_scale_is_zero(rng, scale, reduction):
    # Lazy regularization's branch (`ops.lazy_penalty_of`): its value and its
    # gradient are `scale` times the plain ones, also under a loss that is not
    # the penalty itself (an upstream gradient other than 1), eager and compiled.
    # The loss has a data term whose gradient is 0, as in training: a skipped
    # step's penalty is, on PyTorch, a constant outside the autograd graph.
    from keras_ortho import ops as ortho_ops

    w = weights(rng, (6, 3, 4))
    plain_value = reference.penalty if reduction == "sum" else reference.mean_penalty
    plain_gradient = reference.gradient if reduction == "sum" else reference.mean_gradient

    def loss(x):
        tensor, plan = ortho_ops.prepare(x, None, "auto")
        return 3.0 * ortho_ops.lazy_penalty_of(tensor, plan, 0.3, scale, reduction) + 0.0 * keras.ops.sum(x)

    for how, fn in {"eager": loss, **compiled(loss)}.items():
        value, grad = value_and_grad(fn, w)
        np.testing.assert_allclose(value, 3.0 * scale * plain_value(w, 0.3), rtol=1e-12, err_msg=how)
        np.testing.assert_allclose(grad, 3.0 * scale * plain_gradient(w, 0.3), rtol=1e-12, atol=1e-14, err_msg=how)


@pytest.mark.parametrize("norm", ["l1", "fro", "double", "spectral", "coherence"])
def test_the_factor_and_an_upstream_gradient_scale_value_and_gradient(rng, norm):
    # The factor rides inside the custom gradient (no product of its own for
    # autodiff), and on eager PyTorch the upstream scalar is read as a float:
    # a loss `3 * penalty` must still be 3 times the penalty and its gradient,
    # eager and compiled.
    # Slices whose residual has a separated spectrum, where the spectral norm's
    # power iteration is exact to float64 rounding.
    w = sample(rng, norm, (6, 3, 4), None)

    def loss(x):
        return 3.0 * keras_ortho.ortho_penalty(x, 0.3, norm=norm)

    # Against the numpy reference and central differences of it.
    expected_value = 3.0 * reference.norm_penalty(w, norm, 0.3)
    expected_gradient = reference.numeric_gradient(lambda x: 3.0 * reference.norm_penalty(x, norm, 0.3), w)
    assert np.abs(expected_gradient).max() > 0
    for how, fn in {"eager": loss, **compiled(loss)}.items():
        value, grad = value_and_grad(fn, w)
        np.testing.assert_allclose(value, expected_value, rtol=1e-9, err_msg=how)
        np.testing.assert_allclose(grad, expected_gradient, rtol=1e-5, atol=1e-6, err_msg=how)


def test_rank3_follows_the_index_formula(rng):
    """dL/dPhi[a,i,b] = 2 f sum_j Phi[a,i,j] sign(sum_k Phi[k,i,j] Phi[k,i,b] - d_jb)."""
    w = weights(rng, (8, 3, 5))
    gram = np.einsum("kij,kib->ijb", w, w) - np.eye(5)
    expected_value = 0.7 * np.abs(gram).sum()
    expected_grad = 2 * 0.7 * np.einsum("aij,ijb->aib", w, np.sign(gram))
    np.testing.assert_allclose(to_numpy(keras_ortho.ortho_penalty(w, 0.7)), expected_value, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(keras_ortho.ortho_gradient(w, 0.7)), expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,slice_axis", [((5, 3), None), ((4, 3, 5), None), ((2, 2, 3, 2), 1)])
def test_gradient_matches_central_finite_differences(rng, shape, slice_axis, mode):
    w = weights(rng, shape)
    eps = 1e-6

    def penalty(x):
        return to_numpy(keras_ortho.ortho_penalty(x, 0.5, slice_axis=slice_axis, mode=mode))

    numeric = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        step = np.zeros_like(w)
        step[index] = eps
        numeric[index] = (penalty(w + step) - penalty(w - step)) / (2 * eps)
    analytic = keras_ortho.ortho_gradient(w, 0.5, slice_axis=slice_axis, mode=mode)
    np.testing.assert_allclose(to_numpy(analytic), numeric, rtol=1e-6, atol=1e-6)


def test_errors_times_factor_sum_to_the_penalty(rng):
    w = weights(rng, (9, 4, 6), "float32")
    errors = to_numpy(keras_ortho.slice_errors(w))
    assert errors.shape == (4,)
    assert float(to_numpy(keras_ortho.ortho_penalty(w, 0.25))) == pytest.approx(0.25 * float(errors.sum()), rel=1e-6)


def test_orthonormal_slices_have_zero_error(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 8, 5)))  # 3 slices, orthonormal columns
    w = np.moveaxis(q, 0, 1)  # (8, 3, 5): slice i is w[:, i, :]
    np.testing.assert_allclose(to_numpy(keras_ortho.slice_errors(w)), np.zeros(3), atol=1e-12)


def test_sign_of_zero_is_zero():
    # The diagonal of I^T I - I is exactly 0, off-diagonals too: no subgradient.
    w = np.eye(4)[:, :3]
    np.testing.assert_array_equal(to_numpy(keras_ortho.ortho_gradient(w)), np.zeros((4, 3)))


@pytest.mark.parametrize("shape,mode", [((1100, 1030), "columns"), ((1030, 1100), "rows"), ((2, 1024, 1040), "auto")])
def test_wide_grams_built_from_blocks_match_reference(rng, shape, mode):
    """Grams of side >= 1024 (on TensorFlow assembled from their upper block triangle)."""
    w = weights(rng, shape) / np.sqrt(shape[0])
    value, grad = value_and_grad(lambda x: keras_ortho.ortho_penalty(x, 0.1, mode=mode), w)
    np.testing.assert_allclose(value, reference.penalty(w, 0.1, mode=mode), rtol=1e-10)
    np.testing.assert_allclose(grad, reference.gradient(w, 0.1, mode=mode), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        to_numpy(keras_ortho.slice_errors(w, mode=mode)), reference.slice_errors(w, mode=mode), rtol=1e-10
    )


def test_auto_never_builds_the_larger_gram():
    # An Embedding-sized table: a 200000 x 200000 Gram would need 160 GB.
    w = keras.random.normal((200_000, 8), dtype="float32")
    assert tuple(keras_ortho.slice_errors(w).shape) == (1,)
    assert tuple(keras_ortho.ortho_gradient(w).shape) == tuple(w.shape)


# --- Execution modes ----------------------------------------------------------


@pytest.mark.parametrize("shape,slice_axis", [((7, 5), None), ((6, 3, 4), None), ((3, 3, 4, 5), 2)])
def test_compiled_runs_agree_with_eager(rng, shape, slice_axis):
    """TensorFlow graph and XLA, JAX jit, torch.compile: the same value and gradient."""
    w = weights(rng, shape, "float32")

    def penalty(x):
        return keras_ortho.ortho_penalty(x, 0.1, slice_axis=slice_axis)

    eager = value_and_grad(penalty, w)
    np.testing.assert_allclose(eager[1], reference.gradient(w, 0.1, slice_axis), rtol=1e-4, atol=1e-5)
    for name, run in compiled(penalty).items():
        value, grad = value_and_grad(run, w)
        np.testing.assert_allclose(value, eager[0], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(grad, eager[1], rtol=1e-5, atol=1e-5, err_msg=name)


def test_keras_variable_gets_the_analytic_gradient(rng):
    w = weights(rng, (6, 3, 4), "float32")
    variable = keras.Variable(w)
    grad = variable_grad(lambda v: keras_ortho.ortho_penalty(v, 0.1), variable)
    np.testing.assert_allclose(grad, reference.gradient(w, 0.1), rtol=1e-5, atol=1e-6)


@only_on("tensorflow", why="tf.Variable is TensorFlow's")
def test_tf_variable_in_eager_mode(rng):
    import tensorflow as tf

    w = weights(rng, (6, 3, 4), "float32")
    variable = tf.Variable(w)
    with tf.GradientTape() as tape:
        value = keras_ortho.ortho_penalty(variable, 0.1)
    grad = tape.gradient(value, variable)
    np.testing.assert_allclose(grad, reference.gradient(w, 0.1), rtol=1e-5, atol=1e-6)


@only_on("torch", why="eager PyTorch leaves a result's memory layout to the caller")
@pytest.mark.parametrize("slice_axis", [1, -2])
def test_torch_gradient_of_middle_axis_slices_is_laid_out_as_the_weight(rng, slice_axis):
    """Written straight in the weight's layout: autograd keeps it as it is, with no copy of it."""
    import torch

    w = weights(rng, (6, 3, 4), "float32")
    grad = keras_ortho.ortho_gradient(torch.from_numpy(w), 0.1, slice_axis=slice_axis)
    assert grad.is_contiguous(), grad.stride()
    np.testing.assert_allclose(to_numpy(grad), reference.gradient(w, 0.1, slice_axis), rtol=1e-5, atol=1e-6)

    leaf = torch.from_numpy(w).requires_grad_(True)
    keras_ortho.ortho_penalty(leaf, 0.1, slice_axis=slice_axis).backward()
    assert leaf.grad.is_contiguous()
    np.testing.assert_allclose(to_numpy(leaf.grad), reference.gradient(w, 0.1, slice_axis), rtol=1e-5, atol=1e-6)


@only_on("torch", why="eager PyTorch reads a scale on the CPU into the product's alpha")
def test_torch_scale_left_on_its_device_gives_the_same_gradient_laid_out_the_same(rng, monkeypatch):
    """A scale on an accelerator is not read on the host (that would wait for the device)."""
    import torch

    from keras_ortho._backend import torch as torch_backend

    monkeypatch.setattr(torch_backend, "_host_number", lambda scale: None)
    w = weights(rng, (6, 3, 4), "float32")
    grad = keras_ortho.ortho_gradient(torch.from_numpy(w), 0.1)
    assert grad.is_contiguous(), grad.stride()
    np.testing.assert_allclose(to_numpy(grad), reference.gradient(w, 0.1), rtol=1e-5, atol=1e-6)
    leaf = torch.from_numpy(w).requires_grad_(True)
    keras_ortho.ortho_penalty(leaf, 0.1).backward()
    np.testing.assert_allclose(to_numpy(leaf.grad), reference.gradient(w, 0.1), rtol=1e-5, atol=1e-6)


@only_on("torch", why="retain_graph is PyTorch's")
@pytest.mark.parametrize("norm", ["l1", "fro"])
def test_torch_backward_twice_through_one_graph_gives_the_same_gradient_twice(rng, norm):
    """`retain_graph=True`: the second backward pass finds what the forward pass kept, unchanged."""
    import torch

    w = weights(rng, (6, 3, 4), "float64")
    leaf = torch.from_numpy(w).requires_grad_(True)
    value = keras_ortho.ortho_penalty(leaf, 0.1, norm=norm)
    value.backward(retain_graph=True)
    first = to_numpy(leaf.grad).copy()
    value.backward()
    stack = w.transpose(1, 0, 2)  # the 6x4 slices along axis 1
    residual = np.einsum("mli,mlj->mij", stack, stack) - np.eye(4)
    slope = np.sign(residual) if norm == "l1" else 2 * residual  # 2 Phi sign(G), 4 Phi G
    expected = np.einsum("mli,mij->mlj", 2 * 0.1 * stack, slope).transpose(1, 0, 2)
    np.testing.assert_allclose(first, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(leaf.grad), 2 * first, rtol=1e-12, atol=1e-12)


@only_on("torch", why="create_graph is PyTorch's double backward")
def test_torch_gradient_can_itself_be_differentiated(rng):
    """`create_graph=True` (a gradient penalty on the total loss): the analytic gradient is
    recorded, `sign(G)` held constant, so its own gradient is `2 c v sign(G)` per slice."""
    import torch

    w = weights(rng, (6, 3, 4), "float64")
    leaf = torch.from_numpy(w).requires_grad_(True)
    (grad,) = torch.autograd.grad(keras_ortho.ortho_penalty(leaf, 0.1), leaf, create_graph=True)
    np.testing.assert_allclose(to_numpy(grad), reference.gradient(w, 0.1), rtol=1e-12, atol=1e-12)
    direction = rng.normal(size=w.shape)
    (second,) = torch.autograd.grad((grad * torch.from_numpy(direction)).sum(), leaf)
    signs = np.sign(np.einsum("lmi,lmj->mij", w, w) - np.eye(4))
    np.testing.assert_allclose(to_numpy(second), np.einsum("lmi,mji->lmj", 0.2 * direction, signs), rtol=1e-12)


# --- Precision ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_weights_are_reduced_in_float32(rng, dtype):
    w = keras.ops.cast(weights(rng, (16, 2, 8), "float32"), dtype)
    as_float32 = to_numpy(keras.ops.cast(w, "float32"))
    errors = keras_ortho.slice_errors(w)
    assert keras.backend.standardize_dtype(errors.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(errors), reference.slice_errors(as_float32), rtol=1e-5)

    value = keras_ortho.ortho_penalty(w, 0.1)
    grad = keras_ortho.ortho_gradient(w, 0.1)
    assert keras.backend.standardize_dtype(value.dtype) == dtype
    assert keras.backend.standardize_dtype(grad.dtype) == dtype
    # One rounding to the 16-bit dtype, of a value computed in float32.
    rtol = 1e-2 if dtype == "bfloat16" else 1e-3
    np.testing.assert_allclose(
        float(to_numpy(keras.ops.cast(value, "float32"))), reference.penalty(as_float32, 0.1), rtol=rtol
    )
    expected = reference.gradient(as_float32, 0.1)
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(grad, "float32")), expected, rtol=rtol, atol=rtol * np.abs(expected).max()
    )


def test_float64_stays_float64(rng):
    w = weights(rng, (5, 3))
    assert keras.backend.standardize_dtype(keras_ortho.ortho_penalty(w).dtype) == "float64"
    assert keras.backend.standardize_dtype(keras_ortho.slice_errors(w).dtype) == "float64"
