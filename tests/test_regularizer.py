"""OrthoRegularizer as Keras layers, trainers and serialization use it."""

import warnings

import keras
import numpy as np
import pytest
import reference
from backends import KERAS_VERSION, only_on, to_numpy
from models import mixed_layers_model

import keras_ortho
from keras_ortho import OrthoRegularizer

# --- Config and serialization --------------------------------------------------

CONFIGS = [
    {"factor": 0.01, "slice_axis": None, "mode": "auto", "reduction": "sum", "norm": "l1", "operator": False},
    {"factor": 0.5, "slice_axis": -1, "mode": "rows", "reduction": "mean", "norm": "double", "operator": False},
    {"factor": 0.0, "slice_axis": 2, "mode": "columns", "reduction": "sum", "norm": "spectral", "operator": False},
    {"factor": 0.2, "slice_axis": None, "mode": "rows", "reduction": "mean", "norm": "fro", "operator": True},
]


def test_defaults():
    assert OrthoRegularizer().get_config() == CONFIGS[0]


@pytest.mark.parametrize("config", CONFIGS)
def test_get_config_returns_the_constructor_arguments(config):
    regularizer = OrthoRegularizer(**config)
    assert regularizer.get_config() == config
    assert OrthoRegularizer.from_config(regularizer.get_config()).get_config() == config


@pytest.mark.parametrize("config", CONFIGS)
def test_keras_serialization_round_trip(config):
    serialized = keras.saving.serialize_keras_object(OrthoRegularizer(**config))
    assert serialized["registered_name"] == "keras_ortho>OrthoRegularizer"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, OrthoRegularizer)
    assert restored.get_config() == config
    assert keras.regularizers.get(serialized).get_config() == config


def test_a_config_saved_before_reduction_existed_loads_as_sum():
    regularizer = OrthoRegularizer.from_config({"factor": 0.1, "slice_axis": None, "mode": "auto"})
    assert regularizer.reduction == "sum"


def test_numpy_scalars_are_stored_as_python_numbers():
    config = OrthoRegularizer(np.float32(0.5), np.int64(1)).get_config()
    assert type(config["factor"]) is float and type(config["slice_axis"]) is int


def test_call_is_the_penalty_of_its_options(rng):
    w = rng.normal(size=(6, 3, 4)).astype("float32")
    regularizer = OrthoRegularizer(0.2, slice_axis=0, mode="rows")
    expected = reference.penalty(w.astype("float64"), 0.2, slice_axis=0, mode="rows")
    np.testing.assert_allclose(float(to_numpy(regularizer(w))), expected, rtol=1e-5)


