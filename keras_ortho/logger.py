"""`OrthoLogger`: per-slice orthogonality of watched weights during `fit`."""

import importlib.util
import json
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_ortho import _validation, _watch

LOG_PREFIX = "ortho/"
_WEIGHT_OPTIONS = ("slice_axis", "mode")


class OrthoLogger(keras.callbacks.Callback):
    """Records how far each slice of the watched weights is from orthonormal.

    The error of slice `i` is `keras_ortho.slice_errors`: `sum_jk |G_i|_jk`,
    unscaled, so `factor * total` is the weight's regularization loss.

    At every epoch end it writes `logs["ortho/<variable.path>"]`, the sum of
    that weight's slice errors, into the epoch logs in place, so History,
    CSVLogger, TensorBoard, EarlyStopping and ModelCheckpoint see it when they
    are listed after this callback. Per-slice values stay out of the logs
    unless `per_slice_logs=True` (they would flood the progress bar); they are
    kept in `errors`, written to TensorBoard with `log_dir`, and drawn by
    `keras_ortho.plot_errors`.

    Args:
        weights: what to watch. None (default): every trainable weight of the
            model, at any depth, whose regularizer is an `OrthoRegularizer`,
            sliced as that regularizer slices it. Otherwise a list of weights
            (Keras variables or their `path` strings), sliced per `slice_axis`
            and `mode`; an item may also be a pair
            `(weight, {"slice_axis": ..., "mode": ...})` for per-weight slicing.
        slice_axis: slicing of explicitly given weights (see `OrthoRegularizer`).
        mode: "auto", "columns" or "rows", for explicitly given weights.
        every_n_batches: also record after every N training batches into
            `batch_errors` (and TensorBoard); N counts calls of the batch hook,
            one per `steps_per_execution` steps. None (default): epochs only.
        log_dir: if given, TensorBoard summaries go to `log_dir/ortho`, a run of
            its own beside the TensorBoard callback's `train`/`validation`:
            per-slice and total scalars, and one histogram per weight. In a
            multi-worker cluster only the chief writes them.
        per_slice_logs: also write `logs["ortho/<path>/slice_<i>"]` per slice.

    Attributes:
        errors: `{path: array of shape (epochs_recorded, num_slices)}`.
        epochs: the epoch number of each row of `errors`.
        batch_errors: `{path: array of shape (records, num_slices)}`.
        steps: the optimizer iteration of each row of `batch_errors`.

    Example:

        logger = keras_ortho.OrthoLogger(log_dir="logs")
        model.fit(x, y, epochs=5, callbacks=[logger, keras.callbacks.CSVLogger("log.csv")])
        logger.errors["dense/kernel"].shape   # (5, 1): epochs x slices
    """

    def __init__(
        self,
        weights=None,
        slice_axis=None,
        mode="auto",
        every_n_batches=None,
        log_dir=None,
        per_slice_logs=False,
    ):
        super().__init__()
        slice_axis = _validation.check_slice_axis(slice_axis)
        mode = _validation.check_mode(mode)
        self._requested = _requested_weights(weights, slice_axis, mode)
        if every_n_batches is not None and (
            isinstance(every_n_batches, bool)
            or not isinstance(every_n_batches, int)
            or every_n_batches < 1
        ):
            raise ValueError(
                "Argument `every_n_batches` must be None or an int >= 1. "
                f"Received: every_n_batches={every_n_batches!r}"
            )
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(
                f"Argument `log_dir` must be None or a path. Received: log_dir={log_dir!r}"
            )
        if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                f"OrthoLogger(log_dir={log_dir!r}) writes TensorBoard summaries and needs the "
                "tensorboard package: `pip install 'keras-ortho[tensorboard]'`."
            )
        if not isinstance(per_slice_logs, bool):
            raise TypeError(
                "Argument `per_slice_logs` must be a bool. "
                f"Received: per_slice_logs={per_slice_logs!r}"
            )
        self.every_n_batches = every_n_batches
        if every_n_batches is not None:
            # Only then a batch hook: Keras runs the steps of a fit whose
            # callbacks have none without waiting for Python after each one.
            self.on_train_batch_end = self._record_batch
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.per_slice_logs = per_slice_logs

        self._watched = []
        self._epoch_records = []  # [(epoch, {path: per-slice errors})]
        self._batch_records = []  # [(step, {path: per-slice errors})]
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
        return self._stack(self._epoch_records)

    @property
    def epochs(self):
        return [epoch for epoch, _ in self._epoch_records]

    @property
    def batch_errors(self):
        return self._stack(self._batch_records)

    @property
    def steps(self):
        return [step for step, _ in self._batch_records]

    def _stack(self, records):
        return {
            w.path: np.array([r[w.path] for _, r in records]).reshape(len(records), w.num_slices)
            for w in self._watched
        }

    # --- Callback hooks -------------------------------------------------------------

    def on_train_begin(self, logs=None):
        _validation.check_keras_backend(type(self).__name__)
        watched = self._resolve(self.model)
        same_weights = len(watched) == len(self._watched) and all(
            new.variable is old.variable and new.plan == old.plan
            for new, old in zip(watched, self._watched)
        )
        if not same_weights:
            # Another model or other weights: start a new record and a new probe.
            self._epoch_records, self._batch_records = [], []
            self._watched = watched
            self._probe = _watch.ErrorProbe(watched, jit_compile=self.every_n_batches is not None)
        self._batches_seen = 0
        self.on_train_end()  # a fit that raised left its writer open
        if self.log_dir is not None and _is_chief():
            self._writer = _open_writer(self.log_dir)

    def _record_batch(self, batch, logs=None):
        """`on_train_batch_end` when `every_n_batches` is set (see `__init__`)."""
        self._batches_seen += 1
        if self._batches_seen % self.every_n_batches:
            return
        step, errors = self._measure()
        _keep_before(self._batch_records, step)
        self._batch_records.append((step, errors))
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for path, values in errors.items():
                    tf.summary.scalar(f"ortho_batch/{path}", np.sum(values))

    def on_epoch_end(self, epoch, logs=None):
        _, errors = self._measure()
        _keep_before(self._epoch_records, epoch)
        self._epoch_records.append((epoch, errors))
        if logs is not None:
            for path, values in errors.items():
                logs[f"{LOG_PREFIX}{path}"] = float(np.sum(values))
                if self.per_slice_logs:
                    for i, value in enumerate(values):
                        logs[f"{LOG_PREFIX}{path}/slice_{i}"] = float(value)
        if self._writer is not None:
            self._write_epoch(epoch, errors)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    # --- Helpers ----------------------------------------------------------------------

    def _iterations(self):
        """The optimizer's iteration counter, or -1 for a model without one."""
        optimizer = getattr(self.model, "optimizer", None)
        return -1 if optimizer is None else optimizer.iterations

    def _resolve(self, model):
        if self._requested is None:
            watched = _watch.regularized_weights(model)
            if not watched:
                raise ValueError(
                    f"OrthoLogger found no trainable weight regularized by OrthoRegularizer "
                    f"in model '{model.name}'. Pass `weights=[...]` to watch others."
                )
            return watched
        by_path = {v.path: v for v in model.weights}
        watched = []
        for weight, options in self._requested:
            if isinstance(weight, str):
                if weight not in by_path:
                    raise ValueError(
                        f"OrthoLogger cannot watch weight '{weight}': model '{model.name}' "
                        f"has no weight with that path. Its weights: {sorted(by_path)[:20]}"
                    )
                weight = by_path[weight]
            watched.append(_watch.watch(weight, **options))
        return watched

    def _measure(self):
        step, errors = self._probe(self._iterations())
        for path, values in errors.items():
            if not np.all(np.isfinite(values)):
                values[~np.isfinite(values)] = np.nan
                if path not in self._warned_non_finite:
                    self._warned_non_finite.add(path)
                    warnings.warn(
                        f"OrthoLogger: weight '{path}' has non-finite orthogonality errors "
                        "(non-finite weights); they are recorded as NaN.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        return int(step), errors

    def _write_epoch(self, epoch, errors):
        with self._writer.as_default(step=epoch):
            for path, values in errors.items():
                tf.summary.scalar(f"{LOG_PREFIX}{path}", np.sum(values))
                for i, value in enumerate(values):
                    tf.summary.scalar(f"{LOG_PREFIX}{path}/slice_{i}", value)
                tf.summary.histogram(f"{LOG_PREFIX}{path}/slices", values)
        self._writer.flush()


def _requested_weights(weights, slice_axis, mode):
    """Normalizes the `weights` argument to `[(weight or path, options)]`, or None."""
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
        options = {"slice_axis": slice_axis, "mode": mode, **options}
        options["slice_axis"] = _validation.check_slice_axis(options["slice_axis"])
        options["mode"] = _validation.check_mode(options["mode"])
        if not isinstance(weight, str):
            if not hasattr(weight, "shape") or not hasattr(weight, "dtype"):
                raise TypeError(
                    "Argument `weights` must hold Keras variables or their paths. "
                    f"Received an item: {weight!r}"
                )
            _watch.watch(weight, **options)  # rank and dtype errors now, not mid-fit
        items.append((weight, options))
    return items


def _keep_before(records, key):
    """Drops records at or after `key`: a resumed or repeated run overwrites them."""
    while records and records[-1][0] >= key:
        records.pop()


def _is_chief():
    """False on the non-chief workers of a multi-worker cluster (per TF_CONFIG).

    Every worker holds the same weights and the same records; only the chief
    writes TensorBoard files, so that workers never write into one directory.
    """
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except ValueError:
        return True
    cluster, task = config.get("cluster", {}), config.get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster


def _open_writer(log_dir):
    run_dir = os.path.join(log_dir, "ortho")
    try:
        os.makedirs(run_dir, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise PermissionError(f"no write permission on {run_dir}")
        return tf.summary.create_file_writer(run_dir)
    except (OSError, tf.errors.OpError) as error:
        raise ValueError(
            f"OrthoLogger cannot write TensorBoard logs to log_dir={log_dir!r}: {error}"
        ) from error
