"""Each Keras layer with a kernel is sliced by its own rule, through the constructor or `regularize`.

Every row of the slicing table (docs/slicing.md) is trained for one step under `fit`
with the penalty as the only loss; the step of each kernel must equal the
numpy reference gradient of the rule written here, and `model.losses` the
reference penalty. The rules are stated per weight, independently of
keras_ortho's code: ("matrix",) all axes but the last as rows, ("axis", k)
slices along axis k, ("gates", g) and ("groups", g) the matrix cut into g
blocks of columns.
"""

import warnings

import keras
import numpy as np
import pytest
import reference
from backends import compiled_on_torch_only_for, to_numpy

import keras_ortho

L = keras.layers
FACTOR, LR = 0.05, 0.5
MATRIX = ("matrix",)


def axis(k):
    return ("axis", k)


def gates(g):
    return ("gates", g)


def groups(g):
    return ("groups", g)


# name: (layer factory taking the regularizer arguments, input shape or "tokens",
#        {path suffix: rule}, the constructor arguments that take the regularizer)
LAYERS = {
    "Dense": (lambda **r: L.Dense(6, **r), (5,), {"kernel": MATRIX}, ["kernel_regularizer"]),
    "EinsumDense": (
        lambda **r: L.EinsumDense("ab,bcd->acd", output_shape=(3, 4), **r),
        (5,),
        {"kernel": axis(1)},
        ["kernel_regularizer"],
    ),
    "Embedding": (lambda **r: L.Embedding(20, 4, **r), "tokens", {"embeddings": MATRIX}, ["embeddings_regularizer"]),
    "Conv1D": (lambda **r: L.Conv1D(4, 3, **r), (8, 2), {"kernel": MATRIX}, ["kernel_regularizer"]),
    "Conv2D": (lambda **r: L.Conv2D(4, 3, **r), (6, 6, 2), {"kernel": MATRIX}, ["kernel_regularizer"]),
    "Conv3D": (lambda **r: L.Conv3D(3, 2, **r), (4, 4, 4, 2), {"kernel": MATRIX}, ["kernel_regularizer"]),
    "Conv1D(groups=2)": (
        lambda **r: L.Conv1D(6, 3, groups=2, **r),
        (8, 4),
        {"kernel": groups(2)},
        ["kernel_regularizer"],
    ),
    "Conv2D(groups=8)": (
        lambda **r: L.Conv2D(8, 3, groups=8, **r),
        (6, 6, 8),
        {"kernel": groups(8)},
        ["kernel_regularizer"],
    ),
    "Conv2D(groups=2)": (
        lambda **r: L.Conv2D(8, 3, groups=2, **r),
        (6, 6, 8),
        {"kernel": groups(2)},
        ["kernel_regularizer"],
    ),
    "Conv3D(groups=3)": (
        lambda **r: L.Conv3D(6, 2, groups=3, **r),
        (4, 4, 4, 3),
        {"kernel": groups(3)},
        ["kernel_regularizer"],
    ),
    "Conv1DTranspose": (lambda **r: L.Conv1DTranspose(4, 3, **r), (8, 2), {"kernel": MATRIX}, ["kernel_regularizer"]),
    "Conv2DTranspose": (
        lambda **r: L.Conv2DTranspose(4, 3, **r),
        (6, 6, 2),
        {"kernel": MATRIX},
        ["kernel_regularizer"],
    ),
    "Conv3DTranspose": (
        lambda **r: L.Conv3DTranspose(3, 2, **r),
        (4, 4, 4, 2),
        {"kernel": MATRIX},
        ["kernel_regularizer"],
    ),
    "DepthwiseConv1D": (
        lambda **r: L.DepthwiseConv1D(3, depth_multiplier=2, **r),
        (8, 3),
        {"kernel": axis(1)},
        ["depthwise_regularizer"],
    ),
    "DepthwiseConv2D": (
        lambda **r: L.DepthwiseConv2D(3, depth_multiplier=2, **r),
        (6, 6, 3),
        {"kernel": axis(2)},
        ["depthwise_regularizer"],
    ),
    "SeparableConv1D": (
        lambda **r: L.SeparableConv1D(4, 3, depth_multiplier=2, **r),
        (8, 3),
        {"depthwise_kernel": axis(1), "pointwise_kernel": MATRIX},
        ["depthwise_regularizer", "pointwise_regularizer"],
    ),
    "SeparableConv2D": (
        lambda **r: L.SeparableConv2D(4, 3, depth_multiplier=2, **r),
        (6, 6, 3),
        {"depthwise_kernel": axis(2), "pointwise_kernel": MATRIX},
        ["depthwise_regularizer", "pointwise_regularizer"],
    ),
    "SimpleRNN": (
        lambda **r: L.SimpleRNN(4, **r),
        (5, 3),
        {"/kernel": MATRIX, "recurrent_kernel": MATRIX},
        ["kernel_regularizer", "recurrent_regularizer"],
    ),
    "GRU": (
        lambda **r: L.GRU(4, **r),
        (5, 3),
        {"/kernel": gates(3), "recurrent_kernel": gates(3)},
        ["kernel_regularizer", "recurrent_regularizer"],
    ),
    "LSTM": (
        lambda **r: L.LSTM(4, **r),
        (5, 3),
        {"/kernel": gates(4), "recurrent_kernel": gates(4)},
        ["kernel_regularizer", "recurrent_regularizer"],
    ),
    "ConvLSTM1D": (
        lambda **r: L.ConvLSTM1D(3, 2, **r),
        (4, 6, 2),
        {"/kernel": gates(4), "recurrent_kernel": gates(4)},
        ["kernel_regularizer", "recurrent_regularizer"],
    ),
    "ConvLSTM2D": (
        lambda **r: L.ConvLSTM2D(2, 2, **r),
        (3, 4, 4, 2),
        {"/kernel": gates(4), "recurrent_kernel": gates(4)},
        ["kernel_regularizer", "recurrent_regularizer"],
    ),
    "ConvLSTM3D": (
        lambda **r: L.ConvLSTM3D(2, 2, **r),
        (2, 3, 3, 3, 1),
        {"/kernel": gates(4), "recurrent_kernel": gates(4)},
        ["kernel_regularizer", "recurrent_regularizer"],
    ),
    "MultiHeadAttention": (
        lambda **r: L.MultiHeadAttention(num_heads=2, key_dim=3, **r),
        "sequence",
        {"query/kernel": axis(1), "key/kernel": axis(1), "value/kernel": axis(1), "attention_output/kernel": axis(0)},
        ["kernel_regularizer"],
    ),
    "GroupQueryAttention": (
        lambda **r: L.GroupQueryAttention(head_dim=3, num_query_heads=4, num_key_value_heads=2, **r),
        "sequence",
        {"query/kernel": axis(1), "key/kernel": axis(1), "value/kernel": axis(1), "attention_output/kernel": axis(0)},
        ["kernel_regularizer"],
    ),
}


