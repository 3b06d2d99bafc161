"""Lipschitz bounds of Keras models, certified radii, and `LipschitzConstraint`.

`lipschitz_bound(model)` bounds `||f(x) - f(y)|| / ||x - y||` (L2) for the
model's output `f` over all inputs of the model's own size: one factor per
layer (`lipschitz_factors`), composed along the model's graph. Each linear
layer's factor is a bound on the operator it applies, with Keras's padding
and strides (`_lipschitz`); each other layer's is its exact constant. What
the walk cannot bound it refuses, naming the layer: it never guesses.
"""

import functools
import math
from typing import NamedTuple

import keras
import numpy as np
from numpy.typing import ArrayLike

from keras_ortho import _backend, _binding, _keras_compat, _lipschitz, _rules, _validation, conv

__all__ = [
    "LayerFactor",
    "LipschitzConstraint",
    "certified_accuracy",
    "certified_radius",
    "lipschitz_bound",
    "lipschitz_factors",
]

L = keras.layers

DEFAULT_ITERATIONS = 6


class LayerFactor(NamedTuple):
    """One layer's factor in the model's bound.

    `layer` is its path in the model (nested models joined by "/"), `kind`
    its class name, `factor` the constant it multiplies the bound by (a sum
    or root-sum-square of its inputs' bounds for `Add`, `Concatenate` and
    the other merges), and `exact` whether that is the layer's exact constant
    at this input size (an isometry, a pooling, a scaling, a Dense kernel's
    norm) or an upper bound (a convolution's, `_lipschitz`).
    """

    layer: str
    kind: str
    factor: float
    exact: bool


def lipschitz_bound(model: keras.layers.Layer, iterations: int = DEFAULT_ITERATIONS) -> float:
    """An upper bound on the L2 Lipschitz constant of `model`, at its own input size.

    Each layer's factor (`lipschitz_factors`) multiplies the bound of its
    input; `Add` and `Subtract` sum their inputs' bounds, `Average` takes
    their mean, `Concatenate`, `Maximum` and `Minimum` the root of the sum of
    squares. So for every `x`, `y` of the model's input shape:

        ||f(x) - f(y)||_2 <= lipschitz_bound(model) * ||x - y||_2

    A convolution's factor is a bound for Keras's zero padding ("same",
    "valid", "causal"), with strides, dilation, groups, depthwise, separable
    and transposed kernels: the norm of the circular convolution on an image
    large enough that nothing wraps (Sedghi, Gupta and Long 2019), each
    frequency bounded from above by Gram iteration (Delattre et al. 2023).
    Computed by the backend, compiled, on the model's device.

    Args:
        model: a built Keras model (Functional or Sequential, nested ones
            too), with one input of fixed size.
        iterations: Gram iterations per frequency (default 6): a
            convolution's factor is at most `r^(1 / 2^(iterations + 1))`
            times its circular norm, `r` the rank of one frequency's matrix.

    Returns:
        float: the bound.

    Raises:
        ValueError: for a model that is not built, has several inputs or
            outputs, or an input of variable size; for a layer it cannot
            bound (LayerNormalization, attention, Lambda, a custom layer),
            naming the layer and its type.
        TypeError: for a `model` that is not a Keras model.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
        >>> _ = model.layers[0].kernel.assign(np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], "float32"))
        >>> round(keras_ortho.lipschitz_bound(model), 3)  # the kernel's largest singular value
        3.0
    """
    return _walk_model(model, _check_iterations(iterations))[0]


def lipschitz_factors(model: keras.layers.Layer, iterations: int = DEFAULT_ITERATIONS) -> list[LayerFactor]:
    """Each layer's factor in `lipschitz_bound(model)`, in the order the model runs them.

    Args:
        model: as for `lipschitz_bound`.
        iterations: as for `lipschitz_bound`.

    Returns:
        list[LayerFactor]: `(layer, kind, factor, exact)` per layer call; a
            nested model's layers are listed under its name, "outer/inner".

    Raises:
        ValueError, TypeError: as for `lipschitz_bound`.

    Examples:

        >>> import keras, keras_ortho
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid", name="d")])
        >>> [(f.layer, f.kind, f.exact) for f in keras_ortho.lipschitz_factors(model)]
        [('d', 'Dense', True)]
    """
    return _walk_model(model, _check_iterations(iterations))[1]


