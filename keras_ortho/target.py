"""`OrthoTarget`: the strength of every OrthoRegularizer, steered towards a target error."""

import math
import warnings

import numpy as np

from keras_ortho import _keras_compat, _scale, _validation, _watch

STATISTICS = ("mean", "max")


class OrthoTarget(_scale.ScaleCallback):
    """Adapts the scale of every OrthoRegularizer each epoch, towards an error of `target`.

    At the start of each epoch it measures `error`, the mean (or the max) over
    every slice of every weight regularized by an OrthoRegularizer of that
    slice's `slice_errors` under its regularizer's norm (`sum_jk |G_i|_jk` for
    the default "l1"; what `OrthoLogger` records), on
    the weights the epoch starts from, and updates the scale multiplicatively:

        scale <- clip(scale * (error / target) ** rate, min_scale, max_scale)

    so the scale rises while the error is above `target` and falls while it is
    below; `rate` is the step in log space (`log scale` moves by
    `rate * log(error / target)`). Each regularizer then acts with
    `factor * scale`, inside compiled training on every backend, as with
    `OrthoSchedule`; the scale of each epoch is written to `logs["ortho/scale"]`.

    The scale is the controller's whole state. It is saved with the model's
    weights while attached, so BackupAndRestore resumes it where it stopped
    (the next update reads the restored weights), and a second `fit` with the
    same callback goes on from it.

    Args:
        target: the per-slice error to steer towards, a number > 0.
        statistic: "mean" (default) or "max" over all slices.
        rate: the exponent of the update, > 0. Defaults to 0.5.
        initial_scale: the scale before the first update. Defaults to 1.0.
        min_scale: lower bound of the scale (> 0). Default 1e-3.
        max_scale: upper bound of the scale (>= min_scale). Default 1e3.

    Raises:
        ValueError: for an argument out of its range or choices, naming it and the value received.
        TypeError: for an argument of the wrong type, likewise.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> model = keras.Sequential(
        ...     [keras.Input((8,)), keras.layers.Dense(4, kernel_regularizer=keras_ortho.OrthoRegularizer(0.01))]
        ... )
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x, y = np.ones((16, 8), "float32"), np.zeros((16, 4), "float32")
        >>> history = model.fit(x, y, epochs=3, verbose=0, callbacks=[keras_ortho.OrthoTarget(target=0.5)])
        >>> len(history.history["ortho/scale"])  # the scale of each epoch
        3
    """

    def __init__(
        self,
        target: float,
        statistic: str = "mean",
        rate: float = 0.5,
        initial_scale: float = 1.0,
        min_scale: float = 1e-3,
        max_scale: float = 1e3,
    ):
        self.target = _validation.check_non_negative("target", target, positive=True)
        self.statistic = _validation.check_choice("statistic", statistic, STATISTICS)
        self.rate = _validation.check_non_negative("rate", rate, positive=True)
        self.min_scale = _validation.check_non_negative("min_scale", min_scale, positive=True)
        self.max_scale = _validation.check_non_negative("max_scale", max_scale, positive=True)
        if self.max_scale < self.min_scale:
            raise ValueError(
                "Argument `max_scale` must be >= `min_scale`. "
                f"Received: min_scale={min_scale!r}, max_scale={max_scale!r}"
            )
        initial_scale = _validation.check_non_negative("initial_scale", initial_scale, positive=True)
        if not self.min_scale <= initial_scale <= self.max_scale:
            raise ValueError(
                "Argument `initial_scale` must lie in [min_scale, max_scale] = "
                f"[{self.min_scale}, {self.max_scale}]. Received: initial_scale={initial_scale!r}"
            )
        super().__init__(initial=initial_scale)
        self._probe = None
        self._warned_non_finite = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._probe = _watch.ErrorProbe(_watch.regularized_weights(self.model))

    def on_epoch_begin(self, epoch, logs=None):
        error = self.error()
        if not math.isfinite(error):
            if not self._warned_non_finite:
                self._warned_non_finite = True
                warnings.warn(
                    f"OrthoTarget: the orthogonality error is {error} (non-finite weights); the scale stays as it is.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return
        self._set_scale(self.next_scale(self._state.scale, error))

    def error(self):
        """The steered statistic of the model's weights now (NaN with nothing to measure)."""
        _keras_compat.synced_model(self)  # on JAX, the trained values back into the variables
        errors = list(self._probe().values()) if self._probe is not None else []
        if not errors:
            return math.nan
        slices = np.concatenate(errors)
        return float(np.mean(slices) if self.statistic == "mean" else np.max(slices))

    def next_scale(self, scale, error):
        """The update law: `clip(scale * (error / target) ** rate, min_scale, max_scale)`."""
        return min(max(scale * (error / self.target) ** self.rate, self.min_scale), self.max_scale)
