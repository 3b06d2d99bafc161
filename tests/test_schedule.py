"""OrthoSchedule and OrthoTarget: the regularizers' strength, changed per epoch inside compiled fit.

Each training test compares the kernel's movement with the numpy reference
gradient scaled by the epoch's scale; the controller is held against its
update law written out here.
"""

import csv
import math
import os
import textwrap

import keras
import numpy as np
import pytest
import reference
from backends import BACKEND, KERAS_VERSION, only_on, run_fresh, to_numpy
from models import mixed_layers_model, regularizer_configs

import keras_ortho

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

LR = 0.5
FACTOR = 0.1
SCHEDULE = {1: 0.5, 2: 0.0, 3: 2.0}


def penalty_only_model(units=5, inputs=8, factor=FACTOR):
    """A Dense layer whose only gradient, on zero inputs and targets, is the penalty's."""
    keras.utils.set_random_seed(0)
    x = keras.Input((inputs,))
    layer = keras.layers.Dense(units, kernel_regularizer=keras_ortho.OrthoRegularizer(factor), name="dense")
    return keras.Model(x, layer(x)), layer


def zeros(units=5, inputs=8, samples=4):
    return np.zeros((samples, inputs), "float32"), np.zeros((samples, units), "float32")


class KernelsPerEpoch(keras.callbacks.Callback):
    """The kernel at each epoch's start and end, and the regularization loss at each end."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.begin, self.end, self.losses = layer, [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.begin.append(to_numpy(self.model.get_layer(self.layer.name).kernel).copy())

    def on_epoch_end(self, epoch, logs=None):
        self.end.append(to_numpy(self.model.get_layer(self.layer.name).kernel).copy())
        self.losses.append(sum(float(to_numpy(loss)) for loss in self.model.losses))


# --- The schedule itself ------------------------------------------------------------------


def test_a_dict_schedule_is_piecewise_constant_from_each_key_on():
    schedule = keras_ortho.OrthoSchedule({3: 0.1, 1: 0.5, 7: 0.0})
    expected = {0: 1.0, 1: 0.5, 2: 0.5, 3: 0.1, 6: 0.1, 7: 0.0, 100: 0.0}
    assert {epoch: schedule.scale_at(epoch) for epoch in expected} == expected


def test_a_callable_schedule_is_called_with_the_epoch():
    schedule = keras_ortho.OrthoSchedule(lambda epoch: 0.5**epoch)
    assert [schedule.scale_at(e) for e in range(4)] == [1.0, 0.5, 0.25, 0.125]


@pytest.mark.parametrize(
    "schedule, error, message",
    [
        ([0.1, 0.2], TypeError, "Received: schedule=[0.1, 0.2]"),
        ({-1: 0.1}, ValueError, "each key is an epoch"),
        ({1.5: 0.1}, ValueError, "each key is an epoch"),
        ({True: 0.1}, ValueError, "each key is an epoch"),
        ({2: -0.1}, ValueError, "schedule[2]=-0.1"),
        ({2: math.inf}, ValueError, "schedule[2]=inf"),
        ({2: "0.1"}, TypeError, "schedule[2]='0.1'"),
    ],
)
def test_schedule_rejects_bad_arguments(schedule, error, message):
    with pytest.raises(error) as raised:
        keras_ortho.OrthoSchedule(schedule)
    assert message in str(raised.value)


def test_a_callable_returning_a_bad_scale_names_the_epoch():
    schedule = keras_ortho.OrthoSchedule(lambda epoch: 1.0 if epoch < 2 else -1.0)
    with pytest.raises(ValueError, match=r"schedule\(2\)=-1.0"):
        schedule.scale_at(2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"target": 0}, ValueError, "target=0"),
        ({"target": "1"}, TypeError, "target='1'"),
        ({"target": 1, "statistic": "median"}, ValueError, "statistic='median'"),
        ({"target": 1, "rate": 0}, ValueError, "rate=0"),
        ({"target": 1, "min_scale": 2, "max_scale": 1}, ValueError, "max_scale=1"),
        ({"target": 1, "initial_scale": 1e6}, ValueError, "initial_scale=1000000.0"),
    ],
)
def test_target_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error) as raised:
        keras_ortho.OrthoTarget(**kwargs)
    assert message in str(raised.value)


# --- Inside fit, on every backend -----------------------------------------------------------


@pytest.mark.parametrize(
    "compile_kwargs",
    [
        pytest.param({"jit_compile": False}, id="jit off"),
        pytest.param({"jit_compile": True}, id="jit on"),
        pytest.param(
            {"steps_per_execution": 2},
            id="steps_per_execution=2",
            marks=only_on("tensorflow", "jax", why="Keras's torch trainer refuses steps_per_execution > 1"),
        ),
    ],
)
def test_each_epoch_moves_the_kernel_by_the_scaled_analytic_gradient(compile_kwargs):
    model, layer = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", **compile_kwargs)
    schedule = keras_ortho.OrthoSchedule(SCHEDULE)
    kernels = KernelsPerEpoch(layer)
    steps_per_epoch = 2  # 4 zero samples in batches of 2
    model.fit(*zeros(), batch_size=2, epochs=4, verbose=0, callbacks=[schedule, kernels])

    assert len(kernels.begin) == len(kernels.end) == 4
    for epoch, (begin, end) in enumerate(zip(kernels.begin, kernels.end, strict=True)):
        scale = schedule.scale_at(epoch)
        expected = begin.astype(np.float64)
        for _ in range(steps_per_epoch):
            expected = expected - LR * reference.gradient(expected, FACTOR * scale)
        if scale == 0:
            np.testing.assert_array_equal(end, begin)  # not at all
        else:
            assert not np.array_equal(end, begin)
            np.testing.assert_allclose(end, expected, rtol=1e-5, atol=1e-6, err_msg=f"epoch {epoch}")


@only_on("tensorflow", why="MirroredStrategy is tf.distribute")
@pytest.mark.slow
def test_the_scale_acts_under_mirrored_strategy(mirrored):
    with mirrored.scope():
        model, layer = penalty_only_model()
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    kernels = KernelsPerEpoch(layer)
    model.fit(*zeros(), batch_size=4, epochs=4, verbose=0, callbacks=[keras_ortho.OrthoSchedule(SCHEDULE), kernels])
    assert len(kernels.begin) == len(kernels.end) == 4
    for epoch, (begin, end) in enumerate(zip(kernels.begin, kernels.end, strict=True)):
        scale = keras_ortho.OrthoSchedule(SCHEDULE).scale_at(epoch)
        expected = begin - LR * reference.gradient(begin, FACTOR * scale)
        np.testing.assert_allclose(end, expected, rtol=1e-5, atol=1e-6, err_msg=f"epoch {epoch}")


@only_on("tensorflow", why="MirroredStrategy is tf.distribute")
@pytest.mark.parametrize("callback", ["schedule", "target"])
@pytest.mark.slow
def test_schedule_and_target_under_mirrored_strategy_train_like_one_device(callback, mirrored):
    """Two replicas, each with half of every batch: the same scales and kernel as one device."""
    callbacks = {
        "schedule": lambda: keras_ortho.OrthoSchedule({0: 0.1, 1: 1.0, 2: 0.5}),
        "target": lambda: keras_ortho.OrthoTarget(1e-3, initial_scale=10.0),
    }
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 5)).astype("float32")

    def train(strategy):
        with strategy.scope():
            model, layer = penalty_only_model()
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[callbacks[callback]()])
        return history.history["ortho/scale"], to_numpy(layer.kernel)

    import tensorflow as tf

    (one_scales, one_kernel), (scales, kernel) = train(tf.distribute.get_strategy()), train(mirrored)
    assert mirrored.num_replicas_in_sync == 2
    assert len(one_scales) == 3 and len(set(one_scales)) > 1, one_scales  # it acts
    np.testing.assert_allclose(scales, one_scales, rtol=1e-5)
    np.testing.assert_allclose(kernel, one_kernel, rtol=1e-5, atol=1e-6)


def test_scale_is_logged_for_history_and_csv_logger(tmp_path):
    model, _ = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    path = tmp_path / "log.csv"
    history = model.fit(
        *zeros(), epochs=4, verbose=0, callbacks=[keras_ortho.OrthoSchedule(SCHEDULE), keras.callbacks.CSVLogger(path)]
    )
    expected = [1.0, 0.5, 0.0, 2.0]
    assert history.history["ortho/scale"] == expected
    with open(path) as f:
        assert [float(row["ortho/scale"]) for row in csv.DictReader(f)] == expected


def test_logger_records_stay_unscaled_and_times_factor_and_scale_give_the_loss():
    model, layer = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    logger = keras_ortho.OrthoLogger()
    kernels = KernelsPerEpoch(layer)
    history = model.fit(*zeros(), epochs=4, verbose=0, callbacks=[keras_ortho.OrthoSchedule(SCHEDULE), logger, kernels])
    totals = history.history[f"ortho/{layer.kernel.path}"]
    for epoch, (total, scale, loss, kernel) in enumerate(
        zip(totals, history.history["ortho/scale"], kernels.losses, kernels.end, strict=True)
    ):
        np.testing.assert_allclose(total, reference.slice_errors(kernel).sum(), rtol=1e-5)
        np.testing.assert_allclose(FACTOR * scale * total, loss, rtol=1e-5, atol=1e-7, err_msg=f"epoch {epoch}")


def test_after_fit_the_regularizer_acts_with_its_own_factor_and_config():
    model, layer = penalty_only_model()
    regularizer = layer.kernel.regularizer
    config = regularizer.get_config()
    variables = len(model.variables)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(*zeros(), epochs=3, verbose=0, callbacks=[keras_ortho.OrthoSchedule(SCHEDULE)])

    assert (
        regularizer.get_config()
        == config
        == {"factor": FACTOR, "slice_axis": None, "mode": "auto", "reduction": "sum", "norm": "l1", "operator": False}
    )
    assert len(model.variables) == variables
    kernel = to_numpy(layer.kernel)
    np.testing.assert_allclose(to_numpy(model.losses[0]), reference.penalty(kernel, FACTOR), rtol=1e-5)
    # And the next fit, with no schedule, trains with the factor alone (the cached
    # train function of the scheduled fit is not reused).
    kernels = KernelsPerEpoch(layer)
    model.fit(*zeros(), batch_size=4, epochs=1, verbose=0, callbacks=[kernels])
    expected = kernels.begin[0] - LR * reference.gradient(kernels.begin[0], FACTOR)
    np.testing.assert_allclose(kernels.end[0], expected, rtol=1e-5, atol=1e-6)


class RaiseAtBatch(keras.callbacks.Callback):
    """Raises `error` at the end of training batch `batch`, as a failing callback or Ctrl-C would."""

    def __init__(self, error, batch=2):
        super().__init__()
        self.error, self.batch = error, batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            raise self.error("raised inside fit")


SCALE_CALLBACKS = {
    "schedule": lambda: keras_ortho.OrthoSchedule({0: 0.1}),
    "target": lambda: keras_ortho.OrthoTarget(1e-3, initial_scale=10.0),
}


def crashed_fit(callback, error):
    """A model whose scaled fit raised `error` at its third batch; with its kernel layer."""
    model, layer = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    with pytest.raises(error, match="raised inside fit"):
        model.fit(
            *zeros(samples=8),
            batch_size=2,
            epochs=2,
            verbose=0,
            callbacks=[SCALE_CALLBACKS[callback](), RaiseAtBatch(error)],
        )
    if BACKEND == "jax" and KERAS_VERSION < (3, 15):
        # Keras 3.8's JAX fit leaves the variables empty when it raises (3.15 puts the values back
        # in a `finally`): Keras's own behaviour, which these tests are not about.
        model.jax_state_sync()
    return model, layer


def scale_variables(model):
    return [v for v in model.variables if "keras_ortho_scale" in v.path]


@pytest.mark.parametrize("first", ["losses", "evaluate", "fit"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("callback", sorted(SCALE_CALLBACKS))
def test_after_a_fit_that_raised_the_regularizers_act_with_their_own_factor(callback, error, first):
    model, layer = crashed_fit(callback, error)
    kernel = to_numpy(layer.kernel).copy()
    plain = reference.penalty(kernel, FACTOR)

    def check_losses():
        np.testing.assert_allclose(sum(float(to_numpy(loss)) for loss in model.losses), plain, rtol=1e-5)

    def check_evaluate():  # zero inputs and targets: the loss is the penalty alone
        np.testing.assert_allclose(model.evaluate(*zeros(), verbose=0), plain, rtol=1e-5)

    def check_fit():  # one step of SGD on the penalty alone, with the plain factor
        kernels = KernelsPerEpoch(layer)
        model.fit(*zeros(), batch_size=4, epochs=1, verbose=0, callbacks=[kernels])
        expected = kernel - LR * reference.gradient(kernel, FACTOR)
        np.testing.assert_allclose(kernels.end[0], expected, rtol=1e-5, atol=1e-6)

    checks = {"losses": check_losses, "evaluate": check_evaluate, "fit": check_fit}
    checks.pop(first)()  # the first use after the crash finds and releases the scale
    assert scale_variables(model) == []
    if first != "fit":
        for check in checks.values():
            check()
        assert scale_variables(model) == []


@pytest.mark.parametrize("callback", sorted(SCALE_CALLBACKS))
def test_a_model_saved_right_after_a_fit_that_raised_holds_no_scale(tmp_path, callback):
    h5py = pytest.importorskip("h5py")  # Keras's own dependency
    model, _ = crashed_fit(callback, RuntimeError)
    # Keras's saving function, not the model's method: nothing else meets the scale first.
    keras.saving.save_model(model, tmp_path / "model.keras")
    model.save_weights(tmp_path / "model.weights.h5")
    names = []
    with h5py.File(tmp_path / "model.weights.h5") as weights:
        weights.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    assert "layers/dense/vars/0" in names and not any("scale" in name for name in names), names
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert scale_variables(loaded) == []


def test_a_second_fit_with_the_callback_that_crashed_goes_on():
    callback = keras_ortho.OrthoSchedule({0: 0.5})
    model, layer = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    with pytest.raises(RuntimeError):
        model.fit(
            *zeros(samples=8), batch_size=2, epochs=1, verbose=0, callbacks=[callback, RaiseAtBatch(RuntimeError)]
        )
    kernels = KernelsPerEpoch(layer)
    model.fit(*zeros(), batch_size=4, epochs=1, verbose=0, callbacks=[callback, kernels])
    expected = kernels.begin[0] - LR * reference.gradient(kernels.begin[0], 0.5 * FACTOR)
    np.testing.assert_allclose(kernels.end[0], expected, rtol=1e-5, atol=1e-6)
    assert scale_variables(model) == []  # released at the end of the fit that ended well


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_mean_reduced_regularizer_steps_by_its_reduced_gradient_times_the_scale(jit_compile):
    keras.utils.set_random_seed(0)
    x = keras.Input((8,))
    layer = keras.layers.Dense(
        5, kernel_regularizer=keras_ortho.OrthoRegularizer(FACTOR, reduction="mean"), name="dense"
    )
    model = keras.Model(x, layer(x))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=jit_compile)
    kernels = KernelsPerEpoch(layer)
    model.fit(*zeros(), batch_size=4, epochs=1, verbose=0, callbacks=[keras_ortho.OrthoSchedule({0: 0.5}), kernels])
    before = kernels.begin[0]
    expected = before - LR * 0.5 * reference.mean_gradient(before, FACTOR)
    np.testing.assert_allclose(kernels.end[0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        float(to_numpy(model.losses[0])), reference.mean_penalty(kernels.end[0], FACTOR), rtol=1e-5
    )


class KernelsPerBatch(keras.callbacks.Callback):
    """The kernel after each training batch."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.after = layer, []

    def on_train_batch_end(self, batch, logs=None):
        self.after.append(to_numpy(self.model.get_layer(self.layer.name).kernel).copy())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_lazy_regularization_steps_every_nth_batch_by_n_times_the_gradient(jit_compile):
    every, scale = 3, 0.5
    model, layer = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=jit_compile)
    kernels = KernelsPerBatch(layer)
    before = to_numpy(layer.kernel).copy()
    model.fit(
        *zeros(samples=14),
        batch_size=2,
        epochs=1,
        verbose=0,
        callbacks=[keras_ortho.OrthoSchedule({0: scale}, every=every), kernels],
    )
    assert len(kernels.after) == 7
    for step, after in enumerate(kernels.after):
        if step % every == 0:  # steps 0, 3, 6: the penalty, times `every`
            expected = before - LR * every * scale * reference.gradient(before, FACTOR)
        else:
            expected = before  # nothing else moves the kernel on zero data
        np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        before = after


