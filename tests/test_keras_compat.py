"""What keras_ortho relies on in how Keras runs `fit` (`keras_ortho._keras_compat`).

Each test states one behaviour of Keras that a release could change; a failure
here names the function of `_keras_compat` to revisit.
"""

import keras
import numpy as np
import pytest

from keras_ortho import _keras_compat


class SeesFitFrame(keras.callbacks.Callback):
    """Records, from each hook, the frame `running_fit_frame` finds and whether it runs."""

    def __init__(self, raise_at_epoch=None):
        super().__init__()
        self.frames, self.running = [], []
        self.raise_at_epoch = raise_at_epoch

    def _look(self):
        frame = _keras_compat.running_fit_frame(self.model)
        self.frames.append(frame)
        self.running.append(_keras_compat.is_running(frame))

    def on_train_begin(self, logs=None):
        self._look()

    def on_epoch_begin(self, epoch, logs=None):
        self._look()
        if epoch == self.raise_at_epoch:
            raise RuntimeError("raised inside fit")

    def on_train_batch_end(self, batch, logs=None):
        self._look()


def small_model():
    x = keras.Input((3,))
    model = keras.Model(x, keras.layers.Dense(2)(x))
    model.compile(optimizer="sgd", loss="mse")
    return model


def data():
    return np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32")


def test_every_hook_of_fit_finds_the_frame_of_fit_itself():
    model, seen = small_model(), SeesFitFrame()
    model.fit(*data(), batch_size=2, epochs=2, verbose=0, callbacks=[seen])
    assert len(seen.frames) == 1 + 2 * (1 + 2)
    assert all(frame is seen.frames[0] for frame in seen.frames)
    assert seen.frames[0].f_code.co_name == "fit" and seen.running == [True] * len(seen.frames)
    assert not _keras_compat.is_running(seen.frames[0])  # fit has returned


def test_a_fit_that_raised_is_no_longer_running():
    model, seen = small_model(), SeesFitFrame(raise_at_epoch=1)
    with pytest.raises(RuntimeError, match="raised inside fit"):
        model.fit(*data(), batch_size=2, epochs=3, verbose=0, callbacks=[seen])
    assert seen.frames[0].f_code.co_name == "fit" and all(seen.running)
    assert not _keras_compat.is_running(seen.frames[0])


def test_outside_fit_the_first_frame_outside_keras_stands_in():
    """A custom training loop calls the hooks itself: its own frame bounds the scale."""
    import sys

    assert _keras_compat.running_fit_frame(small_model()) is sys._getframe()


def test_rebuilding_the_step_functions_drops_the_cached_ones():
    model = small_model()
    model.fit(*data(), epochs=1, verbose=0)
    model.evaluate(*data(), verbose=0)
    train, test = model.train_function, model.test_function
    assert train is not None and test is not None
    _keras_compat.rebuild_step_functions(model)
    assert model.train_function is not train and model.test_function is not test


class Spy(keras.regularizers.Regularizer):
    """Records what `calling_weight` finds each time Keras calls it."""

    def __init__(self):
        self.found = []

    def __call__(self, x):
        self.found.append(_keras_compat.calling_weight(x, self, "regularizer"))
        return keras.ops.sum(x) * 0.0


def test_stateless_call_hands_the_regularizer_the_scope_value_from_a_layer_frame():
    """`calling_weight`: in `stateless_call` Keras passes the tensor the scope maps the variable to,
    and a layer's `_get_regularization_losses` frame (its `self`) is within reach."""
    spy = Spy()
    inputs = keras.Input((3,))
    layer = keras.layers.Dense(2, kernel_regularizer=spy)
    model = keras.Model(inputs, layer(inputs))
    values = [np.ones(v.shape, "float32") for v in model.trainable_variables]
    model.stateless_call(values, [], np.zeros((1, 3), "float32"), return_losses=True)
    assert len(spy.found) == 1
    variable, caller = spy.found[0]
    assert variable is layer.kernel
    assert isinstance(caller, keras.layers.Layer)


# --- Layers: where a layer keeps its weights, its sublayers and its arguments ------------


def test_a_layer_lists_its_own_variables_and_not_its_sublayers():
    dense, norm = keras.layers.Dense(2), keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((3,)), dense, norm])
    assert _keras_compat.own_trainable_variables(dense) == [dense.kernel, dense.bias]
    assert _keras_compat.own_non_trainable_variables(norm) == [norm.moving_mean, norm.moving_variance]
    assert _keras_compat.own_trainable_variables(model) == []


def test_sublayers_are_one_level_down_and_all_layers_every_level_once():
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)
    inputs = keras.Input((4, 6))
    inner = keras.Model(inputs, attention(inputs, inputs), name="inner")
    outer = keras.Sequential([keras.Input((4, 6)), inner, keras.layers.Flatten()])
    assert [layer for layer in _keras_compat.sublayers(outer) if layer.weights] == [inner]
    projections = [attention._query_dense, attention._key_dense, attention._value_dense, attention._output_dense]
    assert all(p in _keras_compat.sublayers(attention) for p in projections)
    everything = _keras_compat.all_layers(outer)
    assert everything[0] is outer and len(everything) == len({id(layer) for layer in everything})
    assert all(p in everything for p in projections) and inner in everything


