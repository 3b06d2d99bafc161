"""Every place keras_ortho relies on Keras beyond its public API, and nothing else.

No other module of keras_ortho imports `keras.src` or reads a private
attribute of a Keras object. Each function says what Keras does there and
what would break if a release changed it; `tests/test_keras_compat.py` holds
one focused test per function, so that such a release fails there, loudly and
by name, before it fails anywhere else. CI runs those tests on the oldest
Keras keras_ortho claims (3.8) and on the newest.

This module imports nothing of keras_ortho: it is the floor the rest stands on.
"""

import gc
import sys

import keras

try:  # Keras's own accessor; not exported, so its absence is handled (see `_stateless_scope`)
    from keras.src.backend.common.stateless_scope import get_stateless_scope
except ImportError:  # pragma: no cover - depends on the Keras release
    get_stateless_scope = None

L = keras.layers

# ---------------------------------------------------------------------------
# Layers: where a layer keeps its weights, its sublayers and its arguments.
# ---------------------------------------------------------------------------

# The kernel-like weights of a layer: the attribute that holds each, and the
# constructor argument (config key) of its regularizer. `_kernel` and
# `_embeddings` are where Dense, EinsumDense, the Conv layers and Embedding
# keep the variable behind their `kernel`/`embeddings` properties (which add
# a LoRA product when LoRA is on, so the property is not the variable).
KERNEL_ATTRIBUTES = (
    ("_kernel", "kernel_regularizer"),
    ("kernel", "kernel_regularizer"),
    ("recurrent_kernel", "recurrent_regularizer"),
    ("depthwise_kernel", "depthwise_regularizer"),
    ("pointwise_kernel", "pointwise_regularizer"),
    ("_embeddings", "embeddings_regularizer"),
    ("embeddings", "embeddings_regularizer"),
)

# Gates per recurrent cell, matched by the name of a class in the cell's MRO:
# Keras exports the cells, but ConvLSTMCell is not, and a user's subclass of
# a cell keeps its gates. The last axis of a cell's kernels holds them side by side.
_GATES = (("LSTMCell", 4), ("GRUCell", 3), ("ConvLSTMCell", 4), ("SimpleRNNCell", 1))


def own_trainable_variables(layer):
    """The trainable variables `layer` holds itself, not its sublayers'.

    Keras keeps them in `Layer._trainable_variables` (what `add_weight`
    appends to). If a release renamed it, every rule lookup would fail with an
    AttributeError (tested).
    """
    return list(layer._trainable_variables)


def own_non_trainable_variables(layer):
    """The non-trainable variables `layer` holds itself (LoRA's frozen kernel, int8 kernels)."""
    return list(layer._non_trainable_variables)


