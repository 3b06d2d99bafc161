"""`keras_ortho.models`: `regularize` and `constrain`, keras_ortho on the kernels of a model that already exists."""

import fnmatch
import warnings
from collections.abc import Callable, Sequence

import keras

from keras_ortho import _binding, _keras_compat, _rules, _validation, _watch, ops
from keras_ortho.constraint import OrthoConstraint
from keras_ortho.lipschitz import LipschitzConstraint
from keras_ortho.regularizer import OrthoRegularizer

__all__ = ["constrain", "regularize", "starting_factor"]

# `include`/`exclude`: a glob pattern over weight paths, a list of them, or a callable `variable -> bool`.
Selection = str | Sequence[str] | Callable[[keras.Variable], bool]


class _Kind:
    """What is put on a kernel: its class, the variable's attribute, how the layer's arguments name it."""

    def __init__(self, cls, attribute, verb, past, frozen_reason):
        self.cls = cls if isinstance(cls, tuple) else (cls,)
        self.attribute, self.verb, self.past, self.frozen_reason = attribute, verb, past, frozen_reason

    @property
    def names(self):
        """`OrthoConstraint or LipschitzConstraint`: what an error says the argument must be."""
        return " or ".join(c.__name__ for c in self.cls)

    def argument(self, regularizer_argument):
        """`kernel_regularizer` -> `kernel_constraint` for constraints."""
        return regularizer_argument.replace("_regularizer", f"_{self.attribute}")

    def of(self, variable):
        """The variable's own object of this kind, or None."""
        value = getattr(variable, self.attribute, None)
        return value if isinstance(value, self.cls) else None


_REGULARIZER = _Kind(
    OrthoRegularizer,
    "regularizer",
    "regularize",
    "regularized",
    "Keras collects no loss from a frozen weight, so a regularizer there would act on nothing.",
)
_CONSTRAINT = _Kind(
    (OrthoConstraint, LipschitzConstraint),
    "constraint",
    "constrain",
    "constrained",
    "the optimizer never updates a frozen weight, so a constraint there would never apply.",
)


def regularize(
    model: keras.layers.Layer,
    regularizer: OrthoRegularizer | None,
    include: Selection | None = None,
    exclude: Selection | None = None,
) -> list[str]:
    """Puts `regularizer` on the kernels of a built model, at any depth; returns their paths.

    The kernels are the trainable floating-point weights of rank >= 2 that a
    layer holds as its kernel, recurrent kernel, depthwise or pointwise kernel
    or embeddings (Dense, EinsumDense and the attention projections, Conv and
    ConvTranspose, DepthwiseConv, SeparableConv, SimpleRNN/GRU/LSTM/ConvLSTM
    cells, Embedding), never biases or normalization weights. Each is sliced
    by its layer's rule, as when the regularizer is given to the layer's
    constructor. Frozen kernels are left out: Keras collects no loss from
    them. A warning names those of layers with LoRA enabled (the kernel is
    frozen and only its low-rank factors train) and of layers quantized to
    integers (`int8`, `int4`: no floating-point weight to train); a
    `float8`-quantized layer keeps a trainable float kernel and is taken.

    Unless `include` names them, kernels whose slices are single vectors are
    left out: a depthwise convolution's per-channel filters (with
    `depth_multiplier=1`), a one-unit Dense layer. The Gram of one vector is
    its squared norm, so the penalty there only pulls each filter's norm to 1,
    and with a term per channel it can outweigh every other kernel: on
    MobileNetV2 the 17 depthwise kernels held 99.95% of the penalty
    (`benchmarks/results/factors.md`). As operators (`operator=True`) the
    same filters are taken: their shifts make them more than one vector.

    The regularizer is set on each weight (so `model.losses` includes it at
    once) and on its layer's regularizer argument (so `model.save`, `.h5` and
    `to_json` carry it for every core Keras layer). Keras's cached train and
    test functions are rebuilt, so the next `fit` uses it even if the model
    was compiled and trained before. Calling it again replaces, never adds:
    it is idempotent.

    Args:
        model: a built Keras model or layer.
        regularizer: an `OrthoRegularizer`, or None to remove keras_ortho's
            regularizers from the matched kernels (others are left as they are).
        include: None (every kernel but single vectors), a glob pattern over the weights' paths
            inside the model (`"*attention*"`; Keras's `variable.path` is
            matched too), a list of them, or a callable `variable -> bool`.
        exclude: the same form; matched kernels are left out.

    Returns:
        list[str]: the paths inside the model of the weights whose regularizer
            was set (or removed): `dense/kernel`, the names `OrthoLogger` and
            the report use, the same for a model as built and as loaded.

    Raises:
        TypeError: for a `model` that is not a Keras layer, a `regularizer`
            that is not an OrthoRegularizer, or a bad pattern.
        ValueError: for a model that is not built.

    Examples:

        >>> import keras, keras_ortho
        >>> model = keras.Sequential(
        ...     [keras.Input((8,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2, name="head")]
        ... )
        >>> keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(1e-2, reduction="mean"), exclude="head*")
        ['hidden/kernel']
        >>> len(model.losses)
        1
    """
    return _put(model, regularizer, _REGULARIZER, include, exclude)


