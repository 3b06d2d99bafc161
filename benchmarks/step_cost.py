"""What the penalty costs inside a training step of real models, on the running backend.

For ResNet50 (32x32 images, batch 32) and a small BERT (4 layers, 256 wide,
sequences of 64, batch 8), from the same initial weights and batches, timed
interleaved in one process. BERT's batch is kept small so that its penalty is
a share of the step that rounds can resolve: at 16 sequences of 128 it was 3
to 5% of the step, within the step's own spread from round to round.

* `plain`: `fit` without regularizer.
* `ortho`: every kernel regularized by `OrthoRegularizer(1e-2, reduction="mean")`
  (per channel, per head, as the layers slice them).
* `lazy`: the same, with `OrthoSchedule(every=16)`: the penalty on one step
  in 16, with 16 times the weight (StyleGAN2's lazy regularization).
* `penalty`: the penalty of every kernel and its gradient alone, compiled
  as the backend's `fit` runs it (TensorFlow graph, `jax.jit`, PyTorch eagerly).
* `serial`: the same, one kernel after another. Alone on idle cores, TensorFlow
  runs independent kernels' penalties side by side; inside a step, where the
  model's own operations keep the cores busy, they cannot gain from that.
* `added`: `penalty`, with each kernel's gradient added into a gradient of
  the kernel's size, as a step sums it into the data gradient: the one pass
  over the weights that any regularizer's gradient costs in a step.
* `l2`, `l2 added`: the control. `fit` with Keras's own `L2` on the same
  kernels, and that `L2` alone with its gradient added. Keras's step charges
  every regularized weight for collecting its loss, summing it into the
  total and running its backward node, whatever the regularizer computes;
  an `L2` costs little else. So `(ortho - l2) / (added - l2 added)` is what
  the penalty costs in the step beyond what the step charges any regularizer,
  over what it costs alone beyond `L2` alone.

Each round runs one `fit` of 32 steps per variant (in a rotating order) on
data in memory and times its last 16 steps, one lazy period, with a callback
(the first 16 hold the tracing); the figures are medians per step over rounds.
`overhead / penalty` is `(ortho - plain) / penalty`: 1.0 when the penalty
costs inside the step what it costs alone; its spread is that of the rounds'
`(ortho - plain)`, each round's pair measured side by side. The same ratio
is given against `serial`, against `added`, and beyond the `L2` control. The penalty's rate,
in GFLOP/s (its Grams and gradient products: `4 r c k` per `r x c` slice of
Gram side `k`), is set against two yardsticks on the same backend: the same
products of these kernels alone (`products`: each kernel already laid out as its
stack, the Gram and the gradient product and nothing else), and a plain float32
matmul of side 1024.
"""

import time
import warnings

import keras
import numpy as np
from harness import EXECUTION, median_iqr, median_times

import keras_ortho

STEPS = 16  # timed steps per fit: one lazy period
EVERY = 16


class StepTimer(keras.callbacks.Callback):
    """Seconds per step over the last `STEPS` steps of a fit of `2 * STEPS`."""

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    @property
    def per_step(self):
        return (self.ends[-1] - self.ends[-STEPS - 1]) / STEPS


def small_cnn(size):
    """Quick mode's stand-in for ResNet50: a convolution, a depthwise one, a dense head (seconds to compile)."""
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.DepthwiseConv2D(3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


def resnet(quick):
    size, batch = (16, 8) if quick else (32, 32)
    if quick:
        model = small_cnn(size)
    else:
        model = keras.applications.ResNet50(
            weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None
        )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(2 * STEPS * batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=2 * STEPS * batch)
    return model, x, y, batch


def bert(quick):
    import keras_hub

    layers, width, length, batch = (1, 32, 16, 4) if quick else (4, 256, 64, 8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=1000,
        num_layers=layers,
        num_heads=4,
        hidden_dim=width,
        intermediate_dim=4 * width,
        max_sequence_length=length,
    )
    tokens = keras.Input((length,), dtype="int32")
    features = backbone(
        {"token_ids": tokens, "segment_ids": keras.ops.zeros_like(tokens), "padding_mask": keras.ops.ones_like(tokens)}
    )["pooled_output"]
    model = keras.Model(tokens, keras.layers.Dense(2)(features))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, size=(2 * STEPS * batch, length)).astype("int32")
    y = rng.integers(0, 2, size=2 * STEPS * batch)
    return model, x, y, batch


