"""Each norm's penalty plus gradient on the running Keras backend: ours, autodiff, the floor.

For every `norm` of `OrthoRegularizer`, on the same kernels, compiled as users
run them (TensorFlow `tf.function`, JAX `jax.jit`, PyTorch eagerly):

* `ours`: `keras_ortho.ortho_penalty(w, norm=...)` and its gradient through
  the backend's autodiff (the closed-form gradient).
* `autodiff`: the same formula written plainly in `keras.ops` and
  differentiated by the backend: "double" builds both Grams, as its formula
  reads; "spectral" differentiates through the same 32 power-iteration steps.
* `floor`: the Gram and one gradient-sized product on the stack already laid
  out, as in the `backends` section.

And what `OrthoConstraint` costs on the same kernels: one projection of the
weight (what Keras runs after each optimizer step) by "svd" and by
"newton_schulz", against the L1 penalty plus gradient.

Used by `run.py`, section `norms`.
"""

import time

import backend_penalty as bp
import numpy as np
from harness import median_times
from keras import ops

import keras_ortho
from keras_ortho import _backend, _math
from keras_ortho import ops as ortho_ops
from keras_ortho._slicing import plan_slices

SHAPES = [
    ("Dense 1024x1024", (1024, 1024)),
    ("Conv 3x3x256x256", (3, 3, 256, 256)),
    ("MHA query 768x12x64", (768, 12, 64)),
]
QUICK_SHAPES = [("Dense 256x128", (256, 128)), ("MHA query 128x4x32", (128, 4, 32))]
FACTOR = 0.01


def _gram(stack, mode):
    swap = bp._swap
    return ops.matmul(swap(stack), stack) if mode == "columns" else ops.matmul(stack, swap(stack))


def autodiff_penalty(w, plan, norm):
    """`norm`'s formula in plain `keras.ops`, left to the backend's autodiff."""
    stack = ortho_ops.to_stack(_backend.current().to_tensor(w), plan)
    if norm == "double":
        value = sum(
            ops.sum(ops.square(_gram(stack, mode) - ops.eye(side, dtype=stack.dtype)))
            for mode, side in (("columns", plan.cols), ("rows", plan.rows))
        )
    else:
        residual = _gram(stack, plan.mode) - ops.eye(plan.gram_size, dtype=stack.dtype)
        if norm == "l1":
            value = ops.sum(ops.abs(residual))
        elif norm == "fro":
            value = ops.sum(ops.square(residual))
        elif norm == "coherence":
            value = ops.sum(ops.max(ops.abs(ops.reshape(residual, (*residual.shape[:-2], -1))), axis=-1))
        else:
            value = ops.sum(ops.abs(_math._Spectral._eigenpair(residual)[0]))
    return ops.cast(FACTOR * value, w.dtype)


def measure(label, shape, norm, rounds, calls):
    plan = plan_slices(shape, None)
    rng = np.random.default_rng(0)
    w = ops.convert_to_tensor(rng.normal(scale=shape[0] ** -0.5, size=shape).astype("float32"))
    stack = ortho_ops.to_stack(w, plan)
    signs = ops.sign(_math.gram_residual(stack, plan.mode))
    variants = {
        "ours": bp._value_and_grad(lambda v: keras_ortho.ortho_penalty(v, FACTOR, norm=norm), w),
        "autodiff": bp._value_and_grad(lambda v: autodiff_penalty(v, plan, norm), w),
        "floor": bp._compiled(lambda a, b: bp.products(a, b, plan.mode), stack, signs),
    }
    times = median_times({name: bp._synced(fn) for name, fn in variants.items()}, rounds=rounds, calls=calls)
    ms = {name: t["median_s"] * 1e3 for name, t in times.items()}
    return {
        "kernel": label,
        "norm": norm,
        "ms": ms,
        "iqr_ms": {name: t["iqr_s"] * 1e3 for name, t in times.items()},
        "ours/autodiff": ms["ours"] / ms["autodiff"],
        "ours/floor": ms["ours"] / ms["floor"],
    }


def measure_projections(label, shape, rounds, calls):
    """ms of one `OrthoConstraint` projection per method, and the L1 penalty plus gradient."""
    rng = np.random.default_rng(0)
    w = ops.convert_to_tensor(rng.normal(scale=shape[0] ** -0.5, size=shape).astype("float32"))
    variants = {method: bp._compiled(keras_ortho.OrthoConstraint(method=method), w) for method in _math.PROJECTIONS}
    variants["l1 penalty"] = bp._value_and_grad(lambda v: keras_ortho.ortho_penalty(v, FACTOR), w)
    times = median_times({name: bp._synced(fn) for name, fn in variants.items()}, rounds=rounds, calls=calls)
    ms = {name: t["median_s"] * 1e3 for name, t in times.items()}
    return {
        "kernel": label,
        "ms": ms,
        "iqr_ms": {name: t["iqr_s"] * 1e3 for name, t in times.items()},
        **{f"{method}/l1 penalty": ms[method] / ms["l1 penalty"] for method in _math.PROJECTIONS},
    }


def run(quick, log=print):
    rounds, calls = (2, 1) if quick else (11, 3)
    rows, projections = [], []
    for label, shape in QUICK_SHAPES if quick else SHAPES:
        for norm in _math.NORMS:
            row = measure(label, shape, norm, rounds, calls)
            log(
                f"  {label:<22} {norm:<10} ours {row['ms']['ours']:8.2f} ms  ours/autodiff "
                f"{row['ours/autodiff']:.2f}  ours/floor {row['ours/floor']:.2f}"
            )
            rows.append(row)
        row = measure_projections(label, shape, rounds, calls)
        log(
            f"  {label:<22} constraint svd {row['ms']['svd']:.2f} ms, newton_schulz "
            f"{row['ms']['newton_schulz']:.2f} ms, l1 penalty {row['ms']['l1 penalty']:.2f} ms"
        )
        projections.append(row)
    return {"rows": rows, "projections": projections, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