# --- Bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"factor": "0.1"}, TypeError, r"`factor`.*Received: factor='0\.1'"),
        ({"factor": True}, TypeError, r"`factor`.*Received: factor=True"),
        ({"factor": None}, TypeError, r"`factor`.*Received: factor=None"),
        ({"factor": -0.1}, ValueError, r"`factor`.*Received: factor=-0\.1"),
        ({"factor": float("nan")}, ValueError, r"`factor`.*Received: factor=nan"),
        ({"factor": float("inf")}, ValueError, r"`factor`.*Received: factor=inf"),
        ({"mode": "diag"}, ValueError, r"`mode`.*Received: mode='diag'"),
        ({"mode": None}, TypeError, r"`mode`.*Received: mode=None of type NoneType"),
        ({"slice_axis": 1.0}, TypeError, r"`slice_axis`.*Received: slice_axis=1\.0"),
        ({"slice_axis": True}, TypeError, r"`slice_axis`.*Received: slice_axis=True"),
        ({"slice_axis": "1"}, TypeError, r"`slice_axis`.*Received: slice_axis='1'"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        OrthoRegularizer(**kwargs)


@pytest.mark.parametrize(
    "w,kwargs,error,message",
    [
        (np.ones(5, "float32"), {}, ValueError, r"rank >= 2.*Received: w\.shape=\(5,\)"),
        (np.float32(1.0), {}, ValueError, r"rank >= 2.*Received: w\.shape=\(\)"),
        (np.ones((4, 3), "int32"), {}, TypeError, r"floating.*Received: w\.dtype=int32"),
        (np.ones((4, 3), "complex64"), {}, TypeError, r"Received: w\.dtype=complex64"),
        (
            np.ones((4, 3, 2), "float32"),
            {"slice_axis": 3},
            ValueError,
            r"`slice_axis`.*\[-3, 2\].*Received: slice_axis=3",
        ),
        (np.ones((4, 3, 2), "float32"), {"slice_axis": -4}, ValueError, r"Received: slice_axis=-4"),
    ],
)
@pytest.mark.parametrize(
    "function",
    [
        lambda w, **kw: OrthoRegularizer(**kw)(w),
        keras_ortho.ortho_penalty,
        keras_ortho.ortho_gradient,
        keras_ortho.slice_errors,
    ],
    ids=["regularizer", "ortho_penalty", "ortho_gradient", "slice_errors"],
)
def test_calls_reject_bad_weights(function, w, kwargs, error, message):
    with pytest.raises(error, match=message):
        function(w, **kwargs)


@pytest.mark.parametrize("function", [keras_ortho.ortho_penalty, keras_ortho.ortho_gradient])
def test_functions_check_factor(function):
    with pytest.raises(ValueError, match=r"Received: factor=-1"):
        function(np.eye(3), factor=-1)


def test_functions_check_mode_and_slice_axis():
    with pytest.raises(ValueError, match=r"Received: mode='cols'"):
        keras_ortho.slice_errors(np.eye(3), mode="cols")
    with pytest.raises(TypeError, match=r"Received: slice_axis=0\.5"):
        keras_ortho.slice_errors(np.eye(3), slice_axis=0.5)


@only_on("tensorflow", why="only TensorFlow traces tensors of unknown shape")
def test_unknown_shape_is_rejected():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 3])])
    def errors(w):
        return keras_ortho.slice_errors(w)

    with pytest.raises(ValueError, match=r"static shape.*Received: w\.shape=\(None, 3\)"):
        errors.get_concrete_function()


@pytest.mark.parametrize(
    "config,key",
    [
        ({"factor": 0.1, "slice_axis": None, "mode": "auto", "scale": 2}, "scale"),
        ({"factor": -1.0, "slice_axis": None, "mode": "auto"}, "factor"),
        ({"factor": 0.1, "slice_axis": None, "mode": "diag"}, "mode"),
        ({"factor": 0.1, "slice_axis": None, "mode": "auto", "reduction": "max"}, "reduction"),
    ],
)
def test_from_config_names_the_regularizer_and_the_bad_key(config, key):
    with pytest.raises((TypeError, ValueError), match=rf"OrthoRegularizer.*{key}"):
        OrthoRegularizer.from_config(config)


# --- Keras layers -----------------------------------------------------------------


def regularized(factor=0.05):
    return OrthoRegularizer(factor)


def test_layer_losses_match_reference_for_common_layers():
    inputs = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(4, 3, kernel_regularizer=regularized())
    x = conv(inputs)  # (4, 4, 4)
    x = keras.layers.Reshape((4, 16))(x)
    einsum = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 5), kernel_regularizer=regularized())
    x = keras.layers.Reshape((4, 10))(einsum(x))
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, kernel_regularizer=regularized())
    x = attention(x, x)
    dense = keras.layers.Dense(7, kernel_regularizer=regularized())
    outputs = dense(keras.layers.Flatten()(x))
    keras.Model(inputs, outputs)

    expected = {
        conv: [reference.penalty(conv.kernel.numpy(), 0.05)],
        einsum: [reference.penalty(einsum.kernel.numpy(), 0.05)],
        dense: [reference.penalty(dense.kernel.numpy(), 0.05)],
        attention: [
            reference.penalty(kernel.numpy(), 0.05, attention_output=kernel.path.endswith("attention_output/kernel"))
            for kernel in attention.trainable_weights
            if kernel.path.endswith("/kernel")
        ],
    }
    for layer, values in expected.items():
        np.testing.assert_allclose([float(to_numpy(v)) for v in layer.losses], values, rtol=1e-5)


