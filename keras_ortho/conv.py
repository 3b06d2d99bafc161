"""`conv_singular_values`: each convolution of a model as the operator it applies, measured by its singular values."""

import functools
from typing import NamedTuple

import keras
import numpy as np

from keras_ortho import _backend, _binding, _conv, _lipschitz, _rules, ops

__all__ = ["ConvSingularValues", "conv_singular_values"]


class ConvSingularValues(NamedTuple):
    """The largest and smallest singular value of a convolution's operator, and the image it acts on.

    `largest` is the layer's Lipschitz constant (its operator norm) on that
    image. `smallest` is the smallest of its `min(outputs, inputs)` singular
    values (those of the thin SVD): `largest / smallest` is its condition
    number, and an operator with orthonormal rows (columns) has both at 1.
    """

    largest: float
    smallest: float
    input_size: tuple[int, ...]


def conv_singular_values(
    model: keras.layers.Layer, input_size: int | tuple[int, ...] | None = None
) -> dict[str, ConvSingularValues]:
    """The largest and smallest singular value of every convolution in `model`, on a circular image.

    Exact for circular padding (Sedghi, Gupta and Long 2019, "The singular
    values of convolutional layers", ICLR): the DFT of the image
    block-diagonalizes the operator, which leaves one small matrix per
    frequency, of `cout x cin * prod(strides)` entries after the strides are
    folded into the channels (docs/operator.md). Keras's "same" and "valid"
    padding apply the same operator away from the image's border.

    Every `Conv1D/2D/3D` (grouped ones too), `Conv*Transpose`,
    `DepthwiseConv1D/2D` and both kernels of `SeparableConv1D/2D` is measured,
    at any depth of `model`; dilation changes no singular value. The cost is
    about `prod(n / s) / 2` complex SVDs (values only) of `cout x cin * prod(s)`
    matrices per layer (a 1x1 convolution needs one), computed by the backend
    and compiled (`tf.function`, `jax.jit`; eager PyTorch), on the model's
    device; `benchmarks/results/lipschitz.md` times ResNet50.

    Args:
        model: a Keras model or layer.
        input_size: None (default) for each layer's own input size in
            `model` (its spatial shape, from the model's graph, or the shape
            it was built with; the output's, for a transposed convolution);
            or an int, or one int per spatial axis, for every layer. Each size is rounded up to a multiple of the
            layer's stride, the smallest circular image the stride divides.

    Returns:
        dict: `{path: ConvSingularValues(largest, smallest, input_size)}`, the
            paths of the kernels inside `model` as `OrthoLogger` names them, in
            model order.

    Raises:
        ValueError: when `input_size` is None and a layer's input size is
            not fixed (a model on `Input((None, None, 3))`), naming the layer;
            or for an `input_size` that is not positive ints.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> conv = keras.layers.Conv1D(1, 2, use_bias=False)
        >>> conv.build((None, 8, 1))
        >>> _ = conv.kernel.assign(np.array([0.6, 0.8], dtype="float32").reshape(2, 1, 1))
        >>> values = keras_ortho.conv_singular_values(conv, input_size=8)["kernel"]
        >>> round(values.largest, 5), round(values.smallest, 5)  # |0.6 + 0.8 e^(i w)| over 8 frequencies
        (1.4, 0.2)
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model or layer. Received: model={model!r}")
    if input_size is not None:
        sizes = (input_size,) if isinstance(input_size, (int, np.integer)) else tuple(input_size)
        if not sizes or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in sizes):
            raise ValueError(
                "Argument `input_size` must be None, a positive int, or one positive int per spatial axis. "
                f"Received: input_size={input_size!r}"
            )
    return measure(plan_measurements(model, input_size))


class Measured(NamedTuple):
    """A convolution kernel to measure: its path, the kernel, its `ConvGeometry` and the image size."""

    path: str
    variable: object
    geometry: _conv.ConvGeometry
    input_size: tuple[int, ...]


def plan_measurements(model, input_size=None):
    """`[Measured]` for every convolution kernel of `model` (see `conv_singular_values`), checked now."""
    results = []
    for path, layer, variable, geometry in convolution_kernels(model):
        dims = len(geometry.strides)
        size = _layer_input_size(layer, geometry, path) if input_size is None else _per_axis(input_size, dims, path)
        size = tuple(-(-n // s) * s for n, s in zip(size, geometry.strides, strict=True))
        results.append(Measured(path, variable, geometry, size))
    return results


def measure(measurements):
    """`{path: ConvSingularValues}` of the kernels' current values, computed by the backend."""
    results = {}
    for path, variable, geometry, size in measurements:
        kernel = _backend.current().to_tensor(variable)
        shape = tuple(int(d) for d in kernel.shape)
        extremes, unread = _compiled_extremes(shape, geometry, size, ops.compute_dtype(kernel.dtype))
        largest, smallest = (float(keras.ops.convert_to_numpy(v)) for v in extremes(kernel))
        results[path] = ConvSingularValues(largest, 0.0 if unread else smallest, size)
    return results