def certified_radius(model: keras.layers.Layer, x: ArrayLike, bound: float | None = None) -> np.ndarray:
    """For each example, the L2 radius within which the predicted class cannot change.

    With logits `z = f(x)`, the top class `c` and the margin
    `m = z_c - max_{j != c} z_j`, no `x'` with
    `||x' - x||_2 < m / (sqrt(2) L)` changes the argmax (Tsuzuku, Sato and
    Sugiyama 2018, "Lipschitz-margin training", NeurIPS, Proposition 2),
    `L` the Lipschitz constant of the logits. A final softmax (an
    activation of the last layer, or a `Softmax` layer) is read before it:
    the argmax is the same, and the logits' bound is the model's.

    Args:
        model: as for `lipschitz_bound`, with a last axis of two or more classes.
        x: a batch of inputs.
        bound: the logits' Lipschitz bound; None (default) computes
            `lipschitz_bound(model)`.

    Returns:
        np.ndarray: `(batch,)` radii, float64.

    Raises:
        ValueError: for an output that is not `(batch, classes)` with two or
            more classes, or a `bound` that is not a positive number; and
            what `lipschitz_bound` raises.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> _ = model.layers[0].kernel.assign(np.eye(2, dtype="float32"))  # logits = x, L = 1
        >>> keras_ortho.certified_radius(model, np.array([[3.0, 1.0]], "float32")).round(3)  # 2 / sqrt(2)
        array([1.414])
    """
    return _radii(model, _logits(model, x), bound)


def _radii(model, logits, bound):
    """`certified_radius` of the model's `logits`, with `bound` or the model's own."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"certified_radius reads the model's output as (batch, classes) logits with two or more classes; "
            f"'{model.name}' gives shape {logits.shape}"
        )
    if bound is None:
        bound = lipschitz_bound(model)
    bound = _validation.check_non_negative("bound", bound, positive=True)
    top2 = np.sort(logits, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) / (math.sqrt(2.0) * bound)


def certified_accuracy(
    model: keras.layers.Layer, x: ArrayLike, y: ArrayLike, radius: float, bound: float | None = None
) -> float:
    """The share of examples classified right with a certified radius above `radius` (`certified_radius`).

    Args:
        model: as for `certified_radius`.
        x: a batch of inputs.
        y: the integer labels, `(batch,)`.
        radius: the L2 radius, at least 0; at 0 this is the clean accuracy
            (an example on a tie counts as wrong).
        bound: as for `certified_radius`.

    Returns:
        float: the share, in [0, 1].

    Raises:
        ValueError: for a negative `radius`, naming it; and what
            `certified_radius` raises.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> _ = model.layers[0].kernel.assign(np.eye(2, dtype="float32"))
        >>> x = np.array([[3.0, 1.0], [1.0, 1.2]], "float32")  # radii 1.414 and 0.141
        >>> keras_ortho.certified_accuracy(model, x, [0, 1], radius=0.5)
        0.5
    """
    radius = _validation.check_non_negative("radius", radius)
    logits = _logits(model, x)
    radii = _radii(model, logits, bound)
    right = np.argmax(logits, axis=1) == np.asarray(y).reshape(-1)
    return float(np.mean(right & (radii > radius)))


@keras.saving.register_keras_serializable(package="keras_ortho")
class LipschitzConstraint(keras.constraints.Constraint):
    """Keeps each kernel's operator norm at most `bound`: after every step, `W <- W min(1, bound / B(W))`.

    `B(W)` is an upper bound on the norm of the operator the layer applies
    with `W`: the largest singular value of a Dense (EinsumDense) kernel's
    matrices, by SVD; for a convolution, the bound `lipschitz_bound` uses,
    with the layer's padding, strides, dilation and groups, at its input
    size in the model. As `B(W)` is never below the true norm, the true
    norm after the step is at most `bound`. A kernel within it is left
    as it is.

    Keras applies it after every optimizer update, inside compiled `fit`
    on TensorFlow, JAX and PyTorch. On JAX the optimizer hands it a tensor:
    the layer is known once keras_ortho has met the model (`constrain`, or
    any keras_ortho callback), as for the other constraints.

    Args:
        bound: the largest operator norm a kernel keeps (default 1.0), > 0.
        iterations: Gram iterations per frequency of a convolution (default 6).

    Raises:
        ValueError: for a bound that is not a positive number, naming it;
            when applied, for a convolution whose input size the model does
            not fix, naming the layer.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> w = np.diag([3.0, 0.5]).astype("float32")
        >>> keras.ops.convert_to_numpy(keras_ortho.LipschitzConstraint(1.0)(w)).astype("float64").round(3).tolist()
        [[1.0, 0.0], [0.0, 0.167]]
    """

    def __init__(self, bound: float = 1.0, iterations: int = DEFAULT_ITERATIONS):
        self.bound = _validation.check_non_negative("bound", bound, positive=True)
        self.iterations = _check_iterations(iterations)
        self._warned_shapes = set()
        self._bound = _binding.BoundWeights()

    def __call__(self, w):
        variable, _ = _binding.weight_behind(w, self, "constraint")
        layer = None if variable is None else _binding.layer_of(variable)
        tensor = keras.ops.convert_to_tensor(w)
        norm = _kernel_norm(layer, variable, keras.ops.cast(tensor, "float32"), self.iterations)
        scale = keras.ops.minimum(1.0, self.bound / norm)
        return tensor * keras.ops.cast(scale, tensor.dtype)

    def get_config(self):
        return {"bound": self.bound, "iterations": self.iterations}

    @classmethod
    def from_config(cls, config):
        return _validation.from_config(cls, config, ("bound", "iterations"))

    def __repr__(self):
        return _validation.config_repr(self)


# --- The walk over a model ------------------------------------------------------------------------------------


class _Signal:
    """What flows along the graph in the walk: the bound so far and the tensor's shape."""

    def __init__(self, bound, shape):
        self.bound, self.shape = bound, tuple(shape)


