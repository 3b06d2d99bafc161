"""OrthoLogger records what slice_errors says, where Keras users look for it."""

import csv
import glob
import os
import struct
import warnings

import keras
import numpy as np
import pytest
import reference
from backends import only_on, to_numpy
from interrupted import FailAtEpoch

import keras_ortho
from keras_ortho import OrthoLogger, OrthoRegularizer


class WeightSnapshots(keras.callbacks.Callback):
    """Listed after the logger: copies the weights and regularization losses it saw."""

    def __init__(self):
        super().__init__()
        self.epochs, self.steps = {}, {}

    def _snapshot(self):
        regularized = [v for v in self.model.trainable_weights if v.regularizer is not None]
        losses = dict(zip((v.path for v in regularized), self.model.losses, strict=True))
        return {
            v.path: (v.numpy().copy(), v.regularizer, float(to_numpy(losses[v.path])) if v.path in losses else None)
            for v in self.model.weights
        }

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = (self._snapshot(), dict(logs))

    def on_train_batch_end(self, batch, logs=None):
        self.steps[int(self.model.optimizer.iterations.numpy())] = self._snapshot()


def attention_model(seed=0, regularize=True):
    keras.utils.set_random_seed(seed)
    ortho = OrthoRegularizer(0.05) if regularize else None
    inputs = keras.Input((6, 12))
    x = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4, kernel_regularizer=ortho, name="mha")(inputs, inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, kernel_regularizer=OrthoRegularizer(0.1) if regularize else None, name="hidden")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs, name="model")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6, 12)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


REGULARIZED = [
    "mha/query/kernel",
    "mha/key/kernel",
    "mha/value/kernel",
    "mha/attention_output/kernel",
    "hidden/kernel",
]


def regularized_paths(model):
    return [v.path for v in model.trainable_weights if v.regularizer is not None]


def test_records_match_reference_in_errors_logs_and_history():
    model = attention_model()
    logger, snapshots = OrthoLogger(), WeightSnapshots()
    x, y = data()
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[logger, snapshots])

    paths = regularized_paths(model)
    assert logger.watched_paths == paths and len(paths) == 5
    assert logger.epochs == [0, 1, 2]
    for path in paths:
        attention_output = path.endswith("attention_output/kernel")
        expected = np.array(
            [
                reference.slice_errors(snapshots.epochs[e][0][path][0], attention_output=attention_output)
                for e in range(3)
            ]
        )
        np.testing.assert_allclose(logger.errors[path], expected, rtol=1e-5)
        totals = expected.sum(axis=1)
        np.testing.assert_allclose(history.history[f"ortho/{path}"], totals, rtol=1e-5)
        np.testing.assert_allclose([snapshots.epochs[e][1][f"ortho/{path}"] for e in range(3)], totals, rtol=1e-5)


def test_factor_times_total_is_the_regularization_loss():
    model = attention_model()
    logger, snapshots = OrthoLogger(), WeightSnapshots()
    model.fit(*data(), epochs=2, verbose=0, callbacks=[logger, snapshots])
    assert logger.watched_paths == REGULARIZED
    for epoch in (0, 1):
        weights, logs = snapshots.epochs[epoch]
        for path in logger.watched_paths:
            _, regularizer, loss = weights[path]
            assert regularizer.factor * logs[f"ortho/{path}"] == pytest.approx(loss, rel=1e-5)


def test_one_slice_per_head_for_attention_projections():
    model = attention_model()
    logger = OrthoLogger()
    model.fit(*data(), epochs=1, verbose=0, callbacks=[logger])
    assert logger.watched_paths == REGULARIZED
    for path in logger.watched_paths:
        expected_slices = 1 if path == "hidden/kernel" else 3
        assert logger.errors[path].shape == (1, expected_slices), path


def test_per_slice_logs_are_optional():
    model = attention_model()
    logger, snapshots = OrthoLogger(per_slice_logs=True), WeightSnapshots()
    model.fit(*data(), epochs=1, verbose=0, callbacks=[logger, snapshots])
    logs = snapshots.epochs[0][1]
    path = REGULARIZED[0]
    per_slice = [logs[f"ortho/{path}/slice_{i}"] for i in range(3)]
    np.testing.assert_allclose(per_slice, logger.errors[path][0], rtol=1e-6)

    default_logger, default_snapshots = OrthoLogger(), WeightSnapshots()
    attention_model().fit(*data(), epochs=1, verbose=0, callbacks=[default_logger, default_snapshots])
    assert not [k for k in default_snapshots.epochs[0][1] if "/slice_" in k]


