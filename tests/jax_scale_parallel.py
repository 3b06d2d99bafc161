"""OrthoSchedule and OrthoTarget under keras.distribution.DataParallel, and on one device.

Run by `tests/test_jax_distribution.py` in a process of its own on 4 host CPU
devices; writes `{callback: {"one": ..., "parallel": ...}}` with each run's
logged scales and final kernel to the JSON file named by its argument.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ortho  # noqa: E402

CALLBACKS = {
    "schedule": lambda: keras_ortho.OrthoSchedule({0: 0.1, 1: 1.0, 2: 0.5}),
    "target": lambda: keras_ortho.OrthoTarget(1e-3, initial_scale=10.0),
}


def train(callback):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    layer = keras.layers.Dense(5, kernel_regularizer=keras_ortho.OrthoRegularizer(0.1), name="dense")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 5)).astype("float32")
    history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[CALLBACKS[callback]()])
    return {"scales": history.history["ortho/scale"], "kernel": keras.ops.convert_to_numpy(layer.kernel).tolist()}


def main(out):
    assert len(jax.devices()) == 4, jax.devices()
    results = {}
    for callback in CALLBACKS:
        keras.distribution.set_distribution(None)
        one = train(callback)
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        results[callback] = {"one": one, "parallel": train(callback)}
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