def sublayers(layer):
    """The layers `layer` tracks directly (one level down), in creation order.

    `Layer._flatten_layers(include_self=False, recursive=False)`: Keras's own
    walk, which also sees a layer's cell (RNN), its wrapped layer
    (Bidirectional) and the projections of an attention layer. Weight names
    (`attention/query/kernel`) follow it.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def all_layers(root):
    """`root` and every layer inside it, each once (Keras's recursive `_flatten_layers`)."""
    return list(root._flatten_layers(include_self=True, recursive=True))


def is_graph_model(model):
    """Whether `model` is a Functional model, whose graph `run_graph` can walk."""
    return isinstance(model, keras.Model) and hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth")


def run_graph(model, inputs, operation_fn):
    """Runs a Functional model's graph on `inputs` (any objects), each layer as `operation_fn(layer)(*args, **kwargs)`.

    Keras's `Function._run_through_graph` (3.8 to now): it fills each node's
    arguments from what the nodes before it returned, whatever those are, so
    `lipschitz_bound` passes its bounds along the graph with it. If a release
    renames it or changes its arguments, `tests/test_lipschitz.py`'s walks
    over residual and nested models fail.
    """
    return list(keras.tree.flatten(model._run_through_graph(inputs, operation_fn)))


def kernel_attribute(layer, variable):
    """`(attribute, regularizer argument)` if `variable` is one of `layer`'s kernels, else None.

    Read from the layer's instance attributes (`vars`), so that a property
    (LoRA's `kernel`) is never evaluated. If a release moved a kernel to
    another attribute, `regularize` would skip that layer (tested for every
    core layer in `tests/test_layers.py`).
    """
    attributes = vars(layer)
    for attribute, argument in KERNEL_ATTRIBUTES:
        if attributes.get(attribute) is variable:
            if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
                argument = "depthwise_regularizer"
            return attribute, argument
    return None


def recurrent_gates(layer):
    """How many gates a recurrent cell's kernels hold side by side; None for another layer."""
    for name, groups in _GATES:
        if any(cls.__name__ == name for cls in type(layer).__mro__):
            return groups
    return None


def argument_attribute(layer, argument):
    """The instance attribute that holds `layer`'s constructor argument `argument`, or None.

    Most layers keep `kernel_regularizer` as is; MultiHeadAttention and
    GroupQueryAttention keep it as `_kernel_regularizer`, and hand it to each
    projection they build (loading builds them again from the config).
    """
    return next((a for a in (f"_{argument}", argument) if a in vars(layer)), None)


def holder_of(variable):
    """The layer that holds `variable` as one of its own trainable weights, or None.

    For a bare variable no model came with: one walk of Python's
    garbage-collector referrers, about 0.1 s. A layer keeps its weights in
    attributes and lists; the layer object, or the attribute dict it owns, is
    at most two referrer steps from the variable. If a release kept weights
    further away, `slice_errors(variable)` on a bare variable would fall back
    to the default slicing (tested).
    """
    seen = set()
    frontier = [variable]
    for _ in range(2):
        referrers = [r for item in frontier for r in gc.get_referrers(item) if id(r) not in seen]
        for referrer in referrers:
            seen.add(id(referrer))
            if isinstance(referrer, L.Layer) and any(v is variable for v in referrer._trainable_variables):
                return referrer
        frontier = [r for r in referrers if isinstance(r, (dict, list))]
    for holder in frontier:  # an attribute dict: its layer is one more step up
        for referrer in gc.get_referrers(holder):
            if isinstance(referrer, L.Layer) and vars(referrer) is holder:
                return referrer
    return None


# ---------------------------------------------------------------------------
# How Keras calls a regularizer or a constraint.
# ---------------------------------------------------------------------------

# How many callers up `calling_weight` looks for the variable: Keras's
# `Layer._get_regularization_losses` calls the regularizer directly.
_CALLERS_SEARCHED = 4

# Modules whose frames stand between Keras and the code keras_ortho looks for.
_DRIVER_MODULES = ("keras.", "keras_ortho.")
_OWN_MODULE = "keras_ortho."


def _stateless_scope():
    """Keras's current stateless scope (`stateless_call`, JAX's `fit`), or None.

    Inside one, Keras calls a weight's regularizer with the tensor the scope
    maps it to instead of the variable, and the optimizer calls a constraint
    with a tensor too. If Keras stopped exporting the scope accessor, a bound
    weight would go unrecognised and be sliced by the default rule, with a
    warning (tested).
    """
    return get_stateless_scope() if get_stateless_scope is not None else None


def standing_for(x, variables):
    """The one of `variables` that Keras's stateless scope maps to the tensor `x` itself; else None."""
    scope = _stateless_scope()
    if scope is None:
        return None
    return next((v for v in variables if scope.get_current_value(v) is x), None)


def in_stateless_scope():
    """Whether Keras is inside a stateless scope (`stateless_call`, JAX's `fit`)."""
    return _stateless_scope() is not None


def _first_caller(owner):
    """The first frame above keras_ortho's own and `owner`'s own methods: the code calling `owner`."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith(_OWN_MODULE) or frame.f_locals.get("self") is owner
    ):
        frame = frame.f_back
    return frame


def calling_weight(x, owner, attribute):
    """`(variable, layer)`: the weight Keras called `owner` for with `x`, and the layer asking.

    The constructor path: a regularizer given to a layer's constructor that
    no keras_ortho function has met with its model yet. Keras calls it from
    a layer's `_get_regularization_losses` (`self` there is the layer or model
    whose losses are collected, which holds the weight) with the variable,
    except inside its stateless scope, where it passes the very tensor the
    scope maps the variable to. That variable is found by identity among the
    locals of Keras's calling frames: a variable whose `attribute`
    ("regularizer", "constraint") is `owner` and whose value in the scope *is*
    `x`. `(None, None)` where there is none (a tensor of the user's own);
    `(variable, None)` where no layer frame is in reach.
    """
    variable = x if isinstance(x, keras.Variable) else None
    scope = _stateless_scope()
    if variable is None and scope is None:
        return None, None
    frame = _first_caller(owner)
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
        if variable is not None and isinstance(caller, L.Layer):
            return variable, caller
        frame = frame.f_back
    return variable, None


def activity_layer(regularizer):
    """The layer calling `regularizer` as its activity regularizer, else None.

    Keras's `Layer.__call__` calls `self.activity_regularizer(output)` itself,
    on every backend and in every execution mode. If a release moved that call
    elsewhere, an OrthoRegularizer given as activity regularizer would go
    back to failing on the batch's shape (TensorFlow) or to a warning (tested).
    """
    frame = _first_caller(regularizer)
    if frame is None or frame.f_code.co_name != "__call__":
        return None
    layer = frame.f_locals.get("self")
    if isinstance(layer, L.Layer) and getattr(layer, "activity_regularizer", None) is regularizer:
        return layer
    return None


# ---------------------------------------------------------------------------
# How Keras runs `fit`.
# ---------------------------------------------------------------------------


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


def add_hooks(callback, **hooks):
    """Gives this `callback` instance the hooks `hooks` (`on_train_batch_end=...`), its class none.

    Keras runs the training steps ahead of Python, without waiting after each
    one, only while no callback of the fit overrides a batch hook: its
    CallbackList checks each hook against the base Callback's (marked as its
    default). Set on the instance only when asked for (`every_n_batches`,
    lazy regularization), a callback keeps that asynchronous stepping
    otherwise. If a release decided it another way, nothing would break, and
    every fit with a keras_ortho callback would wait for Python after each
    step (tested).
    """
    for name, hook in hooks.items():
        setattr(callback, name, hook)


def synced_model(callback):
    """`callback.model`, with the values JAX's `fit` is training put back into its variables.

    On JAX, `fit` keeps the trained values outside the variables between
    steps (it even clears them), and reading `Callback.model` is what puts
    them back: Keras's JAX trainer does it in the property. A callback that
    reads or assigns a variable in a hook reads the model through here first;
    on TensorFlow and PyTorch it is the plain attribute (tested).
    """
    return callback.model


def recover_after_fit(model):
    """Puts back into the variables the values a JAX `fit` held when it raised.

    JAX's `fit` takes the values out of the variables while it runs and puts
    them back at the end of each epoch. Keras 3.8 puts them back nowhere when
    `fit` raises: the variables stay empty (reading one fails) until
    `jax_state_sync`, the trainer's own method, copies in the state it keeps
    for callbacks. Newer releases restore them themselves; there, as on
    TensorFlow and PyTorch, this does nothing (tested on both in CI).
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def attach_state(model, attribute, state):
    """Lists `state` (a Keras object holding one variable) with `model`'s non-trainable state.

    JAX's `fit` hands the model's state to its jitted step as arguments, and
    a variable outside it would be frozen into the trace as a constant. Keras
    lists a Dropout layer's random-seed state the same way: in the layer's
    `_seed_generators`, whose variables `non_trainable_variables` includes.
    Set as an untracked attribute, `state` is found by the saving code's walk
    of `dir(model)` and saved under `attribute`. If a release changed either,
    compiled training would freeze the scale (the scale callbacks check it
    and raise) or saving would leave it out (tested).
    """
    object.__setattr__(model, attribute, state)
    model._seed_generators.append(state)


