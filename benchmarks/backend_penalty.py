"""Penalty plus gradient on the running Keras backend: ours, autodiff and the floor.

The same kernel shapes on every backend, each compiled as its users run it:
TensorFlow in graph mode (`tf.function`), JAX under `jax.jit`, PyTorch eagerly.

* `ours`: `keras_ortho.ortho_penalty` and its gradient through the backend's
  autodiff (the analytic gradient through its custom-gradient mechanism).
* `autodiff`: the same formula, same slicing, differentiated by the autodiff.
* `floor`: the two bare products any implementation performs, the Gram and the
  gradient product, on inputs already laid out as a `(num_slices, rows, cols)`
  stack in the compute dtype.

Used by `run.py` (one process per backend) and by `gpu_check.py`.
"""

import keras
import numpy as np
from harness import EXECUTION, median_times
from keras import ops

import keras_ortho
from keras_ortho import _backend, _math
from keras_ortho import ops as ortho_ops
from keras_ortho._slicing import plan_slices

# (label, shape): the three core shapes, then kernels users have.
CORE_SHAPES = [
    ("(512, 8, 512)", (512, 8, 512)),
    ("(1024, 16, 256)", (1024, 16, 256)),
    ("(2048, 1024)", (2048, 1024)),
]
LAYER_SHAPES = [
    ("Dense 1024x1024", (1024, 1024)),
    ("Dense 4096x1024", (4096, 1024)),
    ("Conv 3x3x256x256", (3, 3, 256, 256)),
    ("MHA query 768x12x64", (768, 12, 64)),
    ("MHA output 12x64x768", (12, 64, 768)),
    ("Embedding 50000x256", (50000, 256)),
]
QUICK_SHAPES = [("Dense 256x128", (256, 128)), ("MHA query 128x4x32", (128, 4, 32))]

FACTOR = 0.01


def slice_axis_for(label):
    # The output projection is sliced per head (axis 0) as its variable path
    # would make the default do; here the weight has no Keras path.
    return 0 if label.startswith("MHA output") else None


def _swap(x):
    return ops.swapaxes(x, -1, -2)


def gram_product(stack, mode):
    return ops.matmul(_swap(stack), stack) if mode == "columns" else ops.matmul(stack, _swap(stack))


def products(stack, signs, mode):
    """The floor's two products, written as plain matmuls."""
    gradient = ops.matmul(stack, signs) if mode == "columns" else ops.matmul(signs, stack)
    return gram_product(stack, mode), gradient


def products_in_layout(stack, signs, mode):
    """`products`, the gradient written in the stack's own memory layout.

    The stack of a weight sliced along a middle axis is a transposed view of
    the weight; a gradient in that layout is, viewed back, dense in the
    weight's, as an optimizer needs it. PyTorch's eager products take an `out=`
    of any strides, the cheapest way to that layout measured (on (8, 512, 512)
    slices, 5.31 ms against 5.17 for the plain product and 5.71 for the product
    then a copy; on twelve 768x64 heads, 0.29, 0.20 and 0.29 ms); TensorFlow
    and JAX lay out every result themselves.
    """
    if keras.backend.backend() != "torch":
        return products(stack, signs, mode)
    import torch

    gram, gradient = gram_product(stack, mode), torch.empty_like(stack)
    if mode == "columns":
        return gram, torch.matmul(stack, signs, out=gradient)
    return gram, torch.matmul(signs, stack, out=gradient)


def autodiff_penalty(w, plan):
    """The same penalty through plain matmul and abs, for the autodiff to differentiate."""
    gram = gram_product(ortho_ops.to_stack(_backend.current().to_tensor(w), plan), plan.mode)
    residual = gram - ops.eye(plan.gram_size, dtype=gram.dtype)
    return ops.cast(FACTOR * ops.sum(ops.abs(residual)), w.dtype)


