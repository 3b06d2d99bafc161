"""Argument checks shared by the functions, the regularizer and the logger.

Each check raises before any work is done, with a message that names the
argument and the value received.
"""

import math
import numbers

from keras_ortho._slicing import MODES


def check_keras_backend(what):
    """keras_ortho runs on TensorFlow: any other Keras backend would train without it."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} needs Keras's TensorFlow backend (KERAS_BACKEND=tensorflow); this "
            f"process runs Keras on backend={backend!r}, where its penalty would not "
            "reach the gradients."
        )


def check_factor(factor):
    """`factor` must be a real, finite number >= 0 (bool is refused)."""
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise TypeError(
            "Argument `factor` must be a real number >= 0. "
            f"Received: factor={factor!r} of type {type(factor).__name__}"
        )
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(
            "Argument `factor` must be a finite number >= 0. "
            f"Received: factor={factor!r}"
        )
    return float(factor)


def check_slice_axis(slice_axis):
    """`slice_axis` must be None or an int (bool is refused)."""
    if slice_axis is None:
        return None
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, numbers.Integral):
        raise TypeError(
            "Argument `slice_axis` must be None or an int. "
            f"Received: slice_axis={slice_axis!r} of type "
            f"{type(slice_axis).__name__}"
        )
    return int(slice_axis)


def check_mode(mode):
    """`mode` must be one of "auto", "columns", "rows"."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(
            f"Argument `mode` must be one of {MODES}. Received: mode={mode!r}"
        )
    return mode
