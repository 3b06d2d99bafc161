"""Models that use OrthoRegularizer survive saving and loading."""

import json
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np

from models import mixed_layers_model, regularizer_configs

# Runs in a fresh interpreter that imports keras_ortho and nothing of the tests.
LOAD_KERAS_ARCHIVE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import keras_ortho  # registers OrthoRegularizer, nothing else is imported

    path, inputs_path, out_path = sys.argv[1:]
    model = keras.saving.load_model(path, safe_mode=True)
    configs = {
        v.path: v.regularizer.get_config()
        for v in model.trainable_weights
        if v.regularizer is not None
    }
    np.savez(
        out_path,
        predictions=model.predict(np.load(inputs_path), verbose=0),
        losses=np.array([float(loss) for loss in model.losses]),
        configs=json.dumps(configs),
    )
    """
)


def run_fresh(script, *args):
    subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        check=True,
        timeout=300,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_keras_archive_loads_in_a_fresh_process(tmp_path):
    model = mixed_layers_model()
    inputs = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "inputs.npy", inputs)

    with zipfile.ZipFile(path) as archive:
        assert "keras_ortho>OrthoRegularizer" in archive.read("config.json").decode()

    run_fresh(LOAD_KERAS_ARCHIVE, path, tmp_path / "inputs.npy", tmp_path / "out.npz")
    loaded = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(
        loaded["predictions"], model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        loaded["losses"], [float(loss) for loss in model.losses], rtol=1e-6
    )
    assert len(loaded["losses"]) == 7  # conv, einsum, 4 attention kernels, dense
    assert json.loads(str(loaded["configs"])) == regularizer_configs(model)