def _value_and_grad(penalty, w):
    """A zero-argument callable computing `penalty(w)` and its gradient, as the backend runs it."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(w)

        @tf.function
        def run():
            with tf.GradientTape() as tape:
                value = penalty(variable)
            return value, tape.gradient(value, variable)

        return run
    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(penalty))
        return lambda: jax.block_until_ready(step(w))
    leaf = w.detach().clone().requires_grad_(True)

    def run():
        leaf.grad = None
        value = penalty(leaf)
        value.backward()
        return value, leaf.grad

    return run


def _compiled(fn, *args):
    """A zero-argument callable running `fn(*args)` compiled; the args stay arguments,
    so that no compiler folds the work away as constants."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(fn)
        return lambda: function(*args)
    if backend == "jax":
        import jax

        jitted = jax.jit(fn)
        return lambda: jax.block_until_ready(jitted(*args))
    return lambda: fn(*args)


def _synced(fn):
    """`fn` that returns only once the device has finished (CUDA runs asynchronously)."""
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():

            def run():
                out = fn()
                torch.cuda.synchronize()
                return out

            return run
    return fn


def _torch_minimum():
    """PyTorch: the L1 penalty of a stack as one hand-written `torch.autograd.Function`.

    The same math as `ours` in plain torch calls, with no Keras, checks or
    planning: the Gram, `- I` on its diagonal, `|G|` summed in one reduction,
    `sign(G)` in place, and the gradient product with the scale as its
    `alpha`, written in the stack's strides.
    """
    import torch

    class Minimum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, stack, columns):
            gram = stack.mT @ stack if columns else stack @ stack.mT
            gram.diagonal(dim1=-2, dim2=-1).sub_(1)
            value = torch.linalg.vector_norm(gram, 1)
            ctx.save_for_backward(stack, gram.sign_())
            ctx.columns = columns
            return value

        @staticmethod
        def backward(ctx, upstream):
            stack, signs = ctx.saved_tensors
            out = torch.empty_like(stack)
            factors = (stack, signs) if ctx.columns else (signs, stack)
            product = torch.baddbmm if stack.dim() == 3 else torch.addmm
            return product(out, *factors, beta=0, alpha=2 * float(upstream), out=out), None

    return Minimum


def flops(plan):
    """Multiply-adds x 2 of the Gram and of the gradient product."""
    other = plan.rows if plan.mode == "columns" else plan.cols
    return 2 * (2 * plan.num_slices * plan.gram_size**2 * other)


def measure_shape(label, shape, dtype, rounds, calls, seed=0, min_timing_s=0.0):
    slice_axis = slice_axis_for(label)
    plan = plan_slices(shape, slice_axis)
    rng = np.random.default_rng(seed)
    w = ops.cast(ops.convert_to_tensor(rng.normal(scale=shape[0] ** -0.5, size=shape).astype("float32")), dtype)
    stack = ortho_ops.to_stack(w, plan)
    signs = ops.sign(_math.gram_residual(stack, plan.mode))
    variants = {
        "ours": _value_and_grad(lambda v: keras_ortho.ortho_penalty(v, FACTOR, slice_axis=slice_axis), w),
        "autodiff": _value_and_grad(lambda v: autodiff_penalty(v, plan), w),
        "floor": _compiled(lambda a, b: products(a, b, plan.mode), stack, signs),
    }
    if plan.perm is not None:
        # Slices along a middle axis (the seed's `(l, m, n)`): the floor's products
        # on the weight as laid out, with the layout change to the stack and the
        # gradient's back, dense in the weight's layout, so that the cost of that
        # change alone is measured.
        def laid_out(weight, s):
            gram, gradient = products_in_layout(ortho_ops.to_stack(weight, plan), s, plan.mode)
            return gram, ortho_ops.from_stack(gradient, plan, weight.dtype)

        variants["floor+layout"] = _compiled(laid_out, w, signs)

        # The work `ours` does, called bare: the layout change, the Gram, the
        # elementwise passes over it (|G| summed, sign(G)) and the gradient
        # product with its scale, with no custom gradient, checks or planning
        # around them.
        def bare(weight):
            stack, options = ortho_ops.to_stack(weight, plan), (plan.mode, "l1", "sum", FACTOR)
            value, residual = _math._forward(stack, options)
            gradient = _math._backward(stack, residual, options, 1.0)
            return value, ortho_ops.from_stack(gradient, plan, weight.dtype)

        variants["bare"] = _compiled(bare, w)
        if keras.backend.backend() == "torch":
            # What any eager PyTorch implementation of this math pays: the
            # autograd machinery and the unfused passes over the Gram.
            minimum = _torch_minimum()
            stack_shape = (plan.num_slices, plan.rows, plan.cols)

            def minimal(weight):
                stack = weight.reshape(plan.view).permute(plan.perm).reshape(stack_shape)
                return FACTOR * minimum.apply(stack, plan.mode == "columns")

            variants["minimum"] = _value_and_grad(minimal, w)
    times = median_times(
        {name: _synced(fn) for name, fn in variants.items()}, rounds=rounds, calls=calls, min_timing_s=min_timing_s
    )
    return penalty_row(label, shape, dtype, EXECUTION[keras.backend.backend()], plan, times)