def _check_iterations(iterations):
    return _validation.check_positive_int("iterations", iterations)


def bound_and_factors(model, iterations=DEFAULT_ITERATIONS):
    """`(lipschitz_bound(model), lipschitz_factors(model))` from one walk: what the logger and the report read."""
    return _walk_model(model, _check_iterations(iterations))


def check_supported(model):
    """Raises what `lipschitz_bound(model)` would raise, computing no kernel's norm: a walk of the graph alone."""
    _walk_model(model, DEFAULT_ITERATIONS, dry=True)


def _walk_model(model, iterations, dry=False):
    """`(bound, factors)`; with `dry`, every kernel's norm is taken as 1 and only the checks run."""
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    _binding.assign_rules(model)
    factors = []
    signal = _walk(model, None, iterations, factors, prefix="", dry=dry)
    return float(signal.bound), factors


def _walk(model, shape, iterations, factors, prefix, dry):
    """The `_Signal` at `model`'s output, for an input of `shape` (None: the model's own); appends its factors."""
    inputs = _model_input_shape(model) if shape is None else shape
    start = _Signal(1.0, inputs)
    options = dict(iterations=iterations, factors=factors, prefix=prefix, dry=dry)

    def operation_fn(op):
        return functools.partial(_through, op, **options)

    if isinstance(model, keras.Sequential):
        signal = start
        for layer in model.layers:
            signal = _through(layer, signal, **options)
        return signal
    if not _keras_compat.is_graph_model(model):
        raise ValueError(
            f"lipschitz_bound walks Functional and Sequential models; '{model.name}' ({type(model).__name__}) "
            "is a subclassed model whose graph Keras does not know. Build it as a Functional model."
        )
    outputs = _keras_compat.run_graph(model, start, operation_fn)
    if len(outputs) != 1:
        raise ValueError(
            f"lipschitz_bound bounds a model with one output; '{model.name}' has {len(outputs)}. "
            "Build a model of the output to certify."
        )
    return outputs[0]


