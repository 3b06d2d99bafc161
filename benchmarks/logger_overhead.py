"""What OrthoLogger costs during fit, on a model with 25 regularized kernels.

The model: 4 Transformer blocks (per block the 4 attention projections and 2
feed-forward kernels) and a head. Two measurements, in one process:

* Hook cost: the median time of the logger's own hooks, called as `fit` calls
  them (`on_epoch_end` for `OrthoLogger()`, `on_train_batch_end` for
  `OrthoLogger(every_n_batches=1)`), against the median epoch and step time of
  the same model training without a logger. This is the figure quoted: on
  this 2-core machine whole-fit timings vary by about 10% (interquartile
  range), too much to resolve a 1% difference between two fits.
* Whole fits of 3 epochs without a logger and with each logger, interleaved,
  reported with their interquartile ranges for transparency.

The one-time cost of compiling a new logger's probe (at its first record of a
fit on new weights) is reported apart.
"""

import time

import keras
import numpy as np
import tensorflow as tf
from harness import median_times

import keras_ortho


def build(quick):
    width, heads, blocks = (16, 2, 4) if quick else (64, 4, 4)
    ortho = keras_ortho.OrthoRegularizer(0.01)
    inputs = keras.Input((32, width))
    x = inputs
    for _ in range(blocks):
        attention = keras.layers.MultiHeadAttention(heads, width // heads, kernel_regularizer=ortho)
        x = keras.layers.LayerNormalization()(x + attention(x, x))
        hidden = keras.layers.Dense(2 * width, activation="gelu", kernel_regularizer=ortho)(x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dense(width, kernel_regularizer=ortho)(hidden))
    outputs = keras.layers.Dense(10, kernel_regularizer=ortho)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, width


def run(quick, log=print):
    keras.utils.set_random_seed(0)
    model, width = build(quick)
    steps, batch, epochs = (4, 8, 1) if quick else (30, 32, 3)
    rounds = 3 if quick else 11
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 32, width)).astype("float32")
    y = rng.integers(0, 10, size=steps * batch)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    kernels = sum(isinstance(v.regularizer, keras_ortho.OrthoRegularizer) for v in model.trainable_weights)

    def fit(callbacks):
        return lambda: model.fit(dataset, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)

    fit([])()  # compiles the model's train step
    start = time.perf_counter()
    fit([])()
    plain = time.perf_counter() - start
    loggers = {"epoch": keras_ortho.OrthoLogger(), "batch": keras_ortho.OrthoLogger(every_n_batches=1)}
    setup_ms = {}
    for name, logger in loggers.items():  # first fit with a new logger: compiles its probe
        start = time.perf_counter()
        fit([logger])()
        setup_ms[name] = (time.perf_counter() - start - plain) * 1e3

    fits = median_times(
        {"none": fit([]), **{name: fit([logger]) for name, logger in loggers.items()}},
        rounds=rounds,
        calls=1,
        warmup=0,
    )
    epoch_ms = fits["none"]["median_s"] * 1e3 / epochs
    step_ms = epoch_ms / steps

    logs = {}
    hooks = median_times(
        {
            "on_epoch_end": lambda: loggers["epoch"].on_epoch_end(epochs, logs),
            "on_train_batch_end": lambda: loggers["batch"].on_train_batch_end(0, logs),
        },
        rounds=rounds,
        calls=20,
        warmup=2,
    )
    epoch_hook_ms = hooks["on_epoch_end"]["median_s"] * 1e3
    batch_hook_ms = hooks["on_train_batch_end"]["median_s"] * 1e3

    result = {
        "regularized_kernels": kernels,
        "steps_per_epoch": steps,
        "epoch_ms": epoch_ms,
        "step_ms": step_ms,
        "on_epoch_end_ms": epoch_hook_ms,
        "on_train_batch_end_ms": batch_hook_ms,
        "epoch_overhead": epoch_hook_ms / epoch_ms,
        "batch_overhead": batch_hook_ms / step_ms,
        "fit_ms": {k: v["median_s"] * 1e3 for k, v in fits.items()},
        "fit_iqr_ms": {k: v["iqr_s"] * 1e3 for k, v in fits.items()},
        "setup_ms": setup_ms,
    }
    log(
        f"  {kernels} kernels, {steps} steps/epoch: epoch {epoch_ms:.0f} ms, step {step_ms:.1f} ms; "
        f"per-epoch record {epoch_hook_ms:.2f} ms = {result['epoch_overhead']:.2%} of an epoch; "
        f"per-batch record {batch_hook_ms:.2f} ms = {result['batch_overhead']:.2%} of a step; "
        f"whole {epochs}-epoch fits (median +- IQR ms): "
        + ", ".join(f"{k} {result['fit_ms'][k]:.0f}+-{result['fit_iqr_ms'][k]:.0f}" for k in fits)
        + "; one-time probe compile: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in setup_ms.items())
    )
    return result