def many_kernels_model(count):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = inputs
    for i in range(count):
        x = keras.layers.Dense(4, kernel_regularizer=OrthoRegularizer(0.01), name=f"d{i}")(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "count, weight_logs, per_weight",
    [(8, "auto", True), (9, "auto", False), (9, True, True), (3, False, False)],
)
def test_big_models_log_one_total_unless_asked(count, weight_logs, per_weight):
    model = many_kernels_model(count)
    model.compile(optimizer="sgd", loss="mse")
    logger = OrthoLogger(weight_logs=weight_logs)
    history = model.fit(np.zeros((4, 4)), np.zeros((4, 4)), epochs=1, verbose=0, callbacks=[logger])
    keys = sorted(k for k in history.history if k.startswith("ortho/") and k != "ortho/penalty")
    totals = {path: errors[0].sum() for path, errors in logger.errors.items()}
    assert len(totals) == count  # the record keeps every weight either way
    if per_weight:
        assert keys == sorted(f"ortho/{p}" for p in totals)
    else:
        assert keys == ["ortho/total"]
        np.testing.assert_allclose(history.history["ortho/total"][0], sum(totals.values()), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_the_penalty_the_loss_holds_is_logged_beside_the_unscaled_errors(reduction, rng):
    regularizer = keras_ortho.OrthoRegularizer(0.01, reduction=reduction)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, kernel_regularizer=regularizer)])
    model.compile(optimizer="sgd", loss="mse")
    logger = OrthoLogger()
    history = model.fit(rng.normal(size=(8, 6)), np.zeros((8, 5)), epochs=1, verbose=0, callbacks=[logger])
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel).astype("float64")
    penalty = reference.mean_penalty(kernel, 0.01) if reduction == "mean" else reference.penalty(kernel, 0.01)
    np.testing.assert_allclose(history.history["ortho/penalty"][0], penalty, rtol=1e-5)
    (path,) = logger.watched_paths
    np.testing.assert_allclose(history.history[f"ortho/{path}"][0], reference.penalty(kernel), rtol=1e-5)


@pytest.mark.parametrize(
    "weight_logs,error", [("some", ValueError), (1, TypeError), (0, TypeError), (None, TypeError), (1.0, TypeError)]
)
def test_weight_logs_is_auto_or_a_bool(weight_logs, error):
    """1 would pass an `in ("auto", True, False)` check, then act as False: only a bool or "auto" is taken."""
    with pytest.raises(
        error, match=rf'`weight_logs` must be "auto", True or False.*Received: weight_logs={weight_logs!r}'
    ):
        OrthoLogger(weight_logs=weight_logs)


def test_explicit_weights_on_an_unregularized_model():
    model = attention_model(regularize=False)
    query = next(v for v in model.weights if v.path.endswith("query/kernel"))
    logger = OrthoLogger(
        weights=[query, ("hidden/kernel", {"slice_axis": 0})],
    )
    snapshots = WeightSnapshots()
    model.fit(*data(), epochs=2, verbose=0, callbacks=[logger, snapshots])
    for epoch in (0, 1):
        weights = snapshots.epochs[epoch][0]
        np.testing.assert_allclose(
            logger.errors[query.path][epoch],
            reference.slice_errors(weights[query.path][0]),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            logger.errors["hidden/kernel"][epoch],
            reference.slice_errors(weights["hidden/kernel"][0], slice_axis=0),
            rtol=1e-5,
        )
    assert logger.errors["hidden/kernel"].shape == (2, 72)  # one slice per input row


def test_list_of_paths_uses_the_logger_slicing():
    model = attention_model(regularize=False)
    logger = OrthoLogger(weights=["hidden/kernel"], mode="rows")
    snapshots = WeightSnapshots()
    model.fit(*data(), epochs=1, verbose=0, callbacks=[logger, snapshots])
    kernel = snapshots.epochs[0][0]["hidden/kernel"][0]
    np.testing.assert_allclose(
        logger.errors["hidden/kernel"][0],
        reference.slice_errors(kernel, mode="rows"),
        rtol=1e-5,
    )


