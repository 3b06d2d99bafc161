"""`OrthoLogger`: per-slice orthogonality of watched weights during `fit`."""

import os
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_ortho import _binding, _keras_compat, _records, _tensorboard, _validation, _watch, conv, lipschitz

LOG_PREFIX = "ortho/"
TOTAL_KEY = "ortho/total"
# What the watched weights' OrthoRegularizers add to the loss: factor, reduction and any schedule's scale applied.
PENALTY_KEY = "ortho/penalty"
# The keys of `singular_values=True`: per convolution, or over all of them.
SIGMA_KEYS = ("sigma_max", "sigma_min")
# The key of `lipschitz=True`: the model's bound; per layer, `lipschitz/<layer>`.
LIPSCHITZ_KEY = "lipschitz"
# With more watched weights than this, `weight_logs="auto"` writes only `ortho/total`.
AUTO_WEIGHT_LOGS = 8


class OrthoLogger(keras.callbacks.Callback):
    """Records how far each slice of the watched weights is from orthonormal.

    The error of slice `i` is `keras_ortho.slice_errors` under the norm of the
    weight's regularizer (`sum_jk |G_i|_jk` for the default "l1"; `||G_i||_F^2`
    for "fro", ...), unscaled, so `factor * total` is the weight's
    regularization loss with `reduction="sum"`.

    At every epoch end it writes `logs["ortho/<path>"]`, the sum of that
    weight's slice errors (`<path>` being the weight's path inside the model,
    as `watched_paths` lists it), into the epoch logs in place, so History,
    CSVLogger, TensorBoard, EarlyStopping and ModelCheckpoint see it when they
    are listed after this callback. A model with more than 8 watched weights
    gets one `logs["ortho/total"]` instead (the sum over all of them), so that
    the progress bar stays one readable line; `weight_logs=True` asks for
    every weight's key anyway. Per-slice values stay out of the logs unless
    `per_slice_logs=True`. Everything is kept in `errors`, written to
    TensorBoard with `log_dir`, and drawn by `keras_ortho.plot_errors`. Runs on
    the TensorFlow, JAX and PyTorch backends.

    The errors are unscaled: with `reduction="mean"` or a small factor,
    `ortho/total` may read 58,688 while the loss holds 0.023. What the loss
    holds is `logs["ortho/penalty"]`, the sum over the watched weights of what
    their `OrthoRegularizer` adds (factor, reduction and an `OrthoSchedule`'s
    scale applied), written whenever a watched weight carries one.

    Args:
        weights: what to watch. None (default): every trainable weight of the
            model, at any depth, whose regularizer is an `OrthoRegularizer`,
            sliced and measured as that regularizer slices and measures it.
            Otherwise a list of weights (Keras variables or their `path`
            strings), sliced per `slice_axis` and `mode` and measured by
            `norm`; an item may also be a pair
            `(weight, {"slice_axis": ..., "mode": ..., "norm": ...})` for
            per-weight options.
        slice_axis: slicing of explicitly given weights (see `OrthoRegularizer`).
        mode: "auto", "columns" or "rows", for explicitly given weights.
        every_n_batches: also record after every N training batches into
            `batch_errors` (and TensorBoard); N counts calls of the batch hook,
            one per `steps_per_execution` steps. None (default): epochs only.
        log_dir: if given, TensorBoard summaries go to `log_dir/ortho`, a run of
            its own beside the TensorBoard callback's `train`/`validation`:
            per-slice and total scalars, and one histogram per weight. Written
            with `tf.summary`, so it needs TensorFlow installed (on any backend,
            as Keras's TensorBoard callback does) and the tensorboard package.
            In a multi-process run only the chief (process 0) writes them.
        per_slice_logs: also write `logs["ortho/<path>/slice_<i>"]` per slice.
        weight_logs: "auto" (default): `ortho/<path>` per weight for up to 8
            watched weights, else only `ortho/total`; True: per weight always;
            False: only `ortho/total`.
        norm: the measure of explicitly given weights' slices (see
            `OrthoRegularizer`); "l1" by default.
        singular_values: False (default); True also measures, at every epoch
            end, the largest and smallest singular value of every convolution
            in the model, each at its own input size
            (`keras_ortho.conv_singular_values`, on the model's device; seconds
            per epoch on a CPU for ResNet50, docs/lipschitz.md): `logs["sigma_max/<path>"]` and
            `logs["sigma_min/<path>"]` per convolution (with `weight_logs`'
            rule: over 8 convolutions, `logs["sigma_max"]` and
            `logs["sigma_min"]`, the largest and smallest over all of them),
            kept in `singular_values_record`. They are the circular
            operator's; for a bound under Keras's zero padding use
            `lipschitz=True`. A model whose convolutions' input sizes are
            unknown is refused when `fit` begins.
        lipschitz: False (default); True also computes, at every epoch end,
            `keras_ortho.lipschitz_bound` of the model (`logs["lipschitz"]`)
            and each layer's factor (`logs["lipschitz/<layer>"]`, with
            `weight_logs`' rule: per layer for up to 8 layers), kept in
            `lipschitz_record`. A model it cannot bound is refused when
            `fit` begins, naming the layer.

    Attributes:
        errors: `{path: array of shape (epochs_recorded, num_slices)}`.
        epochs: the epoch number of each row of `errors`.
        batch_errors: `{path: array of shape (records, num_slices)}`.
        steps: the optimizer iteration of each row of `batch_errors`.
        singular_values_record: `{path: array (epochs_recorded, 2)}`, the
            largest and smallest singular value of each convolution per
            epoch, with `singular_values=True`.
        lipschitz_record: `{"lipschitz": array (epochs_recorded,), layer: array}`,
            the model's bound and each layer's factor per epoch, with `lipschitz=True`.

    Raises:
        ValueError: for an argument out of its range or choices, naming it and the value received.
        TypeError: for an argument of the wrong type, likewise.
        ImportError: for `log_dir` without TensorFlow and tensorboard installed.

    Examples:

        >>> import keras, numpy as np, keras_ortho
        >>> model = keras.Sequential(
        ...     [
        ...         keras.Input((8,)),
        ...         keras.layers.Dense(4, kernel_regularizer=keras_ortho.OrthoRegularizer(0.01), name="hidden"),
        ...     ]
        ... )
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> logger = keras_ortho.OrthoLogger()  # before CSVLogger or TensorBoard in the list
        >>> x, y = np.ones((16, 8), "float32"), np.zeros((16, 4), "float32")
        >>> history = model.fit(x, y, epochs=3, verbose=0, callbacks=[logger])
        >>> logger.errors["hidden/kernel"].shape  # epochs x slices
        (3, 1)
        >>> len(history.history["ortho/hidden/kernel"])
        3
    """

    def __init__(
        self,
        weights: Sequence[Any] | None = None,
        slice_axis: int | None = None,
        mode: str = "auto",
        every_n_batches: int | None = None,
        log_dir: str | os.PathLike | None = None,
        per_slice_logs: bool = False,
        weight_logs: str | bool = "auto",
        norm: str = "l1",
        singular_values: bool = False,
        lipschitz: bool = False,
    ):
        super().__init__()
        slice_axis = _validation.check_slice_axis(slice_axis)
        mode = _validation.check_mode(mode)
        norm = _validation.check_norm(norm)
        self._requested = _watch.requested_weights(weights, slice_axis, mode, norm)
        self.every_n_batches = _validation.check_positive_int("every_n_batches", every_n_batches, allow_none=True)
        self.log_dir = _validation.check_path("log_dir", log_dir)
        if self.log_dir is not None:
            _tensorboard.check_packages(self.log_dir)
        self.per_slice_logs = _validation.check_bool("per_slice_logs", per_slice_logs)
        self.weight_logs = _validation.check_auto_or_bool("weight_logs", weight_logs)
        self.singular_values = _validation.check_bool("singular_values", singular_values)
        self.lipschitz = _validation.check_bool("lipschitz", lipschitz)
        if every_n_batches is not None:
            # Only then a batch hook: Keras runs the steps of a fit whose
            # callbacks have none without waiting for Python after each one.
            _keras_compat.add_hooks(self, on_train_batch_end=self._record_batch)

        self._watched = []
        self._epoch_records, self._batch_records = _records.Records(), _records.Records()
        self._spectra, self._convolutions = _records.Records(), []
        self._bounds, self._bound_names = _records.Records(), []
        self._probe = None
        self._writer = None
        self._batches_seen = 0
        self._warned_non_finite = set()

    # --- Records -----------------------------------------------------------------

    @property
    def watched_paths(self):
        """Paths of the watched weights, in model order (known from `on_train_begin`)."""
        return [w.path for w in self._watched]

    @property
    def errors(self):
        return self._epoch_records.stack(self._widths())

    @property
    def singular_values_record(self):
        return self._spectra.stack({m.path: 2 for m in self._convolutions})

    @property
    def lipschitz_record(self):
        widths = {name: 1 for name in self._bound_names}
        return {name: values[:, 0] for name, values in self._bounds.stack(widths).items()}

    def _widths(self):
        return {w.path: w.num_slices for w in self._watched}

    @property
    def epochs(self):
        return self._epoch_records.keys

    @property
    def batch_errors(self):
        return self._batch_records.stack(self._widths())

    @property
    def steps(self):
        return self._batch_records.keys

    # --- Callback hooks -------------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        if isinstance(model, keras.layers.Layer):
            _binding.assign_rules(model)  # bound once: no lookup when the step is traced

    def on_train_begin(self, logs=None):
        watched = _watch.resolve(self.model, self._requested, measures_more=self.singular_values or self.lipschitz)
        if self._requested is None:
            _watch.warn_if_few_carry(self.model, "OrthoLogger")
        same_weights = len(watched) == len(self._watched) and all(
            new.variable is old.variable and new.plan == old.plan
            for new, old in zip(watched, self._watched, strict=True)
        )
        if not same_weights or self._probe is None:
            # Another model or other weights: start a new record and a new probe.
            self._epoch_records, self._batch_records = _records.Records(), _records.Records()
            self._watched = watched
            self._probe = _watch.ErrorProbe(watched, jit_compile=self.every_n_batches is not None)
        if self.singular_values:
            convolutions = conv.plan_measurements(self.model)  # an unknown input size raises now, not mid-fit
            if [m.variable for m in convolutions] != [m.variable for m in self._convolutions]:
                self._spectra = _records.Records()
            self._convolutions = convolutions
        if self.lipschitz:
            lipschitz.check_supported(self.model)  # a layer it cannot bound raises now, not mid-fit
        self._batches_seen = 0
        self.on_train_end()  # a fit that raised left its writer open
        if self.log_dir is not None:
            self._writer = _tensorboard.writer_for(self.log_dir, self.model)

    def _record_batch(self, batch, logs=None):
        """`on_train_batch_end` when `every_n_batches` is set (see `__init__`)."""
        self._batches_seen += 1
        if self._batches_seen % self.every_n_batches:
            return
        step, errors = self._measure()
        self._batch_records.add(step, errors)
        if self._writer is not None:
            self._writer.write(step, {f"ortho_batch/{p}": np.sum(v) for p, v in errors.items()})

    def on_epoch_end(self, epoch, logs=None):
        _, errors = self._measure()
        self._epoch_records.add(epoch, errors)
        spectra = {}
        if self.singular_values:
            spectra = {path: np.array(values[:2]) for path, values in conv.measure(self._convolutions).items()}
            self._spectra.add(epoch, spectra)
        bounds = {}
        if self.lipschitz:
            bounds = self._lipschitz_now()
            self._bounds.add(epoch, {name: np.array([value]) for name, value in bounds.items()})
        penalties = [_watch.penalty_in_loss(w.variable) for w in self._watched]
        penalties = [p for p in penalties if p is not None]
        if logs is not None:
            if penalties:
                logs[PENALTY_KEY] = float(sum(penalties))
            logs.update(log_entries(errors, self.weight_logs, self.per_slice_logs))
            logs.update(sigma_entries(spectra, self.weight_logs))
            logs.update(lipschitz_entries(bounds, self.weight_logs))
        if self._writer is not None:
            scalars = {**sigma_entries(spectra, True), **lipschitz_entries(bounds, True)}
            for path, values in errors.items():
                scalars[f"{LOG_PREFIX}{path}"] = np.sum(values)
                scalars.update({f"{LOG_PREFIX}{path}/slice_{i}": v for i, v in enumerate(values)})
            histograms = {f"{LOG_PREFIX}{path}/slices": values for path, values in errors.items()}
            self._writer.write(epoch, scalars, histograms)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _lipschitz_now(self):
        """`{"lipschitz": the model's bound, layer: its factor, ...}` of the weights now."""
        model = _keras_compat.synced_model(self)
        bound, factors = lipschitz.bound_and_factors(model)
        self._bound_names = [LIPSCHITZ_KEY] + [f.layer for f in factors]
        return {LIPSCHITZ_KEY: bound, **{f.layer: f.factor for f in factors}}

    def _measure(self):
        """`(optimizer iteration, {path: per-slice errors})` of the weights now."""
        model = _keras_compat.synced_model(self)  # on JAX, the trained values back into the variables
        optimizer = getattr(model, "optimizer", None)
        step = -1 if optimizer is None else int(keras.ops.convert_to_numpy(optimizer.iterations))
        errors = self._probe()
        for path in _watch.non_finite_as_nan(errors):
            if path not in self._warned_non_finite:
                self._warned_non_finite.add(path)
                warnings.warn(
                    f"OrthoLogger: weight '{path}' has non-finite orthogonality errors "
                    "(non-finite weights); they are recorded as NaN.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return step, errors


def log_entries(errors, weight_logs, per_slice_logs):
    """The epoch-log keys for `errors`, as the progress bar and History show them.

    `ortho/<path>` per weight when `weight_logs` is True, or "auto" with at
    most `AUTO_WEIGHT_LOGS` weights; otherwise one `ortho/total`, so that the
    progress bar stays one readable line. `ortho/<path>/slice_<i>` per slice
    with `per_slice_logs`.
    """
    per_weight = weight_logs is True or (weight_logs == "auto" and len(errors) <= AUTO_WEIGHT_LOGS)
    entries = {}
    if not per_weight:
        entries[TOTAL_KEY] = float(sum(np.sum(values) for values in errors.values()))
    for path, values in errors.items():
        if per_weight:
            entries[f"{LOG_PREFIX}{path}"] = float(np.sum(values))
        if per_slice_logs:
            entries.update({f"{LOG_PREFIX}{path}/slice_{i}": float(value) for i, value in enumerate(values)})
    return entries


def sigma_entries(spectra, weight_logs):
    """The epoch-log keys for the convolutions' `{path: [largest, smallest]}`, by `log_entries`' rule.

    `sigma_max/<path>` and `sigma_min/<path>` per convolution when
    `weight_logs` is True, or "auto" with at most `AUTO_WEIGHT_LOGS` of them;
    otherwise `sigma_max` and `sigma_min`, the extremes over all of them.
    """
    if not spectra:
        return {}
    if weight_logs is True or (weight_logs == "auto" and len(spectra) <= AUTO_WEIGHT_LOGS):
        entries = {}
        for path, (largest, smallest) in spectra.items():
            entries[f"{SIGMA_KEYS[0]}/{path}"], entries[f"{SIGMA_KEYS[1]}/{path}"] = float(largest), float(smallest)
        return entries
    values = np.array(list(spectra.values()))
    return {SIGMA_KEYS[0]: float(values[:, 0].max()), SIGMA_KEYS[1]: float(values[:, 1].min())}


def lipschitz_entries(bounds, weight_logs):
    """The epoch-log keys for `{"lipschitz": bound, layer: factor}`, by `log_entries`' rule.

    `lipschitz` always; `lipschitz/<layer>` per layer when `weight_logs` is
    True, or "auto" with at most `AUTO_WEIGHT_LOGS` layers.
    """
    if not bounds:
        return {}
    entries = {LIPSCHITZ_KEY: float(bounds[LIPSCHITZ_KEY])}
    layers = {k: v for k, v in bounds.items() if k != LIPSCHITZ_KEY}
    if weight_logs is True or (weight_logs == "auto" and len(layers) <= AUTO_WEIGHT_LOGS):
        entries.update({f"{LIPSCHITZ_KEY}/{name}": float(value) for name, value in layers.items()})
    return entries
