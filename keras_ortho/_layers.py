"""Which matrices each Keras layer's weights hold, and which weights are kernels.

The rule of a weight depends on its layer (a Conv1D kernel is one matrix, a
DepthwiseConv kernel one matrix per channel, an LSTM recurrent kernel one per
gate, an attention projection one per head), never on its name. The layer is
known wherever keras_ortho meets a model (`regularize`, `OrthoLogger`, the
report) and wherever Keras asks the regularizer for its loss (the caller is a
layer); `assign_rules` then records each weight's rule on the weight itself,
so that the regularizer finds it again when Keras hands it a bare tensor that
stands for the weight (JAX's `fit`, `stateless_call`).
"""

import gc
import re

import keras

from keras_ortho._slicing import along, default_rule, one_matrix, per_group

L = keras.layers

_RULE = "_keras_ortho_rule"
_OWNER = "_keras_ortho_owner"

# Gates per recurrent cell: the last axis of its kernels holds them side by side.
_GATES = (("LSTMCell", 4), ("GRUCell", 3), ("ConvLSTMCell", 4), ("SimpleRNNCell", 1))

# The kernel-like weights of a layer: the attribute that holds each, and the
# constructor argument (config key) of its regularizer. Biases, normalization
# weights and everything else are never taken.
_KERNEL_ATTRIBUTES = (
    ("_kernel", "kernel_regularizer"),  # Dense, EinsumDense, Conv (LoRA-aware property)
    ("kernel", "kernel_regularizer"),
    ("recurrent_kernel", "recurrent_regularizer"),
    ("depthwise_kernel", "depthwise_regularizer"),
    ("pointwise_kernel", "pointwise_regularizer"),
    ("_embeddings", "embeddings_regularizer"),
    ("embeddings", "embeddings_regularizer"),
)


def _gates(layer):
    for name, groups in _GATES:
        if any(cls.__name__ == name for cls in type(layer).__mro__):
            return groups
    return None


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
    groups = _gates(layer)
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


def kernel_attribute(layer, variable):
    """`(attribute, regularizer argument)` if `variable` is one of `layer`'s kernels, else None."""
    attributes = vars(layer)
    for attribute, argument in _KERNEL_ATTRIBUTES:
        if attributes.get(attribute) is variable:
            if _is_depthwise(layer):
                argument = "depthwise_regularizer"
            return attribute, argument
    return None


def own_weights(layer):
    """The layer's own trainable weights (not its sublayers')."""
    return list(layer._trainable_variables) if layer.trainable else []


def _own(layer):
    """Every weight the layer holds itself (not its sublayers'), trainable or not."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


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
        for child in layer._flatten_layers(include_self=False, recursive=False):
            visit(child, f"{prefix}{child.name}/")

    visit(root, "")
    return names


def layers_of(root):
    """`root` and every layer inside it, each once."""
    return list(root._flatten_layers(include_self=True, recursive=True))


def assign_rules(root):
    """Records on each weight inside `root` its rule and its layer."""
    for layer in layers_of(root):
        # Every weight, frozen or not: a frozen layer's kernel is still measured.
        for variable in _own(layer):
            setattr(variable, _RULE, rule_for(layer, variable))
            setattr(variable, _OWNER, f"'{layer.name}' ({type(layer).__name__})")


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
        owner = root if root is not None else _holder_of(variable)
        if owner is not None:
            assign_rules(owner)
        if not hasattr(variable, _RULE):
            setattr(variable, _RULE, None)
    return getattr(variable, _RULE)


def _holder_of(variable):
    """The layer that holds `variable` as one of its own weights, or None.

    A layer keeps its weights in attributes and lists; the layer object, or the
    attribute dict it owns, is at most two referrer steps from the variable.
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


def describe(variable):
    """`weight 'dense/bias' of layer 'dense' (Dense)`, as far as it is known."""
    owner = getattr(variable, _OWNER, None)
    text = f"weight '{variable.path}'"
    return text if owner is None else f"{text} of layer {owner}"