def constrain(
    model: keras.layers.Layer,
    constraint: OrthoConstraint | None,
    include: Selection | None = None,
    exclude: Selection | None = None,
) -> list[str]:
    """Puts `constraint` on the kernels of a built model, at any depth; returns their paths.

    What `regularize` does for an `OrthoRegularizer`, for an `OrthoConstraint`:
    the same kernels, matched the same way, each sliced by its layer's rule;
    set on each weight (so the optimizer's next step applies it) and on its
    layer's constraint argument (`kernel_constraint`, ..., so `model.save`,
    `.h5` and `to_json` carry it). Keras's cached train function is rebuilt.
    It does not project the weights at once: the first optimizer step does.

    Args:
        model: a built Keras model or layer.
        constraint: an `OrthoConstraint`, or None to remove keras_ortho's
            constraints from the matched kernels (others are left as they are).
        include: as for `regularize`.
        exclude: as for `regularize`.

    Returns:
        list[str]: the paths inside the model of the weights whose constraint
            was set (or removed).

    Raises:
        TypeError, ValueError: as for `regularize`.

    Examples:

        >>> import keras, keras_ortho
        >>> model = keras.Sequential(
        ...     [keras.Input((8,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2, name="head")]
        ... )
        >>> keras_ortho.constrain(model, keras_ortho.OrthoConstraint(), include="hidden*")
        ['hidden/kernel']
    """
    return _put(model, constraint, _CONSTRAINT, include, exclude)


