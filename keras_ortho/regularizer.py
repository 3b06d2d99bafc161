"""`OrthoRegularizer`: the Keras adapter for `ortho_penalty`."""

import keras

from keras_ortho import _ops, _validation

_CONFIG_KEYS = ("factor", "slice_axis", "mode")


@keras.saving.register_keras_serializable(package="keras_ortho")
class OrthoRegularizer(keras.regularizers.Regularizer):
    """Pushes every slice of a weight towards orthonormal columns (or rows).

    `loss = factor * sum_i sum_jk |Phi_i^T Phi_i - I|_jk`, where `Phi_i` are the
    slices of the weight (see the README's slicing table); its gradient
    `2 factor Phi_i sign(Phi_i^T Phi_i - I)` is supplied in closed form.

    Args:
        factor: real number >= 0, the weight of the penalty. Defaults to 0.01.
        slice_axis: None (default) for the per-layer default slicing: rank 3
            kernels per axis 1 (per attention head), every other rank as one
            matrix `(prod(shape[:-1]), shape[-1])`. An int slices along that
            axis instead (negative counts from the end).
        mode: "columns" (`Phi_i^T Phi_i ~ I`), "rows" (`Phi_i Phi_i^T ~ I`) or
            "auto" (default): columns when a slice has at least as many rows
            as columns, rows otherwise.

    Example:

        layer = keras.layers.Dense(16, kernel_regularizer=OrthoRegularizer(0.01))
        attention = keras.layers.MultiHeadAttention(
            num_heads=8, key_dim=64, kernel_regularizer=OrthoRegularizer(0.01)
        )  # each head of the four projections
    """

    def __init__(self, factor=0.01, slice_axis=None, mode="auto"):
        self.factor = _validation.check_factor(factor)
        self.slice_axis = _validation.check_slice_axis(slice_axis)
        self.mode = _validation.check_mode(mode)

    def __call__(self, x):
        _validation.check_keras_backend(type(self).__name__)
        return _ops.ortho_penalty(x, self.factor, self.slice_axis, self.mode)

    def get_config(self):
        return {"factor": self.factor, "slice_axis": self.slice_axis, "mode": self.mode}

    @classmethod
    def from_config(cls, config):
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"{cls.__name__} config has unknown key(s) {unknown}; expected "
                f"only {list(_CONFIG_KEYS)}. Received: config={config!r}"
            )
        try:
            return cls(**config)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{cls.__name__} config is invalid: {error}") from error

    def __repr__(self):
        return (
            f"{type(self).__name__}(factor={self.factor!r}, "
            f"slice_axis={self.slice_axis!r}, mode={self.mode!r})"
        )