def test_every_n_batches_records_at_those_steps():
    model = attention_model()
    logger, snapshots = OrthoLogger(every_n_batches=3), WeightSnapshots()
    model.fit(*data(32), epochs=2, batch_size=4, verbose=0, callbacks=[logger, snapshots])
    assert logger.steps == [3, 6, 9, 12, 15]
    path = REGULARIZED[1]
    for row, step in zip(logger.batch_errors[path], logger.steps, strict=True):
        np.testing.assert_allclose(row, reference.slice_errors(snapshots.steps[step][path][0]), rtol=1e-5)


def test_initial_epoch_and_validation_data():
    model = attention_model()
    logger = OrthoLogger()
    x, y = data()
    history = model.fit(x, y, validation_data=(x, y), initial_epoch=2, epochs=4, verbose=0, callbacks=[logger])
    assert logger.epochs == [2, 3]
    assert "val_loss" in history.history and f"ortho/{REGULARIZED[0]}" in history.history


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_records_under_both_jit_settings(jit_compile):
    model = attention_model()
    model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
    logger, snapshots = OrthoLogger(), WeightSnapshots()
    model.fit(*data(), epochs=1, verbose=0, callbacks=[logger, snapshots])
    path = REGULARIZED[4]
    np.testing.assert_allclose(
        logger.errors[path][0], reference.slice_errors(snapshots.epochs[0][0][path][0]), rtol=1e-5
    )


def test_backup_and_restore_resume_keeps_one_row_per_epoch(tmp_path):
    model = attention_model()
    logger = OrthoLogger()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    x, y = data()
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.fit(x, y, epochs=4, verbose=0, callbacks=[logger, backup, FailAtEpoch(2)])
    assert logger.epochs == [0, 1]
    snapshots = WeightSnapshots()
    model.fit(x, y, epochs=4, verbose=0, callbacks=[logger, backup, snapshots])
    assert logger.epochs == [0, 1, 2, 3]
    assert sorted(snapshots.epochs) == [2, 3]  # resumed, not restarted
    np.testing.assert_allclose(
        logger.errors[REGULARIZED[4]][3],
        reference.slice_errors(snapshots.epochs[3][0][REGULARIZED[4]][0]),
        rtol=1e-5,
    )


@only_on("tensorflow", why="tf.distribute.MirroredStrategy is TensorFlow's")
@pytest.mark.slow
def test_mirrored_strategy_records_the_replicated_weights(mirrored):
    with mirrored.scope():
        model = attention_model()
    logger, snapshots = OrthoLogger(), WeightSnapshots()
    model.fit(*data(), epochs=2, batch_size=8, verbose=0, callbacks=[logger, snapshots])
    for path in REGULARIZED:
        attention_output = path.endswith("attention_output/kernel")
        np.testing.assert_allclose(
            logger.errors[path][1],
            reference.slice_errors(snapshots.epochs[1][0][path][0], attention_output=attention_output),
            rtol=1e-5,
        )


# --- Where the values go ---------------------------------------------------------


def test_csv_logger_gets_the_ortho_columns(tmp_path):
    model = attention_model()
    logger = OrthoLogger()
    csv_path = tmp_path / "log.csv"
    model.fit(*data(), epochs=2, verbose=0, callbacks=[logger, keras.callbacks.CSVLogger(str(csv_path))])
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for path in REGULARIZED:
        column = [float(r[f"ortho/{path}"]) for r in rows]
        np.testing.assert_allclose(column, logger.errors[path].sum(axis=1), rtol=1e-6)


def read_events(directory):
    """`{tag: [(step, value or histogram bucket count)]}` from TensorBoard event files."""
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, []).append((event.step, tensor))
    return found


def test_tensorboard_summaries_can_be_read_back(tmp_path):
    model = attention_model()
    logger = OrthoLogger(log_dir=tmp_path, every_n_batches=4)
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    model.fit(*data(32), epochs=2, batch_size=8, verbose=0, callbacks=[logger, board])

    ours = read_events(tmp_path / "ortho")
    path = REGULARIZED[0]
    totals = [(step, float(t)) for step, t in ours[f"ortho/{path}"]]
    assert [s for s, _ in totals] == [0, 1]
    np.testing.assert_allclose([v for _, v in totals], logger.errors[path].sum(axis=1), rtol=1e-6)
    for i in range(3):
        np.testing.assert_allclose(
            [float(t) for _, t in ours[f"ortho/{path}/slice_{i}"]], logger.errors[path][:, i], rtol=1e-6
        )
    histograms = ours[f"ortho/{path}/slices"]
    assert [s for s, _ in histograms] == [0, 1]
    assert histograms[0][1].ndim == 2 and histograms[0][1][:, 2].sum() == 3  # 3 slices counted
    assert [s for s, _ in ours[f"ortho_batch/{path}"]] == [4, 8]

    # The TensorBoard callback, listed after the logger, wrote the totals to its own run.
    train = read_events(tmp_path / "train")
    np.testing.assert_allclose(
        [float(t) for _, t in train[f"epoch_ortho/{path}"]], logger.errors[path].sum(axis=1), rtol=1e-6
    )