def test_a_lora_kernel_is_found_where_the_layer_keeps_it():
    dense = keras.layers.Dense(4)
    dense.build((None, 3))
    dense.enable_lora(rank=2)
    frozen = next(v for v in dense.non_trainable_weights if v.name == "kernel")
    assert _keras_compat.kernel_attribute(dense, frozen) == ("_kernel", "kernel_regularizer")
    assert _keras_compat.kernel_attribute(dense, dense.bias) is None
    embedding = keras.layers.Embedding(10, 4)
    embedding.build((None,))
    assert _keras_compat.kernel_attribute(embedding, embedding.embeddings)[1] == "embeddings_regularizer"


def test_a_depthwise_kernel_takes_the_depthwise_regularizer_argument():
    layer = keras.layers.DepthwiseConv2D(3)
    layer.build((None, 6, 6, 2))
    assert _keras_compat.kernel_attribute(layer, layer.kernel)[1] == "depthwise_regularizer"
    assert "depthwise_regularizer" in layer.get_config()


class MyLSTMCell(keras.layers.LSTMCell):
    pass


@pytest.mark.parametrize(
    "cell, gates",
    [
        (keras.layers.LSTM(3).cell, 4),
        (keras.layers.GRU(3).cell, 3),
        (keras.layers.SimpleRNN(3).cell, 1),
        (keras.layers.ConvLSTM2D(2, 3).cell, 4),
        (MyLSTMCell(3), 4),
        (keras.layers.Dense(3), None),
    ],
    ids=["LSTM", "GRU", "SimpleRNN", "ConvLSTM2D", "subclass", "Dense"],
)
def test_recurrent_cells_are_known_by_class_name(cell, gates):
    assert _keras_compat.recurrent_gates(cell) == gates


def test_attention_keeps_its_kernel_regularizer_argument_where_its_config_reads_it():
    r = keras.regularizers.L2(0.1)
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, kernel_regularizer=r)
    attribute = _keras_compat.argument_attribute(attention, "kernel_regularizer")
    assert getattr(attention, attribute) is r
    setattr(attention, attribute, None)
    assert attention.get_config()["kernel_regularizer"] is None
    dense = keras.layers.Dense(2, kernel_regularizer=r)
    assert getattr(dense, _keras_compat.argument_attribute(dense, "kernel_regularizer")) is r


def test_a_bare_variable_finds_the_layer_that_holds_it():
    model = small_model()
    dense = model.layers[-1]
    assert _keras_compat.holder_of(dense.kernel) is dense
    assert _keras_compat.holder_of(keras.Variable(np.zeros((2, 2)))) is None


# --- How Keras calls a regularizer ------------------------------------------------------


def test_a_stateless_scope_maps_a_variable_to_its_tensor():
    variable = keras.Variable(np.zeros((2, 2), "float32"))
    assert not _keras_compat.in_stateless_scope()
    with keras.StatelessScope(state_mapping=[(variable, np.ones((2, 2), "float32"))]) as scope:
        assert _keras_compat.in_stateless_scope()
        mapped = scope.get_current_value(variable)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mapped), 1.0)
        assert _keras_compat.standing_for(mapped, [variable]) is variable


def test_stateless_call_passes_the_scope_tensor_itself():
    """What `BoundWeights.find` relies on: the tensor the regularizer gets *is* the scope's value."""
    seen = []

    class Same(keras.regularizers.Regularizer):
        def __call__(self, x):
            seen.append(_keras_compat.standing_for(x, model.trainable_variables) is not None)
            return keras.ops.sum(x) * 0.0

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_regularizer=Same())(inputs))
    values = [np.ones(v.shape, "float32") for v in model.trainable_variables]
    model.stateless_call(values, [], np.zeros((1, 3), "float32"), return_losses=True)
    assert seen == [True]


def test_eager_losses_pass_the_variable_from_a_layer_frame():
    spy = Spy()
    inputs = keras.Input((3,))
    layer = keras.layers.Dense(2, kernel_regularizer=spy)
    model = keras.Model(inputs, layer(inputs))
    spy.found.clear()
    _ = model.losses
    assert len(spy.found) == 1
    variable, caller = spy.found[0]
    assert variable is layer.kernel and isinstance(caller, keras.layers.Layer)


def test_an_activity_regularizer_is_called_from_its_layer():
    found = []

    class Activity(keras.regularizers.Regularizer):
        def __call__(self, x):
            found.append(_keras_compat.activity_layer(self))
            return keras.ops.sum(x) * 0.0

    activity = Activity()
    layer = keras.layers.Dense(2, activity_regularizer=activity)
    layer(np.zeros((1, 3), "float32"))
    assert found == [layer]
    activity(np.zeros((1, 2), "float32"))  # called by the user: no layer
    assert found[-1] is None


