"""Lipschitz bounds, certified radii and LipschitzConstraint, against references independent of the code.

A layer's reference is the operator the Keras layer itself applies: the
identity basis pushed through it (its own padding, strides, dilation),
the matrix's norm by numpy's SVD. A model's is its Jacobian by central
differences, and `||f(x) - f(y)|| / ||x - y||` at random pairs.
"""

import json
import math

import keras
import numpy as np
import pytest
from backends import only_on

import keras_ortho
from keras_ortho import _lipschitz, lipschitz
from keras_ortho.report import main as report_main

L = keras.layers


def operator_of(layer, input_shape):
    """The `(outputs, inputs)` matrix of a linear layer: the identity basis pushed through the layer itself."""
    size = math.prod(input_shape)
    basis = np.eye(size, dtype="float32").reshape((size, *input_shape))
    return keras.ops.convert_to_numpy(layer(basis)).reshape(size, -1).T.astype("float64")


def randomized(model, rng, scale=1.0):
    """Every weight of `model` drawn afresh (normal), BatchNorm's variances positive; returns the model."""
    for variable in model.weights:
        values = rng.normal(size=variable.shape) * scale
        if "variance" in variable.path:
            values = rng.uniform(0.2, 2.0, size=variable.shape)
        variable.assign(values.astype("float32"))
    return model


def jacobian_norm(model, x, eps=1e-3):
    """`||J||_2` of `model` at the single input `x`, the Jacobian by central differences (float64 SVD)."""
    size = x.size
    steps = np.eye(size).reshape((size, *x.shape)) * eps
    plus = keras.ops.convert_to_numpy(model((x[None] + steps).astype("float32"))).reshape(size, -1)
    minus = keras.ops.convert_to_numpy(model((x[None] - steps).astype("float32"))).reshape(size, -1)
    jacobian = ((plus.astype("float64") - minus) / (2 * eps)).T
    return np.linalg.norm(jacobian, 2)


def quotients(model, rng, shape, pairs=64):
    """`||f(x) - f(y)|| / ||x - y||` at random nearby and far pairs."""
    x = rng.normal(size=(pairs, *shape))
    y = x + rng.normal(size=x.shape) * rng.choice([1e-2, 1.0], size=(pairs,) + (1,) * len(shape))
    fx = keras.ops.convert_to_numpy(model(x.astype("float32"))).reshape(pairs, -1)
    fy = keras.ops.convert_to_numpy(model(y.astype("float32"))).reshape(pairs, -1)
    return np.linalg.norm(fx - fy, axis=1) / np.linalg.norm((x - y).reshape(pairs, -1), axis=1)


# --- One layer: never below its operator's norm, at most 1.25 times it -----------------------------------------

CONVOLUTIONS = {
    "conv2d same": (lambda: L.Conv2D(6, 3, padding="same"), (7, 8, 3)),
    "conv2d valid stride 2": (lambda: L.Conv2D(5, 3, strides=2), (9, 8, 3)),
    "conv2d same stride 2": (lambda: L.Conv2D(4, 3, strides=2, padding="same"), (8, 7, 2)),
    "conv2d 5x5 same, wide": (lambda: L.Conv2D(16, 5, padding="same"), (6, 6, 8)),
    "conv2d dilated": (lambda: L.Conv2D(4, 3, dilation_rate=2, padding="same"), (8, 8, 3)),
    "conv2d groups": (lambda: L.Conv2D(6, 3, groups=3, padding="same"), (6, 6, 6)),
    "conv2d 1x1 stride 2": (lambda: L.Conv2D(4, 1, strides=2), (6, 6, 3)),
    "conv2d kernel shorter than stride": (lambda: L.Conv2D(4, 2, strides=3, padding="same"), (9, 9, 2)),
    "conv1d causal": (lambda: L.Conv1D(4, 4, padding="causal"), (12, 3)),
    "conv1d stride 3 valid": (lambda: L.Conv1D(3, 5, strides=3), (17, 2)),
    "conv3d same": (lambda: L.Conv3D(3, 3, padding="same"), (6, 6, 6, 2)),
    "depthwise2d stride 2": (lambda: L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2), (8, 8, 3)),
    "depthwise1d valid": (lambda: L.DepthwiseConv1D(3), (10, 4)),
    "separable2d": (lambda: L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2), (6, 6, 3)),
    "separable1d stride 2": (lambda: L.SeparableConv1D(4, 3, strides=2, padding="same"), (11, 3)),
    "transpose2d same stride 2": (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"), (5, 5, 3)),
    "transpose2d valid": (lambda: L.Conv2DTranspose(3, 4, strides=2), (4, 5, 2)),
    "transpose1d output_padding": (lambda: L.Conv1DTranspose(3, 3, strides=2, output_padding=1), (6, 2)),
    "transpose3d": (lambda: L.Conv3DTranspose(2, 2, strides=2, padding="same"), (3, 3, 3, 2)),
}