def _model_input_shape(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not model.built or not inputs:
        raise ValueError(
            f"Argument `model`: '{model.name}' is not built with an input, so its input size is unknown. "
            "Build it on `keras.Input(shape)` first."
        )
    if len(inputs) != 1:
        raise ValueError(
            f"Argument `model`: lipschitz_bound bounds a model of one input; '{model.name}' has {len(inputs)}."
        )
    shape = tuple(inputs[0].shape)
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"Argument `model`: '{model.name}' takes inputs of variable size {shape}; a bound holds for one size. "
            "Build the model on an input of fixed size."
        )
    return shape


_MERGES = {
    "Add": lambda b: sum(b),
    "Subtract": lambda b: sum(b),
    "Average": lambda b: sum(b) / len(b),
    "Concatenate": lambda b: math.sqrt(sum(x * x for x in b)),
    "Maximum": lambda b: math.sqrt(sum(x * x for x in b)),
    "Minimum": lambda b: math.sqrt(sum(x * x for x in b)),
}


def _through(op, *args, iterations, factors, prefix, dry, **kwargs):
    """The `_Signal` after `op` (a layer) is applied to the signals in `args`."""
    signals = [a for a in keras.tree.flatten((args, kwargs)) if isinstance(a, _Signal)]
    name = f"{prefix}{op.name}"
    merge = next((m for cls, m in _MERGES.items() if type(op).__name__ == cls and isinstance(op, L.Layer)), None)
    if merge is not None:
        shapes = [s.shape for s in signals]
        factor = merge([s.bound for s in signals])
        factors.append(LayerFactor(name, type(op).__name__, float(factor), True))
        return _Signal(factor, _output_shape(op, shapes))
    if len(signals) != 1:
        raise ValueError(
            f"lipschitz_bound cannot bound layer '{name}' ({type(op).__name__}): it takes {len(signals)} inputs "
            "and is not one of the merges it knows (Add, Subtract, Average, Concatenate, Maximum, Minimum)."
        )
    (signal,) = signals
    if isinstance(op, keras.Model):
        inner = _walk(op, signal.shape, iterations, factors, prefix=f"{name}/", dry=dry)
        return _Signal(signal.bound * inner.bound, inner.shape)
    factor, exact = _layer_factor(op, signal.shape, iterations, name, dry)
    factors.append(LayerFactor(name, type(op).__name__, float(factor), exact))
    return _Signal(signal.bound * factor, _output_shape(op, signal.shape))


def _output_shape(layer, shape):
    try:
        return tuple(layer.compute_output_shape(shape))
    except NotImplementedError:
        if isinstance(shape, list):
            spec = layer.compute_output_spec([keras.KerasTensor(s) for s in shape])
        else:
            spec = layer.compute_output_spec(keras.KerasTensor(shape))
        return tuple(spec.shape)


# --- One layer's factor --------------------------------------------------------------------------------------

_ISOMETRIES = (
    L.InputLayer,
    L.Flatten,
    L.Reshape,
    L.Permute,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Identity,
    L.ActivityRegularization,
)
_CROPPINGS = (L.Cropping1D, L.Cropping2D, L.Cropping3D)
_AVERAGE_POOLS = (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)
_MAX_POOLS = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D)
_GLOBAL_AVERAGE = (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D)
_GLOBAL_MAX = (L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)
_CONVOLUTIONS = (
    L.Conv1D,
    L.Conv2D,
    L.Conv3D,
    L.Conv1DTranspose,
    L.Conv2DTranspose,
    L.Conv3DTranspose,
    L.DepthwiseConv1D,
    L.DepthwiseConv2D,
)


