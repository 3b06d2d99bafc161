"""Which weights of a model to watch, and one compiled function that measures them.

Shared by `OrthoLogger` and the `report` command. Each weight is planned once,
here, and the probe measures it with that plan.
"""

import warnings
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_ortho import _backend, _binding, _rules, _validation
from keras_ortho import ops as ortho_ops
from keras_ortho._conv import OperatorPlan
from keras_ortho._slicing import SlicePlan
from keras_ortho.regularizer import OrthoRegularizer


class Watched(NamedTuple):
    """A weight, its path, how it is sliced (a convolution's `OperatorPlan` where its regularizer measures the
    operator) and the norm it is measured by."""

    variable: object
    path: str
    plan: SlicePlan | OperatorPlan
    norm: str = "l1"

    @property
    def num_slices(self):
        return self.plan.num_slices


def weight_path(variable):
    """The Keras path of a variable (`layer/.../name`), or its backend name."""
    path = ortho_ops.keras_path(variable)
    return path if path is not None else variable.name.split(":")[0]


def holds_matrices(variable):
    """True for a floating-point weight of rank >= 2."""
    return len(variable.shape) >= 2 and "float" in keras.backend.standardize_dtype(variable.dtype)


def watch(variable, slice_axis=None, mode="auto", rule=None, path=None, norm="l1", operator=False):
    """Checks that `variable` holds matrices and plans its slices, as `slice_errors` would.

    `path` names it (`_rules.weight_names` inside a model); Keras's path by
    default. With `operator`, a convolution kernel is planned as its operator
    (one slice per group), as `OrthoRegularizer(operator=True)` measures it.

    Raises:
        TypeError, ValueError: naming the weight, when it is not floating point,
            of rank < 2, or has no axis `slice_axis`.
    """
    path = path if path is not None else weight_path(variable)
    if rule is None and isinstance(variable, keras.Variable):
        rule = _binding.known_rule(variable)
    try:
        plan = ortho_ops.plan_weight(variable.shape, variable.dtype, slice_axis, mode, rule, operator)
    except (TypeError, ValueError) as error:
        raise type(error)(f"Cannot watch weight '{path}': {error}") from error
    return Watched(variable, path, plan, norm)


def ortho_regularizer_of(variable):
    """The variable's `OrthoRegularizer`, or None."""
    regularizer = getattr(variable, "regularizer", None)
    return regularizer if isinstance(regularizer, OrthoRegularizer) else None


def penalty_in_loss(variable):
    """What the variable's `OrthoRegularizer` adds to the loss now (factor, reduction and scale applied), or None."""
    regularizer = ortho_regularizer_of(variable)
    return None if regularizer is None else float(ops.convert_to_numpy(regularizer(variable)))


def can_train(variable):
    """A trainable floating-point weight: Keras collects its regularizer's loss."""
    return variable.trainable and holds_matrices(variable)


def carrying_share(model):
    """`(with an OrthoRegularizer, kernels that could carry one)` among the kernels of `model` that can train.

    The kernels are those `regularize` chooses from (single vectors included).
    """
    _binding.assign_rules(model)
    kernels = [v for _, v, _ in _rules.kernels(model) if can_train(v)]
    return sum(ortho_regularizer_of(v) is not None for v in kernels), len(kernels)


def warn_if_few_carry(model, who):
    """A warning when at most a quarter of the (8 or more) kernels of `model` carry an OrthoRegularizer, but some do.

    What a model saved after `regularize` reloads as where its layers'
    configs do not carry the regularizer (keras-hub backbones rebuild their
    layers from their own arguments): the monitor would show a few kernels
    and say nothing of the rest.
    """
    carrying, kernels = carrying_share(model)
    if kernels >= 8 and 0 < carrying <= kernels / 4:
        warnings.warn(
            f"{who}: only {carrying} of the {kernels} kernels of '{model.name}' carry an OrthoRegularizer; the "
            "others are neither regularized nor watched. If you regularized only these, nothing is wrong. If the "
            "model was saved after `keras_ortho.regularize` and loaded, its layers' configs may not carry the "
            "regularizer: call `regularize` again after loading (docs/troubleshooting.md).",
            RuntimeWarning,
            stacklevel=3,
        )


def regularized_weights(model, include_all=False):
    """The weights of `model` to measure, at any depth, in model order.

    Every trainable weight regularized by an `OrthoRegularizer`, sliced and
    measured as its regularizer slices and measures it (`norm`); with `include_all`, also every other floating weight
    of rank >= 2, with the default slicing. Each is named by its path inside
    the model (`_rules.weight_names`).
    """
    _binding.assign_rules(model)  # each weight sliced by its layer's rule
    names = _rules.weight_names(model)
    trainable = {id(v) for v in model.trainable_weights}
    watched = []
    for v in model.weights:
        regularizer = ortho_regularizer_of(v)
        path = names.get(id(v))
        if regularizer is not None and id(v) in trainable:
            options = {"path": path, "norm": regularizer.norm, "operator": regularizer.operator}
            watched.append(watch(v, regularizer.slice_axis, regularizer.mode, **options))
        elif include_all and holds_matrices(v):
            watched.append(watch(v, path=path))
    return watched


_WEIGHT_OPTIONS = ("slice_axis", "mode", "norm")


