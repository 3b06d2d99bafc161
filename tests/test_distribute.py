"""Scale out and precision: tf.distribute strategies, mixed precision, unsupported backends."""

import glob
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import reference
from backends import only_on, to_numpy, variable_grad

import keras_ortho
from keras_ortho import OrthoLogger, OrthoRegularizer

tf_distribute = only_on("tensorflow", why="tf.distribute strategies are TensorFlow's")

# Strategies, workers and mixed precision belong to the full suite (`pytest -m slow`).
pytestmark = pytest.mark.slow

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def regularized_model(optimizer="adam"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 12))
    x = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4, kernel_regularizer=OrthoRegularizer(0.05), name="mha")(
        inputs, inputs
    )
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, kernel_regularizer=OrthoRegularizer(0.1), name="out")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": 0.01}}), loss="mse"
    )
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


@tf_distribute
def test_mirrored_strategy_trains_like_one_device(mirrored):
    """The penalty counts once per global step, not once per replica."""
    import tensorflow as tf

    single, single_logger = train(tf.distribute.get_strategy())
    assert mirrored.num_replicas_in_sync == 2
    replicated, mirrored_logger = train(mirrored)
    for a, b in zip(single.weights, replicated.weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert single_logger.watched_paths == mirrored_logger.watched_paths
    for path in single_logger.watched_paths:
        np.testing.assert_allclose(mirrored_logger.errors[path], single_logger.errors[path], rtol=1e-5)


def lipschitz_cnn():
    keras.utils.set_random_seed(0)
    constraint = keras_ortho.LipschitzConstraint(0.5)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_constraint=constraint),
            keras.layers.Flatten(),
            keras.layers.Dense(2, kernel_constraint=constraint),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    return model