@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_a_convolutions_bound_holds_its_operator_with_keras_padding(name, rng):
    make, shape = CONVOLUTIONS[name]
    layer = make()
    model = randomized(keras.Sequential([keras.Input(shape), layer]), rng)
    layer.bias.assign(np.zeros(layer.bias.shape, "float32"))  # the operator is the linear part
    exact = np.linalg.norm(operator_of(layer, shape), 2)
    bound = keras_ortho.lipschitz_bound(model)
    assert exact <= bound <= 1.25 * exact


def test_the_circular_norm_is_no_bound_for_zero_padding_and_the_bound_is():
    # The kernel [1, -1] with "same" on 3 pixels applies [[1, -1, 0], [0, 1, -1], [0, 0, 1]] (Keras pads on
    # the right); circularly on 3 pixels its norm is |1 - exp(2 pi i / 3)| = sqrt(3), below that operator's.
    layer = L.Conv1D(1, 2, padding="same", use_bias=False)
    model = keras.Sequential([keras.Input((3, 1)), layer])
    layer.kernel.assign(np.array([1.0, -1.0], "float32").reshape(2, 1, 1))
    exact = np.linalg.norm(operator_of(layer, (3, 1)), 2)
    np.testing.assert_allclose(exact, np.linalg.norm([[1, -1, 0], [0, 1, -1], [0, 0, 1]], 2), rtol=1e-6)
    (values,) = keras_ortho.conv_singular_values(model).values()
    circular = values.largest
    np.testing.assert_allclose(circular, math.sqrt(3), rtol=1e-6)
    assert circular < exact <= keras_ortho.lipschitz_bound(model)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (8, 8)])
def test_a_dense_layers_factor_is_its_largest_singular_value(shape, rng):
    model = keras.Sequential([keras.Input((shape[0],)), L.Dense(shape[1])])
    randomized(model, rng)
    expected = np.linalg.svd(keras.ops.convert_to_numpy(model.layers[0].kernel).astype("float64"), compute_uv=False)[0]
    bound = keras_ortho.lipschitz_bound(model)
    assert expected <= bound <= expected * (1 + 1e-4)


@pytest.mark.parametrize(
    "equation, output_shape, input_shape",
    [("abc,cd->abd", (5, 4), (5, 3)), ("abc,cde->abde", (5, 2, 3), (5, 4)), ("ab,bcd->acd", (3, 2), (6,))],
)
def test_einsum_dense_is_bounded_by_its_operator(equation, output_shape, input_shape, rng):
    layer = L.EinsumDense(equation, output_shape=output_shape)
    model = randomized(keras.Sequential([keras.Input(input_shape), layer]), rng)
    exact = np.linalg.norm(operator_of(layer, input_shape), 2)
    assert exact <= keras_ortho.lipschitz_bound(model) <= exact * (1 + 1e-4)


def test_batch_normalization_in_inference_is_its_largest_scale(rng):
    layer = L.BatchNormalization()
    model = randomized(keras.Sequential([keras.Input((4,)), layer]), rng)
    layer.beta.assign(np.zeros(4, "float32"))
    layer.moving_mean.assign(np.zeros(4, "float32"))
    exact = np.linalg.norm(operator_of(layer, (4,)), 2)
    np.testing.assert_allclose(keras_ortho.lipschitz_bound(model), exact, rtol=1e-5)


