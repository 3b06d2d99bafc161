"""Where keras_ortho depends on how Keras runs `fit` and calls regularizers and constraints, beyond its public API.

Each function says what Keras does there and what breaks if a release changes
it; `tests/test_keras_compat.py` fails loudly on such a release.
"""

import sys
import warnings

import keras

from keras_ortho import _layers

try:  # Keras's own accessor; not exported, so its absence is handled (see `weight_behind`)
    from keras.src.backend.common.stateless_scope import get_stateless_scope
except ImportError:  # pragma: no cover - depends on the Keras release
    get_stateless_scope = None

# How many callers up `weight_behind` looks for the variable: Keras's
# `Layer._get_regularization_losses` calls the regularizer directly.
_CALLERS_SEARCHED = 4

# Modules whose frames stand between a callback hook and the code that drove it.
_DRIVER_MODULES = ("keras.", "keras_ortho.")


def running_fit_frame(model):
    """The frame of the `fit` call of `model` that is running now, seen from a callback.

    Keras's `Model.fit` (every backend's trainer) builds its CallbackList and
    calls each hook from its own frame, whose `self` is the model, and it
    calls no hook (no `on_train_end`) when it raises: whether that frame is
    still on a stack is the only sign that the fit is over. A custom training
    loop that calls the hooks itself has no `fit` frame; its own function's
    frame (the first frame outside Keras and keras_ortho) stands in.

    If a Keras release renamed `fit`'s frame or called hooks from another
    thread, this would return the stand-in, and a scale would stay bound until
    the function that called `fit` returned (tested).
    """
    frame = sys._getframe(1)
    stand_in = None
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return frame
        if stand_in is None and not frame.f_globals.get("__name__", "").startswith(_DRIVER_MODULES):
            stand_in = frame
        frame = frame.f_back
    return stand_in


def is_running(frame):
    """Whether `frame` is on the stack of any thread of this process.

    Every thread: under MirroredStrategy, Keras traces the train step (and so
    calls regularizers) in one thread per replica while `fit` runs in another.
    The calling thread's own stack comes first, where the frame nearly always
    is (an eager PyTorch step asks once per regularized weight).
    """
    for top in (sys._getframe(), *sys._current_frames().values()):
        while top is not None:
            if top is frame:
                return True
            top = top.f_back
    return False


def rebuild_step_functions(model):
    """Keras caches its train and test functions; a traced one would keep the old losses.

    `make_train_function(force=True)` is Keras's own way to drop the cache
    (every backend's trainer); `fit` and `evaluate` then use the new one.
    """
    if getattr(model, "compiled", False):
        model.make_train_function(force=True)
        model.make_test_function(force=True)


def activity_layer(regularizer, frame):
    """The layer calling `regularizer` as its activity regularizer from `frame`, else None.

    Keras's `Layer.__call__` calls `self.activity_regularizer(output)` itself,
    on every backend and in every execution mode. If a release moved that call
    elsewhere, an OrthoRegularizer given as activity regularizer would go
    back to failing on the batch's shape (TensorFlow) or to a warning (tested).
    """
    if frame is None or frame.f_code.co_name != "__call__":
        return None
    layer = frame.f_locals.get("self")
    if isinstance(layer, keras.layers.Layer) and getattr(layer, "activity_regularizer", None) is regularizer:
        return layer
    return None


def weight_behind(x, owner, attribute):
    """`(variable, layer)`: the Keras variable `x` is or stands for, and the layer asking.

    `owner` is the regularizer (or constraint) called with `x`, and
    `attribute` the variable's attribute that holds it ("regularizer",
    "constraint"). Keras calls a regularizer from a layer's
    `_get_regularization_losses` (`self` there is the layer or model whose
    losses are collected, which holds the weight) with the variable, except
    inside its stateless scope (`model.stateless_call`, and so JAX's `fit`),
    where it passes the very tensor the scope maps the variable to. That
    variable is found by identity among the locals of Keras's calling frame:
    a variable whose regularizer (constraint) is `owner` and whose value in
    the scope *is* `x`. The layer lets
    `_layers` find the weight's own layer, and so its rule, once; a weight
    whose rule is recorded needs no frame at all. Where a tensor stands for a
    weight that cannot be identified, a warning names the shape instead of
    slicing it silently by the default rule. `(None, None)` for a tensor of
    the user's own.
    """
    variable = x if isinstance(x, keras.Variable) else None
    if variable is not None and _layers.is_recorded(variable):
        return variable, None
    scope = get_stateless_scope() if get_stateless_scope is not None else None
    if variable is None and scope is None:
        if get_stateless_scope is None:
            _warn_unidentified(x, owner)
        return None, None
    frame = sys._getframe(2)
    for _ in range(_CALLERS_SEARCHED):
        if frame is None:
            break
        local = frame.f_locals
        if variable is None:
            variable = next(
                (
                    value
                    for value in local.values()
                    if isinstance(value, keras.Variable)
                    and getattr(value, attribute, None) is owner
                    and scope.get_current_value(value) is x
                ),
                None,
            )
        caller = local.get("self")
        if variable is not None and isinstance(caller, keras.layers.Layer):
            return variable, caller
        frame = frame.f_back
    if variable is None:
        _warn_unidentified(x, owner)
    return variable, None


def _warn_unidentified(x, owner):
    shape = tuple(x.shape)
    if shape not in owner._warned_shapes:
        owner._warned_shapes.add(shape)
        warnings.warn(
            f"{type(owner).__name__} was called with a tensor of shape {shape} that stands "
            "for a weight it could not identify (this Keras release calls regularizers "
            "and constraints in a way keras_ortho does not know). It slices the tensor by the default "
            "rule for its rank, not by its layer's rule (per head, per gate, per "
            "channel); pass `slice_axis` to be explicit.",
            RuntimeWarning,
            stacklevel=4,
        )
