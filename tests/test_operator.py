"""`operator=True`: a convolution's operator, checked against its explicit matrix built in numpy.

The reference (`reference.conv_matrix`) writes the matrix of each convolution
from its definition and is itself checked against the Keras layer's output.
On a circular image of `n` positions per axis the operator's Gram repeats one
block row per output position, so the penalty is `norm(Gram - I) / positions`;
with zero padding ("valid"), it is the norm of one block row away from the
border.
"""

import math
import warnings

import keras
import numpy as np
import pytest
import reference
from backends import only_on, to_numpy, variable_grad

import keras_ortho

# name: (layer, arguments, input channels). Modes noted are what "auto" takes.
CASES = {
    "conv1d": ("Conv1D", {"filters": 3, "kernel_size": 3}, 2),  # cout 3 > cin 2: columns
    "conv1d_stride2": ("Conv1D", {"filters": 3, "kernel_size": 3, "strides": 2}, 2),  # 3 <= 2 * 2: rows
    "conv1d_k4_s2": ("Conv1D", {"filters": 3, "kernel_size": 4, "strides": 2}, 1),  # 3 > 1 * 2: columns
    "conv1d_wide": ("Conv1D", {"filters": 16, "kernel_size": 3}, 16),  # blocks of 16: the sums by a product
    "conv2d": ("Conv2D", {"filters": 2, "kernel_size": 3}, 2),
    "conv2d_strides_2_1": ("Conv2D", {"filters": 3, "kernel_size": (3, 2), "strides": (2, 1)}, 2),
    "conv2d_groups": ("Conv2D", {"filters": 4, "kernel_size": 3, "strides": 2, "groups": 2}, 4),
    "conv2d_k2_s2": ("Conv2D", {"filters": 5, "kernel_size": 2, "strides": 2}, 1),  # 5 > 4: columns
    "conv2d_k1_s2": ("Conv2D", {"filters": 3, "kernel_size": 1, "strides": 2}, 2),  # rows; reads 1 pixel in 4
    "conv3d": ("Conv3D", {"filters": 2, "kernel_size": 2}, 1),
    "depthwise2d": ("DepthwiseConv2D", {"kernel_size": 3, "depth_multiplier": 2}, 3),
    "depthwise1d_stride2": ("DepthwiseConv1D", {"kernel_size": 3, "strides": 2}, 2),
    "conv2d_transpose": ("Conv2DTranspose", {"filters": 2, "kernel_size": 3, "strides": 2}, 3),
}
ZERO_PADDED = [c for c in CASES if "transpose" not in c]
# The default suite sweeps these (strides with groups, blocks summed by a product, the adjoint); the full
# suite (`pytest -m slow`) sweeps every geometry.
DECISIVE = ("conv2d_groups", "conv1d_wide", "conv2d_transpose")


def sweep(cases):
    return [pytest.param(c, marks=() if c in DECISIVE else pytest.mark.slow) for c in cases]


def make(case, dtype="float64", seed=0):
    """The case's layer, built, with a random kernel (scaled so that the Gram is near, not at, I)."""
    name, arguments, channels = CASES[case]
    layer = getattr(keras.layers, name)(use_bias=False, dtype=dtype, **arguments)
    dims = len(layer.kernel_size)
    layer.build((None, *(8,) * dims, channels))
    shape = tuple(layer.kernel.shape)
    fan_in = math.prod(shape[:-1])
    rng = np.random.default_rng(seed)
    layer.kernel.assign((rng.normal(size=shape) / np.sqrt(fan_in)).astype(dtype))
    return layer


def geometry(layer):
    per_channel = isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D))
    groups = getattr(layer, "groups", 1) if not per_channel else 1
    transposed = "Transpose" in type(layer).__name__
    return tuple(layer.strides), groups, per_channel, transposed


def layer_operator(layer, kernel, sizes, padding="circular"):
    """The layer's matrix; a transposed convolution's is the adjoint of the convolution its kernel defines."""
    strides, groups, per_channel, transposed = geometry(layer)
    matrix = reference.conv_matrix(kernel, strides, sizes, groups, per_channel, padding)
    return matrix.T if transposed else matrix