@pytest.mark.parametrize("invert", [False, True])
def test_normalization_is_its_largest_scale(invert, rng):
    layer = L.Normalization(mean=np.zeros(5), variance=rng.uniform(0.1, 3.0, 5), invert=invert)
    model = keras.Sequential([keras.Input((5,)), layer])
    exact = np.linalg.norm(operator_of(layer, (5,)), 2)
    np.testing.assert_allclose(keras_ortho.lipschitz_bound(model), exact, rtol=1e-5)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: L.AveragePooling2D(2), (6, 6, 2)),
        (lambda: L.AveragePooling2D(3, strides=2, padding="same"), (7, 6, 1)),
        (lambda: L.AveragePooling1D(3, strides=1, padding="same"), (8, 2)),
        (lambda: L.AveragePooling2D(3, strides=2), (9, 9, 1)),
        (lambda: L.GlobalAveragePooling2D(), (4, 5, 2)),
    ],
)
def test_average_pooling_is_bounded_within_a_thousandth_of_its_operators_norm(make, shape):
    layer = make()
    model = keras.Sequential([keras.Input(shape), layer])
    exact = np.linalg.norm(operator_of(layer, shape), 2)
    # The reference is the float32 layer's own output: equal to the exact norm within its rounding.
    assert exact * (1 - 1e-6) <= keras_ortho.lipschitz_bound(model) <= exact * 1.001


@pytest.mark.parametrize(
    "make, shape, covering",
    [
        (lambda: L.MaxPooling2D(2), (6, 6, 1), 1),
        (lambda: L.MaxPooling2D(3, strides=2), (9, 9, 1), 4),
        (lambda: L.MaxPooling1D(3, strides=1, padding="same"), (8, 1), 3),
    ],
)
def test_max_pooling_is_the_root_of_the_most_windows_a_pixel_is_in(make, shape, covering, rng):
    layer = make()
    model = keras.Sequential([keras.Input(shape), layer])
    bound = keras_ortho.lipschitz_bound(model)
    np.testing.assert_allclose(bound, math.sqrt(covering), rtol=1e-12)
    # Reached: a spike where the most windows overlap (away from the border) moves each of them.
    spike = np.zeros(shape, "float32")
    spike[(len(shape) - 1) * (min(shape[0] // 2, 4),)] = 1.0
    moved = keras.ops.convert_to_numpy(layer(spike[None]))
    np.testing.assert_allclose(np.linalg.norm(moved), bound, rtol=1e-6)
    assert quotients(model, rng, shape).max() <= bound


@pytest.mark.parametrize("name", sorted(_lipschitz.ACTIVATIONS))
def test_each_activation_constant_is_its_largest_slope(name):
    function = getattr(keras.activations, name)
    x = np.linspace(-8, 8, 160001)
    if name == "softmax":
        # Its Jacobian diag(p) - p p^T, at random logits: the largest eigenvalue over many.
        logits = np.random.default_rng(0).normal(size=(2000, 4)) * 3
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        slope = max(np.linalg.eigvalsh(np.diag(q) - np.outer(q, q)).max() for q in p)
    else:
        y = keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(x, "float64")))
        slope = np.abs(np.diff(y) / np.diff(x)).max()
    constant = _lipschitz.ACTIVATIONS[name]
    assert slope <= constant * (1 + 1e-6)
    if name != "softmax":  # 1 is Gao and Pavel's constant; the Jacobians reach 1/2
        assert constant <= slope * (1 + 1e-3)


# --- Models: composed along the graph ------------------------------------------------------------------------


def sequential_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(4, 3, padding="same", activation="relu"),
            L.BatchNormalization(),
            L.AveragePooling2D(2),
            L.Conv2D(6, 3, strides=2, padding="same", activation="tanh"),
            L.Flatten(),
            L.Dropout(0.5),
            L.Dense(5),
        ]
    )


def residual_model():
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(3, 3, padding="same", activation="gelu")(inputs)
    h = L.BatchNormalization()(h)
    added = L.Add()([inputs, L.Conv2D(3, 3, padding="same")(h)])
    branch = L.DepthwiseConv2D(3, padding="same", activation="sigmoid")(added)
    joined = L.Concatenate()([added, branch])
    pooled = L.GlobalAveragePooling2D()(L.MaxPooling2D(3, strides=2, padding="same")(joined))
    return keras.Model(inputs, L.Dense(4, activation="softmax")(pooled))