def test_embedding_table_is_one_slice_of_its_columns():
    embedding = keras.layers.Embedding(1000, 8, embeddings_regularizer=regularized())
    embedding.build((None,))
    table = embedding.embeddings.numpy()
    np.testing.assert_allclose(float(to_numpy(embedding.losses[0])), reference.penalty(table, 0.05), rtol=1e-5)


def test_multi_head_attention_is_regularized_per_head():
    attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=3, kernel_regularizer=regularized())
    x = keras.random.normal((2, 5, 10))
    attention(x, x)
    losses = [float(to_numpy(loss)) for loss in attention.losses]  # Keras asks the layer's weights
    kernels = {v.path.split("/")[-2]: v for v in attention.trainable_weights if "kernel" in v.path}
    assert kernels["query"].shape == (10, 4, 3)
    assert kernels["attention_output"].shape == (4, 3, 10)
    expected_losses = []
    for name, kernel in kernels.items():
        errors = to_numpy(keras_ortho.slice_errors(kernel))
        assert errors.shape == (4,), name  # one slice per head
        value = kernel.numpy()
        heads = [value[:, h, :] for h in range(4)] if name != "attention_output" else list(value)
        expected = [reference.slice_errors(head)[0] for head in heads]
        np.testing.assert_allclose(errors, expected, rtol=1e-5)
        expected_losses.append(0.05 * sum(expected))
    np.testing.assert_allclose(sorted(losses), sorted(expected_losses), rtol=1e-5)


# --- Where Keras calls the regularizer with a tensor, not the variable -----------------


def expected_losses(model):
    """`{path: penalty}` of every regularized weight, by the rules of docs/slicing.md, in numpy."""
    return {
        v.path: reference.penalty(
            v.numpy(),
            v.regularizer.factor,
            v.regularizer.slice_axis,
            v.regularizer.mode,
            attention_output=v.path.endswith("attention_output/kernel"),
        )
        for v in model.trainable_weights
        if v.regularizer is not None
    }


def test_model_losses_follow_every_rule():
    model = mixed_layers_model()
    expected = expected_losses(model)
    assert len(expected) == 7
    np.testing.assert_allclose([float(to_numpy(v)) for v in model.losses], list(expected.values()), rtol=1e-5)


def test_stateless_call_losses_follow_every_rule_per_weight():
    """`stateless_call` (JAX's fit is built on it) hands the regularizer tensors."""
    model = mixed_layers_model()
    rng = np.random.default_rng(5)
    # Other values than the variables hold, so a loss read from a variable would show.
    values = [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
    inputs = np.zeros((2, 8, 8, 3), "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the per-head rule must not fall back
        *_, losses = model.stateless_call(
            values, [v.value for v in model.non_trainable_variables], inputs, return_losses=True
        )
    regularized = [v for v in model.trainable_variables if v.regularizer is not None]
    by_variable = {id(v): value for v, value in zip(model.trainable_variables, values, strict=True)}
    expected = [
        reference.penalty(
            by_variable[id(v)],
            v.regularizer.factor,
            v.regularizer.slice_axis,
            v.regularizer.mode,
            attention_output=v.path.endswith("attention_output/kernel"),
        )
        for v in regularized
    ]
    np.testing.assert_allclose([float(to_numpy(v)) for v in losses], expected, rtol=1e-5)


def test_a_tensor_no_weight_stands_for_warns_instead_of_guessing():
    """Inside a stateless scope, a tensor that maps to no weight cannot be placed."""
    regularizer = OrthoRegularizer(0.1)
    w = np.random.default_rng(6).normal(size=(3, 4, 6)).astype("float32")
    with keras.StatelessScope():
        with pytest.warns(RuntimeWarning, match=r"shape \(3, 4, 6\).*could not identify"):
            value = regularizer(keras.ops.convert_to_tensor(w))
    np.testing.assert_allclose(float(to_numpy(value)), reference.penalty(w, 0.1), rtol=1e-5)


def test_a_users_own_tensor_takes_the_default_rule_silently():
    w = np.random.default_rng(7).normal(size=(3, 4, 6)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        value = OrthoRegularizer(0.1)(keras.ops.convert_to_tensor(w))
    np.testing.assert_allclose(float(to_numpy(value)), reference.penalty(w, 0.1), rtol=1e-5)


def test_bias_error_names_the_layer_and_the_weight():
    layer = keras.layers.Dense(3, bias_regularizer=OrthoRegularizer(), name="classifier")
    layer.build((None, 4))
    with pytest.raises(
        ValueError,
        match=r"rank >= 2.*Received: w\.shape=\(3,\), for weight 'classifier/bias' of layer 'classifier' \(Dense\)",
    ):
        _ = layer.losses


def test_bias_error_names_the_layer_in_a_model_under_fit():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, bias_regularizer=OrthoRegularizer(), name="classifier")(inputs))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"for weight 'classifier/bias' of layer 'classifier' \(Dense\)"):
        model.fit(np.zeros((2, 4)), np.zeros((2, 3)), verbose=0)


