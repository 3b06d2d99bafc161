"""Bind once, look up never: where keras_ortho meets a model, each weight is bound to its regularizer.

A regularizer (or constraint) given to a layer's constructor learns which
weight a bare tensor stands for (JAX's `fit`, `stateless_call`) from Keras's
calling frames, once. Once `regularize`, `constrain`, a callback's `set_model`
or the report has met the model, it knows its weights by identity and never
looks: these tests make the lookup raise and train anyway.
"""

import copy
import gc

import keras
import numpy as np
import pytest
from backends import only_on, to_numpy

import keras_ortho
from keras_ortho import _keras_compat, report

L = keras.layers
FACTOR = 0.05


def model_with(regularizer=None, constraint=None):
    """Dense, MultiHeadAttention (per head) and LSTM (per gate), each carrying `regularizer` from its constructor."""
    keras.utils.set_random_seed(0)
    arguments = {"kernel_regularizer": regularizer, "kernel_constraint": constraint}
    inputs = keras.Input((4, 6))
    x = L.MultiHeadAttention(num_heads=2, key_dim=3, name="attention", **arguments)(inputs, inputs)
    x = L.LSTM(5, recurrent_regularizer=regularizer, name="lstm", **arguments)(x)
    outputs = L.Dense(3, name="head", **arguments)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4, 6)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")


# How each entry point meets a model.
MEET = {
    "regularize": lambda model, r: keras_ortho.regularize(model, r),
    "OrthoLogger.set_model": lambda model, r: keras_ortho.OrthoLogger().set_model(model),
    "OrthoSchedule.set_model": lambda model, r: keras_ortho.OrthoSchedule(lambda epoch: 1.0).set_model(model),
    "report": lambda model, r: report.measure(model),
}


@pytest.fixture
def no_lookup(monkeypatch):
    """Makes the constructor path's frame lookup raise: a bound weight must never need it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a weight keras_ortho has met was looked up in Keras's calling frames")

    monkeypatch.setattr(_keras_compat, "calling_weight", refuse)


def stateless_losses(model):
    values = [keras.ops.convert_to_tensor(to_numpy(v)) for v in model.trainable_variables]
    _, _, losses = model.stateless_call(values, model.non_trainable_variables, data()[0][:1], return_losses=True)
    return sorted(float(to_numpy(loss)) for loss in losses)


def eager_losses(model):
    return sorted(float(to_numpy(loss)) for loss in model.losses)


@pytest.mark.parametrize("meet", sorted(MEET))
def test_a_model_met_once_is_never_looked_up_again(meet, no_lookup):
    r = keras_ortho.OrthoRegularizer(FACTOR)
    model = model_with(regularizer=None if meet == "regularize" else r)
    MEET[meet](model, r)
    bound = [v for v in model.trainable_weights if v.regularizer is not None]
    assert len(bound) == 7  # query, key, value, output; LSTM kernel, recurrent kernel; Dense kernel
    assert len(bound[0].regularizer._bound) == 7
    # In a stateless scope Keras passes tensors, not variables: each is known by identity.
    np.testing.assert_allclose(stateless_losses(model), eager_losses(model), rtol=1e-6)


def test_the_constructor_path_looks_up_once_then_knows_its_weights(monkeypatch):
    r = keras_ortho.OrthoRegularizer(FACTOR)
    model = model_with(regularizer=r)
    assert len(r._bound) == 0  # nothing of keras_ortho has met the model
    calls = []
    lookup = _keras_compat.calling_weight
    monkeypatch.setattr(_keras_compat, "calling_weight", lambda *a: calls.append(1) or lookup(*a))
    first = stateless_losses(model)
    assert 1 <= len(calls) <= 7 and len(r._bound) == 7
    calls.clear()
    assert stateless_losses(model) == first and calls == []


@only_on("jax", why="only JAX's fit hands regularizers and constraints tensors instead of variables")
def test_jax_fit_trains_a_met_model_without_a_lookup(no_lookup):
    r, c = keras_ortho.OrthoRegularizer(FACTOR), keras_ortho.OrthoConstraint()
    model = model_with(regularizer=r, constraint=c)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    keras_ortho.OrthoLogger().set_model(model)  # what `fit` does first with a callback
    assert len(c._bound) == 6  # as above, less the recurrent kernel (no recurrent_constraint)
    model.fit(*data(), epochs=1, batch_size=4, verbose=0)
    head = to_numpy(model.get_layer("head").kernel)
    np.testing.assert_allclose(head.T @ head, np.eye(3), atol=1e-5)  # projected: orthonormal columns


def test_a_regularizer_keeps_no_model_alive():
    r = keras_ortho.OrthoRegularizer(FACTOR)
    model = model_with(regularizer=r)
    keras_ortho.regularize(model, r)
    assert len(r._bound) == 7
    del model
    gc.collect()
    assert len(r._bound) == 0


def test_a_copy_has_the_same_config_and_meets_its_weights_anew():
    r = keras_ortho.OrthoRegularizer(FACTOR, norm="fro")
    model = model_with(regularizer=r)
    keras_ortho.regularize(model, r)
    copied = copy.deepcopy(r)
    assert copied.get_config() == r.get_config()
    assert len(copied._bound) == 0 and len(r._bound) == 7
    assert all(v.regularizer is r for v in model.trainable_weights if v.regularizer is not None)


@only_on("torch", why="Dynamo is PyTorch's compiler")
@pytest.mark.parametrize("norm", ["l1", "spectral", "coherence"])
def test_dynamo_compiles_the_bound_penalty_in_one_graph(norm):
    import torch._dynamo as dynamo

    r = keras_ortho.OrthoRegularizer(FACTOR, norm=norm)
    model = model_with(regularizer=r)
    keras_ortho.OrthoLogger().set_model(model)
    dynamo.reset()
    explained = dynamo.explain(lambda: sum(model.losses))()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