def requested_weights(weights, slice_axis, mode, norm="l1"):
    """Checks a monitor's `weights` argument; `[(weight or path, options)]`, or None for "the regularized ones".

    Three forms: None; a list of Keras variables or their paths, sliced per
    `slice_axis` and `mode` and measured by `norm`; items that are pairs
    `(weight, {"slice_axis": ..., "mode": ..., "norm": ...})` with options of
    their own. A variable's rank and dtype are checked now, not mid-fit.
    """
    if weights is None:
        return None
    if not isinstance(weights, (list, tuple)):
        raise TypeError(
            "Argument `weights` must be None or a list of weights, paths or "
            f"(weight, options) pairs. Received: weights={weights!r}"
        )
    if not weights:
        raise ValueError(f"Argument `weights` is empty. Received: weights={weights!r}")
    items = []
    for item in weights:
        weight, options = item if isinstance(item, tuple) else (item, {})
        if not isinstance(options, dict) or set(options) - set(_WEIGHT_OPTIONS):
            raise ValueError(
                f"Argument `weights`: the options of a weight are a dict with keys from "
                f"{_WEIGHT_OPTIONS}. Received for {weight!r}: {options!r}"
            )
        options = {"slice_axis": slice_axis, "mode": mode, "norm": norm, **options}
        options["slice_axis"] = _validation.check_slice_axis(options["slice_axis"])
        options["mode"] = _validation.check_mode(options["mode"])
        options["norm"] = _validation.check_norm(options["norm"])
        if not isinstance(weight, str):
            if not hasattr(weight, "shape") or not hasattr(weight, "dtype"):
                raise TypeError(
                    f"Argument `weights` must hold Keras variables or their paths. Received an item: {weight!r}"
                )
            watch(weight, **options)
        items.append((weight, options))
    return items


def resolve(model, requested, measures_more=False):
    """The `Watched` weights of `model` for `requested` (from `requested_weights`).

    None: the regularized weights (`regularized_weights`), with a warning
    when there are none and the logger measures nothing else (`measures_more`).
    Otherwise each requested weight, a path being looked up among the model's
    names (`_rules.weight_names`) and Keras's paths.
    """
    if requested is None:
        watched = regularized_weights(model)
        if not watched and not measures_more:
            warnings.warn(
                f"OrthoLogger found no trainable weight regularized by OrthoRegularizer "
                f"in model '{model.name}', and records nothing. Pass `weights=[...]` to "
                "watch others, or `keras_ortho.regularize(model, ...)` first.",
                RuntimeWarning,
                stacklevel=3,
            )
        return watched
    _binding.assign_rules(model)  # explicit weights, sliced by their layers' rules
    names = _rules.weight_names(model)
    by_path = {names.get(id(v), v.path): v for v in model.weights}
    by_path.update({v.path: v for v in model.weights if v.path not in by_path})  # Keras's path too
    watched = []
    for weight, options in requested:
        if isinstance(weight, str):
            if weight not in by_path:
                raise ValueError(
                    f"OrthoLogger cannot watch weight '{weight}': model '{model.name}' "
                    f"has no weight with that path. Its weights: {sorted(names.values())[:20]}"
                )
            weight = by_path[weight]
        watched.append(watch(weight, path=names.get(id(weight)), **options))
    return watched


def non_finite_as_nan(errors):
    """Sets every non-finite error to NaN, in place; returns the paths that had any.

    A weight that diverged (inf, NaN) has no meaningful error: NaN says so
    in every record and plot alike, where inf and NaN would mix.
    """
    found = []
    for path, values in errors.items():
        bad = ~np.isfinite(values)
        if bad.any():
            values[bad] = np.nan
            found.append(path)
    return found


class ErrorProbe:
    """Evaluates `slice_errors` of all watched weights, each by its norm, in one compiled function.

    The function takes the weights' current values, runs where they live and
    returns a single vector, so each measurement costs one small transfer to
    the host. On TensorFlow `jit_compile=True` fuses it with XLA: about half
    the time per call on CPU (25 small kernels: 0.9 ms instead of 1.7 ms), for
    about a second more to compile it once; worth it when recording every few
    batches. JAX always compiles it; PyTorch runs it eagerly.
    """

    def __init__(self, watched, jit_compile=False):
        self.watched = list(watched)
        self._sizes = [w.num_slices for w in self.watched]
        self._dtype = np.result_type("float32", *(ortho_ops.compute_dtype(w.variable.dtype) for w in self.watched)).name
        self._function = _backend.current().for_measuring(self._measure, jit_compile)

    def _measure(self, *values):
        return ops.concatenate(
            [
                ops.cast(ortho_ops.errors_of(v, w.plan, w.norm), self._dtype)
                for v, w in zip(values, self.watched, strict=True)
            ]
        )

    def __call__(self):
        """Returns `{path: per-slice errors}` of the weights' current values (float64)."""
        if not self.watched:
            return {}
        # A Keras variable's backend variable (TensorFlow) or array: the
        # compiled function reads it itself, with no read op per weight first.
        values = (w.variable.value if isinstance(w.variable, keras.Variable) else w.variable for w in self.watched)
        vector = ops.convert_to_numpy(self._function(*values))
        chunks = np.split(vector.astype(np.float64), np.cumsum(self._sizes)[:-1])
        return {w.path: chunk for w, chunk in zip(self.watched, chunks, strict=True)}
