"""Which matrices each Keras layer's weights hold, and which weights are kernels.

The rule of a weight depends on its layer (a Conv1D kernel is one matrix, a
DepthwiseConv kernel one matrix per channel, an LSTM recurrent kernel one per
gate, an attention projection one per head), never on its name. The layer is
known wherever keras_ortho meets a model (`regularize`, `constrain`, the
callbacks, the report); `assign_rules` then records each weight's rule on the
weight itself and binds the weight to its keras_ortho regularizer and
constraint, so that they know it again, with no lookup, when Keras hands them
a bare tensor that stands for it (JAX's `fit`, `stateless_call`). Only a
regularizer given to a layer's constructor, before any of those has met the
model, looks once at Keras's calling frames (`weight_behind`).

What this needs of Keras's own objects (where a layer keeps its weights, its
sublayers, its kernels) is read through `_keras_compat`.
"""

import re
import warnings
import weakref

import keras

from keras_ortho import _keras_compat
from keras_ortho._slicing import along, default_rule, one_matrix, per_group

L = keras.layers

_RULE = "_keras_ortho_rule"
_OWNER = "_keras_ortho_owner"

# The variable attributes that hold a keras_ortho object bound to the weight.
_BINDABLE = ("regularizer", "constraint")


def _is_depthwise(layer):
    return isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D))


def _conv_groups(layer):
    """`groups` of a grouped convolution (Conv1D/2D/3D with `groups > 1`), else None."""
    # Keras's transposed and depthwise convolutions take no `groups`.
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) and layer.groups > 1:
        return layer.groups
    return None


def einsum_rule(equation, shape):
    """Per head for an EinsumDense kernel of rank 3, from its equation alone.

    The kernel's axes are contracted with the input (absent from the output)
    or kept in the output. Each matrix maps the last contracted axis to the
    last kept axis; the third axis indexes the matrices: the heads of
    MultiHeadAttention's and GroupQueryAttention's query/key/value kernels
    `(d_model, heads, head_dim)` and of their output projections
    `(heads, head_dim, d_model)`.
    """
    match = re.fullmatch(r"([\w.]+),([\w.]+)->([\w.]+)", equation.replace(" ", ""))
    if match is None or len(shape) != 3:
        return default_rule(shape)
    kernel, output = match[2], match[3]
    if len(kernel) != 3:
        return default_rule(shape)
    kept = [i for i, axis in enumerate(kernel) if axis in output]
    contracted = [i for i, axis in enumerate(kernel) if axis not in output]
    if not kept or not contracted:
        return default_rule(shape)
    others = [i for i in range(3) if i not in (kept[-1], contracted[-1])]
    return along(others[0], "per head")


def rule_for(layer, variable):
    """The `Rule` of `variable`, a weight of `layer`'s own; None for no rule of ours."""
    shape = tuple(variable.shape)
    if len(shape) < 2:
        return None
    role = kernel_attribute(layer, variable)
    if role is None:
        return None
    groups = _keras_compat.recurrent_gates(layer)
    if groups is not None and role[0] in ("kernel", "recurrent_kernel"):
        return per_group(shape, groups)
    if isinstance(layer, L.EinsumDense):
        return einsum_rule(layer.equation, shape)
    if _is_depthwise(layer) or role[0] == "depthwise_kernel":
        return along(len(shape) - 2, "per channel")
    groups = _conv_groups(layer)
    if groups is not None and role[0] in ("kernel", "_kernel"):
        return per_group(shape, groups, "group")
    return one_matrix(shape)


kernel_attribute = _keras_compat.kernel_attribute
layers_of = _keras_compat.all_layers


def own_weights(layer):
    """The layer's own trainable weights (not its sublayers')."""
    return _keras_compat.own_trainable_variables(layer) if layer.trainable else []


def _own(layer):
    """Every weight the layer holds itself (not its sublayers'), trainable or not."""
    return _keras_compat.own_trainable_variables(layer) + _keras_compat.own_non_trainable_variables(layer)


def own_variables(layer):
    """All the own weights of a trainable layer, frozen ones too (LoRA's kernel, int8 kernels)."""
    return _own(layer) if layer.trainable else []


def weight_names(root):
    """`{id(variable): name}`: each weight's path inside `root`, the same however it was built.

    The name is the chain of layer names from `root` (left out) down to the
    layer that holds the weight, then the weight's own name: `dense/kernel`,
    `attention/query/kernel`, `inner/dense/kernel` for a nested model. Keras's
    own `variable.path` depends on how the model came to be built: a
    Sequential built with an Input says `sequential/dense/kernel`, the same
    model loaded from `.keras` says `dense/kernel`, and a nested model loses
    its prefix on loading. A weight reached along several paths keeps the first.
    """
    names = {}

    def visit(layer, prefix):
        for variable in _own(layer):
            names.setdefault(id(variable), prefix + variable.name)
        for child in _keras_compat.sublayers(layer):
            visit(child, f"{prefix}{child.name}/")

    visit(root, "")
    return names


def assign_rules(root):
    """Records on each weight inside `root` its rule and its layer, and binds it (`bind`)."""
    for layer in layers_of(root):
        # Every weight, frozen or not: a frozen layer's kernel is still measured.
        for variable in _own(layer):
            setattr(variable, _RULE, rule_for(layer, variable))
            setattr(variable, _OWNER, f"'{layer.name}' ({type(layer).__name__})")
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
        if not _keras_compat.in_stateless_scope():
            return None
        return next((v for v in list(self._weights.values()) if _keras_compat.stateless_value(v) is x), None)

    def __deepcopy__(self, memo):
        return BoundWeights()

    def __reduce__(self):
        return BoundWeights, ()


def known_weight(x, owner):
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
    "constraint"). What `known_weight` knows is returned at once. Otherwise
    (the constructor path: nothing of keras_ortho has met the model yet)
    Keras's calling frames tell the variable and the layer asking
    (`_keras_compat.calling_weight`), whose model then has its rules recorded
    and its weights bound, once. Where a tensor stands for a weight that
    cannot be identified, a warning names the shape instead of slicing it
    silently by the default rule. `(None, None)` for a tensor of the user's own.
    """
    known = known_weight(x, owner)
    if known is not None:
        return known
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


def describe(variable):
    """`weight 'dense/bias' of layer 'dense' (Dense)`, as far as it is known."""
    owner = getattr(variable, _OWNER, None)
    text = f"weight '{variable.path}'"
    return text if owner is None else f"{text} of layer {owner}"

