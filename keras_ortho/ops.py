"""`keras_ortho.ops`: the penalty, its gradient and the per-slice errors of one weight.

`slice_errors`, `ortho_penalty` and `ortho_gradient` are the public functions
(also at `keras_ortho.`), as `keras.ops` holds Keras's. Beneath them, and shared
with the regularizer, the constraint and the monitor: a weight is checked and
planned once (`prepare`, `plan_weight`); the plan is passed down to the math in
`_math` and back up to the weight's layout. 16-bit floats are reduced in
float32; float32 and float64 in their own dtype.
"""

import functools
from typing import Any

import keras
from keras import ops

from keras_ortho import _backend, _binding, _math, _validation
from keras_ortho._conv import OperatorLayout, OperatorPlan, plan_operator
from keras_ortho._slicing import plan_slices

__all__ = ["ortho_gradient", "ortho_penalty", "slice_errors"]

# What the public functions take and give: a Keras variable, a tensor of the
# running backend (`tf.Tensor`, `jax.Array`, `torch.Tensor`) or a numpy array.
Tensor = Any


def keras_path(w):
    """The path of a Keras variable (`layer/.../name`), None for anything else."""
    return w.path if isinstance(w, keras.Variable) else None


def plan_weight(shape, dtype, slice_axis=None, mode="auto", rule=None, operator=False):
    """Checks a weight's shape and dtype against the options; returns its `SlicePlan`.

    With `operator`, a convolution kernel (its rule has a `conv` geometry) is
    planned as its operator instead (`_conv.OperatorPlan`); any other weight
    keeps its matrices.

    Args:
        shape: the weight's shape, as the backend gives it.
        dtype: its dtype, in any form `keras.backend.standardize_dtype` takes.
        slice_axis, mode: already checked by `_validation`.
        rule: the `Rule` of the weight's layer, when known.
        operator: whether to plan a convolution kernel as its operator.

    Raises:
        TypeError: for a weight that is not floating point.
        ValueError: for a shape that is not static, of rank < 2, or without
            `slice_axis`.
    """
    dtype = keras.backend.standardize_dtype(dtype)
    if "float" not in dtype:
        raise TypeError(f"keras_ortho needs a floating-point weight. Received: w.dtype={dtype}")
    try:
        dims = tuple(shape)
    except ValueError:  # a TensorFlow shape of unknown rank
        dims = None
    if dims is None or any(d is None for d in dims):
        raise ValueError(f"keras_ortho needs a weight with a static shape. Received: w.shape={shape}")
    planned = _planned.__wrapped__ if _backend.current().dynamo_compiling() else _planned
    return planned(tuple(int(d) for d in dims), slice_axis, mode, rule, operator)


# A regularizer plans the same few shapes at every step: on eager PyTorch,
# where each step runs this Python again, planning anew cost about as much as
# a small kernel's Gram. A plan is an immutable tuple, shared safely; a shape
# that cannot be planned raises each time (nothing is cached for it).
@functools.lru_cache(maxsize=4096)
def _planned(shape, slice_axis, mode, rule, operator):
    if operator and rule is not None and rule.conv is not None:
        return plan_operator(shape, rule.conv, mode)
    return plan_slices(shape, slice_axis, mode, rule)


def layout(plan):
    """What the math in `_math` takes for a plan's slices: their mode, or a convolution's `OperatorLayout`."""
    return OperatorLayout(plan.grid, plan.block) if isinstance(plan, OperatorPlan) else plan.mode