def penalty_row(label, shape, dtype, execution, plan, times):
    """One result row from `median_times` of the variants `ours`, `autodiff` and `floor` (and others)."""
    ms = {name: t["median_s"] * 1e3 for name, t in times.items()}
    return {
        "kernel": label,
        "shape": list(shape),
        "dtype": dtype,
        "backend": keras.backend.backend(),
        "execution": execution,
        "slices": plan.num_slices,
        "mode": plan.mode,
        "ms": ms,
        "iqr_ms": {name: t["iqr_s"] * 1e3 for name, t in times.items()},
        "ours/autodiff": ms["ours"] / ms["autodiff"],
        "ours/floor": ms["ours"] / ms["floor"],
        **(
            {
                "layout/floor": ms["floor+layout"] / ms["floor"],
                "ours/(floor+layout)": ms["ours"] / ms["floor+layout"],
                "bare/(floor+layout)": ms["bare"] / ms["floor+layout"],
                "ours/bare": ms["ours"] / ms["bare"],
            }
            if "floor+layout" in ms
            else {}
        ),
        **(
            {
                "minimum/(floor+layout)": ms["minimum"] / ms["floor+layout"],
                "ours/minimum": ms["ours"] / ms["minimum"],
            }
            if "minimum" in ms
            else {}
        ),
        "ours_gflops": flops(plan) / ms["ours"] / 1e6,
        "floor_gflops": flops(plan) / ms["floor"] / 1e6,
    }


def plain_matmul_gflops(dtype, size, rounds, calls):
    """GFLOP/s of one square matmul on this backend and device, the yardstick."""
    a = ops.cast(ops.convert_to_tensor(np.random.default_rng(1).normal(size=(size, size)).astype("float32")), dtype)
    matmul = _synced(_compiled(ops.matmul, a, a))
    seconds = median_times({"matmul": matmul}, rounds=rounds, calls=calls)["matmul"]["median_s"]
    return 2 * size**3 / seconds / 1e9


def run(quick, dtypes=("float32",), log=print):
    """Every shape in each dtype on the running backend; rows and the matmul yardstick."""
    shapes = QUICK_SHAPES if quick else CORE_SHAPES + LAYER_SHAPES
    rounds, calls = (2, 1) if quick else (11, 3)
    size = 256 if quick else 1024
    rows = []
    for dtype in dtypes:
        for label, shape in shapes:
            row = measure_shape(label, shape, dtype, rounds, calls, min_timing_s=0.0 if quick else 0.03)
            log(
                f"  {row['backend']:<10} {label:<22} {dtype:<8} ours {row['ms']['ours']:8.2f} ms"
                f"  ours/autodiff {row['ours/autodiff']:.2f}  ours/floor {row['ours/floor']:.2f}"
            )
            rows.append(row)
    yardstick = {dtype: plain_matmul_gflops(dtype, size, 3 if quick else 11, 3) for dtype in dtypes}
    return {"rows": rows, "matmul_gflops": yardstick, "matmul_size": size}
