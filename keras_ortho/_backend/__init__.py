"""The few operations keras_ortho needs from each Keras backend.

One module per backend, each with the same functions, as Keras lays out its own
backends; the math in `keras_ortho._math` is written once on top of them and
`keras.ops`, and never branches on the backend:

* `to_tensor(w)`: a backend tensor of `w` (a Keras variable, array or tensor)
  that the backend's autodiff follows back to the variable.
* `reshape(x, shape)`, `transpose(x, perm)`: the backend's own (each
  `keras.ops` call costs eager PyTorch about 20 us of dispatch; these are on
  the path of every weight at every step).
* `gram(phi, mode)`: `Phi_i^T Phi_i` ("columns") or `Phi_i Phi_i^T` ("rows")
  of a `(m, rows, cols)` stack or one `(rows, cols)` matrix.
* `minus_identity(gram)`: `gram - I`, the Gram being the backend's own fresh tensor.
* `matmul(a, b)`: the batched product, at full float32 precision and in
  float64 for float64 (`keras.ops.matmul` gives neither on every backend).
* `times_symmetric(phi, symmetric, mode, scale=None)`: `scale Phi_i S_i`
  ("columns") or `scale S_i Phi_i` ("rows"), for symmetric `S_i` and `scale` a
  scalar (a Python float or a 0-d tensor of `phi`'s dtype; None for none).
* `svd_factors(phi)`: `(U, V^T)` of the thin SVD of each slice, without the
  singular values, by an algorithm that converges on every finite slice.
* `sign_of_residual(x)`: `sign(x)`, in `x`'s dtype; it may be written over `x`,
  which the caller no longer reads.
* `sum_of_abs(x)`: `sum |x|` over every entry, a 0-d tensor in `x`'s dtype,
  without an `|x|`-sized temporary where the backend can (eager PyTorch).
* `with_gradient(phi, options, forward, backward)`: `value` of
  `forward(phi, options) -> (value, saved)`, whose gradient with respect to `phi`
  is `backward(phi, saved, options, upstream)`, `options` being a hashable
  tuple passed through untouched: the backend's custom-gradient
  mechanism, so that its autodiff never differentiates `forward`. `upstream`
  is the scalar upstream gradient, as a Python float where that costs nothing
  (eager PyTorch on the host), else a 0-d tensor.
* `gated(x, scale, options, value, gradient)`: `value(x, scale, options)` where
  the scalar `scale` is > 0, and 0 where it is 0, computing nothing; its
  gradient with respect to `x` is `gradient(x, scale, options, upstream)`
  where `scale > 0` and zero elsewhere, and with respect to `scale` zero.
  Under a compiled branch (`jax.lax.cond`, `tf.cond`), whatever one branch
  keeps for the backward pass the other must produce as zeros, on every call
  that takes it: a backend keeps either nothing but `x` and `scale`
  (TensorFlow, whose `tf.cond` in the backward pass computes the gradient
  again), or the gradient itself, computed beside the value with an upstream
  of 1 (JAX, whose skipped branch then produces the zero gradient it would
  return anyway). The gradient is linear in `upstream`.
* `for_measuring(fn, jit_compile)`: `fn` made ready for repeated measurements of
  the weights, each backend its fastest way, outside any gradient: TensorFlow
  traces it (`tf.function`, with XLA when `jit_compile`), JAX always jits it
  (it has no graph mode short of jit; `jit_compile` is ignored), PyTorch runs
  it eagerly under `no_grad` (Dynamo's compile time would outweigh a
  once-an-epoch measurement; `jit_compile` is ignored).
* `is_chief(model)`: whether this process writes files in a multi-process run.
* `dynamo_compiling()`: whether PyTorch's Dynamo is tracing the caller (False
  elsewhere): Dynamo warns on a `functools.lru_cache` and traces through it,
  so cached helpers are called uncached there.
* `outside_dynamo(fn)`: `fn`, run outside Dynamo's trace where Dynamo traces
  (`torch.compiler.disable`: a graph break), as it is elsewhere.
* `complex_singular_values(real, imag)`: the singular values of each complex
  matrix `real + i imag` of a batch `(..., rows, cols)`, values only, as real
  tensors of `real`'s dtype (Keras has no complex SVD).
* `adjoint(fn, x, y)`: `A^T y` for a linear `fn(x) = A x` (a Keras layer's
  call), by the backend's reverse-mode autodiff at `x`.
"""

import importlib

import keras

SUPPORTED = ("tensorflow", "jax", "torch")

# Loaded once, at import where the backend is supported: `current()` is called
# while TensorFlow traces the train step, where AutoGraph would try (and warn)
# to convert an `importlib` call.
_LOADED = {}


def current():
    """The module of the running Keras backend.

    Raises:
        RuntimeError: for a backend without gradients (numpy, openvino), where
            the penalty could never reach training.
    """
    name = keras.backend.backend()
    module = _LOADED.get(name)
    if module is not None:
        return module
    if name not in SUPPORTED:
        raise RuntimeError(
            f"keras_ortho needs one of Keras's {', '.join(SUPPORTED)} backends "
            f"(KERAS_BACKEND); this process runs Keras on backend={name!r}, which "
            "cannot train, so its penalty would reach no gradient."
        )
    module = _LOADED[name] = importlib.import_module(f"keras_ortho._backend.{name}")
    return module


if keras.backend.backend() in SUPPORTED:
    current()