MODELS = {"ResNet50 32x32": resnet, "BERT 4x256": bert}


def _fit_call(build, variant, quick):
    keras.utils.set_random_seed(0)
    model, x, y, batch = build(quick)
    if variant != "plain":
        with warnings.catch_warnings():  # keras-hub's configs cannot carry it: known, not measured here
            warnings.filterwarnings("ignore", message="regularize: .* config cannot carry")
            keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(1e-2, reduction="mean"))
        if variant == "l2":  # the control: Keras's own L2 on the same kernels
            for v in model.trainable_weights:
                if isinstance(v.regularizer, keras_ortho.OrthoRegularizer):
                    v.regularizer = keras.regularizers.L2(1e-4)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = StepTimer()
    callbacks = ([keras_ortho.OrthoSchedule(every=EVERY)] if variant == "lazy" else []) + [timer]

    def call():
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        return timer.per_step

    return call, model


def _penalty_alone(model, serial=False, added=False):
    """Value and gradient of the penalty of every regularized kernel, compiled as `fit` runs it.

    With `serial`, each kernel's value and gradient wait for the previous
    kernel's gradient: the kernels one at a time, as they run between the
    model's own operations in a step that keeps every core busy. Without it the
    backend may run independent kernels side by side on idle cores (TensorFlow's
    graph executor does), which no training step leaves free. Eager PyTorch
    runs them one at a time either way.

    With `added`, each kernel's gradient is added into a gradient of its size
    (fixed random values), as the step adds it into the data gradient.
    """
    kernels = [v for v in model.trainable_weights if v.regularizer is not None]
    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    data = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype(v.dtype)) for v in kernels] if added else []

    def total(variables):
        return sum(v.regularizer(v) for v in variables)

    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def run():
            with tf.GradientTape() as tape:
                value = total(kernels)
            gradients = tape.gradient(value, [v.value for v in kernels])
            if added:
                gradients = [g + d for g, d in zip(gradients, data, strict=True)]
            return value, gradients

        @tf.function
        def run_serial():
            value, gradients = 0.0, []
            for v in kernels:
                # Every op made here, the variable's read first, waits for the last gradient.
                with tf.control_dependencies(gradients[-1:]):
                    with tf.GradientTape() as tape:
                        one = v.regularizer(v)
                    gradients.append(tape.gradient(one, v.value))
                value += one
            return value, gradients

        return (run_serial if serial else run), len(kernels)
    if backend == "jax":
        import jax

        def of_values(values, variables=kernels):
            with keras.StatelessScope(list(zip(variables, values, strict=True))):
                return total(variables)

        def of_values_serial(values):
            value, gradients = 0.0, []
            for v, w in zip(kernels, values, strict=True):
                if gradients:  # w is read only once the last gradient is there
                    gradients[-1], w = jax.lax.optimization_barrier((gradients[-1], w))
                one, gradient = jax.value_and_grad(lambda w, v=v: of_values(w, [v]))([w])
                value, gradients = value + one, gradients + gradient
            return value, gradients

        def of_values_added(values, data):
            value, gradients = jax.value_and_grad(of_values)(values)
            return value, [g + d for g, d in zip(gradients, data, strict=True)]

        values = [v.value for v in kernels]
        if added:
            step = jax.jit(of_values_added)
            return (lambda: jax.block_until_ready(step(values, data))), len(kernels)
        step = jax.jit(of_values_serial if serial else jax.value_and_grad(of_values))
        return (lambda: jax.block_until_ready(step(values))), len(kernels)
    parameters = [v.value for v in kernels]

    def run():
        # With `added`, autograd adds the gradient into the `.grad` already there, in place.
        for p, d in zip(parameters, data or [None] * len(parameters), strict=True):
            p.grad = d
        total(kernels).backward()

    return run, len(kernels)