def circular_sizes(layer):
    """An image on which no two offsets of the Gram's block row wrap onto each other, and its output positions."""
    strides = layer.strides
    polyphase = [-(-k // s) for k, s in zip(layer.kernel_size, strides, strict=True)]
    sizes = tuple(2 * g * s for g, s in zip(polyphase, strides, strict=True))
    return sizes, math.prod(n // s for n, s in zip(sizes, strides, strict=True))


def penalty(layer, mode, norm, **options):
    return float(to_numpy(keras_ortho.ortho_penalty(layer.kernel, mode=mode, norm=norm, operator=True, **options)))


def test_the_reference_matrix_is_what_the_keras_layer_computes():
    for case in CASES:
        layer = make(case)
        dims, channels = len(layer.kernel_size), CASES[case][2]
        strides, _, _, transposed = geometry(layer)
        kernel = to_numpy(layer.kernel)
        sizes = tuple(k + 2 * s for k, s in zip(layer.kernel_size, strides, strict=True))  # A's input, "valid"
        matrix = layer_operator(layer, kernel, sizes, padding="valid")
        x = np.random.default_rng(1).normal(size=(matrix.shape[1],))
        inside = (
            sizes
            if not transposed
            else tuple((n - k) // s + 1 for n, k, s in zip(sizes, layer.kernel_size, strides, strict=True))
        )
        image = x.reshape(1, *inside, channels)
        out = to_numpy(layer(image))
        np.testing.assert_allclose(out.ravel(), matrix @ x, rtol=1e-10, atol=1e-12, err_msg=case)
        assert dims == len(sizes)
    assert len(CASES) == 13


@pytest.mark.parametrize("norm", ["l1", "fro"])
@pytest.mark.parametrize("mode", ["rows", "columns"])
@pytest.mark.parametrize("case", sweep(CASES))
def test_the_penalty_is_the_circular_operators_gram_minus_identity_per_position(case, mode, norm):
    layer = make(case)
    sizes, positions = circular_sizes(layer)
    matrix = layer_operator(layer, to_numpy(layer.kernel), sizes)
    expected = reference.entrywise(reference.side_gram_residual(matrix, mode), norm) / positions
    assert expected > 0.1
    np.testing.assert_allclose(penalty(layer, mode, norm), expected, rtol=1e-10)


@pytest.mark.parametrize("mode", ["rows", "columns"])
@pytest.mark.parametrize("case", sweep(ZERO_PADDED))
def test_the_penalty_is_one_block_row_of_the_zero_padded_gram_away_from_the_border(case, mode):
    layer = make(case)
    strides = layer.strides
    polyphase = [-(-k // s) for k, s in zip(layer.kernel_size, strides, strict=True)]
    sizes = tuple(k + 2 * g * s for k, g, s in zip(layer.kernel_size, polyphase, strides, strict=True))
    outputs = tuple((n - k) // s + 1 for n, k, s in zip(sizes, layer.kernel_size, strides, strict=True))
    matrix = layer_operator(layer, to_numpy(layer.kernel), sizes, padding="valid")
    middle = tuple(polyphase)  # >= k' - 1 outputs on each side
    if mode == "rows":
        cout = matrix.shape[0] // math.prod(outputs)
        first = np.ravel_multi_index(middle, outputs) * cout
        rows = range(first, first + cout)
    else:
        cin = matrix.shape[1] // math.prod(sizes)
        pixels = [
            tuple(s * m + r for s, m, r in zip(strides, middle, phase, strict=True)) for phase in np.ndindex(*strides)
        ]
        rows = [np.ravel_multi_index(q, sizes) * cin + c for q in pixels for c in range(cin)]
    expected = reference.entrywise(reference.side_gram_residual(matrix, mode)[list(rows)], "l1")
    np.testing.assert_allclose(penalty(layer, mode, "l1"), expected, rtol=1e-10)


@pytest.mark.filterwarnings("ignore:OrthoRegularizer.operator=True. on weight")  # conv2d_k1_s2 cannot be orthogonal
@pytest.mark.parametrize("norm", ["l1", "fro"])
@pytest.mark.parametrize("case", sweep(CASES))
def test_the_gradient_is_the_reference_penalty_s_central_differences(case, norm):
    layer = make(case)
    sizes, positions = circular_sizes(layer)
    kernel = to_numpy(layer.kernel)
    mode = "rows" if case in ("conv2d", "conv1d_stride2") else "auto"
    resolved = "columns" if case in ("conv1d", "conv1d_k4_s2", "conv2d_k2_s2", "depthwise2d", "conv3d") else "rows"
    resolved = "columns" if case == "conv2d_transpose" else resolved  # the layer is A^T: A's rows
    mode = resolved if mode == "auto" else mode

    def reference_penalty(w):
        matrix = layer_operator(layer, w, sizes)
        return 0.3 * reference.entrywise(reference.side_gram_residual(matrix, mode), norm) / positions

    numeric = reference.numeric_gradient(reference_penalty, kernel)
    closed = to_numpy(keras_ortho.ortho_gradient(layer.kernel, 0.3, mode=mode, norm=norm, operator=True))
    regularizer = keras_ortho.OrthoRegularizer(0.3, mode=mode, norm=norm, operator=True)
    autodiff = variable_grad(regularizer, layer.kernel)
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(closed, numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(autodiff, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", sweep(["conv2d_groups", "depthwise2d", "conv2d_transpose"]))
def test_float32_agrees_with_the_float64_reference(case):
    layer = make(case, dtype="float32")
    sizes, positions = circular_sizes(layer)
    matrix = layer_operator(layer, to_numpy(layer.kernel).astype(np.float64), sizes)
    for mode in ("rows", "columns"):
        expected = reference.entrywise(reference.side_gram_residual(matrix, mode), "l1") / positions
        value = keras_ortho.ortho_penalty(layer.kernel, mode=mode, operator=True)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        np.testing.assert_allclose(float(to_numpy(value)), expected, rtol=2e-5)


def test_mean_divides_by_the_entries_of_a_block_row():
    layer = make("conv2d")  # rows: block cout = 2, grid 3x3, offsets 5x5
    total = penalty(layer, "rows", "l1")
    mean = penalty(layer, "rows", "l1", reduction="mean")
    np.testing.assert_allclose(mean, total / (25 * 2 * 2), rtol=1e-12)


def test_slice_errors_give_one_value_per_group_that_sum_to_the_penalty():
    layer = make("conv2d_groups")
    errors = to_numpy(keras_ortho.slice_errors(layer.kernel, operator=True))
    assert errors.shape == (2,)
    sizes, positions = circular_sizes(layer)
    kernel = to_numpy(layer.kernel)
    # Group j alone: the kernel with the other group's filters zeroed is the same operator on group j's channels.
    for j in range(2):
        alone = np.zeros_like(kernel)
        alone[..., 2 * j : 2 * j + 2] = kernel[..., 2 * j : 2 * j + 2]
        matrix = layer_operator(layer, alone, sizes)
        own = [r for r in range(matrix.shape[0]) if (r % 4) // 2 == j]
        residual = reference.side_gram_residual(matrix[own], "rows")
        np.testing.assert_allclose(errors[j], np.abs(residual).sum() / positions, rtol=1e-10)
    np.testing.assert_allclose(errors.sum(), penalty(layer, "auto", "l1"), rtol=1e-12)


def test_an_orthogonal_convolution_has_no_penalty_and_unit_singular_values():
    # A 2x2 convolution of stride 2 from 1 channel to 4 whose taps are the 4 unit vectors:
    # it reads each 2x2 patch once, an orthogonal change of basis.
    layer = keras.layers.Conv2D(4, 2, strides=2, use_bias=False, dtype="float64")
    layer.build((None, 8, 8, 1))
    layer.kernel.assign(np.eye(4).reshape(2, 2, 1, 4))
    assert penalty(layer, "auto", "l1") == 0.0
    values = keras_ortho.conv_singular_values(layer, input_size=8)["kernel"]
    assert values.largest == pytest.approx(1.0, abs=1e-12)
    assert values.smallest == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_singular_values_are_those_of_the_explicit_circular_matrix(case):
    layer = make(case)
    strides = geometry(layer)[0]
    sizes = tuple(4 * s for s in strides)
    matrix = layer_operator(layer, to_numpy(layer.kernel), sizes)
    expected = np.linalg.svd(matrix, compute_uv=False)
    values = keras_ortho.conv_singular_values(layer, input_size=sizes)["kernel"]
    assert values.input_size == sizes
    assert len(expected) == min(matrix.shape)
    np.testing.assert_allclose(values.largest, expected.max(), rtol=1e-10)
    np.testing.assert_allclose(values.smallest, expected.min(), rtol=1e-8, atol=1e-12)


def test_singular_values_take_each_layers_own_input_size_in_a_model():
    inputs = keras.Input((12, 10, 3))
    hidden = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="down")(inputs)
    outputs = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="up")(hidden)
    model = keras.Model(inputs, outputs)
    values = keras_ortho.conv_singular_values(model)
    assert list(values) == ["down/kernel", "up/kernel"]
    assert values["down/kernel"].input_size == (12, 10)
    assert values["up/kernel"].input_size == (12, 10)  # A's input: the transposed layer's output
    for path, layer in (("down/kernel", model.get_layer("down")), ("up/kernel", model.get_layer("up"))):
        matrix = layer_operator(layer, to_numpy(layer.kernel), (12, 10))
        np.testing.assert_allclose(values[path].largest, np.linalg.norm(matrix, 2), rtol=1e-5)


@only_on("tensorflow", why="the retracing warning is tf.function's")
def test_singular_values_of_many_geometries_trace_without_tensorflows_retracing_warning(caplog):
    # One compiled function per geometry: TensorFlow warns when it sees "the same" function retrace,
    # which a closure per geometry looked like to it.
    inputs = keras.Input((12, 12, 2))
    x = inputs
    for i in range(7):
        x = keras.layers.Conv2D(2 + i, 3, padding="same", name=f"conv{i}")(x)
    model = keras.Model(inputs, x)
    with caplog.at_level("WARNING", logger="tensorflow"):
        values = keras_ortho.conv_singular_values(model)
    assert len(values) == 7
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_singular_values_refuse_an_unknown_input_size_and_bad_sizes():
    inputs = keras.Input((None, None, 2))  # any image size
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs))
    with pytest.raises(ValueError, match="'conv/kernel' \\(Conv2D\\).*Pass `input_size=`"):
        keras_ortho.conv_singular_values(model)
    assert keras_ortho.conv_singular_values(model, input_size=6)["conv/kernel"].input_size == (6, 6)
    layer = make("conv2d")  # built alone: its build's shape is its input size
    assert keras_ortho.conv_singular_values(layer)["kernel"].input_size == (8, 8)
    with pytest.raises(ValueError, match=r"Received: input_size=\(8, 0\)"):
        keras_ortho.conv_singular_values(layer, input_size=(8, 0))
    with pytest.raises(ValueError, match="has 3 sizes"):
        keras_ortho.conv_singular_values(layer, input_size=(8, 8, 8))
    with pytest.raises(TypeError, match="model="):
        keras_ortho.conv_singular_values(np.zeros((3, 3)))


# --- The regularizer's option ---


def test_auto_takes_the_side_that_can_be_orthonormal():
    rows = make("conv1d_stride2")  # cout 3 <= cin 2 * stride 2
    columns = make("conv1d")  # cout 3 > cin 2
    assert penalty(rows, "auto", "l1") == pytest.approx(penalty(rows, "rows", "l1"), rel=1e-12)
    assert penalty(columns, "auto", "l1") == pytest.approx(penalty(columns, "columns", "l1"), rel=1e-12)


def test_a_shape_that_cannot_be_orthogonal_warns_once_naming_the_condition():
    # 8 filters from 1 channel with a 1x1 kernel of stride 2: too many outputs for rows, unread inputs for columns.
    layer = keras.layers.Conv2D(8, 1, strides=2, use_bias=False)
    layer.build((None, 8, 8, 1))
    regularizer = keras_ortho.OrthoRegularizer(operator=True)
    with pytest.warns(RuntimeWarning, match=r"kernel_size >= strides.*Achour"):
        regularizer(layer.kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        regularizer(layer.kernel)


def test_weights_that_are_not_convolution_kernels_keep_their_matrices():
    dense = keras.layers.Dense(3, use_bias=False)
    dense.build((None, 5))
    lstm = keras.layers.LSTM(4)
    lstm.build((None, 2, 3))
    for variable in (dense.kernel, lstm.cell.recurrent_kernel):
        on = keras_ortho.OrthoRegularizer(1.0, operator=True)(variable)
        off = keras_ortho.OrthoRegularizer(1.0)(variable)
        assert float(to_numpy(on)) == pytest.approx(float(to_numpy(off)), rel=1e-6)
        assert float(to_numpy(off)) > 0.01


def test_a_1x1_convolution_s_operator_is_its_matrix():
    layer = keras.layers.Conv2D(3, 1, use_bias=False, dtype="float64")
    layer.build((None, 4, 4, 5))
    on = penalty(layer, "auto", "fro")
    off = float(to_numpy(keras_ortho.ortho_penalty(layer.kernel, norm="fro")))
    assert on == pytest.approx(off, rel=1e-12)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"operator": 1}, TypeError, "Received: operator=1"),
        ({"operator": True, "norm": "spectral"}, ValueError, "Received: norm='spectral' with operator=True"),
        ({"operator": True, "slice_axis": 0}, ValueError, "Received: slice_axis=0"),
    ],
)
def test_bad_arguments_are_refused_naming_them(arguments, error, match):
    with pytest.raises(error, match=match):
        keras_ortho.OrthoRegularizer(**arguments)
    with pytest.raises(error, match=match):
        keras_ortho.ortho_penalty(np.eye(3, dtype="float32"), **arguments)


def test_the_config_carries_it_and_old_configs_load_without_it():
    regularizer = keras_ortho.OrthoRegularizer(0.1, norm="fro", operator=True)
    again = keras_ortho.OrthoRegularizer.from_config(regularizer.get_config())
    assert again.get_config() == regularizer.get_config()
    assert again.operator is True
    old = {k: v for k, v in regularizer.get_config().items() if k != "operator"}
    assert keras_ortho.OrthoRegularizer.from_config(old).operator is False


def _small_cnn():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def test_regularize_applies_it_and_a_saved_model_reloads_it(tmp_path):
    model = _small_cnn()
    paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.5, operator=True))
    assert paths == ["stem/kernel", "depthwise/kernel", "head/kernel"]
    expected = 0.0
    for name in ("stem", "depthwise"):
        layer = model.get_layer(name)
        sizes, positions = circular_sizes(layer)
        matrix = layer_operator(layer, to_numpy(layer.kernel).astype(np.float64), sizes)
        mode = "rows" if name == "stem" else "columns"  # stem: 4 <= 3 * 4; depthwise: 1 output per channel
        expected += 0.5 * reference.entrywise(reference.side_gram_residual(matrix, mode), "l1") / positions
    head = to_numpy(model.get_layer("head").kernel).astype(np.float64)
    expected += 0.5 * reference.penalty(head)
    losses = [float(to_numpy(loss)) for loss in model.losses]
    assert len(losses) == 3
    assert sum(losses) == pytest.approx(expected, rel=1e-5)

    path = tmp_path / "cnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("stem").kernel.regularizer.operator is True
    assert sum(float(to_numpy(loss)) for loss in loaded.losses) == pytest.approx(sum(losses), rel=1e-6)


def test_fit_trains_the_operator_towards_orthogonal():
    model = _small_cnn()
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(1.0, operator=True), include="stem*")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    y = np.zeros((16, 2), "float32")
    stem = model.get_layer("stem")
    before = float(to_numpy(keras_ortho.ortho_penalty(stem.kernel, operator=True)))
    model.fit(x, y, epochs=5, verbose=0)
    after = float(to_numpy(keras_ortho.ortho_penalty(stem.kernel, operator=True)))
    assert after < 0.7 * before