def starting_factor(
    model: keras.layers.Layer,
    regularizer: OrthoRegularizer,
    data_loss: float,
    share: float = 0.01,
    include: Selection | None = None,
    exclude: Selection | None = None,
) -> float:
    """The factor at which `regularize(model, regularizer, include, exclude)` starts at `share` of `data_loss`.

    The penalty is linear in its factor, so

        factor = share * data_loss / P_1

    where `P_1` is the penalty of the kernels `regularize` would choose,
    with `regularizer`'s norm, mode, reduction and operator at factor 1, at
    the model's current weights. No single factor suits every model: at
    `OrthoRegularizer(1e-2, reduction="mean")` the penalty starts at 0.4% of
    the data loss on ResNet50 and at 40% on EfficientNetB0, whose
    initializer gives its squeeze-and-excite kernels columns of norm 7
    (`benchmarks/results/factors.md`). The default `share`, 1%, is the
    geometric middle of 0.1% and 10%: the data's gradient leads, and the
    penalty is still felt. Tune from there as for any factor (a validation
    sweep over decades). Nothing is set on the model.

    Args:
        model: a built Keras model or layer.
        regularizer: an `OrthoRegularizer`; its own factor is not used.
        data_loss: the data loss at the start, without the penalty: a finite
            number > 0, such as `model.evaluate(x, y)` before `regularize`.
        share: the fraction of `data_loss` the penalty should start at, > 0.
        include: as for `regularize`.
        exclude: as for `regularize`.

    Returns:
        float: the factor for `OrthoRegularizer(factor, ...)` with the other
            arguments of `regularizer`.

    Raises:
        TypeError: for a `model` that is not a Keras layer, a `regularizer`
            that is not an OrthoRegularizer, a `data_loss` or `share` that is
            not a real number, or a bad pattern.
        ValueError: for a model that is not built, a `data_loss` or `share`
            that is not finite and > 0, no kernel chosen, or kernels already
            orthonormal (a penalty of 0, which no factor scales).

    Examples:

        >>> import keras, keras_ortho
        >>> model = keras.Sequential(
        ...     [keras.Input((8,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2, name="head")]
        ... )
        >>> regularizer = keras_ortho.OrthoRegularizer(reduction="mean")
        >>> factor = keras_ortho.starting_factor(model, regularizer, data_loss=0.7)
        >>> keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(factor, reduction="mean"))
        ['hidden/kernel', 'head/kernel']
        >>> round(float(sum(model.losses)) / 0.7, 4)
        0.01
    """
    if not isinstance(regularizer, OrthoRegularizer):
        raise TypeError(f"Argument `regularizer` must be an OrthoRegularizer. Received: regularizer={regularizer!r}")
    data_loss = _validation.check_non_negative("data_loss", data_loss, positive=True)
    share = _validation.check_non_negative("share", share, positive=True)
    chosen, _, _ = _choose(model, regularizer, _REGULARIZER, include, exclude)
    if not chosen:
        raise ValueError(
            f"Argument `model`: no kernel of '{model.name}' is left by include={include!r}, exclude={exclude!r}, "
            "so there is no penalty to scale."
        )
    unit = OrthoRegularizer.from_config({**regularizer.get_config(), "factor": 1.0})
    penalty = sum(float(keras.ops.convert_to_numpy(unit(variable))) for _, variable, _, _ in chosen)
    if penalty == 0:
        raise ValueError(
            f"Argument `model`: the {len(chosen)} chosen kernels of '{model.name}' are orthonormal already "
            "(a penalty of 0), so no factor starts it at a share of the data loss. Choose the factor directly."
        )
    return share * data_loss / penalty


def _put(model, obj, kind, include, exclude):
    """`regularize` and `constrain`: `obj` (of `kind`) on the matched kernels; their paths."""
    name = kind.attribute
    include_arg, exclude_arg = include, exclude
    chosen, frozen, vectors = _choose(model, obj, kind, include, exclude)
    if obj is not None:
        _check_sides(obj, kind, chosen)  # before anything is set

    paths = []
    for layer, variable, role, path in chosen:
        setattr(variable, name, obj)
        _binding.bind(variable)
        argument = kind.argument(role[1])
        if hasattr(layer, argument):
            setattr(layer, argument, obj)  # what the layer's config carries
        paths.append(path)
    _share_kernel_arguments(model, kind)
    _keras_compat.rebuild_step_functions(model)
    if frozen:
        warnings.warn(
            f"{kind.verb}: left out {len(frozen)} kernel(s) that cannot train: {', '.join(frozen)}. "
            + kind.frozen_reason[0].upper()
            + kind.frozen_reason[1:],
            UserWarning,
            stacklevel=3,
        )
    if not paths and obj is not None and (include is not None or exclude is not None):
        warnings.warn(
            f"{kind.verb}: no kernel of '{model.name}' is left by include={include_arg!r}, "
            f"exclude={exclude_arg!r}, so nothing was {kind.past}. The patterns match variable "
            f"paths such as {_some_kernel_paths(model)}.",
            UserWarning,
            stacklevel=3,
        )
    elif not paths and vectors:
        warnings.warn(
            f"{kind.verb}: every kernel of '{model.name}' left is a stack of single vectors "
            f"({_shown(vectors)}), so nothing was {kind.past}: one vector's Gram is only its squared "
            "norm. Name them in `include` to take them anyway.",
            UserWarning,
            stacklevel=3,
        )
    elif paths and obj is not None:
        _warn_if_configs_drop(model, paths, kind)
    return paths


