"""Scale out and precision: tf.distribute strategies, mixed precision, other backends."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ortho
import reference
from keras_ortho import OrthoLogger, OrthoRegularizer

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def regularized_model(optimizer="adam"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 12))
    x = keras.layers.MultiHeadAttention(
        num_heads=3, key_dim=4, kernel_regularizer=OrthoRegularizer(0.05), name="mha"
    )(inputs, inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, kernel_regularizer=OrthoRegularizer(0.1), name="out")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": 0.01}}), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 6, 12)).astype("float32"), rng.normal(size=(64, 2)).astype("float32")


def train(strategy):
    with strategy.scope():
        # SGD: Adam would amplify rounding noise on the key bias, whose gradient is 0.
        model = regularized_model("sgd")
    logger = OrthoLogger()
    model.fit(*data(), epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[logger])
    return model, logger


def test_mirrored_strategy_trains_like_one_device(mirrored):
    """The penalty counts once per global step, not once per replica."""
    single, single_logger = train(tf.distribute.get_strategy())
    assert mirrored.num_replicas_in_sync == 2
    replicated, mirrored_logger = train(mirrored)
    for a, b in zip(single.weights, replicated.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert single_logger.watched_paths == mirrored_logger.watched_paths
    for path in single_logger.watched_paths:
        np.testing.assert_allclose(
            mirrored_logger.errors[path], single_logger.errors[path], rtol=1e-5
        )


def test_penalty_of_a_mirrored_variable_matches_reference(mirrored):
    w = np.random.default_rng(1).normal(size=(8, 3, 4)).astype("float32")
    with mirrored.scope():
        variable = keras.Variable(w)

    @tf.function
    def per_replica():
        return mirrored.run(lambda: OrthoRegularizer(0.5)(variable))

    values = mirrored.experimental_local_results(per_replica())
    assert len(values) == 2
    for value in values:
        assert float(value) == pytest.approx(reference.penalty(w, 0.5), rel=1e-5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_mirrored_strategy_on_loopback(tmp_path):
    script = os.path.join(TESTS_DIR, "multi_worker_train.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    subprocess.run(
        [sys.executable, script, str(tmp_path / "single.npz")], check=True, timeout=300, env=env
    )

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    workers = []
    try:
        for index in range(2):
            task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            workers.append(
                subprocess.Popen(
                    [sys.executable, script, str(tmp_path / f"worker{index}.npz")],
                    env={**env, "TF_CONFIG": json.dumps(task)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for worker in workers:
            output, _ = worker.communicate(timeout=240)
            assert worker.returncode == 0, output[-3000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    single = np.load(tmp_path / "single.npz")
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert int(first["replicas"]) == 2 and int(single["replicas"]) == 1
    weights = [k for k in single.files if k.startswith("weight_")]
    assert len(weights) == 4
    for key in weights:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        np.testing.assert_allclose(first[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for key in (k for k in single.files if k.startswith(("errors_", "logs_"))):
        np.testing.assert_allclose(first[key], single[key], rtol=1e-5, err_msg=key)
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert list(first["epochs"]) == [0, 1]


def test_only_the_chief_writes_tensorboard_files(tmp_path, monkeypatch):
    model = regularized_model()
    x, y = data()
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    logger = OrthoLogger(log_dir=tmp_path / "logs")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[logger])
    assert not (tmp_path / "logs").exists()
    assert logger.epochs == [0]  # still recorded

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[OrthoLogger(log_dir=tmp_path / "logs")])
    assert os.listdir(tmp_path / "logs" / "ortho")


# --- Precision --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_reduces_in_float32(policy):
    keras.config.set_dtype_policy(policy)
    model = regularized_model()
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logger = OrthoLogger()
    x, y = data()
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[logger])
    assert np.all(np.isfinite(history.history["loss"]))
    for v in model.trainable_weights:
        assert v.dtype == "float32" and np.all(np.isfinite(v.numpy())), v.path
        if v.regularizer is None:
            continue
        errors = keras_ortho.slice_errors(v)
        assert errors.dtype == tf.float32
        expected = reference.slice_errors(
            v.numpy(), attention_output=v.path.endswith("attention_output/kernel")
        )
        np.testing.assert_allclose(errors, expected, rtol=1e-5)
        np.testing.assert_allclose(logger.errors[v.path][-1], expected, rtol=1e-5)
        with tf.GradientTape() as tape:
            penalty = v.regularizer(v)
        assert penalty.dtype == tf.float32
        assert np.all(np.isfinite(tape.gradient(penalty, v.value)))


def test_gradient_under_loss_scaling_is_unscaled_correctly():
    """The custom gradient honours the upstream gradient the loss scale sends."""
    w = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    variable = keras.Variable(w)
    with tf.GradientTape() as tape:
        scaled = 1024.0 * OrthoRegularizer(0.1)(variable)
    np.testing.assert_allclose(
        tape.gradient(scaled, variable.value) / 1024.0, reference.gradient(w, 0.1), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_other_keras_backends_are_refused_clearly(monkeypatch, backend):
    """Under another backend the TensorFlow penalty could not reach the gradients."""
    model = regularized_model()
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    message = rf"needs Keras's TensorFlow backend.*backend='{backend}'"
    with pytest.raises(RuntimeError, match="OrthoRegularizer " + message):
        model.losses
    with pytest.raises(RuntimeError, match="OrthoLogger " + message):
        logger = OrthoLogger()
        logger.set_model(model)
        logger.on_train_begin()