@pytest.mark.parametrize("case", ["conv2d_groups", "conv1d_k4_s2"])
def test_compiled_penalty_and_gradient_equal_the_eager_ones(case):
    from backends import compiled, value_and_grad

    layer = make(case)
    kernel = to_numpy(layer.kernel)

    def of_value(w):
        return _operator_penalty_of(layer, w)

    eager_value, eager_grad = value_and_grad(of_value, kernel)
    ways = compiled(of_value)
    assert len(ways) >= 1
    for name, fn in ways.items():
        value, grad = value_and_grad(fn, kernel)
        np.testing.assert_allclose(value, eager_value, rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(grad, eager_grad, rtol=1e-10, atol=1e-14, err_msg=name)
    numeric = to_numpy(keras_ortho.ortho_gradient(layer.kernel, 0.2, operator=True))
    np.testing.assert_allclose(eager_grad, numeric, rtol=1e-10, atol=1e-14)


def _operator_penalty_of(layer, w):
    """The operator penalty of a tensor standing for `layer.kernel`, through the math the regularizer uses."""
    from keras_ortho import _binding
    from keras_ortho import ops as ortho_ops

    rule = _binding.known_rule(layer.kernel)
    tensor, plan = ortho_ops.prepare(w, None, "auto", rule=rule, operator=True)
    return ortho_ops.penalty_of(tensor, plan, 0.2)


# --- Monitoring ---


def test_the_logger_measures_an_operator_regularized_kernel_by_its_operator():
    model = _small_cnn()
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01, operator=True), include="stem*")
    model.compile("sgd", "mse")
    logger = keras_ortho.OrthoLogger()
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    model.fit(x, np.zeros((8, 2), "float32"), epochs=1, verbose=0, callbacks=[logger])
    assert logger.watched_paths == ["stem/kernel"]
    stem = model.get_layer("stem")
    expected = float(to_numpy(keras_ortho.ortho_penalty(stem.kernel, operator=True)))
    assert logger.errors["stem/kernel"].shape == (1, 1)
    np.testing.assert_allclose(logger.errors["stem/kernel"][0, 0], expected, rtol=1e-5)