def detach_state(model, attribute, state):
    """Undoes `attach_state`."""
    if getattr(model, attribute, None) is state:
        object.__delattr__(model, attribute)
    model._seed_generators[:] = [s for s in model._seed_generators if s is not state]


def guard_methods(model, names, before):
    """Shadows each method of `names` on the instance `model` by one that calls `before()` first.

    Returns what `unguard_methods` puts back. Python finds an instance's
    attribute before its class's method, so `model.fit(...)` runs the guard;
    `object.__setattr__` passes Keras's attribute tracking by, so the guards
    are not tracked as state, listed in the config or saved (tested). A
    release that tracked or saved every instance attribute would carry them
    into the files. Keras's own calls through the class (`keras.Model.fit(model)`)
    pass them by; the binding's other guards (the regularizer, the state's
    saving) still find the end of the fit there.
    """
    shadowed = {name: vars(model)[name] for name in names if name in vars(model)}
    for name in names:
        object.__setattr__(model, name, _guarded(getattr(model, name), before))
    return shadowed


def _guarded(method, before):
    def guarded(*args, **kwargs):
        before()
        return method(*args, **kwargs)

    guarded.__name__, guarded.__qualname__, guarded.__doc__ = method.__name__, method.__qualname__, method.__doc__
    guarded.__wrapped__ = method
    return guarded


def unguard_methods(model, names, shadowed):
    """Undoes `guard_methods`: the class's methods again, or what the instance held before."""
    for name in names:
        vars(model).pop(name, None)
    for name, value in shadowed.items():
        object.__setattr__(model, name, value)
