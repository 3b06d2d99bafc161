"""Run by CI in an environment with keras-ortho[jax] or [torch] only: no TensorFlow needed.

    KERAS_BACKEND=jax python tests/smoke_without_tensorflow.py

Trains a small regularized model with OrthoLogger attached, saves and reloads it,
and fails if TensorFlow was installed or imported on the way.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

import keras_ortho


def main():
    assert importlib.util.find_spec("tensorflow") is None, "this environment has TensorFlow"
    keras.utils.set_random_seed(0)
    ortho = keras_ortho.OrthoRegularizer(0.05)
    inputs = keras.Input((6, 12))
    x = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4, kernel_regularizer=ortho)(inputs, inputs)
    outputs = keras.layers.Dense(2, kernel_regularizer=ortho)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    logger = keras_ortho.OrthoLogger(every_n_batches=2)
    rng = np.random.default_rng(0)
    history = model.fit(
        rng.normal(size=(32, 6, 12)).astype("float32"),
        rng.normal(size=(32, 2)).astype("float32"),
        epochs=2,
        batch_size=8,
        verbose=0,
        callbacks=[logger],
    )
    assert len(logger.watched_paths) == 5 and logger.epochs == [0, 1]
    assert all(np.all(np.isfinite(e)) for e in logger.errors.values())
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        # The command without KERAS_BACKEND: Keras's default, TensorFlow, is missing here.
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        command = subprocess.run(
            [sys.executable, "-m", "keras_ortho", "report", path], capture_output=True, text=True, env=env, timeout=120
        )
        assert command.returncode == 1 and command.stdout == "", command
        assert len(command.stderr.strip().splitlines()) == 1, command.stderr
        assert "KERAS_BACKEND" in command.stderr and "Traceback" not in command.stderr, command.stderr
    losses = [float(keras.ops.convert_to_numpy(v)) for v in model.losses]
    np.testing.assert_allclose([float(keras.ops.convert_to_numpy(v)) for v in reloaded.losses], losses, rtol=1e-6)
    assert "tensorflow" not in sys.modules
    print(
        f"{keras.backend.backend()} without TensorFlow: trained, logged "
        f"{len(logger.watched_paths)} kernels, final loss {history.history['loss'][-1]:.4f}, reloaded"
    )


if __name__ == "__main__":
    main()
