"""TensorFlow in depth: penalty plus gradient against autodiff, Keras, and the matmul floor.

The same shapes as `backend_penalty` (which compares the backends), here in
every TensorFlow execution mode (graph, XLA, eager) and in bfloat16 too.

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
from backend_penalty import CORE_SHAPES, FACTOR, LAYER_SHAPES, QUICK_SHAPES, penalty_row, slice_axis_for
from harness import median_times

import keras_ortho
from keras_ortho import _math, ops
from keras_ortho._backend import tensorflow as tf_backend
from keras_ortho._slicing import plan_slices


def autodiff_penalty(w, slice_axis):
    """The same penalty, differentiated by the tape through matmul and abs."""
    tensor, plan = ops.prepare(w, slice_axis, "auto")
    compute_dtype = ops.compute_dtype(tensor.dtype)
    stack = ops.to_stack(tensor, plan)
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
    saved = tf_backend._GRAM_BLOCK
    tf_backend._GRAM_BLOCK = size
    try:
        yield
    finally:
        tf_backend._GRAM_BLOCK = saved


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


def measure_shape(label, shape, dtype, execution, rounds, calls, block_variants=False):
    slice_axis = slice_axis_for(label)
    plan = plan_slices(shape, slice_axis)
    variable = tf.Variable(tf.cast(tf.random.normal(shape, stddev=shape[0] ** -0.5), dtype))

    variants = {
        "ours": _compile(
            _value_and_grad(lambda v: keras_ortho.ortho_penalty(v, FACTOR, slice_axis=slice_axis), variable),
            execution,
        ),
        "autodiff": _compile(_value_and_grad(lambda v: autodiff_penalty(v, slice_axis), variable), execution),
    }
    if block_variants and plan.gram_size >= tf_backend._BLOCKED_FROM:
        for name, size in BLOCK_VARIANTS.items():
            ours = _value_and_grad(lambda v: keras_ortho.ortho_penalty(v, FACTOR, slice_axis=slice_axis), variable)
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

    stack = ops.to_stack(tf.convert_to_tensor(variable), plan)
    signs = tf.sign(_math.gram_residual(stack, plan.mode))
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
    row = penalty_row(label, shape, dtype, execution, plan, times)
    row["failed"] = failed
    ms = row["ms"]
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