def _layer_factor(layer, shape, iterations, name, dry=False):
    """`(factor, exact)` of one layer on an input of `shape` (batch axis first); `dry`: a kernel's norm is 1."""
    if isinstance(layer, _ISOMETRIES + _CROPPINGS):
        return 1.0, True
    if isinstance(layer, L.Dense) or isinstance(layer, L.EinsumDense):
        layout = _matrices_of(layer, layer.kernel.shape, name)
        norm = 1.0 if dry else _number(_compiled_matrix_norm(layout)(keras.ops.cast(layer.kernel, "float32")))
        return norm * _activation_constant(layer.activation, name), True
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        norm = _conv_norm(layer, separable_kernel(layer), "kernel", _spatial(layer, shape), iterations, dry)
        return norm * _activation_constant(layer.activation, name), False
    if isinstance(layer, _CONVOLUTIONS):
        size = _spatial(layer, shape)
        role = "depthwise_kernel" if hasattr(layer, "depthwise_kernel") else "kernel"
        norm = _conv_norm(layer, getattr(layer, role), role, size, iterations, dry)
        return norm * _activation_constant(layer.activation, name), False
    if isinstance(layer, L.BatchNormalization):
        return _batch_norm_factor(layer), True
    if isinstance(layer, L.Normalization):
        return _normalization_factor(layer), True
    if isinstance(layer, L.Rescaling):
        return float(np.max(np.abs(np.asarray(layer.scale, dtype="float64")))), True
    if isinstance(layer, _AVERAGE_POOLS + _MAX_POOLS):
        return (1.0, True) if dry else _pooling_factor(layer, _spatial(layer, shape))
    if isinstance(layer, _GLOBAL_AVERAGE):
        return 1.0 / math.sqrt(math.prod(_spatial(layer, shape))), True
    if isinstance(layer, _GLOBAL_MAX):
        return 1.0, True
    if isinstance(layer, L.Activation):
        return _activation_constant(layer.activation, name), True
    if isinstance(layer, L.ReLU):
        if float(layer.threshold) != 0.0:
            raise _refused(layer, name, f"its threshold {float(layer.threshold)} makes it jump there")
        return max(1.0, abs(float(layer.negative_slope))), True
    if isinstance(layer, L.LeakyReLU):
        return max(1.0, abs(float(layer.negative_slope))), True
    if isinstance(layer, L.ELU):
        return max(1.0, float(layer.alpha)), True
    if isinstance(layer, L.Softmax):
        return 1.0, True
    raise _refused(layer, name, "it is not one of the layers whose constant keras_ortho knows")


def _refused(layer, name, why):
    return ValueError(
        f"lipschitz_bound cannot bound layer '{name}' ({type(layer).__name__}): {why}. It bounds Dense, "
        "EinsumDense, convolutions, poolings, BatchNormalization, Keras's activations, merges and layers "
        "that only move values; see docs/lipschitz.md."
    )


def _activation_constant(function, name):
    key = getattr(function, "__name__", None)
    if key in _lipschitz.ACTIVATIONS and getattr(keras.activations, key, None) is function:
        return _lipschitz.ACTIVATIONS[key]
    raise ValueError(
        f"lipschitz_bound cannot bound the activation {function!r} of layer '{name}': its Lipschitz constant is "
        f"known for Keras's own {sorted(_lipschitz.ACTIVATIONS)}."
    )


def _spatial(layer, shape):
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    spatial = tuple(shape[2:] if channels_first else shape[1:-1])
    if not spatial or any(d is None for d in spatial):
        raise ValueError(
            f"lipschitz_bound needs the input size of layer '{layer.name}' ({type(layer).__name__}); it receives "
            f"shape {tuple(shape)}. Build the model on an input of fixed size."
        )
    return spatial


def _batch_norm_factor(layer):
    variance = keras.ops.convert_to_numpy(layer.moving_variance).astype("float64")
    gamma = keras.ops.convert_to_numpy(layer.gamma).astype("float64") if layer.scale else 1.0
    return float(np.max(np.abs(gamma) / np.sqrt(variance + layer.epsilon)))


def _normalization_factor(layer):
    """Keras's Normalization scales each feature: `max 1 / max(sqrt(var), eps)`, `max max(sqrt(var), eps)` inverted."""
    scale = np.maximum(np.sqrt(keras.ops.convert_to_numpy(layer.variance).astype("float64")), keras.config.epsilon())
    return float(np.max(scale if layer.invert else 1.0 / scale))