def nested_model():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, L.Dense(6, activation="silu")(inner_in), name="block")
    inputs = keras.Input((5,))
    h = L.Dense(6, activation="elu")(inputs)
    h = L.Add()([h, inner(h)])
    return keras.Model(inputs, keras.Sequential([keras.Input((6,)), L.Dense(3)], name="head")(h))


MODELS = {"sequential cnn": sequential_cnn, "residual": residual_model, "nested": nested_model}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_models_bound_is_above_its_jacobians_and_its_difference_quotients(name, rng):
    model = randomized(MODELS[name](), rng, scale=0.5)
    bound = keras_ortho.lipschitz_bound(model)
    shape = tuple(model.inputs[0].shape[1:])
    jacobians = [jacobian_norm(model, rng.normal(size=shape)) for _ in range(4)]
    assert max(jacobians) <= bound
    assert quotients(model, rng, shape).max() <= bound


def test_the_bound_is_the_product_and_sums_of_the_factors(rng):
    model = randomized(nested_model(), rng)
    factors = {f.layer: f.factor for f in keras_ortho.lipschitz_factors(model)}
    # inputs -> Dense (elu) -> Add(identity, block) -> head
    dense = next(v for k, v in factors.items() if k.startswith("dense") and "/" not in k)
    added = dense * (1.0 + factors["block/" + next(k.split("/")[1] for k in factors if k.startswith("block/"))])
    expected = added * factors[next(k for k in factors if k.startswith("head/"))]
    np.testing.assert_allclose(keras_ortho.lipschitz_bound(model), expected, rtol=1e-6)
    kinds = [f.kind for f in keras_ortho.lipschitz_factors(model)]
    assert kinds == ["Dense", "Dense", "Add", "Dense"]


def test_factors_name_every_layer_and_whether_they_are_exact(rng):
    model = randomized(sequential_cnn(), rng)
    factors = keras_ortho.lipschitz_factors(model)
    assert [f.kind for f in factors] == [type(layer).__name__ for layer in model.layers]
    # Convolutions and average pooling are bounds; Dense, BatchNormalization and the rest exact.
    bounded = (L.Conv2D, L.AveragePooling2D)
    assert [f.exact for f in factors] == [not isinstance(layer, bounded) for layer in model.layers]
    assert all(f.factor > 0 for f in factors)


# --- What it refuses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: keras.Sequential([keras.Input((4,)), L.LayerNormalization()]), "LayerNormalization"),
        (lambda: keras.Sequential([keras.Input((4,)), L.Lambda(lambda x: x * 2)]), "Lambda"),
        (lambda: keras.Sequential([keras.Input((4,)), L.Dense(2, activation=keras.ops.exp)]), "activation"),
        (lambda: keras.Sequential([keras.Input((4,)), L.ReLU(threshold=0.5)]), "threshold"),
        (lambda: keras.Sequential([L.Dense(2)]), "not built"),
        (lambda: keras.Sequential([keras.Input((None, 3)), L.Conv1D(2, 3)]), "variable size"),
    ],
)
def test_what_it_cannot_bound_is_refused_naming_it(make, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        keras_ortho.lipschitz_bound(model)
    with pytest.raises(ValueError, match=match):  # the logger's check when fit begins, which computes no norm
        lipschitz.check_supported(model)


@pytest.mark.parametrize("make", [lambda: sequential_cnn(), lambda: residual_model(), lambda: nested_model()])
def test_the_check_without_norms_accepts_what_the_bound_bounds(make):
    model = make()
    assert keras_ortho.lipschitz_bound(model) > 0
    lipschitz.check_supported(model)


def test_attention_is_refused_with_its_name_and_type():
    inputs = keras.Input((3, 4))
    model = keras.Model(inputs, L.MultiHeadAttention(2, 2, name="attn")(inputs, inputs))
    with pytest.raises(ValueError, match=r"'attn' \(MultiHeadAttention\)"):
        keras_ortho.lipschitz_bound(model)


def test_bad_arguments_are_refused():
    model = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    with pytest.raises(TypeError, match="model"):
        keras_ortho.lipschitz_bound("model")
    with pytest.raises(ValueError, match="iterations"):
        keras_ortho.lipschitz_bound(model, iterations=0)
    with pytest.raises(ValueError, match="bound"):
        keras_ortho.LipschitzConstraint(-1.0)
    with pytest.raises(TypeError, match="bound"):
        keras_ortho.LipschitzConstraint("1")
    with pytest.raises(ValueError, match="radius"):
        keras_ortho.certified_accuracy(model, np.zeros((1, 3)), [0], radius=-0.1)


def test_two_inputs_are_refused():
    a, b = keras.Input((2,)), keras.Input((2,))
    model = keras.Model([a, b], L.Add()([a, b]))
    with pytest.raises(ValueError, match="one input"):
        keras_ortho.lipschitz_bound(model)


# --- Certified radii -----------------------------------------------------------------------------------------


def classifier(rng):
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            L.Conv2D(4, 3, padding="same", activation="relu"),
            L.Flatten(),
            L.Dense(3, activation="softmax"),
        ]
    )
    return randomized(model, rng, scale=0.6)


