"""Train a small classifier with OrthoRegularizer on scikit-learn's bundled digits.

Prints how far each regularized kernel is from orthonormal before and after
training, records every slice during training with OrthoLogger and draws it
(`quickstart_errors.png`), saves the model to a `.keras` archive, reloads it
and checks that the reloaded model predicts the same.

    python examples/quickstart.py [--quick] [--out quickstart_out]
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_ortho  # noqa: E402


def load_data():
    digits = load_digits()  # 1797 8x8 images, shipped with scikit-learn
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(x, digits.target, test_size=0.25, random_state=0)


def build_model():
    ortho = keras_ortho.OrthoRegularizer(factor=1e-2)
    # Named layers in a functional model: weight paths such as `conv/kernel`,
    # the names OrthoLogger and the plot use too.
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, activation="relu", kernel_regularizer=ortho, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu", kernel_regularizer=ortho, name="dense_64")(x)
    x = keras.layers.Dense(32, activation="relu", kernel_regularizer=ortho, name="dense_32")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def orthogonality_report(model):
    """`{kernel path: total error}` for every regularized kernel."""
    return {
        v.path: float(keras.ops.convert_to_numpy(keras_ortho.slice_errors(v)).sum())
        for v in model.trainable_weights
        if isinstance(v.regularizer, keras_ortho.OrthoRegularizer)
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs instead of 30")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("quickstart_out"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_data()
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    before = orthogonality_report(model)
    logger = keras_ortho.OrthoLogger()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=2 if args.quick else 30,
        batch_size=64,
        verbose=2,
        callbacks=[logger],
    )
    after = orthogonality_report(model)

    print(f"\n{'kernel':<28} {'error before':>14} {'error after':>14}")
    for path in before:
        print(f"{path:<28} {before[path]:>14.3f} {after[path]:>14.3f}")
    print(f"test accuracy: {history.history['val_accuracy'][-1]:.3f}")

    plot_path = args.out / "quickstart_errors.png"
    keras_ortho.plot_errors(logger, plot_path, title="quickstart: per-slice error by epoch")
    print(f"per-slice errors by epoch drawn to {plot_path}")

    path = args.out / "quickstart.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    same = np.allclose(model.predict(x_test, verbose=0), reloaded.predict(x_test, verbose=0))
    print(f"saved to {path}; reloaded model predicts the same: {same}")
    if not same:
        raise SystemExit("reloaded model predicts differently")


if __name__ == "__main__":
    main()
