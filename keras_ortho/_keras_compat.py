"""Where keras_ortho depends on how Keras runs `fit`, beyond its public API.

Each function says what Keras does there and what breaks if a release changes
it; `tests/test_keras_compat.py` fails loudly on such a release.
"""

import sys

import keras

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