def test_plot_is_a_valid_png(tmp_path):
    model = attention_model()
    logger = OrthoLogger()
    model.fit(*data(), epochs=3, verbose=0, callbacks=[logger])
    target = tmp_path / "errors.png"
    figure = keras_ortho.plot_errors(logger, target)
    assert len([ax for ax in figure.axes if ax.get_visible() and ax.get_title()]) == 5
    header = target.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 200 and height > 200


def test_plot_accepts_a_dict_of_errors(tmp_path):
    errors = {"a": np.array([[1.0, 0.5], [0.1, 0.0]]), "b": np.array([[np.nan], [2.0]])}
    figure = keras_ortho.plot_errors(errors, tmp_path / "dict.png", epochs=[5, 6])
    assert [ax.get_title() for ax in figure.axes[:2]] == ["a", "b"]
    # Epoch indices 5 and 6 are Keras's "Epoch 6/..." and "Epoch 7/...".
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["6", "7"]
    assert "as Keras prints it" in figure.axes[0].get_xlabel()


def test_plot_draws_a_one_slice_weight_as_a_line_over_epochs():
    errors = {"many": np.array([[1.0, 0.5], [0.1, 0.2]]), "one": np.array([[3.0], [2.0]])}
    figure = keras_ortho.plot_errors(errors)
    many, one = figure.axes[:2]
    assert many.get_images() and not many.get_lines()
    assert not one.get_images()
    np.testing.assert_array_equal(one.get_lines()[0].get_ydata(), [3.0, 2.0])


def test_a_line_over_epochs_has_whole_epoch_ticks_and_plain_numbers():
    errors = {"one": np.array([[402.1], [402.15], [402.12]])}  # would draw as +4.021e2 offsets
    figure = keras_ortho.plot_errors(errors)
    figure.canvas.draw()
    ax = figure.axes[0]
    assert all(float(t.get_text()).is_integer() for t in ax.get_xticklabels() if t.get_text())
    assert ax.yaxis.get_offset_text().get_text() == ""


@pytest.mark.parametrize("weights, epochs", [(54, 6), (200, 3), (82, 1)])
def test_many_weights_give_one_overview_of_bounded_size(weights, epochs):
    rng = np.random.default_rng(0)
    errors = {f"block{i}/kernel": rng.uniform(0.5, 50, size=(epochs, 1 + i % 4)) for i in range(weights)}
    figure = keras_ortho.plot_errors(errors)
    assert max(figure.get_size_inches()) * 110 <= 2400
    overview = figure.axes[0]
    assert [t.get_text() for t in overview.get_yticklabels()] == list(errors)
    totals = np.array([e.sum(axis=1) for e in errors.values()])  # (weights, epochs)
    if epochs > 1:
        np.testing.assert_allclose(overview.get_images()[0].get_array(), totals)
    else:
        np.testing.assert_allclose([p.get_width() for p in overview.patches], totals[:, 0])
    # Beside it, the slices of the weights with the largest totals in the last epoch, each titled
    # with its total and its rank among all weights (a snapshot's one-slice weights are not detailed).
    ranked = sorted(errors, key=lambda n: -errors[n][-1].sum())
    largest = [n for n in ranked if epochs > 1 or errors[n].shape[1] > 1][:4]
    titles = [ax.get_title() for ax in figure.axes[1:] if ax.get_title()]
    assert len(titles) == 4
    assert titles == [
        f"{name}: total {errors[name][-1].sum():.4g}, #{ranked.index(name) + 1} of {weights}" for name in largest
    ]