def logits_of(model, x):
    return keras.ops.convert_to_numpy(
        keras.Model(model.inputs[0], model.layers[-1].input)(x)
    ) @ keras.ops.convert_to_numpy(model.layers[-1].kernel) + keras.ops.convert_to_numpy(model.layers[-1].bias)


def test_the_radius_is_the_margin_over_root_two_times_the_bound(rng):
    model = classifier(rng)
    x = rng.normal(size=(16, 6, 6, 1)).astype("float32")
    logits = np.sort(logits_of(model, x), axis=1)
    expected = (logits[:, -1] - logits[:, -2]) / (math.sqrt(2) * keras_ortho.lipschitz_bound(model))
    np.testing.assert_allclose(keras_ortho.certified_radius(model, x), expected, rtol=1e-5)


def test_no_attack_changes_the_class_inside_the_certified_radius(rng):
    model = classifier(rng)
    x = rng.normal(size=(24, 6, 6, 1)).astype("float32")
    radii = keras_ortho.certified_radius(model, x)
    classes = np.argmax(logits_of(model, x), axis=1)
    assert radii.min() > 0
    # Random directions to 0.999 of the radius.
    for _ in range(8):
        d = rng.normal(size=x.shape)
        d /= np.linalg.norm(d.reshape(len(x), -1), axis=1)[:, None, None, None]
        moved = (x + 0.999 * radii[:, None, None, None] * d).astype("float32")
        np.testing.assert_array_equal(np.argmax(logits_of(model, moved), axis=1), classes)
    # Projected gradient ascent on the runner-up's logit minus the top one, inside the ball (central differences).
    x64 = x.astype("float64")
    delta = np.zeros_like(x64)
    eps = 1e-3
    flat = x64[0].size
    for _ in range(10):
        base = x64 + delta
        steps = np.eye(flat).reshape(flat, 6, 6, 1) * eps
        grads = np.zeros_like(x64)
        for i in range(len(x)):
            z_plus = logits_of(model, (base[i] + steps).astype("float32"))
            z_minus = logits_of(model, (base[i] - steps).astype("float32"))
            z = logits_of(model, base[i : i + 1].astype("float32"))[0]
            runner = np.argsort(z)[-2] if np.argmax(z) == classes[i] else np.argmax(z)
            margin_plus = z_plus[:, runner] - z_plus[:, classes[i]]
            margin_minus = z_minus[:, runner] - z_minus[:, classes[i]]
            grads[i] = ((margin_plus - margin_minus) / (2 * eps)).reshape(6, 6, 1)
        grads /= np.linalg.norm(grads.reshape(len(x), -1), axis=1)[:, None, None, None] + 1e-12
        delta += 0.3 * radii[:, None, None, None] * grads
        norms = np.linalg.norm(delta.reshape(len(x), -1), axis=1)
        delta *= np.minimum(1.0, 0.999 * radii / norms)[:, None, None, None]
        attacked = np.argmax(logits_of(model, (x64 + delta).astype("float32")), axis=1)
        np.testing.assert_array_equal(attacked, classes)


