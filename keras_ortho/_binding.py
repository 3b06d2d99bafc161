"""What each weight carries for keras_ortho: its layer rule, recorded, and its regularizer, bound.

Wherever keras_ortho meets a model (`regularize`, `constrain`, every
callback's `set_model`, the report), `assign_rules` records each weight's
rule (`_rules.rule_for`) on the weight itself and binds the weight to its
keras_ortho regularizer and constraint. They then know it again with no
lookup, also when Keras hands them a bare tensor that stands for it (JAX's
`fit`, `stateless_call`): `weight_if_known`. Only a regularizer given to a
layer's constructor, before any of those has met the model, looks once at
Keras's calling frames (`weight_behind`).
"""

import warnings
import weakref

import keras

from keras_ortho import _backend, _keras_compat
from keras_ortho._rules import layers_of, own_every_weight, rule_for

_RULE = "_keras_ortho_rule"
_OWNER = "_keras_ortho_owner"
_LAYER = "_keras_ortho_layer"

# The variable attributes that hold a keras_ortho object bound to the weight.
_BINDABLE = ("regularizer", "constraint")


def assign_rules(root):
    """Records on each weight inside `root` its rule and its layer, and binds it (`bind`)."""
    for layer in layers_of(root):
        # Every weight, frozen or not: a frozen layer's kernel is still measured.
        for variable in own_every_weight(layer):
            setattr(variable, _RULE, rule_for(layer, variable))
            setattr(variable, _OWNER, f"'{layer.name}' ({type(layer).__name__})")
            setattr(variable, _LAYER, weakref.ref(layer))
            bind(variable)


def bind(variable):
    """Tells the variable's keras_ortho regularizer and constraint that it carries them.

    Where keras_ortho meets a model (`regularize`, `constrain`, every
    callback's `set_model`, the report), each weight is bound once; then a
    tensor Keras hands in for it (JAX's `fit`, `stateless_call`) is known by
    identity (`BoundWeights.find`), with no look at the calling frames.
    """
    for attribute in _BINDABLE:
        bound = getattr(getattr(variable, attribute, None), "_bound", None)
        if isinstance(bound, BoundWeights):
            bound.add(variable)


class BoundWeights:
    """The weights bound to one regularizer (or constraint), by identity.

    Kept weakly: a regularizer never keeps a model alive. A copy (deepcopy,
    pickling) starts empty and meets its weights anew.
    """

    def __init__(self):
        self._weights = weakref.WeakValueDictionary()

    def add(self, variable):
        self._weights[id(variable)] = variable

    def __len__(self):
        return len(self._weights)

    def find(self, x):
        """The bound variable Keras's stateless scope maps to the tensor `x`, else None."""
        return _keras_compat.standing_for(x, list(self._weights.values()))

    def __deepcopy__(self, memo):
        return BoundWeights()

    def __reduce__(self):
        return BoundWeights, ()


def weight_if_known(x, owner):
    """`(variable, rule)` if `x` is a recorded variable or stands for one bound to `owner`, else None.

    No lookup: what every call does once keras_ortho has met the model.
    """
    if isinstance(x, keras.Variable):
        return (x, getattr(x, _RULE)) if is_recorded(x) else None
    variable = owner._bound.find(x)
    return None if variable is None else (variable, getattr(variable, _RULE))


def weight_behind(x, owner, attribute):
    """`(variable, rule)`: the Keras variable `x` is or stands for, and its layer rule.

    `owner` is the regularizer (or constraint) Keras called with `x`, and
    `attribute` the variable's attribute that holds it ("regularizer",
    "constraint"). What `weight_if_known` knows is returned at once. Otherwise
    (the constructor path: nothing of keras_ortho has met the model yet)
    Keras's calling frames tell the variable and the layer asking
    (`_keras_compat.calling_weight`), whose model then has its rules recorded
    and its weights bound, once. Where a tensor stands for a weight that
    cannot be identified, a warning names the shape instead of slicing it
    silently by the default rule. `(None, None)` for a tensor of the user's own.
    """
    known = weight_if_known(x, owner)
    return known if known is not None else weight_from_frames(x, owner, attribute)


def weight_from_frames(x, owner, attribute):
    """`weight_behind` for what `weight_if_known` does not know: the frame lookup, once per weight.

    Under PyTorch's Dynamo the lookup runs outside the trace (Dynamo cannot
    trace `sys._getframe`, and warned so): a graph break, once per weight.
    """
    backend = _backend.current()
    if backend.dynamo_compiling():  # run again outside the trace, where Dynamo is not compiling
        return backend.outside_dynamo(weight_from_frames)(x, owner, attribute)
    variable, caller = _keras_compat.calling_weight(x, owner, attribute)
    if variable is None:
        if _keras_compat.in_stateless_scope() or _keras_compat.get_stateless_scope is None:
            _warn_unidentified(x, owner)
        return None, None
    rule = known_rule(variable, root=caller)
    bind(variable)
    return variable, rule


def _warn_unidentified(x, owner):
    shape = tuple(x.shape)
    warn_once(
        owner,
        shape,
        f"{type(owner).__name__} was called with a tensor of shape {shape} that stands "
        "for a weight it could not identify (this Keras release calls regularizers "
        "and constraints in a way keras_ortho does not know). It slices the tensor by the default "
        "rule for its rank, not by its layer's rule (per head, per gate, per "
        "channel); pass `slice_axis` to be explicit.",
        stacklevel=5,
    )


def warn_once(owner, key, message, stacklevel):
    """A RuntimeWarning the first time `owner` (a regularizer or constraint) meets `key`, such as a shape."""
    if key not in owner._warned_shapes:
        owner._warned_shapes.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)


def is_recorded(variable):
    """Whether `assign_rules` has met `variable` (its rule may be None: no rule of ours)."""
    return hasattr(variable, _RULE)


def known_rule(variable, root=None):
    """The rule of `variable`, recorded on it the first time.

    The first time, its layer is looked for inside `root` (the model or layer
    at hand), or, with no `root` (a bare variable handed to `slice_errors`),
    among the objects that refer to the variable: one walk of Python's
    garbage-collector referrers, about 0.1 s, once per variable. A variable
    no layer holds is recorded with no rule (the default slicing).
    """
    if not hasattr(variable, _RULE):
        owner = root if root is not None else _keras_compat.holder_of(variable)
        if owner is not None:
            assign_rules(owner)
        if not hasattr(variable, _RULE):
            setattr(variable, _RULE, None)
    return getattr(variable, _RULE)


def layer_of(variable):
    """The layer holding `variable`, as `assign_rules` recorded it; None where none did or it is gone."""
    reference = getattr(variable, _LAYER, None)
    return None if reference is None else reference()


def describe(variable):
    """`weight 'dense/bias' of layer 'dense' (Dense)`, as far as it is known."""
    owner = getattr(variable, _OWNER, None)
    text = f"weight '{variable.path}'"
    return text if owner is None else f"{text} of layer {owner}"
