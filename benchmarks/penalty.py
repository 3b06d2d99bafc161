"""Penalty plus gradient: ours against autodiff, Keras, and the matmul floor.

For each kernel shape the variants compute the penalty and its gradient with
respect to a `tf.Variable` holding the kernel:

* `ours`: `keras_ortho.ortho_penalty` under a GradientTape (the analytic
  gradient through `tf.custom_gradient`), as `model.fit` runs it.
* `autodiff`: the same formula, same slicing, differentiated by the tape.
* `keras`: `keras.regularizers.OrthogonalRegularizer` (rank 2 only; a
  different objective, the cost a user pays today).
* `floor`: the two bare batched matmuls any implementation performs, the
  Gram `Phi^T Phi` and the product `Phi S`, on inputs already laid out as a
  `(num_slices, rows, cols)` stack in the compute dtype (one plain matmul
  each for a single slice).

For Grams of side >= 1024, which keras_ortho builds from their upper block
triangle, the headline configuration also times `ours` with other block sides
(`unblocked`: one full matmul; `blocks 128`, `blocks 512`), so that the choice
of 256 is measured in the same run.
"""

import contextlib

import keras
import tensorflow as tf

import keras_ortho
from keras_ortho import _ops
from keras_ortho._slicing import plan_slices

from harness import median_times

# (label, shape): the issue's core shapes, then kernels users have.
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


def _slice_axis(label):
    # The output projection is sliced per head (axis 0) as its variable path
    # would make the default do; here the variable has no Keras path.
    return 0 if label.startswith("MHA output") else None


def autodiff_penalty(w, slice_axis):
    """The same penalty, differentiated by the tape through matmul and abs."""
    tensor, plan, compute_dtype = _ops._prepare(w, slice_axis, "auto")
    stack = _ops._to_stack(tensor, plan, compute_dtype)
    if plan.mode == "columns":
        gram = tf.linalg.matmul(stack, stack, adjoint_a=True)
    else:
        gram = tf.linalg.matmul(stack, stack, adjoint_b=True)
    residual = gram - tf.eye(plan.gram_size, dtype=compute_dtype)
    return tf.cast(FACTOR * tf.reduce_sum(tf.abs(residual)), tensor.dtype)


def _value_and_grad(penalty, variable):
    def run():
        with tf.GradientTape() as tape:
            value = penalty(variable)
        return value, tape.gradient(value, variable)

    return run


@contextlib.contextmanager
def _gram_block(size):
    saved = _ops._GRAM_BLOCK
    _ops._GRAM_BLOCK = size
    try:
        yield
    finally:
        _ops._GRAM_BLOCK = saved


def _with_gram_block(fn, size):
    """`fn` run (and so traced) with another block side; `size=None`: never blocked."""

    def run():
        with _gram_block(size if size is not None else 1 << 62):  # one block: one matmul
            return fn()

    return run


BLOCK_VARIANTS = {"unblocked": None, "blocks 128": 128, "blocks 512": 512}


def _compile(fn, execution):
    if execution == "eager":
        return fn
    return tf.function(fn, jit_compile=execution == "xla")


def flops(plan):
    """Multiply-adds x 2 of the Gram and of the gradient product."""
    other = plan.rows if plan.mode == "columns" else plan.cols
    return 2 * (2 * plan.num_slices * plan.gram_size**2 * other)


