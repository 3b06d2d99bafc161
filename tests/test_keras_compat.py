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
    """Records what `weight_behind` finds each time Keras calls it."""

    def __init__(self):
        self.found = []
        self._warned_shapes = set()

    def __call__(self, x):
        self.found.append(_keras_compat.weight_behind(x, self, "regularizer"))
        return keras.ops.sum(x) * 0.0


def test_stateless_call_hands_the_regularizer_the_scope_value_from_a_layer_frame():
    """`weight_behind`: in `stateless_call` Keras passes the tensor the scope maps the variable to,
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
