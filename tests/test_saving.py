"""Models that use OrthoRegularizer survive every way Keras persists them.

Each format is loaded in a fresh Python process that imports keras_ortho (where
the format needs the class) and nothing of the tests, then compared with the
original: regularizer configs, predictions, regularization losses, and one more
training step.
"""

import importlib.util
import json
import os
import textwrap
import zipfile

import keras
import numpy as np
import pytest
from backends import BACKEND, only_on, run_fresh, to_numpy
from models import mixed_layers_model, regularizer_configs

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Loads every artifact found in a directory; writes one .npz per format.
FRESH_LOADER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    import keras_ortho  # registers OrthoRegularizer

    directory = sys.argv[1]
    inputs = np.load(os.path.join(directory, "inputs.npy"))
    targets = np.load(os.path.join(directory, "targets.npy"))

    def from_json():
        with open(os.path.join(directory, "model.json")) as f:
            model = keras.models.model_from_json(f.read())
        model.load_weights(os.path.join(directory, "json.weights.h5"))
        return model

    def from_weights():
        sys.path.insert(0, sys.argv[2])  # the tests' model builder, for the architecture
        from models import mixed_layers_model

        model = mixed_layers_model(seed=123)  # other initial values, then overwritten
        model.load_weights(os.path.join(directory, "model.weights.h5"))
        return model

    loaders = {
        "keras": lambda: keras.saving.load_model(
            os.path.join(directory, "model.keras"), safe_mode=True
        ),
        "h5": lambda: keras.saving.load_model(os.path.join(directory, "model.h5")),
        "json": from_json,
        "weights": from_weights,
    }
    for name, load in loaders.items():
        model = load()
        configs = {
            v.path: v.regularizer.get_config()
            for v in model.trainable_weights
            if v.regularizer is not None
        }
        predictions = model.predict(inputs, verbose=0)
        losses = np.array([float(keras.ops.convert_to_numpy(loss)) for loss in model.losses])
        before = [v.numpy().copy() for v in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        history = model.fit(inputs, targets, epochs=1, verbose=0)
        moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_weights)]
        np.savez(
            os.path.join(directory, f"loaded_{name}.npz"),
            predictions=predictions,
            losses=losses,
            configs=json.dumps(configs),
            trained_loss=history.history["loss"][0],
            all_moved=all(moved),
        )
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The original model, saved in every format, and what a fresh process loaded."""
    directory = tmp_path_factory.mktemp("saved")
    model = mixed_layers_model()
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    np.save(directory / "inputs.npy", inputs)
    np.save(directory / "targets.npy", rng.normal(size=(8, 5)).astype("float32"))

    model.save(directory / "model.keras")
    model.save(directory / "model.h5")
    (directory / "model.json").write_text(model.to_json())
    model.save_weights(directory / "json.weights.h5")
    model.save_weights(directory / "model.weights.h5")

    run_fresh(FRESH_LOADER, directory, TESTS_DIR)
    loaded = {name: dict(np.load(directory / f"loaded_{name}.npz")) for name in ("keras", "h5", "json", "weights")}
    return model, inputs, directory, loaded


FORMATS = ["keras", "h5", "json", "weights"]


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_keeps_regularizer_configs(saved, name):
    model, _, _, loaded = saved
    configs = json.loads(str(loaded[name]["configs"]))
    assert configs == regularizer_configs(model)
    assert len(configs) == 7  # conv, einsum, 4 attention kernels, dense


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_predicts_the_same(saved, name):
    model, inputs, _, loaded = saved
    np.testing.assert_allclose(loaded[name]["predictions"], model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_gives_the_same_regularization_loss(saved, name):
    model, _, _, loaded = saved
    np.testing.assert_allclose(loaded[name]["losses"], [float(to_numpy(loss)) for loss in model.losses], rtol=1e-6)


@pytest.mark.parametrize("name", FORMATS)
def test_reloaded_model_trains_on(saved, name):
    model, inputs, directory, loaded = saved
    # One batch of 8: the loss fit reports is the loss at the loaded weights, data (mse) plus penalty.
    targets = np.load(directory / "targets.npy")
    data_loss = np.mean((model.predict(inputs, verbose=0) - targets) ** 2)
    expected = data_loss + sum(float(to_numpy(loss)) for loss in model.losses)
    np.testing.assert_allclose(loaded[name]["trained_loss"], expected, rtol=1e-5)
    assert bool(loaded[name]["all_moved"])


def test_keras_archive_names_the_registered_class(saved):
    _, _, directory, _ = saved
    with zipfile.ZipFile(directory / "model.keras") as archive:
        config = archive.read("config.json").decode()
    # One per layer config: MultiHeadAttention holds one for its four kernels.
    assert config.count('"registered_name": "keras_ortho>OrthoRegularizer"') == 4


def test_clone_model_keeps_regularizers():
    model = mixed_layers_model()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    assert regularizer_configs(clone) == regularizer_configs(model)
    originals = {v.path: v.regularizer for v in model.trainable_weights if v.regularizer}
    for v in clone.trainable_weights:
        if v.regularizer is not None:
            assert v.regularizer is not originals[v.path]  # a copy, not shared state
    inputs = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(clone.predict(inputs, verbose=0), model.predict(inputs, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(
        [float(to_numpy(v)) for v in clone.losses], [float(to_numpy(v)) for v in model.losses], rtol=1e-6
    )
    clone.compile(optimizer="sgd", loss="mse")
    assert np.isfinite(clone.fit(inputs, np.zeros((4, 5)), verbose=0).history["loss"][0])


SERVE_SAVED_MODEL = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf  # serving needs neither keras_ortho nor keras

    path, inputs_path, out_path = sys.argv[1:]
    served = tf.saved_model.load(path)
    outputs = served.serve(tf.constant(np.load(inputs_path)))
    np.save(out_path, outputs.numpy())
    assert "keras_ortho" not in sys.modules
    """
)