def measure_shape(label, shape, dtype, execution, rounds, calls, block_variants=False):
    slice_axis = _slice_axis(label)
    plan = plan_slices(shape, slice_axis)
    variable = tf.Variable(tf.cast(tf.random.normal(shape, stddev=shape[0] ** -0.5), dtype))
    compute_dtype = tf.float32 if variable.dtype.size < 4 else variable.dtype

    variants = {
        "ours": _compile(
            _value_and_grad(
                lambda v: keras_ortho.ortho_penalty(v, FACTOR, slice_axis=slice_axis), variable
            ),
            execution,
        ),
        "autodiff": _compile(
            _value_and_grad(lambda v: autodiff_penalty(v, slice_axis), variable), execution
        ),
    }
    if block_variants and plan.gram_size >= _ops._BLOCKED_FROM:
        for name, size in BLOCK_VARIANTS.items():
            ours = _value_and_grad(
                lambda v: keras_ortho.ortho_penalty(v, FACTOR, slice_axis=slice_axis), variable
            )
            variants[name] = _with_gram_block(_compile(ours, execution), size)
    failed = {}
    if len(shape) == 2:
        keras_regularizer = keras.regularizers.OrthogonalRegularizer(FACTOR, mode=plan.mode)
        variants["keras"] = _compile(_value_and_grad(keras_regularizer, variable), execution)
        try:
            variants["keras"]()
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as error:  # float32 factor x weight
            failed["keras"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1].strip()}"
            del variants["keras"]

    stack = _ops._to_stack(tf.convert_to_tensor(variable), plan, compute_dtype)
    signs = tf.sign(_ops.gram_residual(stack, plan.mode))
    if plan.mode == "columns":
        floor = lambda: (  # noqa: E731
            tf.linalg.matmul(stack, stack, adjoint_a=True),
            tf.linalg.matmul(stack, signs),
        )
    else:
        floor = lambda: (  # noqa: E731
            tf.linalg.matmul(stack, stack, adjoint_b=True),
            tf.linalg.matmul(signs, stack),
        )
    variants["floor"] = _compile(floor, execution)

    times = median_times(variants, rounds=rounds, calls=calls)
    ms = {name: t["median_s"] * 1e3 for name, t in times.items()}
    row = {
        "kernel": label,
        "shape": list(shape),
        "dtype": dtype,
        "execution": execution,
        "slices": plan.num_slices,
        "mode": plan.mode,
        "ms": ms,
        "iqr_ms": {name: t["iqr_s"] * 1e3 for name, t in times.items()},
        "ours/autodiff": ms["ours"] / ms["autodiff"],
        "ours/floor": ms["ours"] / ms["floor"],
        "ours_gflops": flops(plan) / ms["ours"] / 1e6,
        "failed": failed,
        "floor_gflops": flops(plan) / ms["floor"] / 1e6,
    }
    if "keras" in ms:
        row["ours/keras"] = ms["ours"] / ms["keras"]
    for name in BLOCK_VARIANTS:
        if name in ms:
            row[f"{name}/floor"] = ms[name] / ms["floor"]
    return row


def plain_matmul_gflops(dtype, size, rounds, calls):
    """GFLOP/s of one square `tf.matmul` in this process, the machine's yardstick."""
    a = tf.cast(tf.random.normal((size, size)), dtype)
    matmul = tf.function(lambda: tf.linalg.matmul(a, a))
    seconds = median_times({"matmul": matmul}, rounds=rounds, calls=calls)["matmul"]["median_s"]
    return 2 * size**3 / seconds / 1e9


HEADLINE = ("float32", "graph")


def run(quick, dtypes=("float32", "bfloat16"), executions=("graph", "xla", "eager"), log=print):
    """Measures every (shape, dtype, execution); returns the rows and the yardstick.

    The headline configuration (float32, graph mode) gets 15 rounds of 3 calls
    per variant; the others 7 rounds.
    """
    rows = []
    size = 256 if quick else 1024
    yardstick = {dtype: plain_matmul_gflops(dtype, size, 3 if quick else 15, 3) for dtype in dtypes}
    for dtype in dtypes:
        for execution in executions:
            headline = (dtype, execution) == HEADLINE
            if quick:
                shapes, rounds, calls = QUICK_SHAPES, 2, 1
            else:
                shapes = CORE_SHAPES + LAYER_SHAPES if headline else LAYER_SHAPES
                rounds, calls = (15, 3) if headline else (7, 2)
            for label, shape in shapes:
                row = measure_shape(label, shape, dtype, execution, rounds, calls, block_variants=headline)
                log(
                    f"  {label:<22} {dtype:<8} {execution:<5} ours {row['ms']['ours']:8.2f} ms"
                    f"  ours/autodiff {row['ours/autodiff']:.2f}  ours/floor {row['ours/floor']:.2f}"
                )
                rows.append(row)
    return {"rows": rows, "matmul_gflops": yardstick, "matmul_size": size}