def _choose(model, obj, kind, include, exclude):
    """`([(layer, variable, role, path)], frozen, vectors)`: the kernels `_put` would set `obj` (of `kind`) on.

    Checks the arguments and records every weight's rule first. `frozen`
    names, with the reason, the kernels left out that a user would expect to
    train (LoRA, integer quantization). With `include=None`, a kernel whose
    slices `obj` reads as single vectors is left out (see `regularize`), and
    its path is in `vectors`; an `include` takes what it matches.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model or layer. Received: model={model!r}")
    name = kind.attribute
    if obj is not None and not isinstance(obj, kind.cls):
        raise TypeError(f"Argument `{name}` must be an {kind.names}, or None to remove them. Received: {name}={obj!r}")
    include_all = include is None
    include = _matcher("include", include)
    exclude = _matcher("exclude", exclude)
    if not model.built:
        raise ValueError(
            f"Argument `model`: '{model.name}' is not built, so it has no weights yet. "
            "Build it first (call it on data, or `model.build(input_shape)`)."
        )

    _binding.assign_rules(model)
    names = _rules.weight_names(model)
    chosen, frozen, vectors = [], [], []
    for layer, variable, role in _rules.kernels(model):
        path = names[id(variable)]
        if not _watch.can_train(variable):
            reason = _why_frozen(layer)
            if reason is not None and obj is not None:
                frozen.append(f"'{path}' ({reason})")
            continue
        if (include is not None and not include(variable, path)) or (exclude is not None and exclude(variable, path)):
            continue
        if obj is None and kind.of(variable) is None:
            continue
        if obj is not None and include_all and _sliced(obj) and _plan(obj, variable).single_vectors:
            vectors.append(path)
            continue
        chosen.append((layer, variable, role, path))
    return chosen, frozen, vectors


def _sliced(obj):
    """Whether `obj` acts on a kernel's slices (the orthogonality objects), not on its whole operator."""
    return not isinstance(obj, LipschitzConstraint)


def _plan(obj, variable):
    """How `obj` slices `variable`: its `SlicePlan`, or an `OperatorPlan`."""
    return ops.plan_weight(
        variable.shape,
        variable.dtype,
        obj.slice_axis,
        obj.mode,
        _binding.known_rule(variable),
        getattr(obj, "operator", False),
    )


def _check_sides(obj, kind, chosen):
    """Each chosen kernel planned as `obj` will slice it: an error for a plan `obj` cannot apply, before any is set.

    A slice that cannot have the orthonormal side `mode` asks for (a wide
    slice's columns, a tall one's rows; a convolution's operator against
    Achour et al.'s conditions) has a penalty that never reaches 0: the
    regularizer warns once per shape, as it does when Keras first calls it. A
    constraint has no nearest matrix with that side to project on: `constrain`
    raises, naming the kernels, and sets nothing.
    """
    refused = []
    for _, variable, _, path in chosen:
        if not _sliced(obj):
            continue
        plan = _plan(obj, variable)
        if plan.impossible is None:
            continue
        if kind is _CONSTRAINT:
            refused.append(f"'{path}' ({plan.impossible})")
        else:
            obj._warn_impossible(plan, variable, stacklevel=5)
    if refused:
        raise ValueError(
            f"Argument `constraint`: OrthoConstraint(mode={obj.mode!r}) cannot apply to {len(refused)} of the "
            f"chosen kernels: {_shown(refused, show=str)}. Nothing was constrained. "
            'Use mode="auto", which takes the side that can be orthonormal, or leave them out with `exclude`.'
        )


def _matcher(name, value):
    """`(variable, path) -> bool` for a glob pattern, a list of them or a callable; None stays None.

    A pattern matches the weight's path inside the model (`path`) or Keras's
    `variable.path`; a callable is the user's `variable -> bool`.
    """
    if value is None:
        return None
    if callable(value):
        return lambda variable, path: value(variable)
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"Argument `{name}` must be None, a glob pattern over variable paths, a list of "
            f"them, or a callable (variable) -> bool. Received: {name}={value!r}"
        )

    def matches(variable, path):
        return any(fnmatch.fnmatchcase(c, p) for c in (path, variable.path) for p in patterns)

    return matches