def build(name, how):
    regularizer = keras_ortho.OrthoRegularizer(FACTOR)
    arguments = LAYERS[name][3]
    model = model_of(name, {a: regularizer for a in arguments} if how == "constructor" else {})
    if how == "regularize":
        # include="*": every kernel the constructor takes, single vectors (Conv2D(groups=8)) too.
        paths = keras_ortho.regularize(model, regularizer, include="*")
        assert sorted(paths) == sorted(v.path for v in regularized(model, name)), paths
    return model


def model_of(name, layer_arguments):
    """A model of the one layer `name`, built with `layer_arguments`, its weights random."""
    factory, input_shape, _, _ = LAYERS[name]
    keras.utils.set_random_seed(0)
    layer = factory(**layer_arguments)
    if input_shape == "tokens":
        inputs = keras.Input((3,), dtype="int32")
        outputs = layer(inputs)
    elif input_shape == "sequence":
        inputs = keras.Input((4, 5))
        outputs = layer(inputs, inputs)
    else:
        inputs = keras.Input(input_shape)
        outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    # Random values, not the initializers': an orthogonal recurrent kernel has a
    # Gram at rounding level, whose signs no reference can reproduce.
    rng = np.random.default_rng(0)
    for v in model.trainable_weights:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(v.dtype))
    return model


def regularized(model, name):
    """The regularized weights of the one-layer model of `name`: as many as its rules, checked."""
    weights = [v for v in model.trainable_weights if v.regularizer is not None]
    assert len(weights) == len(LAYERS[name][2]), [v.path for v in weights]
    return weights


def inputs_for(name):
    input_shape = LAYERS[name][1]
    if input_shape == "tokens":
        return np.arange(6, dtype="int32").reshape(2, 3)
    if input_shape == "sequence":
        return np.zeros((2, 4, 5), "float32")
    return np.zeros((2,) + input_shape, "float32")


