"""A small Transformer encoder with every attention head kept orthonormal.

One `OrthoRegularizer` on each MultiHeadAttention layer regularizes each head of
the query, key, value and output projections. The task is generated here: does
the first token of a sequence appear again later in it? (Answering it needs
attention from the first position to the rest.)

During training, `OrthoLogger` records every head's error, writes TensorBoard
summaries next to the TensorBoard callback's, and the record is drawn per head.
The model is saved to `.keras`, reloaded and checked.

    python examples/transformer.py [--quick] [--out runs/transformer]
    tensorboard --logdir runs/transformer/logs
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ortho  # noqa: E402

VOCAB, LENGTH = 24, 20


def make_data(count, rng):
    """Token sequences; label 1 when the first token appears again later."""
    tokens = rng.integers(0, VOCAB, size=(count, LENGTH))
    labels = rng.random(count) < 0.5
    for row, positive in zip(tokens, labels, strict=True):
        rest = row[1:]
        rest[rest == row[0]] = (row[0] + 1) % VOCAB  # remove every repeat first
        if positive:
            rest[rng.integers(0, LENGTH - 1)] = row[0]
    return tokens.astype("int32"), labels.astype("int32")


@keras.saving.register_keras_serializable(package="examples")
class TokenAndPosition(keras.layers.Layer):
    """Token embedding plus a learned embedding of each position."""

    def __init__(self, vocab, length, dim, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.length, self.dim = vocab, length, dim
        self.tokens = keras.layers.Embedding(vocab, dim, name="tokens")
        self.positions = keras.layers.Embedding(length, dim, name="positions")

    def build(self, input_shape):
        self.tokens.build(input_shape)
        self.positions.build((self.length,))

    def call(self, tokens):
        return self.tokens(tokens) + self.positions(keras.ops.arange(self.length))

    def get_config(self):
        return {**super().get_config(), "vocab": self.vocab, "length": self.length, "dim": self.dim}


@keras.saving.register_keras_serializable(package="examples")
class FirstPosition(keras.layers.Layer):
    """The encoding of the first position, `(batch, length, dim) -> (batch, dim)`."""

    def call(self, x):
        return x[:, 0]


def encoder_block(x, ortho, name):
    attention = keras.layers.MultiHeadAttention(
        num_heads=4, key_dim=8, kernel_regularizer=ortho, name=f"{name}_attention"
    )
    x = keras.layers.LayerNormalization(name=f"{name}_norm1")(x + attention(x, x))
    hidden = keras.layers.Dense(64, activation="gelu", name=f"{name}_ffn_in")(x)
    hidden = keras.layers.Dense(32, name=f"{name}_ffn_out")(hidden)
    return keras.layers.LayerNormalization(name=f"{name}_norm2")(x + hidden)


def build_model(factor):
    ortho = keras_ortho.OrthoRegularizer(factor)
    tokens = keras.Input((LENGTH,), dtype="int32")
    x = TokenAndPosition(VOCAB, LENGTH, 32, name="embed")(tokens)
    for i in range(2):
        x = encoder_block(x, ortho, name=f"block{i}")
    outputs = keras.layers.Dense(2, name="head")(FirstPosition(name="first")(x))
    return keras.Model(tokens, outputs, name="encoder")


def per_head(model, layer="block0_attention"):
    """Per-head error of each projection kernel of one attention layer."""
    return {
        v.path: keras.ops.convert_to_numpy(keras_ortho.slice_errors(v))
        for v in model.get_layer(layer).trainable_weights
        if v.path.endswith("kernel")
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run, for tests")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/transformer"))
    parser.add_argument("--factor", type=float, default=0.01)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(512 if args.quick else 6000, rng)
    x_test, y_test = make_data(256 if args.quick else 1000, rng)

    model = build_model(args.factor)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = per_head(model)
    logs = args.out / "logs"
    logger = keras_ortho.OrthoLogger(log_dir=logs, every_n_batches=20)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=2 if args.quick else 12,
        batch_size=64,
        verbose=2,
        # The logger comes first so that the TensorBoard callback sees its keys.
        callbacks=[logger, keras.callbacks.TensorBoard(log_dir=str(logs))],
    )
    after = per_head(model)

    print("\nper-head error sum_jk |G_i|_jk of block0's projections")
    for path in before:
        print(f"  {path:<40} before {np.array2string(before[path], precision=2)}")
        print(f"  {'':<40} after  {np.array2string(after[path], precision=2)}")
    print(f"test accuracy: {history.history['val_accuracy'][-1]:.3f}")

    plot_path = args.out / "transformer_errors.png"
    keras_ortho.plot_errors(logger, plot_path, title="Transformer: per-head error by epoch")
    print(f"per-head errors drawn to {plot_path}; TensorBoard logs in {logs}")

    model_path = args.out / "transformer.keras"
    model.save(model_path)
    reloaded = keras.saving.load_model(model_path)
    same = np.allclose(model.predict(x_test, verbose=0), reloaded.predict(x_test, verbose=0), atol=1e-5)
    print(f"saved to {model_path}; reloaded model predicts the same: {same}")
    if not same:
        raise SystemExit("reloaded model predicts differently")


if __name__ == "__main__":
    main()
