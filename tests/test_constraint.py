"""OrthoConstraint and `constrain`: after an optimizer step every slice is its polar factor.

The reference is numpy's SVD polar factor `U V^T` of each slice, the slices
taken by the layer rules of `test_layers.LAYERS`.
"""

import json
import os

import keras
import numpy as np
import pytest
import reference
from backends import compiled_on_torch_only_for, only_on, to_numpy
from test_layers import LAYERS, inputs_for, model_of, rule_of

import keras_ortho

L = keras.layers


def build(name, how, constraint):
    arguments = [a.replace("_regularizer", "_constraint") for a in LAYERS[name][3]]
    model = model_of(name, {a: constraint for a in arguments} if how == "constructor" else {})
    if how == "constrain":
        # include="*": every kernel the constructor takes, single vectors (Conv2D(groups=8)) too.
        paths = keras_ortho.constrain(model, constraint, include="*")
        assert len(paths) == len(LAYERS[name][2]), paths
    return model


def constrained(model):
    return [v for v in model.trainable_weights if isinstance(v.constraint, keras_ortho.OrthoConstraint)]


def step_without_gradient(model, name, **compile_options):
    """One optimizer step whose update is zero: what changes is the constraint's doing."""
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=lambda y, p: 0.0 * keras.ops.sum(p), **compile_options)
    x = inputs_for(name)
    model.fit(x, np.zeros((len(x), 1), "float32"), epochs=1, batch_size=len(x), verbose=0)


def assert_polar_factors(model, name, before):
    kernels = constrained(model)
    assert len(kernels) == len(LAYERS[name][2])
    for v in kernels:
        rule = rule_of(name, v)
        got = reference.slices_by(to_numpy(v), rule)
        expected = [reference.polar_factor(p) for p in reference.slices_by(before[v.path], rule)]
        assert len(got) == len(expected) > 0
        for slice_got, slice_expected in zip(got, expected, strict=True):
            np.testing.assert_allclose(np.linalg.svd(slice_got, compute_uv=False), 1.0, atol=2e-6, err_msg=v.path)
            np.testing.assert_allclose(slice_got, slice_expected, atol=2e-6, err_msg=v.path)


