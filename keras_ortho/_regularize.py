"""`regularize`: an OrthoRegularizer on the kernels of a model that already exists."""

import fnmatch
import warnings

import keras

from keras_ortho import _keras_compat, _layers, _watch
from keras_ortho.regularizer import OrthoRegularizer

# Layers whose config carries one `kernel_regularizer` that they pass to all
# their projection sublayers, and the attribute that holds it.
_SHARED_KERNEL_REGULARIZER = ("_kernel_regularizer", "kernel_regularizer")


def regularize(model, regularizer, include=None, exclude=None):
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
        include: None (every kernel), a glob pattern over the weights' paths
            inside the model (`"*attention*"`; Keras's `variable.path` is
            matched too), a list of them, or a callable `variable -> bool`.
        exclude: the same form; matched kernels are left out.

    Returns:
        The paths inside the model of the weights whose regularizer was set
        (or removed): `dense/kernel`, the names `OrthoLogger` and the report
        use, the same for a model as built and as loaded.

    Example:

        model = keras.applications.MobileNetV2(weights=None)
        keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(1e-4), exclude="*predictions*")
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model or layer. Received: model={model!r}")
    if regularizer is not None and not isinstance(regularizer, OrthoRegularizer):
        raise TypeError(
            "Argument `regularizer` must be an OrthoRegularizer, or None to remove them. "
            f"Received: regularizer={regularizer!r}"
        )
    include_arg, exclude_arg = include, exclude
    include = _matcher("include", include)
    exclude = _matcher("exclude", exclude)
    if not model.built:
        raise ValueError(
            f"Argument `model`: '{model.name}' is not built, so it has no weights yet. "
            "Build it first (call it on data, or `model.build(input_shape)`)."
        )

    _layers.assign_rules(model)
    names = _layers.weight_names(model)
    paths, frozen = [], []
    for layer, variable, role in _kernels(model):
        path = names[id(variable)]
        if not _can_train(variable):
            reason = _why_frozen(layer)
            if reason is not None and regularizer is not None:
                frozen.append(f"'{path}' ({reason})")
            continue
        if (include is not None and not include(variable, path)) or (exclude is not None and exclude(variable, path)):
            continue
        if regularizer is None and not isinstance(variable.regularizer, OrthoRegularizer):
            continue
        variable.regularizer = regularizer
        if hasattr(layer, role[1]):
            setattr(layer, role[1], regularizer)  # what the layer's config carries
        paths.append(path)
    _share_kernel_regularizers(model)
    _keras_compat.rebuild_step_functions(model)
    if frozen:
        warnings.warn(
            f"regularize: left out {len(frozen)} kernel(s) that cannot train: {', '.join(frozen)}. "
            "Keras collects no loss from a frozen weight, so a regularizer there would act on nothing.",
            UserWarning,
            stacklevel=2,
        )
    if not paths and regularizer is not None and (include is not None or exclude is not None):
        warnings.warn(
            f"regularize: no kernel of '{model.name}' is left by include={include_arg!r}, "
            f"exclude={exclude_arg!r}, so nothing was regularized. The patterns match variable "
            f"paths such as {_some_kernel_paths(model)}.",
            UserWarning,
            stacklevel=2,
        )
    elif paths and regularizer is not None:
        _warn_if_configs_drop(model, paths)
    return paths


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


def _share_kernel_regularizers(model):
    """Keeps the config of MultiHeadAttention-like layers in step with their projections.

    Such a layer's config carries one `kernel_regularizer`, which it gives
    every projection when it is built again (loading). Where the projections
    now disagree, no config can say so: the layer's argument becomes None,
    with a warning to call `regularize` again after loading.
    """
    for layer in _layers.layers_of(model):
        attribute = next((a for a in _SHARED_KERNEL_REGULARIZER if a in vars(layer)), None)
        if attribute is None or not isinstance(layer, (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)):
            continue
        regularizers = {
            id(v.regularizer): v.regularizer
            for sublayer in _layers.layers_of(layer)[1:]
            for v in _layers.own_weights(sublayer)
            if _layers.kernel_attribute(sublayer, v) is not None
        }
        if len(regularizers) == 1:
            setattr(layer, attribute, next(iter(regularizers.values())))
        elif len(regularizers) > 1:
            setattr(layer, attribute, None)
            warnings.warn(
                f"regularize: the projections of {type(layer).__name__} '{layer.name}' now have "
                "different regularizers, and its config carries one `kernel_regularizer` for all "
                "of them; a saved copy reloads with none. Call `keras_ortho.regularize` again "
                "after loading it.",
                UserWarning,
                stacklevel=3,
            )


def _kernels(model):
    """`(layer, variable, role)` for each kernel of the model's trainable layers, frozen ones too.

    See `regularize`; `_can_train` tells the kernels a regularizer can act on.
    """
    for layer in _layers.layers_of(model):
        for variable in _layers.own_variables(layer):
            role = _layers.kernel_attribute(layer, variable)
            if role is not None and len(variable.shape) >= 2:
                yield layer, variable, role


def _can_train(variable):
    """A trainable floating-point weight: Keras collects its regularizer's loss."""
    return variable.trainable and _watch.holds_matrices(variable)


def _why_frozen(layer):
    """Why a trainable layer's kernel cannot train, in words, where a user would not expect it."""
    if getattr(layer, "lora_enabled", False):
        return f"LoRA is enabled on layer '{layer.name}': its kernel is frozen"
    mode = getattr(layer, "quantization_mode", None)
    if mode is not None:
        return f"layer '{layer.name}' is quantized to {mode}"
    return None


def _some_kernel_paths(model, count=3):
    names = _layers.weight_names(model)
    paths = [names[id(variable)] for _, variable, _ in _kernels(model) if _can_train(variable)][:count]
    return ", ".join(repr(p) for p in paths) if paths else "(none: the model has no kernel)"


# Rebuilding a model from its config to see what it carries costs its memory
# once more; above this many parameters the check is left out.
_CONFIG_CHECK_MAX_PARAMS = 50_000_000


def _warn_if_configs_drop(model, paths):
    """Warns when the model's config cannot carry the regularizer of some of `paths`.

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
    if all(type(layer).__module__.startswith("keras.") for layer in _layers.layers_of(model)):
        return
    try:
        rebuilt = type(model).from_config(model.get_config())
    except Exception:  # a model without a config cannot be saved with one either
        return
    rebuilt_names = _layers.weight_names(rebuilt)
    carried = {rebuilt_names[id(v)] for _, v, _ in _kernels(rebuilt)
               if _can_train(v) and isinstance(v.regularizer, OrthoRegularizer)}
    dropped = [p for p in paths if p not in carried]
    if dropped:
        shown = ", ".join(repr(p) for p in dropped[:3]) + (f" and {len(dropped) - 3} more" if len(dropped) > 3 else "")
        warnings.warn(
            f"regularize: {len(dropped)} of the {len(paths)} kernels regularized in '{model.name}' "
            f"belong to layers whose config cannot carry a regularizer ({shown}): `model.save` "
            "and `to_json` keep the weights but not those regularizers. Call "
            "`keras_ortho.regularize` again after loading the model.",
            UserWarning,
            stacklevel=3,
        )