def compute_dtype(dtype):
    """float32 for 16-bit floats, else the dtype itself."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def prepare(w, slice_axis, mode, rule=None, weight=None, operator=False):
    """Checks `w` and the options; returns `(tensor, plan)` (`operator`: see `plan_weight`).

    `rule` is the layer rule of the weight, and `weight` the Keras variable `w`
    stands for (for errors that name it); both default to what a Keras
    variable `w` itself tells (`_binding.known_rule`).
    """
    slice_axis = _validation.check_slice_axis(slice_axis)
    mode = _validation.check_mode(mode)
    weight = weight if weight is not None else (w if isinstance(w, keras.Variable) else None)
    if rule is None and weight is not None:
        rule = _binding.known_rule(weight)
    tensor = _backend.current().to_tensor(w)
    try:
        return tensor, plan_weight(tensor.shape, tensor.dtype, slice_axis, mode, rule, operator)
    except (TypeError, ValueError) as error:
        if weight is None:
            raise
        raise type(error)(f"{error}, for {_binding.describe(weight)}") from None


def to_stack(tensor, plan):
    """A backend tensor (as `prepare` gives it) -> `(num_slices, rows, cols)` in the compute dtype;
    `(rows, cols)` for one slice.

    A plain matmul of one matrix costs less than a batch of one (4% at
    1024 x 1024, a third on small kernels, measured on TensorFlow), and the
    math takes either.
    """
    tensor = _cast(tensor, compute_dtype(tensor.dtype))
    if isinstance(plan, OperatorPlan):
        return _to_operator_stack(tensor, plan)
    shape = (plan.rows, plan.cols) if plan.num_slices == 1 else (plan.num_slices, plan.rows, plan.cols)
    if plan.perm is None:
        return _reshape(tensor, shape)
    # After a transpose the reshape stays, even to the same shape: without it,
    # PyTorch 2.13's inductor miscompiles an SVD of the transposed view under
    # dynamic shapes (`NameError` in its generated code; the constraint's test
    # under jit_compile on an LSTM kernel).
    backend = _backend.current()
    return backend.reshape(backend.transpose(_reshape(tensor, plan.view), plan.perm), shape)


# Eager PyTorch runs each operation through its dispatch (and each `keras.ops`
# call through Keras's as well): the ones that would change nothing are skipped.


def _reshape(tensor, shape):
    return tensor if tuple(tensor.shape) == tuple(shape) else _backend.current().reshape(tensor, shape)


def _cast(tensor, dtype):
    """`tensor` in `dtype` (a name, or the backend's own dtype), itself where it is in it already."""
    # Compared as they are first: naming a dtype costs eager PyTorch more than the check.
    if tensor.dtype == dtype or keras.backend.standardize_dtype(tensor.dtype) == dtype:
        return tensor
    return ops.cast(tensor, dtype)


def _to_operator_stack(tensor, plan):
    """`(groups, rows, cols)` of a convolution kernel: padded to whole strides, then reshaped and transposed."""
    backend = _backend.current()
    if any(plan.pad):
        tensor = ops.pad(tensor, [(0, p) for p in plan.pad] + [(0, 0), (0, 0)])
    moved = backend.transpose(backend.reshape(tensor, plan.view), plan.perm)
    return backend.reshape(moved, (plan.num_slices, plan.rows, plan.cols))


def _from_operator_stack(stack, plan):
    """Inverse of `_to_operator_stack` on the kernel's own entries (the padding's are dropped)."""
    backend = _backend.current()
    moved = backend.reshape(stack, [plan.view[i] for i in plan.perm])
    inverse = sorted(range(len(plan.perm)), key=plan.perm.__getitem__)
    padded = [k + p for k, p in zip(plan.shape[:-2], plan.pad, strict=True)] + list(plan.shape[-2:])
    out = backend.reshape(backend.transpose(moved, inverse), padded)
    if any(plan.pad):
        out = out[tuple(slice(0, k) for k in plan.shape)]
    return out


def from_stack(stack, plan, dtype):
    """Inverse of `to_stack`: the stack -> the weight's shape and dtype."""
    if isinstance(plan, OperatorPlan):
        return _cast(_from_operator_stack(stack, plan), dtype)
    if plan.perm is None:
        out = _reshape(stack, plan.shape)
    else:
        moved = _reshape(stack, [plan.view[i] for i in plan.perm])
        inverse = sorted(range(len(plan.perm)), key=plan.perm.__getitem__)
        out = _reshape(_backend.current().transpose(moved, inverse), plan.shape)
    return _cast(out, dtype)


def errors_of(tensor, plan, norm="l1"):
    """`slice_errors` of a tensor already planned."""
    return ops.reshape(_math.slice_values(to_stack(tensor, plan), layout(plan), norm), (plan.num_slices,))


def penalty_of(tensor, plan, factor, reduction="sum", norm="l1"):
    """`ortho_penalty` of a tensor already planned, with the analytic gradient."""
    value = _math.stack_penalty(to_stack(tensor, plan), layout(plan), norm, reduction, factor)
    return _cast(value, tensor.dtype)


def gradient_of(tensor, plan, scale, reduction="sum", norm="l1"):
    """`ortho_gradient` of a tensor already planned, `scale` times the unit-factor gradient, in its layout."""
    stack = to_stack(tensor, plan)
    return from_stack(_math.penalty_gradient(stack, layout(plan), norm, reduction, scale), plan, tensor.dtype)


def lazy_penalty_of(tensor, plan, factor, scale, reduction="sum", norm="l1"):
    """`scale * penalty_of(...)` of a tensor already planned, with nothing computed while `scale` is 0.

    For lazy regularization, whose scale is 0 on most steps: the backend's
    `gated` branches on `scale > 0`. Under a compiled branch (`jax.lax.cond`,
    `tf.cond`), what the taken branch keeps for the backward pass the skipped
    one must produce as zeros, so each backend keeps only what a skipped step
    pays nothing extra for: the weight and the scale (the gradient computed
    again under a second branch), or the gradient itself, as large as the
    weight. Keeping the stack and `sign(G)`, as the plain penalty does, filled
    as much memory as the weights and their Grams on every skipped step.
    """
    scale = ops.cast(scale, compute_dtype(tensor.dtype))
    return _backend.current().gated(tensor, scale, (plan, factor, reduction, norm), _lazy_value, _lazy_gradient)


def _lazy_value(tensor, scale, options):
    plan, factor, reduction, norm = options
    value = _math.stack_value(to_stack(tensor, plan), layout(plan), norm, reduction)
    return _cast(factor * scale * value, tensor.dtype)


def _lazy_gradient(tensor, scale, options, upstream):
    plan, factor, reduction, norm = options
    return gradient_of(tensor, plan, factor * scale * ops.cast(upstream, scale.dtype), reduction, norm)


def project(tensor, plan, method="svd", iterations=None):
    """Each slice of a tensor already planned replaced by its polar factor, in its layout and dtype."""
    if plan.impossible is not None:
        raise ValueError(
            f"Argument `mode`: {plan.impossible}. Received: mode={plan.mode!r}; "
            '"auto" takes the side that can be orthonormal'
        )
    stack = to_stack(tensor, plan)
    return from_stack(_math.polar_factor(stack, plan.mode, method, iterations), plan, tensor.dtype)


# --- Public functions ---------------------------------------------------------


def slice_errors(
    w: Tensor, slice_axis: int | None = None, mode: str = "auto", norm: str = "l1", operator: bool = False
) -> Tensor:
    """Distance from orthonormal of each slice under `norm`, unscaled.

    For the default `norm="l1"`, `sum_jk |G_i|_jk`; see `ortho_penalty` for
    the others. `factor * sum(slice_errors(w, norm=n))` equals
    `ortho_penalty(w, factor, norm=n)` (up to the order of the float additions).

    Args:
        w: a float tensor, variable or array of rank >= 2. A Keras variable
            is sliced by its layer's rule once keras_ortho has met its layer
            (see the slicing table, docs/slicing.md), else by the default rule.
        slice_axis: None for the default slicing, or the axis to slice along.
        mode: "auto", "columns" or "rows".
        norm: "l1", "fro", "double", "spectral" or "coherence".
        operator: for a convolution's kernel (a Keras variable whose layer is
            known), the distance of its operator from orthogonal, one value
            per group, as `OrthoRegularizer(operator=True)` measures it; any
            other weight keeps its matrices.

    Returns:
        Tensor: a 1-D backend tensor of length `num_slices`, in float32 for
            16-bit weights and in `w`'s dtype otherwise.

    Raises:
        ValueError, TypeError: for a weight that holds no matrices (not floating
            point, rank < 2, no static shape) or a bad argument, naming it.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> w = np.stack([np.eye(4, 2), 2 * np.eye(4, 2)], axis=1).astype("float32")  # (4, 2, 2): 2 slices
        >>> keras.ops.convert_to_numpy(keras_ortho.slice_errors(w)).tolist()  # G_1 = 4 I - I
        [0.0, 6.0]
    """
    norm = _validation.check_norm(norm)
    operator = _validation.check_operator(operator, norm, slice_axis)
    return errors_of(*prepare(w, slice_axis, mode, operator=operator), norm)


def ortho_penalty(
    w: Tensor,
    factor: float = 1.0,
    slice_axis: int | None = None,
    mode: str = "auto",
    reduction: str = "sum",
    norm: str = "l1",
    operator: bool = False,
) -> Tensor:
    """`factor * sum_i |G_i|`, differentiable with the analytic gradient.

    `|G_i|` is the slice's measure under `norm`, with `G_i = Phi_i^T Phi_i - I`
    (columns mode) or `Phi_i Phi_i^T - I` (rows mode):

    * "l1" (default, the seed): `sum_jk |G_i|_jk`, gradient `2 Phi_i sign(G_i)`;
    * "fro" (soft orthogonality, SO): `||G_i||_F^2`, gradient `4 Phi_i G_i`;
    * "double" (DSO): `||Phi_i^T Phi_i - I||_F^2 + ||Phi_i Phi_i^T - I||_F^2`,
      both sides whatever `mode`, gradient `8 Phi_i G_i` (its floor is
      `|rows - cols|`, not 0, for a slice that is not square);
    * "spectral" (SRIP): the largest `|eigenvalue|` of `G_i` by 32 steps of
      power iteration, gradient `2 s Phi_i u u^T` (`u` its eigenvector, `s`
      its sign);
    * "coherence" (MC): `max_jk |G_i|_jk`, gradient `Phi_i (E + E^T)` with
      `E` the sign of the largest entry there and 0 elsewhere.

    Bansal et al. 2018 ("Can We Gain More from Orthogonality Regularizations
    in Training Deep CNNs?") compares SO, DSO, MC and SRIP. Same value and
    gradient as `OrthoRegularizer(factor, slice_axis, mode, reduction,
    norm)(w)`, on every backend's autodiff (`tf.GradientTape`, `jax.grad`,
    `backward()`).

    Args:
        w: a float tensor, variable or array of rank >= 2.
        factor: real number >= 0.
        slice_axis: None for the default slicing, or the axis to slice along.
        mode: "auto", "columns" or "rows".
        reduction: "sum" (the formula above) or "mean": each slice's sum
            divided by its Gram's `k * k` entries (for "double", each side by
            its own); only for "l1", "fro" and "double".
        norm: "l1", "fro", "double", "spectral" or "coherence".
        operator: for a convolution's kernel, the penalty of its operator
            (as `OrthoRegularizer(operator=True)`; docs/operator.md).

    Returns:
        A scalar tensor in `w`'s dtype (reduced in float32 for 16-bit weights).

    Raises:
        ValueError, TypeError: as for `slice_errors`, and for `reduction="mean"`
            with a norm that does not sum entries.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> w = np.stack([np.eye(4, 2), 2 * np.eye(4, 2)], axis=1).astype("float32")
        >>> round(float(keras_ortho.ortho_penalty(w, factor=0.5)), 6)  # 0.5 * (0 + 6)
        3.0
        >>> round(float(keras_ortho.ortho_penalty(w, factor=0.5, norm="fro")), 6)  # 0.5 * ||3 I||_F^2
        9.0
    """
    factor = _validation.check_factor(factor)
    reduction = _validation.check_reduction(reduction)
    norm = _validation.check_norm(norm, reduction)
    operator = _validation.check_operator(operator, norm, slice_axis)
    tensor, plan = prepare(w, slice_axis, mode, operator=operator)
    return penalty_of(tensor, plan, factor, reduction, norm)


def ortho_gradient(
    w: Tensor,
    factor: float = 1.0,
    slice_axis: int | None = None,
    mode: str = "auto",
    reduction: str = "sum",
    norm: str = "l1",
    operator: bool = False,
) -> Tensor:
    """The closed-form gradient of `ortho_penalty`, without autodiff.

    For "l1", columns mode: `2 c Phi_i sign(Phi_i^T Phi_i - I)`; rows mode:
    `2 c sign(Phi_i Phi_i^T - I) Phi_i`, laid back into `w`'s layout, with
    `c = factor` ("sum") or `factor / k**2` ("mean"). The other norms' are
    listed under `ortho_penalty`.

    Args:
        w: as for `ortho_penalty`.
        factor: as for `ortho_penalty`.
        slice_axis: as for `ortho_penalty`.
        mode: as for `ortho_penalty`.
        reduction: as for `ortho_penalty`.
        norm: as for `ortho_penalty`.
        operator: as for `ortho_penalty`.

    Returns:
        A tensor of `w`'s shape and dtype.

    Raises:
        ValueError, TypeError: as for `ortho_penalty`.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> w = np.stack([np.eye(4, 2), 2 * np.eye(4, 2)], axis=1).astype("float32")
        >>> g = keras.ops.convert_to_numpy(keras_ortho.ortho_gradient(w, factor=0.5))
        >>> g[:2, 1, :].tolist()  # 2 * 0.5 * Phi_1 sign(3 I) = Phi_1
        [[2.0, 0.0], [0.0, 2.0]]
        >>> float(abs(g[:, 0, :]).max())  # an orthonormal slice has no gradient
        0.0
    """
    factor = _validation.check_factor(factor)
    reduction = _validation.check_reduction(reduction)
    norm = _validation.check_norm(norm, reduction)
    operator = _validation.check_operator(operator, norm, slice_axis)
    return gradient_of(*prepare(w, slice_axis, mode, operator=operator), factor, reduction, norm)
