"""`OrthoRegularizer`: the Keras adapter for `ortho_penalty`."""

import keras

from keras_ortho import _binding, _keras_compat, _validation, ops
from keras_ortho._conv import OperatorPlan

_CONFIG_KEYS = ("factor", "slice_axis", "mode", "reduction", "norm", "operator")


@keras.saving.register_keras_serializable(package="keras_ortho")
class OrthoRegularizer(keras.regularizers.Regularizer):
    """Pushes every slice of a weight towards orthonormal columns (or rows).

    `loss = factor * sum_i sum_jk |Phi_i^T Phi_i - I|_jk`, where `Phi_i` are the
    slices of the weight (see the slicing table, docs/slicing.md); its gradient
    `2 factor Phi_i sign(Phi_i^T Phi_i - I)` is supplied in closed form to the
    backend's autodiff (TensorFlow, JAX or PyTorch). `norm` chooses another
    measure of each slice, with its own closed-form gradient (see
    `keras_ortho.ortho_penalty`).

    Args:
        factor: real number >= 0, the weight of the penalty. Defaults to 0.01.
        slice_axis: None (default) for the slicing of the weight's layer (the
            slicing table, docs/slicing.md: per head for attention projections,
            per gate for recurrent kernels, per channel or group for
            depthwise and grouped convolutions, one matrix
            `(prod(shape[:-1]), shape[-1])` for Dense and Conv kernels); a
            weight whose layer is unknown is sliced on axis 1 at rank 3 and
            as one matrix otherwise. An int slices along that axis instead
            (negative counts from the end).
        mode: "columns" (`Phi_i^T Phi_i ~ I`), "rows" (`Phi_i Phi_i^T ~ I`) or
            "auto" (default): columns when a slice has at least as many rows
            as columns, rows otherwise.
        reduction: "sum" (default), the formula above; or "mean",
            `factor * sum_i mean_jk |G_i|_jk`: each slice's sum divided by the
            `k * k` entries of its Gram, so that one factor suits narrow and
            wide kernels alike. `slice_errors` and `OrthoLogger` report the
            unreduced per-slice sums either way. Configs saved without it
            load as "sum". Only for the norms that sum entries ("l1", "fro",
            "double").
        norm: "l1" (default, the seed's sum of absolute entries), "fro"
            (`||G_i||_F^2`, soft orthogonality), "double" (both Grams,
            `||Phi_i^T Phi_i - I||_F^2 + ||Phi_i Phi_i^T - I||_F^2`), "spectral"
            (largest |eigenvalue| of `G_i`, SRIP) or "coherence" (largest
            `|G_i|_jk`). `slice_errors` and `OrthoLogger` measure each slice
            by the same norm. Configs saved without it load as "l1".
        operator: False (default) regularizes each convolution kernel's
            matrix of filters. True regularizes the operator the convolution
            applies to an image, with its strides and groups:
            `factor * sum_delta |M_delta - [delta = 0] I|`, `M_delta` the
            kernel correlated with itself at offset `delta` (the operator's
            Gram, block by block; docs/operator.md), with the gradient in
            closed form. `mode` then speaks of the operator's rows or columns,
            "auto" taking the side that can be orthonormal. Only with
            `norm="l1"` or `"fro"` and `slice_axis=None`. Every weight that is
            not a convolution kernel (Dense, attention, recurrent) keeps its
            matrices: a Dense kernel is a 1x1 convolution, whose operator's
            Gram is its own. Configs saved without it load as False.

    Raises:
        ValueError: for an argument out of its range or choices, naming it and the value received.
        TypeError: for an argument of the wrong type, likewise.
        ValueError: when called, for a weight that holds no matrices (rank < 2,
            no static shape), or as a layer's `activity_regularizer`.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> ortho = keras_ortho.OrthoRegularizer(0.1)
        >>> round(float(ortho(keras.Variable(np.eye(4, 3, dtype="float32")))), 6)  # orthonormal columns
        0.0
        >>> round(float(ortho(keras.Variable(2 * np.eye(4, 3, dtype="float32")))), 6)  # 0.1 * 3 * |4 - 1|
        0.9
        >>> dense = keras.layers.Dense(16, kernel_regularizer=ortho)
        >>> attention = keras.layers.MultiHeadAttention(num_heads=8, key_dim=64, kernel_regularizer=ortho)  # per head
        >>> conv = keras.layers.Conv2D(64, 3, strides=2, kernel_regularizer=keras_ortho.OrthoRegularizer(operator=True))
    """

    def __init__(
        self,
        factor: float = 0.01,
        slice_axis: int | None = None,
        mode: str = "auto",
        reduction: str = "sum",
        norm: str = "l1",
        operator: bool = False,
    ):
        self.factor = _validation.check_factor(factor)
        self.slice_axis = _validation.check_slice_axis(slice_axis)
        self.mode = _validation.check_mode(mode)
        self.reduction = _validation.check_reduction(reduction)
        self.norm = _validation.check_norm(norm, self.reduction)
        self.operator = _validation.check_operator(operator, self.norm, self.slice_axis)
        self._warned_shapes = set()
        self._bound = _binding.BoundWeights()  # the weights keras_ortho has met carrying it
        # The `_scale.ScaleBinding` of an OrthoSchedule/OrthoTarget while its fit
        # runs; not configuration: `get_config` never carries it.
        self._scale = None

    def __call__(self, x):
        binding = self._scale
        if binding is not None and binding.release_if_stale():  # first: a fit that raised ends here
            binding = None
        known = _binding.weight_if_known(x, self)
        if known is None and not isinstance(x, keras.Variable):
            self._refuse_activations(x)
        variable, rule = known if known is not None else _binding.weight_from_frames(x, self, "regularizer")
        tensor, plan = ops.prepare(x, self.slice_axis, self.mode, rule=rule, weight=variable, operator=self.operator)
        if plan.impossible is not None:
            self._warn_impossible(plan, variable)
        if binding is None:
            return ops.penalty_of(tensor, plan, self.factor, self.reduction, self.norm)
        scale = binding.variable
        if binding.lazy:  # lazy regularization: on the steps whose scale is 0 nothing is computed
            return ops.lazy_penalty_of(tensor, plan, self.factor, scale, self.reduction, self.norm)
        penalty = ops.penalty_of(tensor, plan, self.factor, self.reduction, self.norm)
        return penalty * keras.ops.cast(scale, penalty.dtype)

    def _warn_impossible(self, plan, variable, stacklevel=3):
        """Warns once per shape that no weight of `plan`'s shape can have the side the plan asks for."""
        operator = isinstance(plan, OperatorPlan)
        where = _binding.describe(variable) if variable is not None else f"a weight of shape {plan.shape}"
        if operator:
            message = (
                f"OrthoRegularizer(operator=True) on {where}: no convolution of this shape is "
                f"orthogonal ({plan.impossible}; Achour et al. 2022). The penalty is still "
                "minimized, towards the nearest it can reach; see docs/operator.md."
            )
        else:
            message = (
                f"OrthoRegularizer(mode={self.mode!r}) on {where}: {plan.impossible}, so the "
                "penalty can never reach 0. It is still minimized, towards the nearest it can "
                'reach; mode="auto" takes the side that can be orthonormal.'
            )
        _binding.warn_once(self, (operator, plan.shape, plan.mode), message, stacklevel=stacklevel)

    def _refuse_activations(self, x):
        layer = _keras_compat.activity_layer(self)
        if layer is not None:
            raise ValueError(
                f"OrthoRegularizer is a weight regularizer, and layer '{layer.name}' "
                f"({type(layer).__name__}) has it as `activity_regularizer`: it would "
                f"measure a batch of activations of shape {tuple(x.shape)}, which holds no "
                "matrices of weights. Pass it as `kernel_regularizer` (or the layer's other "
                "weight regularizer arguments), or use `keras_ortho.regularize`."
            )

    def get_config(self):
        return {
            "factor": self.factor,
            "slice_axis": self.slice_axis,
            "mode": self.mode,
            "reduction": self.reduction,
            "norm": self.norm,
            "operator": self.operator,
        }

    @classmethod
    def from_config(cls, config):
        return _validation.from_config(cls, config, _CONFIG_KEYS)

    def __repr__(self):
        return _validation.config_repr(self)