def _pooling_factor(layer, size):
    """`(factor, exact)` of a pooling layer on images of spatial `size`.

    Average pooling is linear with nonnegative weights, the same on every
    channel: on one channel, `A^T A` is a nonnegative matrix, so for any
    positive `v` its largest eigenvalue is at most `max_i (A^T A v)_i / v_i`
    (Collatz and Wielandt). `v` is taken from power iteration (`A` is the
    layer itself, `A^T` the backend's autodiff of it): a bound that closes
    on the exact norm, with the weights the backend gives border windows.

    Max pooling: the root of the most windows any pixel is in, exactly (a
    spike in that pixel moves every one of them).
    """
    if isinstance(layer, _MAX_POOLS):
        covered = 1.0
        for n, pool, stride in zip(size, layer.pool_size, layer.strides, strict=True):
            covered *= (_pooling_axis(n, pool, stride, layer.padding) != 0).sum(axis=0).max()
        return math.sqrt(covered), True
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    shape = (1, 1, *size) if channels_first else (1, *size, 1)
    adjoint = _backend.current().adjoint
    v = np.ones(shape, "float32")
    for _ in range(_POOLING_ITERATIONS):
        w = keras.ops.convert_to_numpy(adjoint(layer, v, layer(v))).astype("float64")
        ratio = float(np.max(w / v))
        v = (w / w.max() + 1e-3).astype("float32")
    return math.sqrt(ratio) * _lipschitz.ROUNDING_MARGIN, False


_POOLING_ITERATIONS = 30


def _pooling_axis(n, pool, stride, padding):
    """The `(out, n)` matrix of one axis of an average pooling, read off the backend's `average_pool`."""
    identity = keras.ops.convert_to_tensor(np.eye(n, dtype="float32")[:, :, None])
    pooled = keras.ops.average_pool(identity, (pool,), (stride,), padding, data_format="channels_last")
    return keras.ops.convert_to_numpy(pooled)[:, :, 0].T.astype("float64")


# --- Kernels: the compiled computations ------------------------------------------------------------------------


def _number(tensor):
    return float(keras.ops.convert_to_numpy(tensor))


def _matrices_of(layer, shape, name):
    """`(perm, (batch, rows, cols))`: how the kernel of a Dense or EinsumDense layer becomes its matrices."""
    shape = tuple(int(d) for d in shape)
    if isinstance(layer, L.EinsumDense):
        axes, why = _lipschitz.einsum_operator(layer.equation, shape)
        if axes is None:
            raise _refused(layer, name, why)
        batch, rows, cols = axes
        size = lambda ix: math.prod(shape[i] for i in ix)  # noqa: E731
        return tuple(batch + rows + cols), (size(batch), size(rows), size(cols))
    if len(shape) != 2:
        raise _refused(layer, name, f"its kernel of shape {shape} is not a matrix")
    return (0, 1), (1, *shape)


@functools.lru_cache(maxsize=128)
def _compiled_matrix_norm(layout):
    return _backend.current().for_measuring(functools.partial(_matrix_norm, layout=layout), jit_compile=False)


def _matrix_norm(kernel, layout):
    perm, shape = layout
    return _lipschitz.matrix_norm(keras.ops.reshape(keras.ops.transpose(kernel, perm), shape))


def separable_kernel(layer):
    """The one convolution a separable layer applies: `K[d, c, o] = sum_m D[d, c, m] P[c m, o]`.

    Its depthwise kernel `D` `(*spatial, cin, multiplier)`, then its 1x1
    pointwise kernel `P` `(cin multiplier, cout)`: a plain convolution with
    the depthwise strides, padding and dilation. Its bound is that of the
    layer, where the product of the two kernels' bounds can be twice it.
    """
    depthwise = keras.ops.cast(layer.depthwise_kernel, "float32")
    cin, multiplier = depthwise.shape[-2:]
    pointwise = keras.ops.reshape(keras.ops.cast(layer.pointwise_kernel, "float32"), (cin, multiplier, -1))
    return keras.ops.einsum("...cm,cmo->...co", depthwise, pointwise)