def test_certified_accuracy_counts_right_and_certified(rng):
    model = classifier(rng)
    x = rng.normal(size=(32, 6, 6, 1)).astype("float32")
    y = np.argmax(logits_of(model, x), axis=1)
    y[:8] = (y[:8] + 1) % 3  # eight wrong
    radii = keras_ortho.certified_radius(model, x)
    cut = float(np.median(radii))
    expected = np.mean((np.arange(32) >= 8) & (radii > cut))
    assert keras_ortho.certified_accuracy(model, x, y, cut) == pytest.approx(expected)
    assert keras_ortho.certified_accuracy(model, x, y, 0.0) == pytest.approx(24 / 32)


# --- The constraint ------------------------------------------------------------------------------------------


def constrained_cnn(bound):
    constraint = keras_ortho.LipschitzConstraint(bound)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(6, 3, padding="same", activation="relu", kernel_constraint=constraint),
            L.Conv2D(6, 3, strides=2, padding="same", activation="relu", kernel_constraint=constraint),
            L.DepthwiseConv2D(3, padding="same", depthwise_constraint=constraint),
            L.Flatten(),
            L.Dense(3, kernel_constraint=constraint),
        ]
    )
    return model


def linear_operators(model):
    """`[(name, matrix)]` of each kernel's linear operator, the identity basis through the layer with no bias."""
    found = []
    for layer in model.layers:
        if isinstance(layer, L.Flatten):
            continue
        shape = tuple(layer.input.shape[1:])
        bias = getattr(layer, "bias", None)
        saved = None if bias is None else keras.ops.convert_to_numpy(bias)
        if bias is not None:
            bias.assign(np.zeros(bias.shape, "float32"))
        activation = getattr(layer, "activation", None)
        layer.activation = keras.activations.linear
        found.append((layer.name, operator_of(layer, shape)))
        layer.activation = activation
        if bias is not None:
            bias.assign(saved)
    return found


TORCH_COMPILE = "torch.compile of a step with the constraint's Gram iteration ran past 10 minutes on 2 cores"


@pytest.mark.parametrize(
    "jit_compile", [False, pytest.param(True, marks=only_on("tensorflow", "jax", why=TORCH_COMPILE))]
)
def test_after_fit_with_the_constraint_every_kernels_operator_norm_is_at_most_the_bound(jit_compile, rng):
    model = constrained_cnn(0.8)
    model.compile(
        keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile
    )
    keras_ortho.constrain(model, keras_ortho.LipschitzConstraint(0.8))  # known on JAX, whose optimizer hands tensors
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32") * 4
    y = rng.integers(0, 3, 64)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    norms = {name: np.linalg.norm(matrix, 2) for name, matrix in linear_operators(model)}
    assert len(norms) == 4
    assert max(norms.values()) <= 0.8 * (1 + 1e-5)
    # It had work to do: the step pushed at least one kernel to the bound.
    assert max(norms.values()) >= 0.8 * 0.8


def test_the_constraint_leaves_a_kernel_within_the_bound_as_it_is(rng):
    w = (rng.normal(size=(5, 4)) * 0.01).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras_ortho.LipschitzConstraint(1.0)(w)), w)


def test_the_constraint_scales_a_matrix_to_the_bound(rng):
    w = rng.normal(size=(6, 4)).astype("float32")
    out = keras.ops.convert_to_numpy(keras_ortho.LipschitzConstraint(0.5)(w)).astype("float64")
    sigma = np.linalg.svd(out, compute_uv=False)[0]
    assert 0.5 * (1 - 1e-4) <= sigma <= 0.5
    np.testing.assert_allclose(out / np.linalg.norm(out), w / np.linalg.norm(w), rtol=1e-5)


def test_the_constraint_round_trips_through_config_and_a_keras_file(tmp_path, rng):
    constraint = keras_ortho.LipschitzConstraint(0.7, iterations=5)
    assert keras_ortho.LipschitzConstraint.from_config(constraint.get_config()).get_config() == constraint.get_config()
    model = constrained_cnn(0.7)
    keras_ortho.constrain(model, constraint)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    kept = [layer.kernel_constraint for layer in loaded.layers if hasattr(layer, "kernel_constraint")]
    kept = [c for c in kept if c is not None]
    assert kept and all(isinstance(c, keras_ortho.LipschitzConstraint) and c.bound == 0.7 for c in kept)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5)