@pytest.mark.parametrize("jit_compile", [False, True])
def test_lazy_regularization_of_attention_heads_with_the_mean_reduction(jit_compile):
    # A (8, 2, 4) kernel, one slice per head: its stack is a transpose of the
    # kernel, and its gradient is laid back through it.
    every, units = 2, (3, 2, 4)
    keras.utils.set_random_seed(0)
    x = keras.Input((3, 8))
    layer = keras.layers.EinsumDense(
        "abc,cde->abde", units, kernel_regularizer=keras_ortho.OrthoRegularizer(FACTOR, reduction="mean")
    )
    model = keras.Model(x, layer(x))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=jit_compile)
    kernels = KernelsPerBatch(layer)
    before = to_numpy(layer.kernel).copy()
    model.fit(
        np.zeros((8, 3, 8), "float32"),
        np.zeros((8, *units), "float32"),
        batch_size=2,
        verbose=0,
        callbacks=[keras_ortho.OrthoSchedule(every=every), kernels],
    )
    assert len(kernels.after) == 4
    for step, after in enumerate(kernels.after):
        moved = LR * every * reference.mean_gradient(before, FACTOR) if step % every == 0 else 0.0
        np.testing.assert_allclose(after, before - moved, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        before = after


def test_lazy_regularization_leaves_evaluation_and_the_logs_with_the_plain_scale():
    model, layer = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # the kernel stays put
    history = model.fit(
        *zeros(samples=6),
        batch_size=2,
        epochs=2,
        verbose=0,
        validation_data=zeros(),
        callbacks=[keras_ortho.OrthoSchedule({1: 0.5}, every=4)],
    )
    plain = reference.penalty(to_numpy(layer.kernel), FACTOR)
    np.testing.assert_allclose(history.history["val_loss"], [plain, 0.5 * plain], rtol=1e-5)
    assert history.history["ortho/scale"] == [1.0, 0.5]
    np.testing.assert_allclose(float(to_numpy(model.losses[0])), plain, rtol=1e-5)  # released after fit


@only_on("tensorflow", "jax", why="Keras's torch trainer refuses steps_per_execution > 1")
def test_lazy_regularization_refuses_several_steps_per_execution():
    model, _ = penalty_only_model()
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    with pytest.raises(ValueError, match=r"every=16.*runs 4 steps per execution.*steps_per_execution=1"):
        model.fit(*zeros(), verbose=0, callbacks=[keras_ortho.OrthoSchedule(every=16)])
    assert all(v.regularizer._scale is None for v in model.trainable_weights if v.regularizer is not None)


@pytest.mark.parametrize("every,error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_every_must_be_a_positive_int(every, error):
    """Keras's convention: TypeError for a value of the wrong type, ValueError for one out of range."""
    with pytest.raises(error, match=rf"Argument `every`.*Received: every={every!r}"):
        keras_ortho.OrthoSchedule(every=every)


def test_a_schedule_attached_to_a_model_trained_before_takes_effect():
    model, layer = penalty_only_model()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(*zeros(), epochs=1, verbose=0)  # the train function is traced and cached
    kernels = KernelsPerEpoch(layer)
    model.fit(*zeros(), epochs=1, verbose=0, callbacks=[keras_ortho.OrthoSchedule({0: 0.0}), kernels])
    np.testing.assert_array_equal(kernels.end[0], kernels.begin[0])


def test_two_scale_callbacks_in_one_fit_are_refused():
    model, _ = penalty_only_model()
    model.compile(optimizer="sgd", loss="mse")
    callbacks = [keras_ortho.OrthoSchedule({1: 0.5}), keras_ortho.OrthoTarget(1.0)]
    with pytest.raises(ValueError, match="attach only one of them"):
        model.fit(*zeros(), epochs=1, verbose=0, callbacks=callbacks)


def test_a_model_without_ortho_regularizer_warns():
    x = keras.Input((8,))
    model = keras.Model(x, keras.layers.Dense(5)(x))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.warns(RuntimeWarning, match="no trainable weight regularized by OrthoRegularizer"):
        model.fit(*zeros(), epochs=1, verbose=0, callbacks=[keras_ortho.OrthoSchedule({1: 0.5})])


# --- OrthoTarget --------------------------------------------------------------------------------


def conflicting_regression(seed=0):
    """A Dense kernel whose data loss pulls it away from orthonormal columns."""
    rng = np.random.default_rng(seed)
    mixing = (0.8 * rng.normal(size=(8, 8))).astype("float32")
    x = rng.normal(size=(256, 8)).astype("float32")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    layer = keras.layers.Dense(8, use_bias=False, kernel_regularizer=keras_ortho.OrthoRegularizer(0.01), name="dense")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    return model, layer, x, x @ mixing


def test_target_follows_its_update_law_and_settles_in_a_band_around_the_target():
    target, rate = 2.0, 0.25
    model, layer, x, y = conflicting_regression()
    controller = keras_ortho.OrthoTarget(target, rate=rate)
    logger = keras_ortho.OrthoLogger()
    history = model.fit(x, y, batch_size=32, epochs=40, verbose=0, callbacks=[controller, logger])
    scales = np.array(history.history["ortho/scale"])
    errors = np.array(history.history[f"ortho/{layer.kernel.path}"])  # one slice: mean = total

    # Epoch e + 1 starts from the weights epoch e ended with.
    law = np.clip(scales[:-1] * (errors[:-1] / target) ** rate, 1e-3, 1e3)
    np.testing.assert_allclose(scales[1:], law, rtol=1e-5)
    assert errors[0] > 2 * target  # it starts far above the target, and the scale rises
    assert scales[:5].max() > 4.0
    assert target / 2 < np.median(errors[-10:]) < 2 * target, errors[-10:]


def test_target_steers_the_max_over_slices_when_asked():
    model, layer, x, y = conflicting_regression()
    controller = keras_ortho.OrthoTarget(1.0, statistic="max")
    model.fit(x[:32], y[:32], epochs=1, verbose=0, callbacks=[controller])
    errors = reference.slice_errors(to_numpy(layer.kernel))
    assert controller.error() == pytest.approx(errors.max(), rel=1e-5)


def test_a_second_fit_with_the_same_target_goes_on_from_its_scale():
    model, layer, x, y = conflicting_regression()
    target, rate, low, high = 2.0, 0.5, 1e-3, 1e3
    controller = keras_ortho.OrthoTarget(target, rate=rate, min_scale=low, max_scale=high)
    first = model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[controller])
    error = reference.slice_errors(to_numpy(layer.kernel)).mean()
    second = model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[controller])
    # The update law, written out: clip(scale * (error / target) ** rate, min_scale, max_scale).
    expected = np.clip(first.history["ortho/scale"][-1] * (error / target) ** rate, low, high)
    np.testing.assert_allclose(second.history["ortho/scale"][0], expected, rtol=1e-5)