@pytest.mark.parametrize("norm, measure", [("fro", "||G_i||_F^2"), ("spectral", "|lambda|_max(G_i)")])
def test_the_axes_name_the_norm_the_errors_are_measured_by(norm, measure):
    regularizer = keras_ortho.OrthoRegularizer(0.01, norm=norm)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, kernel_regularizer=regularizer, name="d")])
    model.compile(optimizer="sgd", loss="mse")
    logger = OrthoLogger()
    model.fit(np.ones((8, 6), "float32"), np.zeros((8, 4), "float32"), epochs=2, verbose=0, callbacks=[logger])
    line = keras_ortho.plot_errors(logger).axes[0]  # one slice: a line over epochs
    assert line.get_ylabel() == measure
    assert keras_ortho.plot_errors({"d/kernel": np.ones((2, 1))}).axes[0].get_ylabel() == "error"


def test_plot_colour_scale_spans_exactly_the_data():
    errors = {"a": np.array([[2.0, 3.0], [2.5, 2.2]])}  # a short run: less than a factor of 2
    image = keras_ortho.plot_errors(errors).axes[0].get_images()[0]
    assert (image.norm.vmin, image.norm.vmax) == (2.0, 3.0)


def test_plot_of_one_point_in_time_draws_bars():
    errors = {"heads": np.array([[1.0, 2.0, 3.0]]), "dense": np.array([[0.5]]), "conv": np.array([[4.0]])}
    figure = keras_ortho.plot_errors(errors)
    heads, single = figure.axes[:2]
    assert [p.get_height() for p in heads.patches] == [1.0, 2.0, 3.0]  # one bar per slice
    assert [t.get_text() for t in single.get_yticklabels()] == ["dense", "conv"]  # one bar per weight
    assert [p.get_width() for p in single.patches] == [0.5, 4.0]


def test_plot_saves_to_a_file_object_as_matplotlib_does():
    import io

    buffer = io.BytesIO()
    keras_ortho.plot_errors({"a": np.array([[1.0, 0.5]])}, buffer)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.colors", None)
    with pytest.raises(ImportError, match=r"pip install 'keras-ortho\[plot\]'"):
        keras_ortho.plot_errors({"a": np.ones((1, 1))})


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"source": [[1.0]]}, TypeError, r"`source`.*Received: source of type list"),
        (
            {"source": {"a": np.ones((2, 1))}, "epochs": [0]},
            ValueError,
            r"`epochs`.*\(2\).*Received: epochs of length 1",
        ),
        ({"source": {"a": np.ones((2, 1))}, "max_columns": 0}, ValueError, r"`max_columns`.*Received: max_columns=0"),
    ],
)
def test_plot_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        keras_ortho.plot_errors(**kwargs)


def test_plot_with_nothing_recorded_is_an_error():
    with pytest.raises(ValueError, match="nothing to draw"):
        keras_ortho.plot_errors(OrthoLogger())


# --- Bad input -------------------------------------------------------------------------


def test_non_finite_weights_are_recorded_as_nan_with_one_warning():
    model = attention_model()
    dense = model.get_layer("hidden")
    kernel = dense.kernel.numpy()
    kernel[0, 0] = np.nan
    dense.kernel.assign(kernel)
    logger = OrthoLogger(weights=["hidden/kernel"])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(*data(), epochs=2, verbose=0, callbacks=[logger])
    assert np.isnan(logger.errors["hidden/kernel"]).all()
    messages = [str(w.message) for w in caught if "OrthoLogger" in str(w.message)]
    assert len(messages) == 1 and "hidden/kernel" in messages[0]


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"every_n_batches": 0}, ValueError, r"`every_n_batches`.*Received: every_n_batches=0"),
        ({"every_n_batches": 2.5}, TypeError, r"Received: every_n_batches=2\.5"),
        ({"log_dir": 3}, TypeError, r"`log_dir`.*Received: log_dir=3"),
        ({"per_slice_logs": "yes"}, TypeError, r"`per_slice_logs`.*Received: per_slice_logs='yes'"),
        ({"weights": "dense/kernel"}, TypeError, r"`weights`.*Received: weights='dense/kernel'"),
        ({"weights": []}, ValueError, r"`weights` is empty"),
        ({"weights": [("d/kernel", {"axis": 0})]}, ValueError, r"'d/kernel'.*\{'axis': 0\}"),
        ({"weights": {"d/kernel": {}}}, TypeError, r"`weights`.*Received: weights=\{'d/kernel'"),
        ({"weights": [3]}, TypeError, r"Received an item: 3"),
        ({"mode": "diag"}, ValueError, r"Received: mode='diag'"),
        ({"slice_axis": "0"}, TypeError, r"Received: slice_axis='0'"),
        ({"every_batch": 1}, TypeError, r"every_batch"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        OrthoLogger(**kwargs)


def test_explicit_variable_of_rank_one_is_rejected_at_construction():
    bias = keras.Variable(np.zeros(3, "float32"), name="bias")
    with pytest.raises(ValueError, match=r"Cannot watch weight '.*bias'.*rank >= 2.*shape=\(3,\)"):
        OrthoLogger(weights=[bias])


@pytest.mark.parametrize(
    "weights,message",
    [
        (["hidden/bias"], r"Cannot watch weight 'hidden/bias'.*shape=\(8,\)"),
        (["nowhere/kernel"], r"'nowhere/kernel'.*no weight with that path"),
        ([("hidden/kernel", {"slice_axis": 5})], r"'hidden/kernel'.*slice_axis=5"),
    ],
)
def test_bad_watched_weights_fail_at_train_begin(weights, message):
    model = attention_model()
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ValueError, match=message):
        model.fit(*data(), epochs=1, verbose=0, callbacks=[OrthoLogger(weights=weights)])
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())  # nothing trained, nothing lost