# `constrain` sets what the constructor does, through another path: the full suite takes it.
@pytest.mark.parametrize("how", ["constructor", pytest.param("constrain", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_step_leaves_each_slice_of_each_layer_rule_orthonormal(name, how):
    model = build(name, how, keras_ortho.OrthoConstraint())
    before = {v.path: to_numpy(v).copy() for v in constrained(model)}
    step_without_gradient(model, name)
    assert_polar_factors(model, name, before)


@pytest.mark.parametrize(
    "name",
    compiled_on_torch_only_for(
        ["Conv2D(groups=2)", "DepthwiseConv2D", "LSTM", "MultiHeadAttention"], "DepthwiseConv2D"
    ),
)
@pytest.mark.slow
def test_under_jit_compile(name):
    model = build(name, "constructor", keras_ortho.OrthoConstraint())
    before = {v.path: to_numpy(v).copy() for v in constrained(model)}
    step_without_gradient(model, name, jit_compile=True)
    assert_polar_factors(model, name, before)


def test_training_keeps_every_slice_orthonormal(rng):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(16, activation="tanh", kernel_constraint=keras_ortho.OrthoConstraint()),
            L.Dense(4, kernel_constraint=keras_ortho.OrthoConstraint()),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    x = rng.normal(size=(64, 8)).astype("float32")
    history = model.fit(x, x[:, :4] ** 2, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for layer in model.layers:
        singular_values = np.linalg.svd(to_numpy(layer.kernel), compute_uv=False)
        np.testing.assert_allclose(singular_values, 1.0, atol=2e-6)


@pytest.mark.parametrize("shape,mode", [((9, 4), "auto"), ((4, 9), "auto"), ((6, 3, 5), "auto"), ((5, 5), "rows")])
def test_newton_schulz_meets_the_svd_polar_factor(rng, shape, mode):
    """Slices with singular values in [0.1, 3] (condition number 30): within float32 rounding after 24 steps."""
    w = (
        np.stack(
            [
                reference.with_singular_values(
                    rng, shape[0], shape[-1], np.geomspace(0.1, 3.0, min(shape[0], shape[-1]))
                )
                for _ in range(shape[1] if len(shape) == 3 else 1)
            ],
            axis=1,
        )
        .reshape(shape)
        .astype("float32")
    )
    plain = keras_ortho.OrthoConstraint(mode=mode)(keras.ops.convert_to_tensor(w))
    fast = keras_ortho.OrthoConstraint(mode=mode, method="newton_schulz")(keras.ops.convert_to_tensor(w))
    expected = np.stack([reference.polar_factor(p) for p in reference.slices(w)], axis=1).reshape(shape)
    np.testing.assert_allclose(to_numpy(plain), expected, atol=2e-6)
    np.testing.assert_allclose(to_numpy(fast), expected, atol=2e-5)


def test_arguments_are_checked_with_the_value_received():
    with pytest.raises(ValueError, match=r"method.*Received: method='qr'"):
        keras_ortho.OrthoConstraint(method="qr")
    with pytest.raises(ValueError, match=r"iterations.*Received: iterations=0"):
        keras_ortho.OrthoConstraint(method="newton_schulz", iterations=0)
    with pytest.raises(ValueError, match=r"iterations.*svd"):
        keras_ortho.OrthoConstraint(iterations=5)
    with pytest.raises(ValueError, match=r"mode"):
        keras_ortho.OrthoConstraint(mode="diagonal")
    with pytest.raises(ValueError, match=r"3x5 slice.*orthonormal columns.*Received: mode='columns'"):
        keras_ortho.OrthoConstraint(mode="columns")(np.ones((3, 5), "float32"))
    with pytest.raises(TypeError, match=r"constraint.*OrthoConstraint.*Received: constraint="):
        keras_ortho.constrain(build("Dense", "constructor", None), keras.constraints.NonNeg())


def wide_and_tall():
    """A wide (3x10) kernel then a tall (10x4) one."""
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(10, name="wide"), keras.layers.Dense(4, name="tall")]
    )


@pytest.mark.parametrize(("mode", "refused", "taken"), [("columns", "wide", "tall"), ("rows", "tall", "wide")])
def test_constrain_refuses_a_side_a_kernel_cannot_have_and_sets_nothing(mode, refused, taken):
    model = wide_and_tall()
    shape = {"wide": "3x10", "tall": "10x4"}[refused]
    with pytest.raises(ValueError, match=rf"constraint.*cannot apply to 1 of.*'{refused}/kernel' \(a {shape} slice"):
        keras_ortho.constrain(model, keras_ortho.OrthoConstraint(mode=mode))
    assert all(layer.kernel.constraint is None and layer.kernel_constraint is None for layer in model.layers)
    # Left out, the other kernel takes it.
    assert keras_ortho.constrain(model, keras_ortho.OrthoConstraint(mode=mode), exclude=f"{refused}*") == [
        f"{taken}/kernel"
    ]


def test_given_to_a_constructor_the_first_step_names_the_weight():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(10, kernel_constraint=keras_ortho.OrthoConstraint(mode="columns"))]
    )
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"3x10 slice has more columns than rows.*for weight .*kernel.*Dense"):
        model.fit(np.ones((4, 3), "float32"), np.ones((4, 10), "float32"), verbose=0)


@pytest.mark.parametrize(
    "constraint",
    [
        keras_ortho.OrthoConstraint(),
        keras_ortho.OrthoConstraint(slice_axis=1, mode="rows", method="newton_schulz", iterations=9),
    ],
)
def test_config_round_trips(constraint):
    config = constraint.get_config()
    restored = keras.constraints.deserialize(json.loads(json.dumps(keras.constraints.serialize(constraint))))
    assert isinstance(restored, keras_ortho.OrthoConstraint) and restored.get_config() == config


@pytest.mark.parametrize("form", [".keras", ".h5", "json"])
@pytest.mark.parametrize("name", ["LSTM", "MultiHeadAttention", "DepthwiseConv2D"])
def test_constrain_survives_saving_and_none_removes(tmp_path, name, form):
    model = build(name, "constructor", None)
    constraint = keras_ortho.OrthoConstraint(method="newton_schulz", iterations=30)
    paths = keras_ortho.constrain(model, constraint)
    assert len(paths) == len(LAYERS[name][2])
    if form == "json":
        loaded = keras.models.model_from_json(model.to_json())
    else:
        path = os.path.join(tmp_path, f"model{form}")
        model.save(path)
        loaded = keras.models.load_model(path)
    kept = constrained(loaded)
    assert len(kept) == len(paths)
    assert all(v.constraint.get_config() == constraint.get_config() for v in kept)
    removed = keras_ortho.constrain(model, None)
    assert sorted(removed) == sorted(paths) and not constrained(model)


