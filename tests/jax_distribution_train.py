"""Trains one model on one device, then the same under a keras.distribution; saves both records.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 KERAS_BACKEND=jax \
        python tests/jax_distribution_train.py CASE OUT.npz

CASE is `data_parallel`, `heads` (ModelParallel, attention heads sharded) or
`dense` (ModelParallel, one Dense kernel sharded by rows and one by columns).
The flag must be set before JAX starts, hence a process per case. Both runs
start from the same weights; the test compares penalties, weights after every
epoch and OrthoLogger records, and checks that the layout really applied.
"""

import os
import sys

import jax
import keras
import numpy as np

import keras_ortho

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from collectives import collectives_in  # noqa: E402

EPOCHS = 3


def heads_model():
    inputs = keras.Input((8, 16))
    x = keras.layers.MultiHeadAttention(
        num_heads=4, key_dim=4, kernel_regularizer=keras_ortho.OrthoRegularizer(0.05), name="attention"
    )(inputs, inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, kernel_regularizer=keras_ortho.OrthoRegularizer(0.05), name="head")(x)
    return keras.Model(inputs, outputs)


def dense_model():
    inputs = keras.Input((8, 16))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(32, activation="tanh", kernel_regularizer=keras_ortho.OrthoRegularizer(0.05), name="rows")(x)
    outputs = keras.layers.Dense(
        16, kernel_regularizer=keras_ortho.OrthoRegularizer(0.05, mode="rows"), name="columns"
    )(x)
    return keras.Model(inputs, outputs)


def distribution(case, devices):
    if case == "data_parallel":
        return keras.distribution.DataParallel(devices=devices), heads_model
    mesh = keras.distribution.DeviceMesh((1, len(devices)), ("batch", "model"), devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    if case == "heads":
        layout_map["attention/(query|key|value)/kernel"] = (None, "model", None)
        layout_map["attention/attention_output/kernel"] = ("model", None, None)
        build = heads_model
    else:
        layout_map["rows/kernel"] = ("model", None)
        layout_map["columns/kernel"] = (None, "model")
        build = dense_model
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"), build


def train(build, initial, x, y):
    keras.utils.set_random_seed(0)
    model = build()
    if initial is not None:
        model.set_weights(initial)
    start = [keras.ops.convert_to_numpy(w) for w in model.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    logger = keras_ortho.OrthoLogger()
    weights = []

    class Weights(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights.append([keras.ops.convert_to_numpy(w) for w in self.model.weights])

    history = model.fit(x, y, batch_size=8, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[logger, Weights()])
    penalty = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    return model, start, logger, weights, history.history["loss"], penalty


def main(case, out):
    devices = jax.devices()
    assert len(devices) == 4, devices
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 16)).astype("float32")
    layout, build = distribution(case, devices)
    y_dim = 4 if build is heads_model else 16
    y = rng.normal(size=(32, y_dim)).astype("float32")

    single, start, single_logger, single_weights, single_loss, single_penalty = train(build, None, x, y)
    keras.distribution.set_distribution(layout)
    sharded, _, logger, weights, loss, penalty = train(build, start, x, y)

    specs = {v.path: str(v.value.sharding.spec) for v in sharded.weights if len(v.shape) >= 2}
    # The logger's probe, compiled for the sharded weights: what it moves.
    values = [w.variable.value for w in logger._probe.watched]
    probe_hlo = logger._probe._function.lower(*values).compile().as_text()
    probe_gathered = max([size for op, size in collectives_in(probe_hlo) if op == "all-gather"], default=0)
    np.savez(
        out,
        specs=repr(specs),
        paths=np.array(list(logger.errors)),
        single_penalty=single_penalty,
        penalty=penalty,
        single_loss=single_loss,
        loss=loss,
        probe_gathered_bytes=probe_gathered,
        probe_errors_bytes=4 * sum(w.num_slices for w in logger._probe.watched),
        **{f"single_errors_{i}": e for i, e in enumerate(single_logger.errors.values())},
        **{f"errors_{i}": e for i, e in enumerate(logger.errors.values())},
        **{f"single_weight_{e}_{i}": w for e, ws in enumerate(single_weights) for i, w in enumerate(ws)},
        **{f"weight_{e}_{i}": w for e, ws in enumerate(weights) for i, w in enumerate(ws)},
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
