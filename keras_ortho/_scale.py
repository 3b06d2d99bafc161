"""The scale a callback puts on every OrthoRegularizer of a model during `fit`.

`OrthoSchedule` and `OrthoTarget` change how strongly a model's
OrthoRegularizers act, epoch by epoch, without touching their config: while
one of them is attached, each regularizer multiplies its penalty by one scalar
variable, `ScaleState.state`, and after `fit` it acts with its own factor again.

Where that variable lives decides whether compiled training sees a change:

* JAX's `fit` hands the model's state to its jitted step as arguments, and a
  variable outside that state would be frozen into the trace as a constant.
  The scale is listed with the model's non-trainable state the way Keras lists
  a Dropout layer's random-seed state (state that goes through the compiled
  step but is not one of the layer's weights; `_keras_compat.attach_state`),
  so every step reads its current value. TensorFlow and PyTorch read the variable
  where it lives.
* While attached it is saved with the model's weights, under a name of its own
  (`_keras_ortho_scale`), so BackupAndRestore and ModelCheckpoint carry it and
  a resumed `OrthoTarget` goes on from the scale it had reached. A model
  without it, in a process with no callback, ignores that entry on loading.
"""

import warnings

import keras
import numpy as np

from keras_ortho import _backend, _binding, _keras_compat, _watch

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
        self.binding = None
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
        if self.binding is None or self.binding.release_if_stale():
            return  # the fit it belonged to is over: nothing of it goes into a file
        store["scale"] = keras.ops.convert_to_numpy(self.state)

    def load_own_variables(self, store):
        # `keys()`: Keras 3.8's weight store has no `in`. A file written before the scale was attached has none.
        if "scale" in store.keys():
            self.state.assign(np.asarray(store["scale"]))

    @property
    def scale(self):
        return float(keras.ops.convert_to_numpy(self.state))


