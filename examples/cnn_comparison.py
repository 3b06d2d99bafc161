"""A small CNN on scikit-learn's digits, with and without orthogonal Conv2D kernels.

Trains the same network from the same initial weights four ways:

* plain: no regularizer;
* fixed: `OrthoRegularizer(factor)` on its convolution kernels;
* decay: the same, with an `OrthoSchedule` that decays the penalty in steps, as
  Bansal et al. 2018 do (times 0.1 from a quarter of the epochs, 0.01 from
  half, off from three quarters);
* target: the same, with an `OrthoTarget` that steers the mean per-slice error
  towards `--target`.

`OrthoLogger` watches the same kernels in each (the plain model's by explicit
paths); the script prints test accuracy and orthogonality error side by side,
writes the same as a Markdown table (`cnn_comparison.md`, which the docs
include from `examples/results/`) and draws all four records in one figure.

    python examples/cnn_comparison.py [--quick] [--out runs/cnn]
    python examples/cnn_comparison.py --out examples/results    # the docs' table
"""

import argparse
import os
import pathlib
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_ortho  # noqa: E402

CONV_KERNELS = ["conv1/kernel", "conv2/kernel"]


def load_data():
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(x, digits.target, test_size=0.3, random_state=1)


def build_model(regularizer):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", kernel_regularizer=regularizer, name="conv1"),
            keras.layers.Conv2D(32, 3, activation="relu", kernel_regularizer=regularizer, name="conv2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, name="head"),
        ],
        name="cnn",
    )


def train(regularizer, data, epochs, callbacks=()):
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(0)  # same initial weights for every variant
    model = build_model(regularizer)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    logger = keras_ortho.OrthoLogger(weights=CONV_KERNELS)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=[*callbacks, logger],
    )
    return history.history["val_accuracy"][-1], logger


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run, for tests")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/cnn"))
    parser.add_argument("--factor", type=float, default=0.01)
    parser.add_argument("--target", type=float, default=20.0, help="OrthoTarget's mean per-slice error")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_data()
    epochs = 4 if args.quick else 40
    steps = {epochs // 4: 0.1, epochs // 2: 0.01, 3 * epochs // 4: 0}
    decay = keras_ortho.OrthoSchedule(steps)
    variants = {
        "plain": (None, ()),
        "fixed": (args.factor, ()),
        "decay": (args.factor, (decay,)),
        "target": (args.factor, (keras_ortho.OrthoTarget(args.target),)),
    }
    results = {
        name: train(None if factor is None else keras_ortho.OrthoRegularizer(factor), data, epochs, callbacks)
        for name, (factor, callbacks) in variants.items()
    }

    # Each kernel's final error per variant, the sum over its slices.
    errors = {path: [logger.errors[path][-1].sum() for _, logger in results.values()] for path in CONV_KERNELS}
    print(f"\n{'':<26}" + "".join(f"{name:>12}" for name in results))
    print(f"{'test accuracy':<26}" + "".join(f"{acc:>12.3f}" for acc, _ in results.values()))
    for path, row in errors.items():
        print(f"{'error ' + path:<26}" + "".join(f"{e:>12.3f}" for e in row))

    table_path = args.out / "cnn_comparison.md"
    table_path.write_text(markdown_table(results, errors, steps, epochs, args))
    print(f"table written to {table_path}")

    plot_path = args.out / "cnn_errors.png"
    keras_ortho.plot_errors(
        {f"{name}: {path}": logger.errors[path] for name, (_, logger) in results.items() for path in CONV_KERNELS},
        plot_path,
        title="Conv kernels: " + ", ".join(results) + " (top to bottom)",
    )
    print(f"all records drawn to {plot_path}")


def markdown_table(results, errors, steps, epochs, args):
    """The printed comparison as a Markdown table, with how it was run."""
    labels = {
        "plain": "plain",
        "fixed": f"fixed `factor={args.factor}`",
        "decay": f"decay `OrthoSchedule({steps})`",
        "target": f"`OrthoTarget({args.target:g})`",
    }
    rows = [
        "| | " + " | ".join(labels[name] for name in results) + " |",
        "|---" * (len(results) + 1) + "|",
        "| test accuracy | " + " | ".join(f"{acc:.3f}" for acc, _ in results.values()) + " |",
    ]
    for path, row in errors.items():
        rows.append(f"| error, {path} | " + " | ".join(f"{e:.1f}" for e in row) + " |")
    stamp = (
        f"{epochs} epochs, one run from the same initial weights, Keras {keras.__version__} on "
        f"{keras.backend.backend()}, {cpu_name()} ({os.cpu_count()} cores)."
    )
    return "\n".join(rows) + "\n\n" + stamp + "\n"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


if __name__ == "__main__":
    main()