# --- Saving and resuming --------------------------------------------------------------------------

FRESH_LOAD = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    import keras
    import keras_ortho

    warnings.simplefilter("error", UserWarning)  # Keras warns of variables it skips
    path, weights_path, tests_dir = sys.argv[1:]
    model = keras.saving.load_model(path)
    sys.path.insert(0, tests_dir)
    from models import mixed_layers_model

    fresh = mixed_layers_model(seed=5)
    fresh.load_weights(weights_path)
    np.savez(
        path + ".npz",
        losses=[float(keras.ops.convert_to_numpy(l)) for l in model.losses],
        variables=len(model.variables),
        weights_equal=all(
            np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
            for a, b in zip(model.weights, fresh.weights)
        ),
    )
    """
)


@pytest.mark.slow
def test_a_mid_schedule_checkpoint_loads_in_a_fresh_process_without_the_callback(tmp_path):
    model = mixed_layers_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.normal(size=(16, 5)).astype("float32")
    checkpoints = [
        keras.callbacks.ModelCheckpoint(tmp_path / "epoch{epoch}.keras"),
        keras.callbacks.ModelCheckpoint(tmp_path / "epoch{epoch}.weights.h5", save_weights_only=True),
    ]
    model.fit(x, y, epochs=2, verbose=0, callbacks=[keras_ortho.OrthoSchedule({1: 0.25}), *checkpoints])

    # epoch2: written while the scale of epoch 1 (0.25) was attached.
    run_fresh(FRESH_LOAD, tmp_path / "epoch2.keras", tmp_path / "epoch2.weights.h5", TESTS_DIR)
    loaded = np.load(tmp_path / "epoch2.keras.npz")
    assert int(loaded["variables"]) == len(model.variables)
    assert bool(loaded["weights_equal"])
    # The loaded model acts with its regularizers' own factors, as this one does after fit.
    expected = [float(to_numpy(loss)) for loss in model.losses]
    np.testing.assert_allclose(np.sort(loaded["losses"]), np.sort(expected), rtol=1e-5)
    assert regularizer_configs(keras.saving.load_model(tmp_path / "epoch2.keras")) == regularizer_configs(model)


# Runs in its own process: TensorFlow's op determinism, once enabled, stays on for the process.
RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import keras_ortho

    directory, kind, tests_dir = sys.argv[1:]
    sys.path.insert(0, tests_dir)
    from interrupted import uninterrupted_and_resumed

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(3)
    mixing = (0.8 * rng.normal(size=(8, 8))).astype("float32")
    x = rng.normal(size=(64, 8)).astype("float32")
    y = x @ mixing

    def controller():
        if kind == "schedule":
            return keras_ortho.OrthoSchedule(lambda epoch: 2.0 ** -epoch)
        return keras_ortho.OrthoTarget(1.0, rate=0.5)

    def train(callbacks, seed=0):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8,))
        dense = keras.layers.Dense(8, kernel_regularizer=keras_ortho.OrthoRegularizer(0.05))
        model = keras.Model(inputs, dense(inputs))
        model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
        history = model.fit(x, y, epochs=6, batch_size=16, shuffle=False, verbose=0,
                            callbacks=[controller(), *callbacks])
        return model, history

    def save(name, model, history):
        np.savez(f"{directory}/{name}.npz", scales=history.history["ortho/scale"],
                 **{f"weight_{i}": v.numpy() for i, v in enumerate(model.weights)})

    # Resumed with a new controller, as a new process would build it.
    uninterrupted_and_resumed(train, save, directory, crash_epoch=3)
    """
)