def _share_kernel_arguments(model, kind):
    """Keeps the config of MultiHeadAttention-like layers in step with their projections.

    Such a layer's config carries one `kernel_regularizer` (`kernel_constraint`),
    which it gives every projection when it is built again (loading). Where
    the projections now disagree, no config can say so: the layer's argument
    becomes None, with a warning to call `regularize` (`constrain`) again
    after loading.
    """
    argument = kind.argument("kernel_regularizer")
    for layer in _rules.layers_of(model):
        attribute = _keras_compat.argument_attribute(layer, argument)
        if attribute is None or not isinstance(
            layer, (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)
        ):
            continue
        found = {
            id(getattr(v, kind.attribute)): getattr(v, kind.attribute)
            for sublayer in _rules.layers_of(layer)[1:]
            for v in _rules.own_trainable_weights(sublayer)
            if _rules.kernel_attribute(sublayer, v) is not None
        }
        if len(found) == 1:
            setattr(layer, attribute, next(iter(found.values())))
        elif len(found) > 1:
            setattr(layer, attribute, None)
            warnings.warn(
                f"{kind.verb}: the projections of {type(layer).__name__} '{layer.name}' now have "
                f"different {kind.attribute}s, and its config carries one `{argument}` for all "
                f"of them; a saved copy reloads with none. Call `keras_ortho.{kind.verb}` again "
                "after loading it.",
                UserWarning,
                stacklevel=4,
            )


def _why_frozen(layer):
    """Why a trainable layer's kernel cannot train, in words, where a user would not expect it."""
    if getattr(layer, "lora_enabled", False):
        return f"LoRA is enabled on layer '{layer.name}': its kernel is frozen"
    mode = getattr(layer, "quantization_mode", None)
    if mode is not None:
        return f"layer '{layer.name}' is quantized to {mode}"
    return None


def _shown(items, count=3, show=repr):
    """`'a', 'b', 'c' and 4 more`: the first `count` items, each as `show` writes it."""
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(show(item) for item in items[:count]) + more


def _some_kernel_paths(model, count=3):
    names = _rules.weight_names(model)
    paths = [names[id(variable)] for _, variable, _ in _rules.kernels(model) if _watch.can_train(variable)][:count]
    return ", ".join(repr(p) for p in paths) if paths else "(none: the model has no kernel)"


# Rebuilding a model from its config to see what it carries costs its memory
# once more; above this many parameters the check is left out.
_CONFIG_CHECK_MAX_PARAMS = 50_000_000


def _warn_if_configs_drop(model, paths, kind=_REGULARIZER):
    """Warns when the model's config cannot carry the regularizer (constraint) of some of `paths`.

    A layer that builds its sublayers itself from arguments of its own (most
    keras-hub blocks) saves none of their regularizers: the model rebuilt from
    its config, as loading does, would miss them. Rebuilding is the one exact
    test, so it is done, for models up to `_CONFIG_CHECK_MAX_PARAMS` that
    hold layers other than Keras's own.
    """
    if not isinstance(model, keras.Model) or model.count_params() > _CONFIG_CHECK_MAX_PARAMS:
        return
    # Keras's own layers and models all carry the regularizer `regularize` sets
    # (tested for every core layer); only a model with layers of other
    # libraries or of the user's needs rebuilding.
    if all(type(layer).__module__.startswith("keras.") for layer in _rules.layers_of(model)):
        return
    try:
        rebuilt = type(model).from_config(model.get_config())
    except Exception:  # a model without a config cannot be saved with one either
        return
    rebuilt_names = _rules.weight_names(rebuilt)
    carried = {
        rebuilt_names[id(v)] for _, v, _ in _rules.kernels(rebuilt) if _watch.can_train(v) and kind.of(v) is not None
    }
    dropped = [p for p in paths if p not in carried]
    if dropped:
        warnings.warn(
            f"{kind.verb}: {len(dropped)} of the {len(paths)} kernels {kind.past} in '{model.name}' "
            f"belong to layers whose config cannot carry a {kind.attribute} ({_shown(dropped)}): `model.save` "
            f"and `to_json` keep the weights but not those {kind.attribute}s. Call "
            f"`keras_ortho.{kind.verb}` again after loading the model.",
            UserWarning,
            stacklevel=4,
        )