@functools.lru_cache(maxsize=256)
def _compiled_extremes(shape, geometry, size, dtype):
    """`(extremes, unread)` for one geometry: `_extremes` compiled by the backend, and whether the smallest is 0.

    `unread`: input phases no tap reads (`_conv.has_unread_phases`) add zero singular values.
    """
    plan = _conv.plan_operator(shape, geometry._replace(transposed=False), "rows")
    compiled = _backend.current().for_measuring(
        functools.partial(_extremes, shape=shape, geometry=geometry, size=size, dtype=dtype), jit_compile=False
    )
    return compiled, _conv.has_unread_phases(shape, geometry, plan)


def _extremes(kernel, shape, geometry, size, dtype):
    """`(largest, smallest)` singular value, as tensors, of the convolution's operator on a circular image of `size`.

    Sedghi, Gupta and Long 2019, with strides by the polyphase kernel
    (`_conv`): the operator is block diagonal in the DFT basis, one
    `rows x block` matrix per frequency of the output grid `size / s` and
    per group. A transposed convolution has the values of the convolution
    it is the adjoint of; a real kernel's matrices at `w` and `-w` are
    conjugate, so half of the frequencies stand for all.
    """
    plan = _conv.plan_operator(shape, geometry._replace(transposed=False), "rows")
    periods = tuple(n // s for n, s in zip(size, geometry.strides, strict=True))
    cos, sin = _lipschitz.frequency_table(_lipschitz.LinearGeometry(plan, periods, (1,) * len(size)), dtype)
    values = _backend.current().complex_singular_values(*_lipschitz.frequency_matrices(kernel, plan, cos, sin))
    return keras.ops.max(values), keras.ops.min(values)


def convolution_kernels(model):
    """`[(path, layer, kernel, ConvGeometry)]` for every convolution kernel inside `model`, in model order."""
    _binding.assign_rules(model)
    names = _rules.weight_names(model)
    found = []
    for layer in _rules.layers_of(model):
        for variable in _rules.own_every_weight(layer):
            role = _rules.kernel_attribute(layer, variable)
            geometry = None if role is None else _rules.conv_geometry(layer, role[0])
            if geometry is not None:
                found.append((names.get(id(variable), variable.path), layer, variable, geometry))
    return found


def _per_axis(input_size, dims, path):
    sizes = (int(input_size),) * dims if isinstance(input_size, (int, np.integer)) else tuple(input_size)
    if len(sizes) != dims:
        raise ValueError(
            f"Argument `input_size` has {len(sizes)} sizes, and '{path}' has {dims} spatial axes. "
            f"Received: input_size={input_size!r}"
        )
    return sizes


def layer_shape(layer, output=False):
    """The shape of `layer`'s input (`output`: its output) in its model, else from its build; None if unknown.

    A layer that another layer calls inside its own `call` (keras-hub's ViT
    patch embedding) has no place in the model's graph; the shape it was
    built with (`get_build_config`) says the same.
    """
    try:
        return tuple((layer.output if output else layer.input).shape)
    except (AttributeError, ValueError):
        built = (layer.get_build_config() or {}).get("input_shape")
        if built is None:
            return None
        return tuple(layer.compute_output_shape(tuple(built))) if output else tuple(built)


def _layer_input_size(layer, geometry, path):
    """The spatial size of the image `layer`'s operator `A` acts on (`layer_shape`)."""
    shape = layer_shape(layer, output=geometry.transposed)
    dims = len(geometry.strides)
    if shape is not None and len(shape) == dims + 2:
        channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
        spatial = shape[2:] if channels_first else shape[1:-1]
        if all(isinstance(n, int) for n in spatial):
            return spatial
    raise ValueError(
        f"conv_singular_values needs the input size of '{path}' ({type(layer).__name__}), which the "
        "model does not know (a model built without an `Input`, or with a variable image size). "
        "Pass `input_size=`."
    )