@only_on("tensorflow", why="model.export writes a TensorFlow SavedModel; on JAX it needs TensorFlow's jax2tf")
@pytest.mark.slow
def test_exported_saved_model_serves_the_same(tmp_path):
    model = mixed_layers_model()
    inputs = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype("float32")
    np.save(tmp_path / "inputs.npy", inputs)
    model.export(str(tmp_path / "exported"), verbose=False)
    run_fresh(
        SERVE_SAVED_MODEL,
        tmp_path / "exported",
        tmp_path / "inputs.npy",
        tmp_path / "out.npy",
        backend="tensorflow",
    )
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-6)


# --- Across backends -------------------------------------------------------------

LOAD_ON_BACKEND = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import keras_ortho

    path, inputs_path, out_path = sys.argv[1:]
    model = keras.saving.load_model(path, safe_mode=True)
    np.savez(
        out_path,
        backend=keras.backend.backend(),
        predictions=model.predict(np.load(inputs_path), verbose=0),
        losses=np.array([float(keras.ops.convert_to_numpy(v)) for v in model.losses]),
        configs=json.dumps(
            {v.path: v.regularizer.get_config() for v in model.trainable_weights if v.regularizer}
        ),
    )
    """
)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(
            target,
            marks=pytest.mark.skipif(
                importlib.util.find_spec(target) is None,
                reason=f"{target} is not installed in this environment (CI installs all three)",
            ),
        )
        for target in ("tensorflow", "jax", "torch")
        if target != BACKEND  # a fresh process on this backend: the `saved` fixture and the round-trip tests
    ],
)
@pytest.mark.slow
def test_keras_archive_loads_on_every_backend(saved, tmp_path, target):
    """Saved on this backend, loaded on each other one: same configs, predictions and penalty."""
    model, inputs, directory, _ = saved
    out = tmp_path / "loaded.npz"
    run_fresh(LOAD_ON_BACKEND, directory / "model.keras", directory / "inputs.npy", out, backend=target)
    loaded = np.load(out)
    assert str(loaded["backend"]) == target
    assert json.loads(str(loaded["configs"])) == regularizer_configs(model)
    np.testing.assert_allclose(loaded["predictions"], model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded["losses"], [float(to_numpy(v)) for v in model.losses], rtol=1e-5)


# --- Malformed configs ----------------------------------------------------------


def rewrite_first_regularizer(archive_path, edit):
    """Copies a .keras archive with `edit(config)` applied to the first OrthoRegularizer."""
    with zipfile.ZipFile(archive_path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])

    def visit(node):
        if isinstance(node, dict):
            if node.get("registered_name") == "keras_ortho>OrthoRegularizer":
                edit(node["config"])
                return True
            return any(visit(v) for v in node.values())
        if isinstance(node, list):
            return any(visit(v) for v in node)
        return False

    assert visit(config)
    members["config.json"] = json.dumps(config).encode()
    broken = archive_path.with_name("broken.keras")
    with zipfile.ZipFile(broken, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return broken


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda c: c.update(scale=2.0), "scale"),
        (lambda c: c.update(factor=-1.0), "factor"),
        (lambda c: c.update(mode="diagonal"), "mode"),
        (lambda c: c.update(slice_axis="1"), "slice_axis"),
    ],
    ids=["unknown key", "negative factor", "bad mode", "bad slice_axis"],
)
def test_malformed_regularizer_config_fails_loudly(tmp_path, edit, key):
    path = tmp_path / "model.keras"
    mixed_layers_model().save(path)
    broken = rewrite_first_regularizer(path, edit)
    with pytest.raises((TypeError, ValueError), match=rf"(?s)OrthoRegularizer.*{key}"):
        keras.saving.load_model(broken)


def test_malformed_config_in_json_fails_loudly():
    config = json.loads(mixed_layers_model().to_json())
    text = json.dumps(config).replace('"mode": "columns"', '"mode": "colums"', 1)
    # Keras wraps the error in its own TypeError; ours is in the message.
    with pytest.raises((TypeError, ValueError), match=r"(?s)OrthoRegularizer config is invalid.*mode='colums'"):
        keras.models.model_from_json(text)


# --- Resume -----------------------------------------------------------------------


# Runs in its own process: TensorFlow's op determinism, once enabled, stays on for the process.
RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import keras_ortho

    directory, tests_dir = sys.argv[1:]
    sys.path.insert(0, tests_dir)
    from interrupted import uninterrupted_and_resumed
    from models import mixed_layers_model

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(32, 5)).astype("float32")

    def train(callbacks, seed=0):
        model = mixed_layers_model(seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        logger = keras_ortho.OrthoLogger()
        model.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[logger, *callbacks])
        return model, logger

    def save(name, model, logger):
        np.savez(
            f"{directory}/{name}.npz",
            epochs=np.array(logger.epochs),
            **{f"weight_{i}": v.numpy() for i, v in enumerate(model.weights)},
            **{f"errors_{i}": e for i, e in enumerate(logger.errors.values())},
        )

    uninterrupted_and_resumed(train, save, directory, crash_epoch=2)
    """
)


@pytest.mark.slow
def test_resume_with_backup_and_restore_matches_uninterrupted_training(tmp_path):
    run_fresh(RESUME_SCRIPT, tmp_path, TESTS_DIR)
    uninterrupted = np.load(tmp_path / "uninterrupted.npz")
    resumed = np.load(tmp_path / "resumed.npz")
    weights = [k for k in uninterrupted.files if k.startswith("weight_")]
    assert len(weights) > 10
    for key in weights:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)
    # The resumed logger recorded the epochs after the backup, as they were.
    assert list(resumed["epochs"]) == [2, 3] and list(uninterrupted["epochs"]) == [0, 1, 2, 3]
    for key in (k for k in uninterrupted.files if k.startswith("errors_")):
        np.testing.assert_array_equal(resumed[key], uninterrupted[key][2:], err_msg=key)
