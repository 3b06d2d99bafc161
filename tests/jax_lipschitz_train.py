"""Trains one constrained model on one device, then under keras.distribution; saves both weights.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 KERAS_BACKEND=jax \
        python tests/jax_lipschitz_train.py CASE OUT.npz

CASE is `data_parallel`, or `model_parallel` (the Dense kernel sharded by
columns). Every kernel carries `LipschitzConstraint(0.5)`, put on by
`constrain` (JAX's optimizer hands constraints tensors). Both runs start from
the same weights; the test compares the weights after training and the bound.
"""

import sys

import jax
import keras
import numpy as np

import keras_ortho


def build():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, name="dense"),
        ]
    )
    keras_ortho.constrain(model, keras_ortho.LipschitzConstraint(0.5))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    return model


def train(initial, x, y):
    keras.utils.set_random_seed(0)
    model = build()
    if initial is not None:
        model.set_weights(initial)
    start = model.get_weights()
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model, start


def main(case, out):
    devices = jax.devices()
    assert len(devices) == 4, devices
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32") * 3
    y = rng.normal(size=(32, 8)).astype("float32")
    single, start = train(None, x, y)
    if case == "data_parallel":
        layout = keras.distribution.DataParallel(devices=devices)
    else:
        mesh = keras.distribution.DeviceMesh((1, len(devices)), ("batch", "model"), devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[".*dense/kernel"] = (None, "model")  # the Sequential model's name comes first in the path
        layout = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    keras.distribution.set_distribution(layout)
    sharded, _ = train(start, x, y)
    specs = {v.path: str(v.value.sharding.spec) for v in sharded.weights if len(v.shape) >= 2}
    np.savez(
        out,
        specs=repr(specs),
        single_bound=keras_ortho.lipschitz_bound(single),
        bound=keras_ortho.lipschitz_bound(sharded),
        **{f"single_{i}": np.asarray(w) for i, w in enumerate(single.get_weights())},
        **{f"sharded_{i}": np.asarray(w) for i, w in enumerate(sharded.get_weights())},
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