def _bare_products(model):
    """The Gram and gradient products of every regularized kernel, alone: the matmul rate on these kernels.

    Each kernel is laid out beforehand as the `(slices, rows, cols)` stack its
    layer's rule makes of it, with `sign(G)` beside it, both dense; what is
    timed is the two products per kernel (`backend_penalty.products`),
    compiled as `fit` runs the step.
    """
    from backend_penalty import _compiled, products

    from keras_ortho import _binding, _math
    from keras_ortho import ops as ortho_ops

    stacks, signs, modes = [], [], []
    for v in model.trainable_weights:
        regularizer = v.regularizer
        if not isinstance(regularizer, keras_ortho.OrthoRegularizer):
            continue
        tensor, plan = ortho_ops.prepare(v, regularizer.slice_axis, regularizer.mode, rule=_binding.known_rule(v))
        stack = keras.ops.convert_to_numpy(ortho_ops.to_stack(tensor, plan))
        sign = keras.ops.convert_to_numpy(
            keras.ops.sign(_math.gram_residual(keras.ops.convert_to_tensor(stack), plan.mode))
        )
        stacks.append(keras.ops.convert_to_tensor(np.ascontiguousarray(stack)))
        signs.append(keras.ops.convert_to_tensor(np.ascontiguousarray(sign)))
        modes.append(plan.mode)

    def every_kernel(stacks, signs):
        return [products(a, b, mode) for a, b, mode in zip(stacks, signs, modes, strict=True)]

    return _compiled(every_kernel, stacks, signs)


def penalty_flops(model):
    """Multiply-adds times 2 of the Grams and gradient products of every regularized kernel."""
    from keras_ortho import report  # its `measure` gives each kernel's slicing

    total = 0
    for entry in report.measure(model):
        rows, cols = entry["slice_shape"]
        side = cols if entry["gram"] == "columns" else rows
        total += entry["slices"] * 4 * rows * cols * side
    return total