def test_the_logger_logs_every_convolution_s_singular_values_when_asked():
    model = _small_cnn()
    model.compile("sgd", "mse")
    logger = keras_ortho.OrthoLogger(weights=["head/kernel"], singular_values=True)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    history = model.fit(x, np.zeros((8, 2), "float32"), epochs=2, verbose=0, callbacks=[logger])
    record = logger.singular_values_record
    assert list(record) == ["stem/kernel", "depthwise/kernel"]
    for name in ("stem", "depthwise"):
        layer = model.get_layer(name)
        sizes = (8, 8) if name == "stem" else (4, 4)
        matrix = layer_operator(layer, to_numpy(layer.kernel).astype(np.float64), sizes)
        values = np.linalg.svd(matrix, compute_uv=False)
        assert record[f"{name}/kernel"].shape == (2, 2)
        np.testing.assert_allclose(record[f"{name}/kernel"][-1], [values.max(), values.min()], rtol=1e-5)
        assert history.history[f"sigma_max/{name}/kernel"][-1] == pytest.approx(values.max(), rel=1e-5)
        assert history.history[f"sigma_min/{name}/kernel"][-1] == pytest.approx(values.min(), rel=1e-5, abs=1e-7)


def test_the_logger_summarizes_singular_values_over_many_convolutions():
    inputs = keras.Input((8, 8, 2))
    x = inputs
    for i in range(9):
        x = keras.layers.Conv2D(2, 3, padding="same", name=f"conv{i}")(x)
    model = keras.Model(inputs, x)
    model.compile("sgd", "mse")
    logger = keras_ortho.OrthoLogger(weights=["conv0/kernel"], singular_values=True)
    data = np.zeros((4, 8, 8, 2), "float32")
    history = model.fit(data, data, epochs=1, verbose=0, callbacks=[logger])
    record = logger.singular_values_record
    assert len(record) == 9
    assert history.history["sigma_max"][0] == pytest.approx(max(v[0, 0] for v in record.values()))
    assert history.history["sigma_min"][0] == pytest.approx(min(v[0, 1] for v in record.values()))
    assert not any(key.startswith("sigma_max/") for key in history.history)


