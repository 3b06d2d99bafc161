"""The scale a callback puts on every OrthoRegularizer of a model during `fit`.

`OrthoSchedule` and `OrthoTarget` change how strongly a model's
OrthoRegularizers act, epoch by epoch, without touching their config: while
one of them is attached, each regularizer multiplies its penalty by one scalar
variable, `ScaleState.state`, and after `fit` it acts with its own factor again.

Where that variable lives decides whether compiled training sees a change:

* JAX's `fit` hands the model's state to its jitted step as arguments, and a
  variable outside that state would be frozen into the trace as a constant.
  The scale is listed with the model's non-trainable state the way Keras lists
  a Dropout layer's random-seed state (`Layer._seed_generators`: state that
  goes through the compiled step but is not one of the layer's weights), so
  every step reads its current value. TensorFlow and PyTorch read the variable
  where it lives.
* While attached it is saved with the model's weights, under a name of its own
  (`_keras_ortho_scale`), so BackupAndRestore and ModelCheckpoint carry it and
  a resumed `OrthoTarget` goes on from the scale it had reached. A model
  without it, in a process with no callback, ignores that entry on loading.
"""

import warnings

import keras
import numpy as np

from keras_ortho import _layers, _watch

LOG_KEY = "ortho/scale"
_ATTRIBUTE = "_keras_ortho_scale"


class ScaleState(keras.metrics.Metric):
    """One scalar variable, the scale, in a form Keras carries and saves with a model.

    It is a Metric only because that is a saveable Keras object that is not a
    layer (a layer would join a Sequential model's stack): it has nothing to
    reset at epoch starts and puts nothing into the logs.
    """

    def __init__(self, initial):
        super().__init__(name="keras_ortho_scale")
        self.state = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(initial),
            dtype="float32",
            aggregation="none",
            name="scale",
        )

    def update_state(self, *args, **kwargs):
        pass

    def reset_state(self):
        pass

    def result(self):
        return {}

    def save_own_variables(self, store):
        store["scale"] = keras.ops.convert_to_numpy(self.state)

    def load_own_variables(self, store):
        if "scale" in store:  # a file written before the scale was attached has none
            self.state.assign(np.asarray(store["scale"]))

    @property
    def scale(self):
        return float(keras.ops.convert_to_numpy(self.state))


class ScaleCallback(keras.callbacks.Callback):
    """What `OrthoSchedule` and `OrthoTarget` share: attaching the scale and logging it.

    Subclasses assign `self._state.state` in their epoch hooks.
    """

    def __init__(self, initial):
        super().__init__()
        self._initial = initial
        self._state = None
        self._bound = []

    def set_model(self, model):
        # Before any `on_train_begin`: BackupAndRestore restores the scale from
        # its backup there, whatever its place in the callback list.
        super().set_model(model)
        attached = getattr(model, _ATTRIBUTE, None)
        if attached is not None and attached is not self._state:
            _detach(model, attached)  # left by a callback of a fit that raised
        if self._state is None:
            self._state = ScaleState(self._initial)
        if attached is not self._state:
            object.__setattr__(model, _ATTRIBUTE, self._state)  # untracked: not a layer
            model._seed_generators.append(self._state)

    def on_train_begin(self, logs=None):
        model = self.model
        if getattr(model, _ATTRIBUTE, None) is not self._state:
            raise ValueError(
                f"{type(self).__name__} shares fit with another scale callback "
                f"({type(getattr(model, _ATTRIBUTE, None)).__name__} state found); "
                "OrthoSchedule and OrthoTarget both set the one scale of a model's "
                "OrthoRegularizers: attach only one of them."
            )
        if not any(v is self._state.state for v in model.non_trainable_variables):
            raise RuntimeError(
                f"{type(self).__name__}: this Keras release does not list the scale with the "
                "model's state, so compiled training would not see it change."
            )
        self._bound = _regularizers_of(model)
        if not self._bound:
            warnings.warn(
                f"{type(self).__name__}: model '{model.name}' has no trainable weight "
                "regularized by OrthoRegularizer; the scale it logs acts on nothing.",
                RuntimeWarning,
                stacklevel=2,
            )
        for regularizer in self._bound:
            regularizer._scale = self._state.state
        _layers.rebuild_step_functions(model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[LOG_KEY] = self._state.scale

    def on_train_end(self, logs=None):
        for regularizer in self._bound:
            regularizer._scale = None
        self._bound = []
        _detach(self.model, self._state)
        _layers.rebuild_step_functions(self.model)

    def _set_scale(self, scale):
        self._state.state.assign(np.float32(scale))


def _regularizers_of(model):
    """The distinct OrthoRegularizers of the model's trainable weights."""
    found = {}
    for variable in model.trainable_weights:
        regularizer = _watch.ortho_regularizer_of(variable)
        if regularizer is not None:
            found[id(regularizer)] = regularizer
    return list(found.values())


def _detach(model, state):
    if getattr(model, _ATTRIBUTE, None) is state:
        object.__delattr__(model, _ATTRIBUTE)
    model._seed_generators[:] = [s for s in model._seed_generators if s is not state]
