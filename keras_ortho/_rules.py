"""Which matrices each Keras layer's weights hold, which weights are kernels, and their names in a model.

The rule of a weight depends on its layer (a Conv1D kernel is one matrix, a
DepthwiseConv kernel one matrix per channel, an LSTM recurrent kernel one per
gate, an attention projection one per head, a grouped convolution one per
group), never on its name: see the slicing table, docs/slicing.md. `_binding` records
each weight's rule on the weight once its layer is known.

What this needs of Keras's own objects (where a layer keeps its weights, its
sublayers, its kernels) is read through `_keras_compat`.
"""

import re

import keras

from keras_ortho import _keras_compat
from keras_ortho._conv import ConvGeometry
from keras_ortho._slicing import along, default_rule, one_matrix, per_group

L = keras.layers


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


_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)


def conv_geometry(layer, role):
    """The `ConvGeometry` of a convolution's kernel (`role` its attribute), None for any other weight.

    A separable convolution's depthwise kernel carries its strides; its
    pointwise kernel is a 1x1 convolution of stride 1.
    """
    if isinstance(layer, _SEPARABLE):
        if role == "pointwise_kernel":
            return ConvGeometry((1,) * len(layer.strides))
        return ConvGeometry(tuple(layer.strides), per_channel=True)
    if _is_depthwise(layer):
        return ConvGeometry(tuple(layer.strides), per_channel=True)
    if isinstance(layer, _TRANSPOSED):
        return ConvGeometry(tuple(layer.strides), transposed=True)
    if isinstance(layer, _CONVOLUTIONS) and role in ("kernel", "_kernel"):
        return ConvGeometry(tuple(layer.strides), groups=layer.groups)
    return None


def rule_for(layer, variable):
    """The `Rule` of `variable`, a weight of `layer`'s own; None for no rule of ours."""
    rule = _matrices_rule(layer, variable)
    if rule is None:
        return None
    geometry = conv_geometry(layer, kernel_attribute(layer, variable)[0])
    return rule if geometry is None else rule._replace(conv=geometry)


def _matrices_rule(layer, variable):
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


def own_trainable_weights(layer):
    """The layer's own trainable weights (not its sublayers')."""
    return _keras_compat.own_trainable_variables(layer) if layer.trainable else []


def own_every_weight(layer):
    """Every weight the layer holds itself (not its sublayers'), trainable or not."""
    return _keras_compat.own_trainable_variables(layer) + _keras_compat.own_non_trainable_variables(layer)


def kernels(model):
    """`(layer, variable, role)` for each kernel of the model's trainable layers, frozen ones too.

    What `regularize` and `constrain` choose from, and what the monitors count.
    """
    for layer in layers_of(model):
        for variable in own_weights_if_trainable(layer):
            role = kernel_attribute(layer, variable)
            if role is not None and len(variable.shape) >= 2:
                yield layer, variable, role


def own_weights_if_trainable(layer):
    """All the own weights of a trainable layer, frozen ones too (LoRA's kernel, int8 kernels)."""
    return own_every_weight(layer) if layer.trainable else []


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
        for variable in own_every_weight(layer):
            names.setdefault(id(variable), prefix + variable.name)
        for child in _keras_compat.sublayers(layer):
            visit(child, f"{prefix}{child.name}/")

    visit(root, "")
    return names