@tf_distribute
def test_the_lipschitz_constraint_under_mirrored_strategy_steps_like_one_device(mirrored):
    """Each replica applies the constraint to the same all-reduced weights: the result is one device's."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6, 6, 2)).astype("float32") * 3, rng.normal(size=(32, 2)).astype("float32")
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored):
        with strategy.scope():
            model = lipschitz_cnn()
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        results.append(model)
    single, replicated = results
    for a, b in zip(single.weights, replicated.weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert keras_ortho.lipschitz_bound(replicated) <= 0.25 * (1 + 1e-5)  # two kernels at most 0.5 each


@tf_distribute
def test_penalty_of_a_mirrored_variable_matches_reference(mirrored):
    import tensorflow as tf

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


@tf_distribute
def test_multi_worker_mirrored_strategy_on_loopback(tmp_path):
    script = os.path.join(TESTS_DIR, "multi_worker_train.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    subprocess.run(
        [sys.executable, script, str(tmp_path / "single.npz"), str(tmp_path / "single_logs")],
        check=True,
        timeout=300,
        env=env,
    )

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    workers = []
    try:
        for index in range(2):
            task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            workers.append(
                subprocess.Popen(
                    [sys.executable, script, str(tmp_path / f"worker{index}.npz"), str(tmp_path / "logs")],
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
    records = [k for k in single.files if k.startswith(("errors_", "logs_"))]
    assert len(records) >= 2, single.files  # the logger's errors and logs were saved
    for key in records:
        np.testing.assert_allclose(first[key], single[key], rtol=1e-5, err_msg=key)
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert list(first["epochs"]) == [0, 1]
    # Both workers were given one log_dir; only the chief, as its strategy says, wrote to it.
    assert len(glob.glob(str(tmp_path / "logs" / "ortho" / "events.out.tfevents.*"))) == 1


def test_a_process_that_is_not_the_chief_writes_no_files(tmp_path, monkeypatch):
    from keras_ortho import _backend

    model = regularized_model()
    monkeypatch.setattr(_backend.current(), "is_chief", lambda model: False)
    logger = OrthoLogger(log_dir=tmp_path / "logs")
    model.fit(*data(), epochs=1, verbose=0, callbacks=[logger])
    assert not (tmp_path / "logs").exists()
    assert logger.epochs == [0]  # still recorded


# --- Precision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(
            "mixed_float16",
            marks=only_on(
                "tensorflow",
                "torch",
                why="on JAX's CPU backend Keras's own float16 layers fail to compile "
                "(dot_general precision F16_F16_F32), with or without keras_ortho",
            ),
        ),
        "mixed_bfloat16",
    ],
)
def test_mixed_precision_reduces_in_float32(policy):
    keras.config.set_dtype_policy(policy)
    model = regularized_model()
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logger = OrthoLogger()
    x, y = data()
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[logger])
    assert np.all(np.isfinite(history.history["loss"]))
    regularized = [v for v in model.trainable_weights if v.regularizer is not None]
    assert len(regularized) >= 2 and set(logger.errors) == {v.path for v in regularized}
    for v in model.trainable_weights:
        assert v.dtype == "float32" and np.all(np.isfinite(v.numpy())), v.path
        if v.regularizer is None:
            continue
        errors = keras_ortho.slice_errors(v)
        assert keras.backend.standardize_dtype(errors.dtype) == "float32"
        output = v.path.endswith("attention_output/kernel")
        expected = reference.slice_errors(v.numpy(), attention_output=output)
        np.testing.assert_allclose(to_numpy(errors), expected, rtol=1e-5)
        np.testing.assert_allclose(logger.errors[v.path][-1], expected, rtol=1e-5)
        assert keras.backend.standardize_dtype(v.regularizer(v).dtype) == "float32"
        kind = reference.default_kind(v.numpy(), attention_output=output)
        gradient = reference.gradient_by(v.numpy(), kind, v.regularizer.factor)
        np.testing.assert_allclose(variable_grad(v.regularizer, v), gradient, rtol=1e-4, atol=1e-6)


def test_gradient_under_loss_scaling_is_unscaled_correctly():
    """The custom gradient honours the upstream gradient the loss scale sends."""
    w = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    variable = keras.Variable(w)
    grad = variable_grad(lambda v: 1024.0 * OrthoRegularizer(0.1)(v), variable)
    np.testing.assert_allclose(grad / 1024.0, reference.gradient(w, 0.1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "openvino"])
def test_backends_that_cannot_train_are_refused_clearly(monkeypatch, backend):
    """On a backend without gradients the penalty could never reach training."""
    model = regularized_model()
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    message = rf"keras_ortho needs one of Keras's tensorflow, jax, torch backends.*backend='{backend}'"
    with pytest.raises(RuntimeError, match=message):
        _ = model.losses
    with pytest.raises(RuntimeError, match=message):
        logger = OrthoLogger()
        logger.set_model(model)
        logger.on_train_begin()


@only_on("torch", why="DistributedDataParallel is PyTorch's")
@pytest.mark.parametrize("kind, kernels", [("regularized", 5), ("lipschitz", 2)])
def test_torch_ddp_in_a_custom_loop_steps_like_one_process(tmp_path, kind, kernels):
    """Two CPU processes on gloo, each with half the batch: the penalty, the gradients DDP
    averages and the weights after one SGD step equal one process's on the whole batch; with
    `LipschitzConstraint`, each rank constrains the same averaged step."""
    import torch_ddp_train

    model, x, y = torch_ddp_train.model_and_data(kind)
    single = torch_ddp_train.step(model, model, x, y)
    assert len(single["grads"]) == kernels  # regularized: query, key, value, attention output, head
    if kind == "lipschitz":  # the constraint had work to do, and did it
        factors = [f.factor for f in keras_ortho.lipschitz_factors(model) if f.kind in ("Conv1D", "Dense")]
        assert len(factors) == 2
        assert max(factors) == pytest.approx(0.5, rel=1e-3)
        assert all(factor <= 0.5 * (1 + 1e-5) for factor in factors)

    script, port = os.path.join(TESTS_DIR, "torch_ddp_train.py"), free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    logs = [open(tmp_path / f"{rank}.log", "w") for rank in range(2)]
    ranks = [
        subprocess.Popen(
            [sys.executable, script, str(rank), "2", str(port), str(tmp_path / f"{rank}.json"), kind],
            env=env,
            stdout=logs[rank],
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    try:
        # A rank prints its stacks and exits after 90 s (faulthandler), well before this timeout.
        for rank in ranks:
            rank.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for rank, log in zip(ranks, logs, strict=True):
            if rank.poll() is None:
                rank.kill()
                rank.wait()
            log.close()
    codes = [rank.returncode for rank in ranks]
    assert codes == [0, 0], [(tmp_path / f"{rank}.log").read_text()[-3000:] for rank in range(2)]
    for rank in range(2):
        with open(tmp_path / f"{rank}.json") as f:
            result = json.load(f)
        assert result["penalty"] == pytest.approx(single["penalty"], rel=1e-6)
        assert sorted(result["grads"]) == sorted(single["grads"])
        for path in single["grads"]:
            np.testing.assert_allclose(result["grads"][path], single["grads"][path], rtol=1e-5, atol=1e-7, err_msg=path)
            np.testing.assert_allclose(
                result["weights"][path], single["weights"][path], rtol=1e-5, atol=1e-7, err_msg=path
            )