def rule_of(name, variable):
    rules = [rule for suffix, rule in LAYERS[name][2].items() if variable.path.endswith(suffix)]
    assert len(rules) == 1, (variable.path, rules)
    return rules[0]


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # biases: the penalty is the only loss
# `regularize` sets what the constructor does, through another path: the full suite takes it.
@pytest.mark.parametrize("how", ["constructor", pytest.param("regularize", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_fit_steps_each_kernel_by_its_layer_rule(name, how):
    model = build(name, how)
    kernels = regularized(model, name)
    assert len(kernels) == len(LAYERS[name][2])
    before = {v.path: to_numpy(v).copy() for v in kernels}

    # fit first: on JAX, the regularizer meets these weights as bare tensors.
    model.compile(optimizer=keras.optimizers.SGD(LR))
    model.fit(inputs_for(name), epochs=1, batch_size=2, verbose=0)
    for v in kernels:
        step = (before[v.path] - to_numpy(v)) / LR
        gradient = reference.gradient_by(before[v.path], rule_of(name, v), FACTOR)
        np.testing.assert_allclose(step, gradient, rtol=1e-4, atol=1e-5, err_msg=v.path)

    losses = sorted(float(to_numpy(loss)) for loss in model.losses)
    expected = sorted(reference.penalty_by(to_numpy(v), rule_of(name, v), FACTOR) for v in kernels)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_slice_errors_of_a_kernel_follow_its_layer_rule_once_the_layer_is_known(name):
    model = build(name, "constructor")
    logger = keras_ortho.OrthoLogger()  # meeting the model records every weight's rule
    logger.set_model(model)
    logger.on_train_begin()
    for v in regularized(model, name):
        expected = [
            np.abs(reference.residual(p, "auto")).sum() for p in reference.slices_by(to_numpy(v), rule_of(name, v))
        ]
        np.testing.assert_allclose(to_numpy(keras_ortho.slice_errors(v)), expected, rtol=1e-5, err_msg=v.path)


@pytest.mark.parametrize("name", ["Conv1D", "Conv2D(groups=2)", "DepthwiseConv2D", "LSTM", "MultiHeadAttention"])
def test_a_bare_variable_finds_its_layer_rule_by_itself(name):
    model = build(name, "constructor")  # nothing of keras_ortho has met the model yet
    for v in regularized(model, name):
        expected = [
            np.abs(reference.residual(p, "auto")).sum() for p in reference.slices_by(to_numpy(v), rule_of(name, v))
        ]
        np.testing.assert_allclose(to_numpy(keras_ortho.slice_errors(v)), expected, rtol=1e-5, err_msg=v.path)


def test_a_frozen_layer_keeps_its_rule():
    model = build("Conv1D", "constructor")
    model.layers[-1].trainable = False  # its kernel is no longer trainable, still a Conv1D kernel
    kernel = model.layers[-1].kernel
    expected = [np.abs(reference.residual(p, "auto")).sum() for p in reference.slices_by(to_numpy(kernel), MATRIX)]
    np.testing.assert_allclose(to_numpy(keras_ortho.slice_errors(kernel)), expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_stateless_call_losses_follow_each_layer_rule(name):
    """`stateless_call` (JAX's fit is built on it) hands the regularizer bare tensors."""
    model = build(name, "constructor")  # nothing of keras_ortho has met the model yet
    rng = np.random.default_rng(7)
    # Other values than the variables hold, so a loss read from a variable would show.
    values = [rng.normal(scale=0.5, size=v.shape).astype("float32") for v in model.trainable_variables]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the default rule
        *_, losses = model.stateless_call(
            values, [v.value for v in model.non_trainable_variables], inputs_for(name), return_losses=True
        )
    by_variable = {id(v): value for v, value in zip(model.trainable_variables, values, strict=True)}
    expected = sorted(
        reference.penalty_by(by_variable[id(v)], rule_of(name, v), FACTOR) for v in regularized(model, name)
    )
    np.testing.assert_allclose(sorted(float(to_numpy(loss)) for loss in losses), expected, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize(  # per head under jit: test_regularizer.py
    "name",
    compiled_on_torch_only_for(
        ["Conv1D", "Conv2D(groups=2)", "DepthwiseConv2D", "SeparableConv2D", "LSTM"], "Conv2D(groups=2)", "LSTM"
    ),
)
def test_fit_with_jit_compile_steps_each_kernel_by_its_layer_rule(name):
    model = build(name, "constructor")
    before = {v.path: to_numpy(v).copy() for v in regularized(model, name)}
    model.compile(optimizer=keras.optimizers.SGD(LR), jit_compile=True)
    model.fit(inputs_for(name), epochs=1, batch_size=2, verbose=0)
    for v in regularized(model, name):
        step = (before[v.path] - to_numpy(v)) / LR
        gradient = reference.gradient_by(before[v.path], rule_of(name, v), FACTOR)
        np.testing.assert_allclose(step, gradient, rtol=1e-4, atol=1e-5, err_msg=v.path)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.slow
def test_logger_and_report_count_the_slices_of_each_layer_rule(name):
    from keras_ortho import report

    model = build(name, "constructor")
    logger = keras_ortho.OrthoLogger(weight_logs=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(inputs_for(name), epochs=1, batch_size=2, verbose=0, callbacks=[logger])
    kernels = regularized(model, name)
    entries = {e["path"]: e for e in report.measure(model)}
    assert len(logger.errors) == len(entries) == len(kernels) == len(LAYERS[name][2])
    for v in kernels:
        count = len(reference.slices_by(to_numpy(v), rule_of(name, v)))
        (path,) = [p for p in entries if v.path.endswith(p)]
        assert logger.errors[path].shape == (1, count) and entries[path]["slices"] == count, path