def test_the_logger_refuses_singular_values_it_cannot_size_before_the_first_step():
    inputs = keras.Input((None, None, 1))  # any image size: no operator to measure
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="conv")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    logger = keras_ortho.OrthoLogger(weights=["conv/kernel"], singular_values=True)
    before = to_numpy(model.get_layer("conv").kernel)
    with pytest.raises(ValueError, match="'conv/kernel' \\(Conv2D\\).*Pass `input_size=`"):
        model.fit(np.ones((4, 6, 6, 1), "float32"), np.ones((4, 2), "float32"), verbose=0, callbacks=[logger])
    np.testing.assert_array_equal(to_numpy(model.get_layer("conv").kernel), before)  # no step was taken
    with pytest.raises(TypeError, match="Received: singular_values=1"):
        keras_ortho.OrthoLogger(singular_values=1)


def test_the_report_names_the_operator_and_lists_singular_values(tmp_path, capsys):
    import json

    from keras_ortho.report import main

    model = _small_cnn()
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01, operator=True), include="stem*")
    path = tmp_path / "cnn.keras"
    model.save(path)
    capsys.readouterr()
    assert main(["report", str(path), "--json", "--singular-values"]) == 0
    document = json.loads(capsys.readouterr().out)
    (kernel,) = document["kernels"]
    assert kernel["path"] == "stem/kernel" and kernel["operator"] is True
    assert kernel["measure"] == "sum |M_delta - I|"
    stem = model.get_layer("stem")
    expected = float(to_numpy(keras_ortho.ortho_penalty(stem.kernel, operator=True)))
    assert kernel["total"] == pytest.approx(expected, rel=1e-5)
    spectra = {e["path"]: e for e in document["convolutions"]}
    assert list(spectra) == ["stem/kernel", "depthwise/kernel"]
    values = keras_ortho.conv_singular_values(model)
    for name, entry in spectra.items():
        assert entry["input_size"] == list(values[name].input_size)
        assert entry["largest"] == pytest.approx(values[name].largest, rel=1e-6)
        assert entry["smallest"] == pytest.approx(values[name].smallest, rel=1e-6, abs=1e-9)

    assert main(["report", str(path), "--singular-values", "--input-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "16x16" in text and "sum |M_delta - I| (l1 operator)" in text
    assert main(["report", str(path), "--input-size", "16"]) == 1
    assert "--input-size goes with --singular-values" in capsys.readouterr().err


def test_the_warning_docs_operator_md_quotes_is_the_one_raised():
    import pathlib
    import re

    page = (pathlib.Path(__file__).parents[1] / "docs" / "operator.md").read_text()
    (quoted,) = re.findall(r"```text\n(.*?)```", page, flags=re.S)
    layer = keras.layers.Conv2D(8, 1, strides=2, use_bias=False, name="conv2d")
    layer.build((None, 8, 8, 1))
    from keras_ortho import _binding

    _binding.assign_rules(layer)
    with pytest.warns(RuntimeWarning) as caught:
        keras_ortho.OrthoRegularizer(operator=True)(layer.kernel)
    assert len(caught) == 1
    assert " ".join(str(caught[0].message).split()) == " ".join(quoted.split())


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_lazy_regularization_scales_the_operator_penalty_or_computes_nothing(scale):
    from backends import value_and_grad

    from keras_ortho import _binding
    from keras_ortho import ops as ortho_ops

    layer = make("conv2d_strides_2_1")
    rule = _binding.known_rule(layer.kernel)
    kernel = to_numpy(layer.kernel)

    def lazy(w):
        tensor, plan = ortho_ops.prepare(w, None, "auto", rule=rule, operator=True)
        lazy = ortho_ops.lazy_penalty_of(tensor, plan, 0.3, keras.ops.convert_to_tensor(scale, "float64"))
        return lazy + 0.0 * keras.ops.sum(w)  # PyTorch's skipped branch records no graph of its own

    value, grad = value_and_grad(lazy, kernel)
    full = float(to_numpy(keras_ortho.ortho_penalty(layer.kernel, 0.3, operator=True)))
    expected_grad = to_numpy(keras_ortho.ortho_gradient(layer.kernel, 0.3, operator=True))
    assert full > 0.1
    np.testing.assert_allclose(value, scale * full, rtol=1e-10)
    np.testing.assert_allclose(grad, scale * expected_grad, rtol=1e-10, atol=1e-14)


def test_singular_values_size_a_convolution_called_inside_another_layer_by_its_build():
    class Patches(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 2, strides=2, name="conv")
            self.up = keras.layers.Conv2DTranspose(2, 2, strides=2, name="up")

        def build(self, shape):
            self.conv.build(shape)
            self.up.build(self.conv.compute_output_shape(shape))

        def call(self, x):
            return self.up(self.conv(x))

    inputs = keras.Input((12, 8, 2))
    model = keras.Model(inputs, Patches(name="patches")(inputs))
    values = keras_ortho.conv_singular_values(model)
    assert {path: v.input_size for path, v in values.items()} == {
        "patches/conv/kernel": (12, 8),
        "patches/up/kernel": (12, 8),  # A's input: the transposed layer's output
    }