# --- How Keras runs fit -----------------------------------------------------------------


class ReadsKernel(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.read = []

    def on_train_batch_end(self, batch, logs=None):
        model = _keras_compat.synced_model(self)
        self.read.append(keras.ops.convert_to_numpy(model.layers[-1].kernel).copy())


def test_a_synced_model_holds_the_values_fit_is_training():
    model, reads = small_model(), ReadsKernel()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[reads])
    assert len(reads.read) == 2
    assert not np.allclose(reads.read[0], reads.read[1])  # each read sees the step just taken
    np.testing.assert_allclose(reads.read[-1], keras.ops.convert_to_numpy(model.layers[-1].kernel))


class OneScalar(keras.metrics.Metric):
    def __init__(self):
        super().__init__(name="one_scalar")
        self.state = self.add_variable(shape=(), initializer="zeros", name="state")

    def update_state(self, *args, **kwargs):
        pass

    def result(self):
        return self.state

    # What the scale's state does: the saving code asks each object it finds for its variables.
    def save_own_variables(self, store):
        store["state"] = keras.ops.convert_to_numpy(self.state)

    def load_own_variables(self, store):
        self.state.assign(np.asarray(store["state"]))


def test_attached_state_goes_through_the_step_and_into_saved_weights(tmp_path):
    model, state = small_model(), OneScalar()
    _keras_compat.attach_state(model, "_attached", state)
    assert any(v is state.state for v in model.non_trainable_variables)
    state.state.assign(3.0)
    model.save_weights(tmp_path / "with.weights.h5")
    state.state.assign(0.0)
    model.load_weights(tmp_path / "with.weights.h5")
    assert float(keras.ops.convert_to_numpy(state.state)) == 3.0
    _keras_compat.detach_state(model, "_attached", state)
    assert not hasattr(model, "_attached")
    assert not any(v is state.state for v in model.non_trainable_variables)


def test_guarded_methods_run_the_guard_first_and_stay_out_of_config_state_and_files(tmp_path):
    """`guard_methods`: an instance attribute shadows the class's method, and Keras neither tracks nor saves it."""
    model, names, calls = small_model(), ("fit", "evaluate", "save"), []
    model.evaluate = lambda *args, **kwargs: "the user's"  # an instance attribute of the user's, to be given back
    config, variables = model.get_config(), len(model.variables)
    shadowed = _keras_compat.guard_methods(model, names, lambda: calls.append("guard"))
    model.fit(*data(), epochs=1, verbose=0)
    assert calls == ["guard"] and model.fit.__name__ == "fit"
    assert model.evaluate() == "the user's" and len(calls) == 2
    assert model.get_config() == config and len(model.variables) == variables
    model.save(tmp_path / "guarded.keras")
    assert len(calls) == 3
    assert not set(names) & set(vars(keras.saving.load_model(tmp_path / "guarded.keras")))
    _keras_compat.unguard_methods(model, names, shadowed)
    assert "fit" not in vars(model) and model.fit.__func__ is type(model).fit
    assert model.evaluate() == "the user's"
    model.fit(*data(), epochs=1, verbose=0)
    assert len(calls) == 3


def test_steps_run_ahead_of_python_unless_a_batch_hook_is_added():
    """`add_hooks`: Keras dispatches steps asynchronously (on a thread-safe backend) while every
    batch hook of every callback is still the base Callback's, which Keras marks as its default."""
    from keras.src.utils.python_utils import is_default

    plain, hooked = keras.callbacks.Callback(), keras.callbacks.Callback()
    _keras_compat.add_hooks(hooked, on_train_batch_end=lambda batch, logs=None: None)
    assert is_default(plain.on_train_batch_end) and not is_default(hooked.on_train_batch_end)
    assert type(hooked).on_train_batch_end is keras.callbacks.Callback.on_train_batch_end  # the class untouched
    if keras.src.backend.IS_THREAD_SAFE:  # JAX and PyTorch
        assert keras.callbacks.CallbackList([plain])._async_train
        assert not keras.callbacks.CallbackList([hooked])._async_train


def test_the_tensor_a_scope_maps_a_variable_to_is_found_among_many():
    a, b = keras.Variable(np.zeros((2, 2), "float32")), keras.Variable(np.zeros((2, 2), "float32"))
    assert _keras_compat.standing_for(np.ones((2, 2)), [a, b]) is None  # no scope
    with keras.StatelessScope(
        state_mapping=[(a, np.ones((2, 2), "float32")), (b, np.ones((2, 2), "float32"))]
    ) as scope:
        assert _keras_compat.standing_for(scope.get_current_value(b), [a, b]) is b
        assert _keras_compat.standing_for(np.ones((2, 2), "float32"), [a, b]) is None  # equal, not the same