@pytest.mark.parametrize("kind", ["schedule", "target"])
@pytest.mark.slow
def test_resume_with_backup_and_restore_continues_the_scale_trajectory(tmp_path, kind):
    run_fresh(RESUME_SCRIPT, tmp_path, kind, TESTS_DIR)
    uninterrupted = np.load(tmp_path / "uninterrupted.npz")
    resumed = np.load(tmp_path / "resumed.npz")
    assert len(set(uninterrupted["scales"])) == 6  # the scale changed every epoch
    np.testing.assert_array_equal(resumed["scales"], uninterrupted["scales"][3:])
    weights = [k for k in uninterrupted.files if k.startswith("weight_")]
    assert len(weights) >= 2, uninterrupted.files
    for key in weights:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)


@only_on("torch", why="Dynamo is PyTorch's compiler")
def test_a_compiled_pytorch_fit_with_a_schedule_gives_no_warning():
    # A fresh process: Dynamo warns once per process. It cannot trace Python's frames, which the
    # constructor path and the schedule's binding read; they are read outside its trace.
    script = textwrap.dedent(
        """
        import warnings
        import keras, numpy as np, keras_ortho

        inputs = keras.Input((6,))
        outputs = keras.layers.Dense(4, kernel_regularizer=keras_ortho.OrthoRegularizer(0.1))(inputs)
        model = keras.Model(inputs, outputs)
        model.compile("sgd", "mse", jit_compile=True)
        schedule = keras_ortho.OrthoSchedule({1: 0.5})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(np.ones((8, 6)), np.ones((8, 4)), epochs=2, verbose=0, callbacks=[schedule])
        # PyTorch's own deprecations from inside its compiler are not ours; Dynamo's about our code are.
        messages = [str(w.message) for w in caught if "Dynamo" in str(w.message)]
        assert messages == [], messages
        """
    )
    run_fresh(script, timeout=300)
