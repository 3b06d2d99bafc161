"""How large the penalty starts on real models, against their data loss, per reduction.

    python benchmarks/factors.py            # ResNet50, EfficientNetB0, ConvNeXtTiny, a small BERT
    python benchmarks/factors.py --quick    # one small model: checks the script runs

For each model (random initial weights, 10 classes, random inputs and labels)
it reports the initial data loss and `sum(model.losses)` with every kernel
regularized by `OrthoRegularizer(1.0, reduction=r)` for `r` in "sum" and
"mean"; the penalty at another factor is that number times the factor (the
penalty is linear in it). Writes `results/factors.md` and `.json`. These are
values, not timings: they do not depend on the machine.
"""

import argparse
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ortho  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
CLASSES = 10
FACTORS = (1e-4, 1e-3, 1e-2)


def image_model(constructor, preprocess=None, size=32):
    def build():
        base = constructor(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
        outputs = keras.layers.Dense(CLASSES, activation="softmax", name="predictions")(base.output)
        model = keras.Model(base.input, outputs)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, size=(16, size, size, 3)).astype("float32")
        return model, (x if preprocess is None else preprocess(x))

    return build


def bert():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=1000,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        max_sequence_length=64,
    )
    tokens = keras.Input((64,), dtype="int32", name="token_ids")
    segments = keras.Input((64,), dtype="int32", name="segment_ids")
    mask = keras.Input((64,), dtype="int32", name="padding_mask")
    pooled = backbone({"token_ids": tokens, "segment_ids": segments, "padding_mask": mask})["pooled_output"]
    model = keras.Model([tokens, segments, mask], keras.layers.Dense(CLASSES, activation="softmax")(pooled))
    rng = np.random.default_rng(0)
    x = [rng.integers(0, 1000, size=(16, 64)).astype("int32"), np.zeros((16, 64), "int32"), np.ones((16, 64), "int32")]
    return model, x


MODELS = {
    "ResNet50": image_model(keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    "EfficientNetB0": image_model(keras.applications.EfficientNetB0),
    "ConvNeXtTiny": image_model(keras.applications.ConvNeXtTiny),
    "BERT (4 layers, 256 wide)": bert,
}
QUICK = {"MobileNetV3Small": image_model(keras.applications.MobileNetV3Small)}


# Kernels read one matrix per channel (Grams of side 1, where the mean is the sum).
PER_CHANNEL = {"EfficientNetB0": "*dwconv*", "ConvNeXtTiny": "*depthwise_conv*", "MobileNetV3Small": "*depthwise*"}


def penalty(model, regularizer, exclude=None):
    """`(kernels regularized, sum(model.losses))` with `regularizer` on the kernels."""
    keras_ortho.regularize(model, None)
    count = len(keras_ortho.regularize(model, regularizer, exclude=exclude))
    return count, float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))


def measure(name, build):
    keras.utils.set_random_seed(0)
    model, x = build()
    labels = np.random.default_rng(1).integers(0, CLASSES, size=16)
    probabilities = model.predict(x, verbose=0)
    row = {"data_loss": float(np.mean(-np.log(probabilities[np.arange(16), labels])))}
    for reduction in ("sum", "mean"):
        row["kernels"], row[reduction] = penalty(model, keras_ortho.OrthoRegularizer(1.0, reduction=reduction))
    pattern = PER_CHANNEL.get(name)
    row["per_channel"] = 0
    row["mean_without_per_channel"] = row["mean"]
    if pattern is not None:
        kept, row["mean_without_per_channel"] = penalty(
            model, keras_ortho.OrthoRegularizer(1.0, reduction="mean"), exclude=pattern
        )
        row["per_channel"] = row["kernels"] - kept
    return row


def table(rows):
    head = (
        ["model", "kernels (per channel)", "data loss"]
        + [f"{r} x {f:g}" for r in ("sum", "mean") for f in FACTORS]
        + [f"mean x {FACTORS[-1]:g}, per-channel kernels excluded"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name, f"{row['kernels']} ({row['per_channel']})", f"{row['data_loss']:.2f}"]
        cells += [f"{row[r] * f:.3g}" for r in ("sum", "mean") for f in FACTORS]
        cells += [f"{row['mean_without_per_channel'] * FACTORS[-1]:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = parser.parse_args()
    rows = {name: measure(name, build) for name, build in (QUICK if args.quick else MODELS).items()}
    text = (
        "Initial penalty (every kernel regularized) against the initial data loss "
        f"(cross-entropy, {CLASSES} classes, random inputs in each model's input range; 32x32 images), "
        f"Keras {keras.__version__} on {keras.backend.backend()}.\n\n" + table(rows) + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "factors_quick" if args.quick else "factors"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
