"""`keras_ortho.regularize`: an OrthoRegularizer on a model that already exists."""

import contextlib
import json
import warnings

import keras
import numpy as np
import pytest
import reference
from backends import to_numpy

import keras_ortho

L = keras.layers


def mixed_model():
    """Conv2D, DepthwiseConv2D, LayerNormalization, MultiHeadAttention, LSTM and Dense, unregularized."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = L.Reshape((8, 64))(x)
    x = L.LayerNormalization(name="norm")(x)
    x = L.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")(x, x)
    x = L.LSTM(6, name="lstm")(x)
    outputs = L.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


# Every kernel `regularize` takes by default. The depthwise kernel (`depth_multiplier=1`: a 9x1 column per
# channel) is a stack of single vectors, taken only when `include` names it.
KERNELS = [
    "attention/attention_output/kernel",
    "attention/key/kernel",
    "attention/query/kernel",
    "attention/value/kernel",
    "conv/kernel",
    "head/kernel",
    "lstm/lstm_cell/kernel",
    "lstm/lstm_cell/recurrent_kernel",
]
SINGLE_VECTORS = ["depthwise/kernel"]


def penalty(model):
    return sum(float(to_numpy(loss)) for loss in model.losses)


def test_takes_every_kernel_and_nothing_else():
    model = mixed_model()
    paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01))
    assert sorted(paths) == KERNELS
    regularized = sorted(v.path for v in model.weights if v.regularizer is not None)
    assert regularized == KERNELS  # no bias, no LayerNormalization weight
    assert len(model.losses) == len(KERNELS)


def per_channel(depth_multiplier):
    return keras.Sequential(
        [keras.Input((6, 6, 4)), L.DepthwiseConv2D(3, depth_multiplier=depth_multiplier, name="depthwise")]
    )


def test_leaves_out_single_vectors_unless_include_names_them():
    # One 9x1 filter per channel: its 1x1 Gram is its squared norm, not an angle between vectors.
    model = per_channel(1)
    regularizer = keras_ortho.OrthoRegularizer(0.01)
    with pytest.warns(UserWarning, match=r"every kernel of .* is a stack of single vectors \('depthwise/kernel'\)"):
        assert keras_ortho.regularize(model, regularizer) == []
    assert model.losses == []
    assert keras_ortho.regularize(model, regularizer, include="depthwise/*") == ["depthwise/kernel"]
    w = to_numpy(model.layers[0].kernel)[:, :, :, 0].reshape(9, 4)  # column c: channel c's filter
    expected = 0.01 * np.abs(np.sum(w * w, axis=0) - 1).sum()
    assert penalty(model) == pytest.approx(expected, rel=1e-5)


def test_takes_two_filters_per_channel_and_operators():
    # depth_multiplier=2: a 9x2 matrix per channel, whose two columns have an angle.
    assert keras_ortho.regularize(per_channel(2), keras_ortho.OrthoRegularizer(0.01)) == ["depthwise/kernel"]
    # As an operator, one filter's shifts are many vectors.
    operator = keras_ortho.OrthoRegularizer(0.01, operator=True)
    assert keras_ortho.regularize(per_channel(1), operator) == ["depthwise/kernel"]


class Subclassed(keras.Model):
    """A subclassed model holding a nested Sequential and a GRU."""

    def __init__(self):
        super().__init__()
        self.features = keras.Sequential([L.Dense(8, name="inner")], name="features")
        self.gru = L.GRU(4, name="gru")
        self.out = L.Dense(2, name="out")

    def call(self, x):
        return self.out(self.gru(self.features(x)))


def test_reaches_subclassed_and_nested_models():
    model = Subclassed()
    model(np.zeros((1, 5, 3), "float32"))
    paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01))
    names = ["features/inner/kernel", "gru/gru_cell/kernel", "gru/gru_cell/recurrent_kernel", "out/kernel"]
    assert sorted(paths) == names  # paths inside the model, without its own name
    model.compile(optimizer="sgd", loss="mse")
    before = penalty(model)
    history = model.fit(np.zeros((4, 5, 3)), np.zeros((4, 2)), batch_size=4, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(before, rel=1e-5)  # zero data: the loss is the penalty


def test_logger_finds_every_weight_it_returns():
    model = mixed_model()
    paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01))
    logger = keras_ortho.OrthoLogger()
    logger.set_model(model)
    logger.on_train_begin()
    assert sorted(logger.watched_paths) == sorted(paths)


def test_is_idempotent():
    model = mixed_model()
    ortho = keras_ortho.OrthoRegularizer(0.01)
    keras_ortho.regularize(model, ortho)
    once = penalty(model)
    assert keras_ortho.regularize(model, ortho) == keras_ortho.regularize(model, ortho)
    assert len(model.losses) == len(KERNELS)
    assert penalty(model) == pytest.approx(once, rel=1e-6)


@pytest.mark.parametrize(
    "include, exclude, expected",
    [
        ("*attention*", None, [p for p in KERNELS if p.startswith("attention/")]),
        (["conv/*", "head/*"], None, ["conv/kernel", "head/kernel"]),
        (None, "*lstm*", [p for p in KERNELS if "lstm" not in p]),
        ("*", None, sorted(KERNELS + SINGLE_VECTORS)),
        (lambda v: len(v.shape) == 4, None, ["conv/kernel", "depthwise/kernel"]),
        ("*attention*", "*output*", ["attention/key/kernel", "attention/query/kernel", "attention/value/kernel"]),
    ],
    ids=["glob", "globs", "exclude", "every", "callable", "both"],
)
def test_include_and_exclude_select_by_path(include, exclude, expected):
    model = mixed_model()
    # Leaving one attention projection out: its config cannot say so, and a warning does.
    split = "output" in str(exclude)
    with pytest.warns(UserWarning, match="different regularizers") if split else contextlib.nullcontext():
        paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01), include=include, exclude=exclude)
    assert sorted(paths) == sorted(expected)
    assert sorted(v.path for v in model.weights if v.regularizer is not None) == sorted(expected)


@pytest.mark.parametrize("include, exclude", [("nomatch*", None), (None, "*"), (["x*", "y*"], None)])
def test_patterns_that_leave_no_kernel_warn_naming_them(include, exclude):
    model = mixed_model()
    with pytest.warns(
        UserWarning, match=r"no kernel of .* is left by include=.*exclude=.*such as 'conv/kernel'"
    ) as record:
        assert keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01), include=include, exclude=exclude) == []
    assert repr(include) in str(record[0].message) and repr(exclude) in str(record[0].message)
    assert [v for v in model.weights if v.regularizer is not None] == []


def runtime_warnings(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_side_a_kernel_cannot_have_warns_once_per_shape_and_is_still_minimized():
    x = keras.Input((3,))
    a, b = keras.layers.Dense(10, name="a")(x), keras.layers.Dense(10, name="b")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="head")(keras.layers.Concatenate()([a, b])))
    regularizer = keras_ortho.OrthoRegularizer(1.0, mode="columns")
    paths, messages = runtime_warnings(lambda: keras_ortho.regularize(model, regularizer))
    assert len(paths) == 3
    # 'a' and 'b' (3x10) cannot have orthonormal columns; the head (20x3) can. One shape, one warning.
    assert len(messages) == 1 and "'a' (Dense): a 3x10 slice has more columns than rows" in messages[0]
    _, again = runtime_warnings(lambda: model.losses)
    assert again == []  # Keras collecting the loss does not warn again
    kernel = to_numpy(model.get_layer("a").kernel).astype("float64")
    residual = kernel.T @ kernel - np.eye(10)
    assert to_numpy(model.losses[0]) == pytest.approx(np.abs(residual).sum(), rel=1e-5)


def test_given_to_a_constructor_it_warns_when_keras_first_collects_its_loss():
    regularizer = keras_ortho.OrthoRegularizer(mode="rows")
    model, built = runtime_warnings(
        lambda: keras.Sequential([keras.Input((10,)), keras.layers.Dense(3, kernel_regularizer=regularizer)])
    )
    assert built == []
    _, messages = runtime_warnings(lambda: model.losses)
    assert len(messages) == 1 and "a 10x3 slice has more rows than columns" in messages[0]


def test_a_keras_hub_backbone_warns_that_its_config_drops_the_regularizers(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")  # the test extra installs it
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=6
    )
    with pytest.warns(UserWarning, match=r"config cannot carry a regularizer.*Call `keras_ortho.regularize` again"):
        paths = keras_ortho.regularize(backbone, keras_ortho.OrthoRegularizer(0.01))
    assert len(paths) >= 8
    backbone.save(tmp_path / "bert.keras")  # what the warning says: the reloaded copy has none
    loaded = keras.saving.load_model(tmp_path / "bert.keras")
    assert [v.path for v in loaded.weights if v.regularizer is not None] == []


def test_a_model_of_keras_layers_alone_gets_no_config_warning():
    model = mixed_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01))


def test_none_removes_only_keras_ortho_regularizers():
    model = mixed_model()
    model.get_layer("head").kernel.regularizer = keras.regularizers.L2(0.1)
    model.get_layer("head").kernel_regularizer = keras.regularizers.L2(0.1)
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01), exclude="head/*")
    removed = keras_ortho.regularize(model, None)
    assert sorted(removed) == [p for p in KERNELS if p != "head/kernel"]
    assert [v.path for v in model.weights if v.regularizer is not None] == ["head/kernel"]
    assert isinstance(model.get_layer("head").kernel_regularizer, keras.regularizers.L2)
    assert model.get_layer("conv").kernel_regularizer is None


def test_takes_effect_in_the_next_fit_of_a_model_trained_before():
    model = mixed_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.zeros((4, 8, 8, 3), "float32"), np.zeros((4, 3), "float32")
    model.fit(x, y, epochs=1, verbose=0)  # the train function is traced without the penalty
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01), include="conv/*")
    kernel = model.get_layer("conv").kernel
    before = to_numpy(kernel).copy()
    history = model.fit(x, y, epochs=1, verbose=0)
    # Zero data, zero biases: the model outputs 0, so the loss is the penalty and only its gradient steps.
    assert history.history["loss"][0] == pytest.approx(reference.penalty(before, 0.01), rel=1e-5)
    np.testing.assert_allclose(to_numpy(kernel), before - 0.1 * reference.gradient(before, 0.01), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["keras", "h5", "json"])
def test_persists_through_saving(tmp_path, form):
    model = mixed_model()
    # mode="columns" on the attention output's 4x64 slices: warned once, by the regularizer and by its copy.
    impossible = r"'attention_output' \(EinsumDense\): a 4x64 slice has more columns than rows"
    with pytest.warns(RuntimeWarning, match=impossible):
        keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.02, mode="columns"))
    if form == "json":
        loaded = keras.models.model_from_json(model.to_json())
        loaded.set_weights(model.get_weights())
    else:
        model.save(tmp_path / f"model.{form}")
        loaded = keras.saving.load_model(tmp_path / f"model.{form}")
    configs = {v.path: v.regularizer.get_config() for v in loaded.weights if v.regularizer is not None}
    assert sorted(configs) == KERNELS
    expected = {"factor": 0.02, "slice_axis": None, "mode": "columns", "reduction": "sum", "norm": "l1"}
    assert all(c == {**expected, "operator": False} for c in configs.values())
    with pytest.warns(RuntimeWarning, match=impossible):
        loaded_penalty = penalty(loaded)
    assert loaded_penalty == pytest.approx(penalty(model), rel=1e-5)


@pytest.mark.slow
def test_mobilenet_v2_per_channel_depthwise_kernels():
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10)
    depthwise = [layer for layer in model.layers if isinstance(layer, L.DepthwiseConv2D)]
    convs = [layer for layer in model.layers if type(layer) is L.Conv2D]
    # By default the depthwise kernels (a 9x1 filter per channel) are left out; named, they are taken.
    assert len(keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(1e-4))) == len(convs) + 1  # + classifier
    assert all(layer.kernel.regularizer is None for layer in depthwise)
    paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(1e-4), include="*")
    assert len(depthwise) == 17 and len(paths) == len(depthwise) + len(convs) + 1
    assert not any("bn" in p or "BN" in p or p.endswith("bias") for p in paths)
    logger = keras_ortho.OrthoLogger()
    logger.set_model(model)
    logger.on_train_begin()
    assert sorted(logger.watched_paths) == sorted(paths)
    errors = logger._probe()
    for layer in depthwise:  # one slice per channel, not one 9C x 1 column
        assert errors[layer.kernel.path].shape == (layer.kernel.shape[2],)


def test_bad_arguments_are_refused_before_any_change():
    model = mixed_model()
    with pytest.raises(TypeError, match="Argument `regularizer`.*Received: regularizer=<.*L2"):
        keras_ortho.regularize(model, keras.regularizers.L2(0.1))
    with pytest.raises(TypeError, match="Argument `include`.*Received: include=3"):
        keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(), include=3)
    with pytest.raises(TypeError, match="Argument `model`"):
        keras_ortho.regularize("model", keras_ortho.OrthoRegularizer())
    unbuilt = keras.Sequential([L.Dense(3)])
    with pytest.raises(ValueError, match="is not built"):
        keras_ortho.regularize(unbuilt, keras_ortho.OrthoRegularizer())
    assert all(v.regularizer is None for v in model.weights)


def test_json_config_names_the_regularizer_for_each_layer():
    model = mixed_model()
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01), include=["depthwise/*", "lstm/*"])
    layers = {layer["config"]["name"]: layer["config"] for layer in json.loads(model.to_json())["config"]["layers"]}
    assert layers["depthwise"]["depthwise_regularizer"]["class_name"] == "OrthoRegularizer"
    cell = layers["lstm"]["cell"]["config"] if "cell" in layers["lstm"] else layers["lstm"]
    assert cell["recurrent_regularizer"]["class_name"] == "OrthoRegularizer"
    assert layers["conv"]["kernel_regularizer"] is None


def dense_model():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(6, name="hidden")
    head = keras.layers.Dense(4, name="head")
    return keras.Model(inputs, head(hidden(inputs))), hidden


@pytest.mark.parametrize("change", ["lora", "int8"])
def test_kernels_that_cannot_train_are_left_out_with_a_warning_naming_them(change):
    model, hidden = dense_model()
    if change == "lora":
        hidden.enable_lora(2)
    else:
        hidden.quantize("int8")
    with pytest.warns(UserWarning, match=r"left out 1 kernel\(s\) that cannot train: 'hidden/kernel'"):
        paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.1))
    assert paths == ["head/kernel"]
    expected = (
        0.1
        * np.abs(
            to_numpy(model.get_layer("head").kernel).T @ to_numpy(model.get_layer("head").kernel) - np.eye(4)
        ).sum()
    )
    np.testing.assert_allclose(sum(float(to_numpy(v)) for v in model.losses), expected, rtol=1e-5)


def test_a_float8_layer_keeps_a_float_kernel_and_is_regularized_as_a_matrix():
    model, hidden = dense_model()
    hidden.quantize("float8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.1))
    assert sorted(paths) == ["head/kernel", "hidden/kernel"]
    kernel = to_numpy(hidden.kernel)
    np.testing.assert_allclose(
        to_numpy(keras_ortho.slice_errors(hidden.kernel)), [np.abs(kernel.T @ kernel - np.eye(6)).sum()], rtol=1e-5
    )


def dense_stack():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((12,)), L.Dense(5, name="a"), L.Dense(7, name="b"), L.Dense(1, name="out")])


@pytest.mark.parametrize("norm, reduction", [("l1", "sum"), ("l1", "mean"), ("fro", "mean"), ("spectral", "sum")])
def test_starting_factor_puts_the_penalty_at_its_share_of_the_data_loss(norm, reduction):
    model = dense_stack()
    regularizer = keras_ortho.OrthoRegularizer(3.0, norm=norm, reduction=reduction)  # its own factor is not used
    factor = keras_ortho.starting_factor(model, regularizer, data_loss=2.5, share=0.04)
    # The penalty at factor 1, in numpy: the two matrices, not the one-unit head (a single vector).
    unit = sum(reference.norm_penalty(to_numpy(layer.kernel), norm, reduction=reduction) for layer in model.layers[:2])
    # "spectral" is a power iteration, 32 steps: close to eigvalsh, from below, where eigenvalues nearly tie.
    assert factor == pytest.approx(0.04 * 2.5 / unit, rel=1e-3 if norm == "spectral" else 1e-5)
    assert all(v.regularizer is None for v in model.weights)  # nothing set
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(factor, norm=norm, reduction=reduction))
    assert penalty(model) == pytest.approx(0.04 * 2.5, rel=1e-5)  # as Keras collects it


def test_starting_factor_chooses_the_kernels_regularize_would():
    model = mixed_model()
    regularizer = keras_ortho.OrthoRegularizer(reduction="mean")
    for include, exclude in [(None, None), (None, "*lstm*"), ("*", None)]:
        factor = keras_ortho.starting_factor(model, regularizer, 1.5, include=include, exclude=exclude)
        keras_ortho.regularize(model, None, include="*")
        chosen = keras_ortho.regularize(
            model, keras_ortho.OrthoRegularizer(factor, reduction="mean"), include=include, exclude=exclude
        )
        assert len(model.losses) == len(chosen) > 0
        assert penalty(model) == pytest.approx(0.015, rel=1e-5), (include, exclude)


def test_starting_factor_refuses_bad_input_before_any_work():
    model = dense_stack()
    regularizer = keras_ortho.OrthoRegularizer()
    with pytest.raises(TypeError, match=r"Argument `regularizer`.*Received: regularizer=OrthoConstraint\("):
        keras_ortho.starting_factor(model, keras_ortho.OrthoConstraint(), 1.0)
    for bad, error in [("1.0", TypeError), (True, TypeError), (0.0, ValueError), (-1.0, ValueError)]:
        with pytest.raises(error, match=rf"Argument `data_loss`.*Received: data_loss={bad!r}"):
            keras_ortho.starting_factor(model, regularizer, bad)
    for bad in [0.0, float("inf")]:
        with pytest.raises(ValueError, match=rf"Argument `share`.*Received: share={bad!r}"):
            keras_ortho.starting_factor(model, regularizer, 1.0, share=bad)
    with pytest.raises(ValueError, match="is not built"):
        keras_ortho.starting_factor(keras.Sequential([L.Dense(3)]), regularizer, 1.0)
    with pytest.raises(ValueError, match=r"no kernel of .* is left by include='x\*'"):
        keras_ortho.starting_factor(model, regularizer, 1.0, include="x*")
    identity = keras.Sequential([keras.Input((4,)), L.Dense(4, kernel_initializer="identity")])
    with pytest.raises(ValueError, match="orthonormal already"):
        keras_ortho.starting_factor(identity, regularizer, 1.0)
    assert all(v.regularizer is None for v in model.weights)
