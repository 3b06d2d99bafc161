"""How large the penalty starts on real models, against their data loss; the factor `starting_factor` gives.

    python benchmarks/factors.py            # 8 models: keras.applications and keras-hub backbones
    python benchmarks/factors.py --quick    # one small model: checks the script runs

For each model (random initial weights, 10 classes, random inputs and labels)
it reports the initial data loss and, as a share of it, the penalty of the
kernels `regularize` takes: with "sum" at 1e-3, with "mean" at 1e-2 (also with
the single-vector kernels it leaves out taken), and with the factor that
`keras_ortho.starting_factor` gives for a 1% share, read back from
`model.losses` after `regularize`. Writes `results/factors.md` and `.json`.
These are values, not timings: they do not depend on the machine.
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


def sequence_model(backbone, inputs, x):
    """A keras-hub backbone's sequence output, averaged over positions, into a 10-class head."""
    pooled = keras.layers.GlobalAveragePooling1D()(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(pooled)), x


def llama():
    import keras_hub

    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=1000,
        num_layers=4,
        num_query_heads=8,
        num_key_value_heads=2,  # grouped-query attention
        hidden_dim=256,
        intermediate_dim=512,
    )
    inputs = {"token_ids": keras.Input((64,), dtype="int32"), "padding_mask": keras.Input((64,), dtype="int32")}
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 1000, size=(16, 64)).astype("int32"), "padding_mask": np.ones((16, 64), "int32")}
    return sequence_model(backbone, inputs, x)


def vit():
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=4, num_layers=4, num_heads=4, hidden_dim=256, mlp_dim=512
    )
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(backbone(inputs)[:, 0])  # the class token
    x = np.random.default_rng(0).uniform(0, 1, size=(16, 32, 32, 3)).astype("float32")
    return keras.Model(inputs, outputs), x


MODELS = {
    "ResNet50": image_model(keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    "EfficientNetB0": image_model(keras.applications.EfficientNetB0),
    "EfficientNetV2B0": image_model(keras.applications.EfficientNetV2B0),
    "MobileNetV2": image_model(keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input),
    "ConvNeXtTiny": image_model(keras.applications.ConvNeXtTiny),
    "BERT (4 layers, 256 wide)": bert,
    "Llama (4 layers, 8 query heads, 2 key-value heads)": llama,
    "ViT (4 layers, 256 wide)": vit,
}
QUICK = {"MobileNetV3Small": image_model(keras.applications.MobileNetV3Small)}
# The starting factor's share of the data loss.
SHARE = 0.01


def penalty(model, regularizer, include=None):
    """`(kernels regularized, sum(model.losses))` with `regularizer` on the kernels `regularize` takes."""
    keras_ortho.regularize(model, None, include="*")
    count = len(keras_ortho.regularize(model, regularizer, include=include))
    return count, float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))


def measure(build):
    keras.utils.set_random_seed(0)
    model, x = build()
    labels = np.random.default_rng(1).integers(0, CLASSES, size=16)
    probabilities = model.predict(x, verbose=0)
    data_loss = float(np.mean(-np.log(probabilities[np.arange(16), labels])))
    row = {"data_loss": data_loss}
    row["kernels"], row["sum"] = penalty(model, keras_ortho.OrthoRegularizer(1.0))
    _, row["mean"] = penalty(model, keras_ortho.OrthoRegularizer(1.0, reduction="mean"))
    every, row["mean_every_kernel"] = penalty(model, keras_ortho.OrthoRegularizer(1.0, reduction="mean"), include="*")
    row["single_vectors"] = every - row["kernels"]
    row["starting_factor"] = keras_ortho.starting_factor(
        model, keras_ortho.OrthoRegularizer(reduction="mean"), data_loss, share=SHARE
    )
    _, row["starting_penalty"] = penalty(model, keras_ortho.OrthoRegularizer(row["starting_factor"], reduction="mean"))
    return row


def share(value, row):
    return f"{100 * value / row['data_loss']:.3g}%"


def table(rows):
    head = [
        "model",
        "kernels (single vectors left out)",
        "data loss",
        "sum x 1e-3",
        "mean x 1e-2, every kernel",
        "mean x 1e-2",
        f"starting_factor (mean, share {SHARE:g})",
        "its penalty",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [
            name,
            f"{row['kernels']} ({row['single_vectors']})",
            f"{row['data_loss']:.2f}",
            share(1e-3 * row["sum"], row),
            share(1e-2 * row["mean_every_kernel"], row),
            share(1e-2 * row["mean"], row),
            f"{row['starting_factor']:.2g}",
            share(row["starting_penalty"], row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = parser.parse_args()
    rows = {name: measure(build) for name, build in (QUICK if args.quick else MODELS).items()}
    text = (
        "The initial penalty as a share of the initial data loss (cross-entropy, "
        f"{CLASSES} classes, random inputs in each model's input range; 32x32 images, sequences of 64), "
        "on the kernels `regularize` takes by default, and with its single-vector kernels "
        f"(per-channel filters, one-unit heads) as well; Keras {keras.__version__} on "
        f"{keras.backend.backend()}.\n\n" + table(rows) + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "factors_quick" if args.quick else "factors"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
