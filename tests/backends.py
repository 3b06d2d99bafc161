"""What the tests need from the running Keras backend: numpy views, autodiff, compilation.

The suite runs once per `KERAS_BACKEND`; a test that one backend cannot run
says so with `only_on(...)`, naming why.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
KERAS_VERSION = tuple(int(part) for part in keras.version().split(".")[:2])


def only_on(*backends, why):
    return pytest.mark.skipif(BACKEND not in backends, reason=f"{why}; runs on {', '.join(backends)}")


def compiled_on_torch_only_for(names, *kept):
    """`names` as parameters: every one runs on TensorFlow and JAX, only `kept` on PyTorch.

    For the tests of a `fit` with `jit_compile=True` per layer: torch.compile of
    a whole training step takes 15 to 60 s on 2 cores, and what it compiles of
    ours (the binding, the penalty or the projection) is the same for every layer.
    """
    assert set(kept) <= set(names), (kept, names)
    why = f"torch.compile of a whole step costs CI up to a minute a layer; PyTorch compiles {' and '.join(kept)}"
    return [pytest.param(n, marks=() if n in kept else only_on("tensorflow", "jax", why=why)) for n in names]


def to_numpy(x):
    if hasattr(x, "detach"):  # a torch tensor that records gradients
        x = x.detach()
    return np.asarray(keras.ops.convert_to_numpy(x))


def value_and_grad(fn, w):
    """`(fn(w), d fn / d w)` as numpy, `w` an array, through the backend's autodiff."""
    w = np.asarray(w)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return to_numpy(value), to_numpy(tape.gradient(value, x))
    if BACKEND == "jax":
        import jax

        value, grad = jax.value_and_grad(fn)(jax.numpy.asarray(w))
        return to_numpy(value), to_numpy(grad)
    import torch

    x = torch.tensor(w, requires_grad=True)
    value = fn(x)
    value.backward()
    return to_numpy(value), to_numpy(x.grad)


def variable_grad(fn, variable):
    """`d fn(variable) / d variable` of a Keras variable, as training computes it."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = fn(variable)
        return to_numpy(tape.gradient(value, variable.value))
    if BACKEND == "jax":
        import jax

        # JAX differentiates functions of values: Keras's stateless scope maps
        # the variable to the traced value, as JAX's fit does.
        def of_value(value):
            with keras.StatelessScope([(variable, value)]):
                return fn(variable)

        return to_numpy(jax.grad(of_value)(variable.value))
    parameter = variable.value
    parameter.grad = None
    fn(variable).backward()
    return to_numpy(parameter.grad)


def compiled(fn):
    """`{name: fn compiled that way}` for each way the backend runs functions."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return {"graph": tf.function(fn), "xla": tf.function(fn, jit_compile=True)}
    if BACKEND == "jax":
        import jax

        return {"jit": jax.jit(fn)}
    import torch

    return {"compile": torch.compile(fn)}


def run_fresh(script, *args, timeout=300, backend=BACKEND, env=None, cwd=None):
    """Runs `python -c script args...` in a fresh process on `backend`; fails the test on an error.

    `env` adds to (or overrides) this process's environment; `cwd` is its directory.
    """
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        timeout=timeout,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