# --- Training -------------------------------------------------------------------------


def penalty_only_model(shape, **regularizer_kwargs):
    """A model whose only loss is the penalty on one (..., units) kernel."""
    inputs = keras.Input((shape[0],))
    layer = keras.layers.EinsumDense(
        "...a,abc->...bc" if len(shape) == 3 else "...a,ab->...b",
        output_shape=shape[1:],
        kernel_regularizer=OrthoRegularizer(**regularizer_kwargs),
    )
    return keras.Model(inputs, layer(inputs)), layer


@pytest.mark.parametrize(
    "compile_kwargs",
    [{"jit_compile": False}, {"jit_compile": True}, {"run_eagerly": True}],
    ids=["jit off", "jit on", "eager"],
)
@pytest.mark.parametrize("shape", [(8, 5), (6, 3, 4)])
def test_fit_applies_the_analytic_gradient(shape, compile_kwargs):
    keras.utils.set_random_seed(0)
    model, layer = penalty_only_model(shape, factor=0.1)
    before = layer.kernel.numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(0.5), **compile_kwargs)
    model.fit(np.zeros((4, shape[0]), "float32"), epochs=1, batch_size=4, verbose=0)
    step = (before - layer.kernel.numpy()) / 0.5
    np.testing.assert_allclose(step, reference.gradient(before, 0.1), rtol=1e-4, atol=1e-5)


def test_training_on_the_penalty_alone_drives_it_near_zero():
    keras.utils.set_random_seed(0)
    model, layer = penalty_only_model((16, 4, 6), factor=1.0)
    start = float(to_numpy(keras_ortho.slice_errors(layer.kernel)).sum())
    # An L1 penalty's subgradient does not vanish near the optimum: decay the step.
    schedule = keras.optimizers.schedules.CosineDecay(0.02, decay_steps=400)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    model.fit(np.zeros((400, 16), "float32"), batch_size=1, epochs=1, verbose=0)
    end = to_numpy(keras_ortho.slice_errors(layer.kernel))
    assert start > 1.0
    assert end.sum() < 0.01 * start, (start, end)


def test_float64_models_train():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    model, layer = penalty_only_model((8, 5), factor=0.1)
    before = layer.kernel.numpy().copy()
    assert before.dtype == np.float64
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(np.zeros((4, 8)), epochs=1, batch_size=4, verbose=0)
    step = (before - layer.kernel.numpy()) / 0.5
    np.testing.assert_allclose(step, reference.gradient(before, 0.1), rtol=1e-10, atol=1e-12)


# --- Not a weight -------------------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [False, True])
def test_as_activity_regularizer_it_raises_naming_the_layer(jit_compile):
    inputs = keras.Input((4,))
    layer = keras.layers.Dense(3, activity_regularizer=OrthoRegularizer(0.1), name="activations")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    # Keras 3.15 raises it as is; Keras 3.8 wraps what `fit` meets while building the model in a
    # RuntimeError that keeps the message. Releases in between are not told apart.
    raised = ValueError if KERAS_VERSION >= (3, 15) else (ValueError, RuntimeError)
    with pytest.raises(raised, match=r"layer 'activations' \(Dense\) has it as `activity_regularizer`"):
        model.fit(np.zeros((4, 4), "float32"), np.zeros((4, 3), "float32"), verbose=0)
    with pytest.raises(ValueError, match="activity_regularizer"):
        model(np.zeros((2, 4), "float32"))