def matmul_gflops(size=1024, rounds=9):
    """GFLOP/s of a float32 `size x size` matmul, compiled as the backend runs the step."""
    backend = keras.backend.backend()
    a = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(size, size)).astype("float32"))
    if backend == "tensorflow":
        import tensorflow as tf

        product = tf.function(lambda x: tf.linalg.matmul(x, x))
        call = lambda: product(a)  # noqa: E731
    elif backend == "jax":
        import jax

        product = jax.jit(lambda x: jax.numpy.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
        call = lambda: jax.block_until_ready(product(a))  # noqa: E731
    else:
        import torch

        call = lambda: torch.matmul(a, a)  # noqa: E731
    seconds = median_times({"matmul": call}, rounds=rounds, calls=3, warmup=2)["matmul"]["median_s"]
    return 2 * size**3 / seconds / 1e9


def interleaved(calls, rounds):
    """`{variant: [what each call returned, round by round]}`, called in rotating order."""
    names = list(calls)
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(calls[name]())
    return samples


def run(quick, log=print):
    rounds = 2 if quick else 5
    rows = []
    yardstick = matmul_gflops()
    for name, build in MODELS.items():
        name = name if not quick else f"{name} (quick: tiny stand-ins)"
        calls, models = {}, {}
        for variant in ("plain", "ortho", "lazy", "l2"):
            calls[variant], models[variant] = _fit_call(build, variant, quick)
        samples = interleaved(calls, rounds)
        per_step = {variant: median_iqr(s) for variant, s in samples.items()}
        # After the fits: JAX's fit donates the weights' buffers it was handed.
        model = models["ortho"]
        penalty, kernels = _penalty_alone(model)
        l2_added, l2_kernels = _penalty_alone(models["l2"], added=True)
        if l2_kernels != kernels:
            raise RuntimeError(f"the L2 control regularizes {l2_kernels} kernels, the penalty {kernels}")
        alone = {
            "penalty": penalty,
            "products": _bare_products(model),
            "added": _penalty_alone(model, added=True)[0],
            "l2 added": l2_added,
        }
        if keras.backend.backend() != "torch":  # eager PyTorch's penalty already runs one kernel at a time
            alone["serial"] = _penalty_alone(model, serial=True)[0]
        alone = median_times(alone, rounds=rounds * 4, calls=2, warmup=2)
        ms = {v: median * 1e3 for v, (median, _) in per_step.items()}
        spread = {v: iqr * 1e3 for v, (_, iqr) in per_step.items()}
        for variant in alone:
            ms[variant], spread[variant] = alone[variant]["median_s"] * 1e3, alone[variant]["iqr_s"] * 1e3
        ms.setdefault("serial", ms["penalty"])
        spread.setdefault("serial", spread["penalty"])
        # The overhead of each round's regularized step over the same round's plain one.
        overheads = [(o - p) * 1e3 for o, p in zip(samples["ortho"], samples["plain"], strict=True)]
        beyond_l2 = ms["added"] - ms["l2 added"]  # the penalty alone, beyond what L2 alone costs
        over_l2 = [(o - c) * 1e3 for o, c in zip(samples["ortho"], samples["l2"], strict=True)]
        row = {
            "model": name,
            "kernels": kernels,
            "execution": EXECUTION[keras.backend.backend()],
            "ms": ms,
            "iqr_ms": spread,
            "ortho_over_plain": ms["ortho"] / ms["plain"],
            "lazy_over_plain": ms["lazy"] / ms["plain"],
            "overhead_over_penalty": (ms["ortho"] - ms["plain"]) / ms["penalty"],
            "overhead_over_penalty_rounds": median_iqr([o / ms["penalty"] for o in overheads]),
            "overhead_over_serial": (ms["ortho"] - ms["plain"]) / ms["serial"],
            "overhead_over_serial_rounds": median_iqr([o / ms["serial"] for o in overheads]),
            "overhead_over_added": (ms["ortho"] - ms["plain"]) / ms["added"],
            "overhead_over_added_rounds": median_iqr([o / ms["added"] for o in overheads]),
            "beyond_l2": (ms["ortho"] - ms["l2"]) / beyond_l2,
            "beyond_l2_rounds": median_iqr([o / beyond_l2 for o in over_l2]),
            "penalty_gflops": penalty_flops(model) / (ms["penalty"] / 1e3) / 1e9,
            "products_gflops": penalty_flops(model) / (ms["products"] / 1e3) / 1e9,
            "matmul_gflops": yardstick,
        }
        row["penalty_over_matmul"] = row["penalty_gflops"] / yardstick
        row["penalty_over_products"] = row["penalty_gflops"] / row["products_gflops"]
        log(
            f"  {name:<16} ms/step: plain {ms['plain']:.1f}, ortho {ms['ortho']:.1f}, lazy {ms['lazy']:.1f}, "
            f"penalty alone {ms['penalty']:.1f} (one kernel at a time {ms['serial']:.1f}, "
            f"gradient added {ms['added']:.1f}); Keras L2 {ms['l2']:.1f}, alone with its gradient added "
            f"{ms['l2 added']:.1f}; overhead/penalty {row['overhead_over_penalty']:.2f} "
            f"(/one at a time {row['overhead_over_serial']:.2f}, /gradient added {row['overhead_over_added']:.2f}, "
            f"beyond L2 {row['beyond_l2']:.2f}); "
            f"penalty {row['penalty_gflops']:.0f} GFLOP/s, these kernels' bare products "
            f"{row['products_gflops']:.0f}, square matmul {yardstick:.0f}"
        )
        rows.append(row)
    return {"rows": rows, "steps_per_call": STEPS, "every": EVERY}