def _conv_geometry(layer, role, shape, size):
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)) and role == "kernel":
        geometry = _rules.conv_geometry(layer, "pointwise_kernel")._replace(strides=tuple(layer.strides))
        return _lipschitz.conv_geometry(shape, geometry, size, layer.padding, tuple(layer.dilation_rate))
    geometry = _rules.conv_geometry(layer, role)
    if role == "pointwise_kernel":  # a 1x1 convolution of stride 1: one frequency, at any size
        return _lipschitz.conv_geometry(shape, geometry, size, "valid", (1,) * len(size))
    return _lipschitz.conv_geometry(shape, geometry, size, layer.padding, tuple(layer.dilation_rate))


def _conv_norm(layer, kernel, role, size, iterations, dry=False):
    geometry = _conv_geometry(layer, role, tuple(kernel.shape), size)  # checks the geometry, dry or not
    return 1.0 if dry else _number(_compiled_conv_norm(geometry, iterations)(keras.ops.cast(kernel, "float32")))


@functools.lru_cache(maxsize=256)
def _compiled_conv_norm(geometry, iterations):
    return _backend.current().for_measuring(
        functools.partial(_conv_norm_of, geometry=geometry, iterations=iterations), jit_compile=False
    )


def _conv_norm_of(kernel, geometry, iterations):
    cos, sin = _lipschitz.frequency_table(geometry)
    return _lipschitz.operator_norm_bound(kernel, geometry, cos, sin, iterations)


def _kernel_norm(layer, variable, tensor, iterations):
    """The constraint's `B(W)`: the bound on the operator `layer` applies with the kernel `tensor`.

    A weight no layer of ours holds (a tensor of the user's own) is read as
    a matrix when it has rank 2, and refused otherwise.
    """
    role = None if layer is None else _rules.kernel_attribute(layer, variable)
    if role is not None and _rules.conv_geometry(layer, role[0]) is not None:
        size = _spatial(layer, _layer_input_shape(layer))
        geometry = _conv_geometry(layer, role[0], tuple(tensor.shape), size)
        return _conv_norm_of(tensor, geometry, iterations)
    if role is not None and isinstance(layer, (L.Dense, L.EinsumDense)):
        return _matrix_norm(tensor, _matrices_of(layer, tensor.shape, layer.name))
    if len(tensor.shape) == 2:
        return _lipschitz.matrix_norm(tensor[None])
    where = "a tensor it cannot trace to a layer" if layer is None else f"layer '{layer.name}' ({type(layer).__name__})"
    raise ValueError(
        f"LipschitzConstraint bounds Dense, EinsumDense and convolution kernels; it was applied to a weight of "
        f"shape {tuple(tensor.shape)} of {where}."
    )


def _layer_input_shape(layer):
    shape = conv.layer_shape(layer)
    if shape is None:
        raise ValueError(
            f"LipschitzConstraint needs the input size of layer '{layer.name}' ({type(layer).__name__}), "
            "which its model does not fix. Build the model on `keras.Input` of a fixed size."
        )
    return shape


# --- Logits ---------------------------------------------------------------------------------------------------


def _logits(model, x):
    """The model's output on `x`, read before a final softmax, as float64 numpy."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    softmax_activation = getattr(last, "activation", None) is keras.activations.softmax
    softmax_layer = isinstance(last, L.Softmax) or (isinstance(last, L.Activation) and softmax_activation)
    dense_softmax = softmax_activation and isinstance(last, L.Dense)
    if not (softmax_layer or dense_softmax):
        return keras.ops.convert_to_numpy(model(x)).astype("float64")
    logits = keras.Model(model.inputs[0], last.input)(x)
    if dense_softmax:  # the layer's linear part
        logits = keras.ops.matmul(logits, last.kernel)
        logits = logits + last.bias if last.use_bias else logits
    return keras.ops.convert_to_numpy(logits).astype("float64")
