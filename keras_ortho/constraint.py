"""`OrthoConstraint`: the Keras adapter for the polar projection (hard orthogonality)."""

import keras

from keras_ortho import _binding, _validation, ops
from keras_ortho._math import PROJECTIONS

_CONFIG_KEYS = ("slice_axis", "mode", "method", "iterations")
_DEFAULT_ITERATIONS = 24


@keras.saving.register_keras_serializable(package="keras_ortho")
class OrthoConstraint(keras.constraints.Constraint):
    """Keeps every slice of a weight exactly orthonormal: after each optimizer step, its polar factor.

    `Phi_i <- U_i V_i^T` for `Phi_i = U_i S_i V_i^T`: each slice (per head, per
    gate, per channel, per group, as the slicing table, docs/slicing.md says) is
    replaced by the nearest matrix with orthonormal columns, or rows for a
    wide slice, in Frobenius norm. Keras applies it after every optimizer
    update, inside compiled `fit` on TensorFlow, JAX and PyTorch.

    Args:
        slice_axis: None (default) for the per-layer slicing, or the axis to
            slice along (see `OrthoRegularizer`).
        mode: "auto" (default): orthonormal columns for a slice with at least
            as many rows as columns, else orthonormal rows. "columns" or
            "rows" insist on one side, and a slice that cannot have it
            raises an error naming its shape.
        method: "svd" (default): `U V^T` from the SVD, exact to rounding.
            "newton_schulz": matmuls only, faster on GPUs; within float32
            rounding after 24 steps for slices whose condition number times
            the square root of their short side stays below about 1e3 (see
            `keras_ortho._math.polar_factor`).
        iterations: steps of "newton_schulz" (default 24); None with "svd".

    Raises:
        ValueError: for an argument out of its range or choices, naming it and the value received.
        TypeError: for an argument of the wrong type, likewise.
        ValueError: when applied, for a weight that holds no matrices, or a
            slice that cannot have the orthonormal side `mode` asks for.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> w = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
        >>> q = keras.ops.convert_to_numpy(keras_ortho.OrthoConstraint()(w))
        >>> bool(np.allclose(q.T @ q, np.eye(3), atol=1e-5))  # the nearest orthonormal columns
        True
        >>> dense = keras.layers.Dense(64, kernel_constraint=keras_ortho.OrthoConstraint())
    """

    def __init__(
        self,
        slice_axis: int | None = None,
        mode: str = "auto",
        method: str = "svd",
        iterations: int | None = None,
    ):
        self.slice_axis = _validation.check_slice_axis(slice_axis)
        self.mode = _validation.check_mode(mode)
        self.method = _validation.check_choice("method", method, PROJECTIONS)
        if method == "svd" and iterations is not None:
            raise ValueError(
                'Argument `iterations` counts the steps of method="newton_schulz"; "svd" takes none. '
                f"Received: iterations={iterations!r}, method={method!r}"
            )
        if method == "newton_schulz":
            iterations = _DEFAULT_ITERATIONS if iterations is None else iterations
            iterations = _validation.check_positive_int("iterations", iterations)
        self.iterations = iterations
        self._warned_shapes = set()
        self._bound = _binding.BoundWeights()  # the weights keras_ortho has met carrying it

    def __call__(self, w):
        variable, rule = _binding.weight_behind(w, self, "constraint")
        tensor, plan = ops.prepare(w, self.slice_axis, self.mode, rule=rule, weight=variable)
        if plan.impossible is not None and variable is not None:
            raise ValueError(
                f"Argument `mode`: {plan.impossible}, for {_binding.describe(variable)}. "
                f'Received: mode={plan.mode!r}; "auto" takes the side that can be orthonormal'
            )
        return ops.project(tensor, plan, self.method, self.iterations)

    def get_config(self):
        return {"slice_axis": self.slice_axis, "mode": self.mode, "method": self.method, "iterations": self.iterations}

    @classmethod
    def from_config(cls, config):
        return _validation.from_config(cls, config, _CONFIG_KEYS)

    def __repr__(self):
        return _validation.config_repr(self)