def test_constrain_puts_it_on_every_kernel_of_a_model(rng):
    model = sequential_cnn()
    paths = keras_ortho.constrain(model, keras_ortho.LipschitzConstraint(1.0))
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    assert len(paths) == len(kernels) == 3
    assert all(isinstance(k.constraint, keras_ortho.LipschitzConstraint) for k in kernels)
    assert keras_ortho.constrain(model, None) == paths
    assert all(k.constraint is None for k in kernels)


# --- Monitoring ----------------------------------------------------------------------------------------------


def test_the_logger_logs_the_bound_and_each_layers_factor_every_epoch(rng):
    model = randomized(sequential_cnn(), rng, scale=0.3)
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logger = keras_ortho.OrthoLogger(lipschitz=True)
    x = rng.normal(size=(32, 8, 8, 2)).astype("float32")
    history = model.fit(x, rng.integers(0, 5, 32), epochs=2, verbose=0, callbacks=[logger])
    assert len(history.history["lipschitz"]) == 2
    # The last epoch's entry is the bound of the trained weights.
    np.testing.assert_allclose(history.history["lipschitz"][-1], keras_ortho.lipschitz_bound(model), rtol=1e-5)
    record = logger.lipschitz_record
    assert record["lipschitz"].shape == (2,)
    factors = keras_ortho.lipschitz_factors(model)
    assert len(factors) == len(model.layers) == 7
    for factor in factors:  # seven layers: one key each, under `weight_logs="auto"`
        np.testing.assert_allclose(history.history[f"lipschitz/{factor.layer}"][-1], factor.factor, rtol=1e-5)
        np.testing.assert_allclose(record[factor.layer][-1], factor.factor, rtol=1e-5)


def test_the_logger_refuses_a_model_it_cannot_bound_when_fit_begins():
    model = keras.Sequential([keras.Input((4,)), L.LayerNormalization(name="norm"), L.Dense(2)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="'norm' \\(LayerNormalization\\)"):
        model.fit(np.ones((4, 4)), np.ones((4, 2)), verbose=0, callbacks=[keras_ortho.OrthoLogger(lipschitz=True)])


def test_the_report_prints_each_layers_factor_and_the_models_bound(tmp_path, capsys, rng):
    model = randomized(residual_model(), rng, scale=0.5)
    model.save(tmp_path / "model.keras")
    bound, factors = keras_ortho.lipschitz_bound(model), keras_ortho.lipschitz_factors(model)
    capsys.readouterr()
    assert report_main(["report", str(tmp_path / "model.keras"), "--lipschitz", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)["lipschitz"]
    np.testing.assert_allclose(document["bound"], bound, rtol=1e-5)
    assert [e["layer"] for e in document["layers"]] == [f.layer for f in factors]
    assert report_main(["report", str(tmp_path / "model.keras"), "--lipschitz"]) == 0
    text = capsys.readouterr().out
    assert f"{bound:.6g}" in text and all(f.layer in text for f in factors)


def test_the_report_says_which_layer_it_cannot_bound(tmp_path, capsys):
    model = keras.Sequential([keras.Input((4,)), L.LayerNormalization(name="norm")])
    model.save(tmp_path / "model.keras")
    capsys.readouterr()
    assert report_main(["report", str(tmp_path / "model.keras"), "--lipschitz"]) == 1
    assert "--lipschitz: lipschitz_bound cannot bound layer 'norm' (LayerNormalization)" in capsys.readouterr().err


# --- Real models ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10),
        lambda: keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10),
    ],
    ids=["MobileNetV2", "DenseNet121"],
)
def test_a_real_models_bound_is_above_its_difference_quotients(make, rng):
    model = make()
    bound = keras_ortho.lipschitz_bound(model)
    factors = keras_ortho.lipschitz_factors(model)
    assert len(factors) >= len(model.layers) - 1  # every layer but the input, merges counted once
    assert quotients(model, rng, (32, 32, 3), pairs=16).max() <= bound


@pytest.mark.slow
def test_a_real_model_with_a_layer_it_cannot_bound_is_refused_by_name():
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10)
    # The squeeze-and-excitation blocks multiply two signals: no constant bounds a product.
    with pytest.raises(ValueError, match=r"cannot bound layer 'block1a_se_excite' \(Multiply\)"):
        keras_ortho.lipschitz_bound(model)
