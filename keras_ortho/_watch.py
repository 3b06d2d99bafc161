"""Which weights of a model to watch, and one compiled function that measures them.

Shared by `OrthoLogger` and the `report` command.
"""

from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from keras_ortho import _ops
from keras_ortho._slicing import SlicePlan, plan_slices
from keras_ortho.regularizer import OrthoRegularizer


class Watched(NamedTuple):
    """A weight, the slicing options asked for, and the resulting plan."""

    variable: object
    path: str
    slice_axis: Optional[int]
    mode: str
    plan: SlicePlan

    @property
    def num_slices(self):
        return self.plan.num_slices


def weight_path(variable):
    """The Keras path of a variable (`layer/.../name`), or its TF name."""
    path = getattr(variable, "path", None)
    return path if path is not None else variable.name.split(":")[0]


def holds_matrices(variable):
    """True for a floating-point weight of rank >= 2."""
    return len(variable.shape) >= 2 and tf.as_dtype(variable.dtype).is_floating


def watch(variable, slice_axis=None, mode="auto"):
    """Checks that `variable` holds matrices and plans its slices.

    Raises:
        ValueError: naming the weight, when it is of rank < 2 or not floating.
    """
    path = weight_path(variable)
    if not holds_matrices(variable):
        raise ValueError(
            f"Cannot watch weight '{path}': keras_ortho needs a floating-point weight of "
            f"rank >= 2. Received: shape={tuple(variable.shape)}, "
            f"dtype={tf.as_dtype(variable.dtype).name}"
        )
    try:
        # The Keras path only, as `slice_errors` plans it: the two must agree on
        # the number of slices the probe returns.
        plan = plan_slices(variable.shape, slice_axis, mode, path=getattr(variable, "path", None))
    except ValueError as error:
        raise ValueError(f"Cannot watch weight '{path}': {error}") from error
    return Watched(variable, path, slice_axis, mode, plan)


def ortho_regularizer_of(variable):
    """The variable's `OrthoRegularizer`, or None."""
    regularizer = getattr(variable, "regularizer", None)
    return regularizer if isinstance(regularizer, OrthoRegularizer) else None


def regularized_weights(model, include_all=False):
    """The weights of `model` to measure, at any depth, in model order.

    Every trainable weight regularized by an `OrthoRegularizer`, sliced as its
    regularizer slices it; with `include_all`, also every other floating weight
    of rank >= 2, with the default slicing.
    """
    trainable = {id(v) for v in model.trainable_weights}
    watched = []
    for v in model.weights:
        regularizer = ortho_regularizer_of(v)
        if regularizer is not None and id(v) in trainable:
            watched.append(watch(v, regularizer.slice_axis, regularizer.mode))
        elif include_all and holds_matrices(v):
            watched.append(watch(v))
    return watched


class ErrorProbe:
    """Evaluates `slice_errors` of all watched weights in one compiled function.

    The function runs where the weights live and returns a single float64
    vector, so each measurement costs one small transfer to the host.
    `jit_compile=True` fuses it with XLA: about half the time per call on CPU
    (25 small kernels: 0.9 ms instead of 1.7 ms), for about a second more to
    compile it once; worth it when recording every few batches.
    """

    def __init__(self, watched, jit_compile=False):
        self.watched = list(watched)
        self._sizes = [w.num_slices for w in self.watched]
        self._function = tf.function(self._measure, jit_compile=jit_compile)

    def _measure(self, extra):
        parts = [tf.reshape(tf.cast(extra, tf.float64), [1])]
        parts += [
            tf.cast(_ops.slice_errors(w.variable, w.slice_axis, w.mode), tf.float64)
            for w in self.watched
        ]
        return tf.concat(parts, axis=0)

    def __call__(self, extra=0):
        """Returns `(extra, {path: per-slice errors})`.

        `extra` is a scalar (a variable, say) read in the same call, so that
        what it says and the errors come back in one transfer.
        """
        vector = self._function(extra).numpy()
        chunks = np.split(vector[1:], np.cumsum(self._sizes)[:-1]) if self.watched else []
        return vector[0], {w.path: chunk for w, chunk in zip(self.watched, chunks)}
