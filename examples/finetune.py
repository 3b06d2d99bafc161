"""Regularize a model that already exists: train it plain, then fine-tune it orthogonal.

1. This process trains a small CNN with a depthwise block and an LSTM head on
   scikit-learn's digits, with no regularizer at all, and saves it.
2. A new Python process (as on another day) loads the file, puts
   `OrthoRegularizer` on every kernel with `keras_ortho.regularize` (no code
   of the model is touched), fine-tunes it briefly with `OrthoLogger`, prints
   each kernel's error and the accuracy before and after, and saves it; the
   saved file carries the regularizers.
3. If keras-hub is installed, a small BERT backbone built from its
   constructor (random weights, nothing downloaded) is regularized the same
   way, and `OrthoLogger` reports its attention kernels per head.

    python examples/finetune.py [--quick] [--out runs/finetune]
"""

import argparse
import importlib.util
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_ortho  # noqa: E402


def load_data():
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(x, digits.target, test_size=0.25, random_state=0)


def build_plain_model():
    """Conv2D, DepthwiseConv2D, LayerNormalization, LSTM over rows, Dense: no regularizer."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu", name="depthwise")(x)
    x = keras.layers.Reshape((8, 8 * 32))(x)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.LSTM(32, name="lstm")(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    return keras.Model(inputs, outputs, name="digits")


def compile_model(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def train_plain(path, epochs):
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_data()
    model = build_plain_model()
    compile_model(model, 3e-3)
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    model.save(path)
    print(f"trained plain for {epochs} epochs (test accuracy {accuracy:.3f}), saved to {path}")


def errors_by_kernel(model, paths):
    """`{path: (slices, total error)}` of the given kernels, by their layers' rules."""
    logger = keras_ortho.OrthoLogger(weights=list(paths))
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_end(0)
    return {path: (errors.shape[1], float(errors[-1].sum())) for path, errors in logger.errors.items()}


def finetune(path, out, epochs):
    """Runs in a new process: load, regularize, fine-tune, compare, save."""
    keras.utils.set_random_seed(1)
    x_train, x_test, y_train, y_test = load_data()
    model = keras.saving.load_model(path)
    compile_model(model, 1e-3)
    accuracy_before = model.evaluate(x_test, y_test, verbose=0)[1]

    paths = keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.01))
    before = errors_by_kernel(model, paths)
    logger = keras_ortho.OrthoLogger()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0, callbacks=[logger])
    accuracy_after = model.evaluate(x_test, y_test, verbose=0)[1]
    after = errors_by_kernel(model, paths)

    print(f"\nregularized {len(paths)} kernels of the loaded model; fine-tuned {epochs} epochs")
    print(f"{'kernel':<34}{'slices':>7}{'error before':>14}{'error after':>13}")
    for p in paths:
        print(f"{p:<34}{before[p][0]:>7}{before[p][1]:>14.3f}{after[p][1]:>13.3f}")
    print(f"{'test accuracy':<34}{'':>7}{accuracy_before:>14.3f}{accuracy_after:>13.3f}")
    assert sorted(logger.watched_paths) == sorted(paths)

    saved = out / "finetuned.keras"
    model.save(saved)
    reloaded = keras.saving.load_model(saved)
    carried = sorted(v.path for v in reloaded.weights if isinstance(v.regularizer, keras_ortho.OrthoRegularizer))
    print(f"saved to {saved}; the reloaded model carries the regularizers: {carried == sorted(paths)}")
    if carried != sorted(paths):
        raise SystemExit("the saved model lost its regularizers")


def penalty(model):
    return sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)


def regularize_keras_hub_backbone(out):
    """A small BertBackbone from its constructor (random weights, nothing downloaded)."""
    if importlib.util.find_spec("keras_hub") is None:
        print("\nkeras-hub is not installed: skipping the backbone (pip install keras-hub)")
        return
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    # Its constructor takes no kernel_regularizer; `regularize` reaches the layers inside.
    paths = keras_ortho.regularize(backbone, keras_ortho.OrthoRegularizer(0.01), include="*attention*")
    errors = errors_by_kernel(backbone, paths)
    print(f"\nkeras-hub BertBackbone: regularized {len(paths)} attention kernels; per head:")
    for p in paths[:4]:
        print(f"  {p:<60} {errors[p][0]} heads, error {errors[p][1]:.3f}")

    # Its config has no place for the regularizers: a reloaded copy has none
    # until `regularize` is called again, which restores the same penalty.
    path = out / "bert_backbone.keras"
    backbone.save(path)
    reloaded = keras.saving.load_model(path)
    carried = sum(isinstance(v.regularizer, keras_ortho.OrthoRegularizer) for v in reloaded.weights)
    keras_ortho.regularize(reloaded, keras_ortho.OrthoRegularizer(0.01), include="*attention*")
    same = np.isclose(penalty(reloaded), penalty(backbone), rtol=1e-5)
    print(f"reloaded backbone carries {carried} regularizers; after regularize again, same penalty: {same}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 + 1 epochs instead of 20 + 5")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/finetune"))
    parser.add_argument("--finetune", type=pathlib.Path, help=argparse.SUPPRESS)  # the second process
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.finetune is not None:
        finetune(args.finetune, args.out, 1 if args.quick else 5)
        return

    path = args.out / "plain.keras"
    train_plain(path, 1 if args.quick else 20)
    command = [sys.executable, os.path.abspath(__file__), "--finetune", str(path), "--out", str(args.out)]
    subprocess.run(command + (["--quick"] if args.quick else []), check=True)
    regularize_keras_hub_backbone(args.out)


if __name__ == "__main__":
    main()
