"""Training-step cost of the regularizers on a small Transformer block and a small CNN.

Variants, all from the same initial weights and batch:

* `none`: no regularizer.
* `l2`: `keras.regularizers.L2(1e-4)` on every kernel.
* `keras_orthogonal`: `keras.regularizers.OrthogonalRegularizer(0.01)` on the
  kernels it accepts (rank 2 only: the Dense ones).
* `ortho`: `keras_ortho.OrthoRegularizer(0.01)` on every kernel (attention
  projections per head, convolutions as one matrix, Dense).

A step is one `train_on_batch` call on tensors already in memory (graph mode,
`jit_compile=False`, the default on CPU).
"""

import keras
import numpy as np
import tensorflow as tf
from harness import median_times

import keras_ortho

VARIANTS = ("none", "l2", "keras_orthogonal", "ortho")


def _regularizers(variant):
    """`(rank-2 kernel regularizer, other kernel regularizer)` for a variant."""
    if variant == "l2":
        return keras.regularizers.L2(1e-4), keras.regularizers.L2(1e-4)
    if variant == "keras_orthogonal":
        return keras.regularizers.OrthogonalRegularizer(0.01), None
    if variant == "ortho":
        return keras_ortho.OrthoRegularizer(0.01), keras_ortho.OrthoRegularizer(0.01)
    return None, None


def transformer_block(variant, quick):
    dense_reg, other_reg = _regularizers(variant)
    length, width, heads = (16, 32, 2) if quick else (64, 256, 8)
    inputs = keras.Input((length, width))
    attention = keras.layers.MultiHeadAttention(heads, width // heads, kernel_regularizer=other_reg)(inputs, inputs)
    x = keras.layers.LayerNormalization()(inputs + attention)
    hidden = keras.layers.Dense(4 * width, activation="gelu", kernel_regularizer=dense_reg)(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(width, kernel_regularizer=dense_reg)(hidden))
    outputs = keras.layers.Dense(10, kernel_regularizer=dense_reg)(keras.layers.GlobalAveragePooling1D()(x))
    shapes = ((32, length, width), (32,))
    return keras.Model(inputs, outputs), shapes


def small_cnn(variant, quick):
    dense_reg, other_reg = _regularizers(variant)
    size, channels = (16, (8, 16, 16)) if quick else (32, (32, 64, 128))
    layers = [keras.Input((size, size, 3))]
    for i, c in enumerate(channels):
        layers.append(keras.layers.Conv2D(c, 3, padding="same", activation="relu", kernel_regularizer=other_reg))
        if i < len(channels) - 1:
            layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, kernel_regularizer=dense_reg)]
    return keras.Sequential(layers), ((64, size, size, 3), (64,))


MODELS = {"Transformer block": transformer_block, "small CNN": small_cnn}


def _step_function(build, variant, quick):
    keras.utils.set_random_seed(0)
    model, (x_shape, y_shape) = build(variant, quick)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=x_shape).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=y_shape))
    regularized = sum(v.regularizer is not None for v in model.trainable_weights)
    return (lambda: model.train_on_batch(x, y)), regularized


def run(quick, log=print):
    rounds, calls = (3, 2) if quick else (21, 5)
    rows = []
    for name, build in MODELS.items():
        steps, regularized = {}, {}
        for variant in VARIANTS:
            steps[variant], regularized[variant] = _step_function(build, variant, quick)
        times = median_times(steps, rounds=rounds, calls=calls, warmup=3)
        ms = {v: t["median_s"] * 1e3 for v, t in times.items()}
        row = {
            "model": name,
            "ms": ms,
            "iqr_ms": {v: t["iqr_s"] * 1e3 for v, t in times.items()},
            "regularized_kernels": regularized,
            "overhead": {v: ms[v] / ms["none"] - 1 for v in VARIANTS if v != "none"},
        }
        log(f"  {name:<18} step ms: " + ", ".join(f"{v} {ms[v]:.2f} ({regularized[v]} reg.)" for v in VARIANTS))
        rows.append(row)
    return {"rows": rows}