def test_constraining_some_attention_projections_warns_that_the_config_cannot_say_so():
    model = build("MultiHeadAttention", "constructor", None)
    with pytest.warns(UserWarning, match=r"constrain: the projections.*kernel_constraint"):
        paths = keras_ortho.constrain(model, keras_ortho.OrthoConstraint(), exclude="*attention_output*")
    assert len(paths) == 3


def test_a_tensor_standing_for_a_weight_is_sliced_by_its_layers_rule():
    """As an optimizer in a stateless scope may call it: with the value, the variable among its locals."""
    model = build("DepthwiseConv2D", "constructor", keras_ortho.OrthoConstraint())
    (variable,) = constrained(model)
    value = keras.ops.convert_to_tensor(np.random.default_rng(3).normal(size=variable.shape).astype("float32"))

    def apply(variable, value):  # the caller's frame holds the variable, as Keras's optimizer does
        return variable.constraint(value)

    with keras.StatelessScope([(variable, value)]):
        projected = apply(variable, value)
    got = reference.slices_by(to_numpy(projected), rule_of("DepthwiseConv2D", variable))
    expected = [
        reference.polar_factor(p) for p in reference.slices_by(to_numpy(value), rule_of("DepthwiseConv2D", variable))
    ]
    assert len(got) == 3  # one (9, 2) matrix per input channel
    for slice_got, slice_expected in zip(got, expected, strict=True):
        np.testing.assert_allclose(slice_got, slice_expected, atol=2e-6)


def test_a_slice_whose_singular_values_cluster_near_one_gets_its_polar_factor():
    """A float32 slice met after an SGD step of a constrained 32-layer tanh MLP (singular values in
    [0.9995, 1.016]), on which LAPACK's divide-and-conquer SVD fails to converge: JAX's default SVD on
    CPU returned NaN for it."""
    w = np.load(os.path.join(os.path.dirname(__file__), "data", "gesdd_fails_float32.npy"))
    assert w.shape == (64, 64) and w.dtype == np.float32
    got = to_numpy(keras_ortho.OrthoConstraint()(keras.ops.convert_to_tensor(w)))
    np.testing.assert_allclose(got, reference.polar_factor(w.astype("float64")), atol=2e-6)


@only_on("jax", why="JAX before 0.5.3 has one SVD on CPU, whose NaN the backend catches")
@pytest.mark.parametrize("shape", [(64, 64), (9, 4), (4, 9), (3, 9, 4)])
def test_a_jax_without_a_choice_of_cpu_svd_recomputes_a_failed_slice(monkeypatch, shape):
    """Where the divide-and-conquer SVD is the only one (JAX 0.4.38 of the oldest Keras claimed), a stack
    whose SVD came back non-finite is recomputed from its Gram's eigendecomposition."""
    from keras_ortho._backend import jax as jax_backend

    monkeypatch.setattr(jax_backend, "_CPU_QR", False)
    w = np.load(os.path.join(os.path.dirname(__file__), "data", "gesdd_fails_float32.npy"))
    got = to_numpy(keras_ortho.OrthoConstraint()(keras.ops.convert_to_tensor(w)))
    np.testing.assert_allclose(got, reference.polar_factor(w.astype("float64")), atol=2e-6)
    # The fallback itself, on slices of every shape (singular values in [0.5, 2]).
    rng = np.random.default_rng(0)
    count = shape[0] if len(shape) == 3 else 1
    spectrum = np.linspace(0.5, 2.0, min(shape[-2:]))
    slices = [reference.with_singular_values(rng, *shape[-2:], spectrum) for _ in range(count)]
    phi = np.stack(slices).reshape(shape).astype("float32")
    u, vh = jax_backend._svd_factors_by_eigh(phi)
    expected = np.stack([reference.polar_factor(p.astype("float64")) for p in slices]).reshape(shape)
    np.testing.assert_allclose(np.matmul(np.asarray(u), np.asarray(vh)), expected, atol=2e-6)
