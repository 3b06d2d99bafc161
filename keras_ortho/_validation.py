"""Argument checks shared by the functions, the regularizer, the logger, the plot and the report.

Each check raises before any work is done, with a message that names the
argument and the value received, and returns the value in its plain form.
"""

import math
import numbers
import os

from keras_ortho._math import NORMS, OPERATOR_NORMS, SUMMING_NORMS
from keras_ortho._slicing import MODES


def check_factor(factor):
    """`factor` must be a real, finite number >= 0 (bool is refused)."""
    return check_non_negative("factor", factor)


def check_non_negative(name, value, positive=False):
    """`value` must be a real, finite number >= 0 (> 0 with `positive`); bool is refused."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Argument `{name}` must be a real number {bound}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"Argument `{name}` must be a finite number {bound}. Received: {name}={value!r}")
    return float(value)


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


def check_choice(name, value, choices):
    """`value` must be one of the strings `choices`: TypeError for a non-string, ValueError for another string."""
    if not isinstance(value, str):
        raise TypeError(
            f"Argument `{name}` must be one of {choices}. Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value not in choices:
        raise ValueError(f"Argument `{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


def check_mode(mode):
    """`mode` must be one of "auto", "columns", "rows"."""
    return check_choice("mode", mode, MODES)


REDUCTIONS = ("sum", "mean")


def check_reduction(reduction):
    """`reduction` must be "sum" or "mean"."""
    return check_choice("reduction", reduction, REDUCTIONS)


def check_norm(norm, reduction="sum"):
    """`norm` must be one of `NORMS`; "mean" `reduction` only with a norm that sums entries."""
    check_choice("norm", norm, NORMS)
    if reduction == "mean" and norm not in SUMMING_NORMS:
        raise ValueError(
            f'Argument `reduction`: "mean" averages a norm that sums over the Gram\'s entries '
            f"{SUMMING_NORMS}; norm={norm!r} measures one entry (or eigenvalue) and takes "
            f'reduction="sum". Received: reduction={reduction!r}, norm={norm!r}'
        )
    return norm


def check_operator(operator, norm, slice_axis):
    """`operator` must be a bool; with True, `norm` one of `OPERATOR_NORMS` and `slice_axis` None."""
    check_bool("operator", operator)
    if operator and norm not in OPERATOR_NORMS:
        raise ValueError(
            f"Argument `norm`: a convolution's operator is measured by {OPERATOR_NORMS}. "
            f"Received: norm={norm!r} with operator=True"
        )
    if operator and slice_axis is not None:
        raise ValueError(
            "Argument `slice_axis`: operator=True reads each convolution kernel by its layer "
            f"(strides, groups), and takes slice_axis=None. Received: slice_axis={slice_axis!r}"
        )
    return operator


def check_positive_int(name, value, allow_none=False):
    """`value` must be an int >= 1, or None when allowed: TypeError for another type (bool too), ValueError below 1."""
    if value is None and allow_none:
        return None
    expected = "None or an int >= 1" if allow_none else "an int >= 1"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Argument `{name}` must be {expected}. Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value < 1:
        raise ValueError(f"Argument `{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def check_bool(name, value):
    """`value` must be True or False: 1, 0 and None are refused, so that no truthy value is read as False later."""
    if not isinstance(value, bool):
        raise TypeError(f"Argument `{name}` must be a bool. Received: {name}={value!r} of type {type(value).__name__}")
    return value


def check_auto_or_bool(name, value):
    """`value` must be "auto", True or False: ValueError for another string, TypeError for 1, 0, None and the like."""
    if isinstance(value, str) and value != "auto":
        raise ValueError(f'Argument `{name}` must be "auto", True or False. Received: {name}={value!r}')
    if isinstance(value, str):
        return value
    if not isinstance(value, bool):
        raise TypeError(
            f'Argument `{name}` must be "auto", True or False. '
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return value


def check_path(name, value, allow_none=True):
    """`value` must be a filesystem path (str or os.PathLike), or None when allowed."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (str, os.PathLike)):
        expected = "None or a path" if allow_none else "a path"
        raise TypeError(f"Argument `{name}` must be {expected}. Received: {name}={value!r}")
    return os.fspath(value)


def from_config(cls, config, keys):
    """`cls(**config)`, refusing unknown keys and naming the class in any error."""
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ValueError(
            f"{cls.__name__} config has unknown key(s) {unknown}; expected "
            f"only {list(keys)}. Received: config={config!r}"
        )
    try:
        return cls(**config)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{cls.__name__} config is invalid: {error}") from error


def config_repr(obj):
    """`Name(key=value, ...)` from `obj.get_config()`: the arguments that rebuild it."""
    arguments = ", ".join(f"{key}={value!r}" for key, value in obj.get_config().items())
    return f"{type(obj).__name__}({arguments})"