def test_non_float_weight_is_rejected():
    counter = keras.Variable(np.zeros((2, 2), "int32"), name="counts", trainable=False)
    with pytest.raises(TypeError, match=r"Cannot watch weight '.*counts'.*dtype=int32"):
        OrthoLogger(weights=[counter])


def test_model_without_regularized_weights_warns_and_records_nothing():
    logger = OrthoLogger()
    with pytest.warns(RuntimeWarning, match=r"no trainable weight regularized.*records nothing.*weights="):
        history = attention_model(regularize=False).fit(*data(), epochs=2, verbose=0, callbacks=[logger])
    assert len(history.history["loss"]) == 2  # fit ran to the end
    assert logger.errors == {} and not [k for k in history.history if k.startswith("ortho/")]


def test_unwritable_log_dir_fails_at_train_begin(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the log directory should be")
    with pytest.raises(ValueError, match=r"cannot write TensorBoard logs to log_dir=.*not_a_directory"):
        attention_model().fit(*data(), epochs=1, verbose=0, callbacks=[OrthoLogger(log_dir=blocker)])
    assert blocker.read_text().startswith("a file")


@only_on("tensorflow", why="tf.Variable is TensorFlow's")
def test_watched_slices_agree_with_slice_errors_for_a_plain_tf_variable():
    """Only a Keras path triggers the attention-output rule, in the logger as in slice_errors."""
    import tensorflow as tf

    from keras_ortho import _watch

    w = np.random.default_rng(0).normal(size=(4, 3, 5)).astype("float32")
    variable = tf.Variable(w, name="mha/attention_output/kernel")
    watched = _watch.watch(variable)
    errors = _watch.ErrorProbe([watched])()
    assert watched.num_slices == 3
    # The default rule for rank 3, in numpy: slices along axis 1, each 4x5, not the per-head output rule.
    expected = reference.slice_errors(w)
    assert expected.shape == (3,)
    np.testing.assert_allclose(errors[watched.path], expected, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(keras_ortho.slice_errors(variable)), expected, rtol=1e-5)


def test_summaries_without_tensorflow_say_what_to_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"log_dir='logs'.*tensorflow.*`pip install tensorflow`"):
        OrthoLogger(log_dir="logs")


def test_a_model_whose_kernels_mostly_carry_no_regularizer_is_named_when_fit_begins():
    # One of eight kernels regularized: what a model saved after `regularize` reloads as when its layers'
    # configs drop the regularizer (keras-hub backbones).
    layers = [keras.Input((4,))]
    layers += [
        keras.layers.Dense(4, kernel_regularizer=keras_ortho.OrthoRegularizer(0.01) if i == 0 else None)
        for i in range(8)
    ]
    model = keras.Sequential(layers)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(RuntimeWarning, match=r"only 1 of the 8 kernels of '.*' carry an OrthoRegularizer"):
        model.fit(np.zeros((4, 4)), np.zeros((4, 4)), verbose=0, callbacks=[OrthoLogger()])
    keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.fit(np.zeros((4, 4)), np.zeros((4, 4)), verbose=0, callbacks=[OrthoLogger()])