class ScaleCallback(keras.callbacks.Callback):
    """What `OrthoSchedule` and `OrthoTarget` share: attaching the scale and logging it.

    Subclasses set the epoch's scale with `_set_scale` in their epoch hooks.

    With `every > 1` (lazy regularization), the scale variable holds
    `every * scale` on one training step in `every` (the first of the fit, and
    every `every`-th after it) and 0 on the others, where each regularizer
    computes nothing (its penalty sits in the branch of a `cond` not taken);
    during evaluation it holds the plain scale. The batch hooks that do this exist only then, so a
    fit without them keeps Keras's asynchronous stepping.
    """

    def __init__(self, initial, every=1):
        super().__init__()
        self._initial = initial
        self._state = None
        self.every = every
        self._scale_value = initial
        self._steps = 0
        self._lazy_value = None  # the lazy scale an evaluation interrupts
        if every > 1:
            _keras_compat.add_hooks(
                self,
                on_train_batch_begin=self._lazy_step,
                on_test_begin=self._plain_for_evaluation,
                on_test_end=self._lazy_after_evaluation,
            )

    def set_model(self, model):
        # Before any `on_train_begin`: BackupAndRestore restores the scale from
        # its backup there, whatever its place in the callback list.
        super().set_model(model)
        _binding.assign_rules(model)  # bound once: no lookup when the step is traced
        attached = getattr(model, _ATTRIBUTE, None)
        if attached is not None and attached is not self._state:
            attached.binding.release_if_stale()  # left by a fit that raised
        if self._state is None:
            self._state = ScaleState(self._initial)
        attached = getattr(model, _ATTRIBUTE, None)
        if attached is None:
            ScaleBinding(model, self._state)
        elif attached is self._state:
            self._state.binding.follow_running_fit()

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
        regularizers = _regularizers_of(model)
        if not regularizers:
            warnings.warn(
                f"{type(self).__name__}: model '{model.name}' has no trainable weight "
                "regularized by OrthoRegularizer; the scale it logs acts on nothing.",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.every > 1 and getattr(model, "steps_per_execution", 1) > 1:
            raise ValueError(
                f"{type(self).__name__}(every={self.every}) sets the scale between training steps, "
                f"and model '{model.name}' runs {model.steps_per_execution} steps per execution "
                "with no callback between them. Compile it with steps_per_execution=1 for lazy "
                "regularization."
            )
        self._state.binding.bind(regularizers, lazy=self.every > 1)
        self._steps = 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[LOG_KEY] = self._scale_value if self.every > 1 else self._state.scale

    def on_train_end(self, logs=None):
        if self._state is not None and self._state.binding is not None:
            self._state.binding.release()

    def _set_scale(self, scale):
        self._scale_value = scale
        if self.every == 1:
            self._state.state.assign(np.float32(scale))

    def _lazy_step(self, batch, logs=None):
        # The model synced first: on JAX the running state goes back into the
        # variables, and the next step takes it from them, this one included.
        _keras_compat.synced_model(self)
        on = self._steps % self.every == 0
        self._state.state.assign(np.float32(self.every * self._scale_value if on else 0.0))
        self._steps += 1

    def _plain_for_evaluation(self, logs=None):
        _keras_compat.synced_model(self)
        self._lazy_value = keras.ops.convert_to_numpy(self._state.state)
        self._state.state.assign(np.float32(self._scale_value))

    def _lazy_after_evaluation(self, logs=None):
        _keras_compat.synced_model(self)
        self._state.state.assign(self._lazy_value)


class ScaleBinding:
    """The scale attached to one model for one `fit`, and undone when that fit is over.

    Attached, the scale is listed with the model's state; bound, every
    OrthoRegularizer of the model multiplies its penalty by it. `fit` calls no
    hook when it raises (an exception in any callback or step, Ctrl-C), so the
    end of the fit is also found another way: whoever meets the binding next
    asks whether the fit that attached it is still running (its frame on a
    stack, `_keras_compat`) and releases it if not. Those are the regularizer
    (`model.losses`, and every trace of a step), the state's saving, and the
    model's `fit`, `evaluate`, `train_on_batch`, `test_on_batch`, `save` and
    `save_weights`, guarded on the instance while attached (they run before
    Keras collects the model's state or uses a cached step function). After a
    release the model is as before the fit: plain factor, no scale variable,
    step functions rebuilt.
    """

    GUARDED = ("fit", "evaluate", "train_on_batch", "test_on_batch", "save", "save_weights")

    def __init__(self, model, state):
        self.model, self.state, self.regularizers, self.lazy = model, state, [], False
        self.fit_frame = _keras_compat.running_fit_frame(model)
        state.binding = self
        _keras_compat.attach_state(model, _ATTRIBUTE, state)
        self._shadowed = _keras_compat.guard_methods(model, self.GUARDED, self.release_if_stale)

    def follow_running_fit(self):
        """Anchors the binding to the `fit` running now (a callback met again in a new fit)."""
        self.fit_frame = _keras_compat.running_fit_frame(self.model)

    def bind(self, regularizers, lazy=False):
        self.lazy = lazy
        self.regularizers = list(regularizers)
        for regularizer in self.regularizers:
            regularizer._scale = self
        _keras_compat.rebuild_step_functions(self.model)

    def is_stale(self):
        # The stacks are Python's, which PyTorch's Dynamo cannot trace (it warned, then broke the graph there
        # anyway): under Dynamo they are read outside its trace.
        backend, running = _backend.current(), _keras_compat.is_running
        if backend.dynamo_compiling():
            running = backend.outside_dynamo(running)
        return self.fit_frame is None or not running(self.fit_frame)

    def release_if_stale(self):
        """Releases the binding if its fit is over; returns whether it did."""
        if self.is_stale():
            self.release()
            return True
        return False

    def release(self):
        model, state = self.model, self.state
        _keras_compat.recover_after_fit(model)  # a JAX fit that raised may have left them empty
        for regularizer in self.regularizers:
            if regularizer._scale is self:
                regularizer._scale = None
        self.regularizers, self.fit_frame = [], None
        _keras_compat.unguard_methods(model, self.GUARDED, self._shadowed)
        _keras_compat.detach_state(model, _ATTRIBUTE, state)
        state.binding = None
        _keras_compat.rebuild_step_functions(model)

    @property
    def variable(self):
        return self.state.state


def _regularizers_of(model):
    """The distinct OrthoRegularizers of the model's trainable weights."""
    found = {}
    for variable in model.trainable_weights:
        regularizer = _watch.ortho_regularizer_of(variable)
        if regularizer is not None:
            found[id(regularizer)] = regularizer
    return list(found.values())
