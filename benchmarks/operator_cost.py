"""The operator penalty's cost against the kernel penalty's, on every convolution of real models, per backend.

    python benchmarks/operator_cost.py                 # ResNet50 and ConvNeXtTiny, each backend installed
    python benchmarks/operator_cost.py --quick         # MobileNetV2 (alpha 0.35): checks that the script runs

For each model (`keras.applications`, `weights=None`) and each Keras backend,
in a process of its own: the L1 penalty of every convolution kernel summed,
plus its gradient with respect to every kernel, through the backend's autodiff
(which takes keras_ortho's closed-form gradient), compiled as users run it
(TensorFlow `tf.function`, JAX `jax.jit`, PyTorch eagerly). `kernel` is
`OrthoRegularizer()`'s reading of each kernel (one matrix, per group for grouped
and depthwise ones), `operator` is `OrthoRegularizer(operator=True)`'s. The two
are timed interleaved in one process; the figures are medians over rounds with
their interquartile range, and the ratio of the medians. Writes
`results/operator.md` and `results/operator.json`. Speed is never asserted.
"""

import argparse
import json
import math
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

MODELS = ("ResNet50", "ConvNeXtTiny")
QUICK_MODELS = ("MobileNetV2",)


def build(name):
    import keras

    if name == "MobileNetV2":
        return keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(96, 96, 3))
    return getattr(keras.applications, name)(weights=None)


def value_and_grad(total, values):
    """A zero-argument callable: `total(values)` and its gradient with respect to each value, compiled."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(values):
            with tf.GradientTape() as tape:
                tape.watch(values)
                value = total(values)
            return value, tape.gradient(value, values)

        return lambda: step(values)
    if backend == "jax":
        import jax

        jitted = jax.jit(jax.value_and_grad(total))
        return lambda: jax.block_until_ready(jitted(values))
    import torch

    leaves = [torch.tensor(keras.ops.convert_to_numpy(v), requires_grad=True) for v in values]

    def step():
        for leaf in leaves:
            leaf.grad = None
        value = total(leaves)
        value.backward()
        return value

    return step


def measure(name, rounds):
    """`{...}`: the model's convolutions, and the two penalties' times, on the running backend."""
    import warnings

    import keras

    from keras_ortho import _binding
    from keras_ortho import ops as ortho_ops
    from keras_ortho.conv import convolution_kernels

    model = build(name)
    kernels = [variable for _, _, variable, _ in convolution_kernels(model)]
    rules = [_binding.known_rule(v) for v in kernels]
    plans = {
        variant: [
            ortho_ops.plan_weight(v.shape, v.dtype, rule=rule, operator=variant == "operator")
            for v, rule in zip(kernels, rules, strict=True)
        ]
        for variant in ("kernel", "operator")
    }
    values = [keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(v)) for v in kernels]

    def total_of(variant):
        def total(values):
            return sum(
                ortho_ops.penalty_of(value, plan, 1e-3) for value, plan in zip(values, plans[variant], strict=True)
            )

        return total

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = {variant: value_and_grad(total_of(variant), values) for variant in plans}
        times = harness.median_times(variants, rounds=rounds, warmup=2, min_timing_s=0.2)
    impossible = sum(plan.impossible is not None for plan in plans["operator"])
    return {
        "model": name,
        "convolutions": len(kernels),
        "parameters": sum(math.prod(v.shape) for v in kernels),
        "cannot_be_orthogonal": impossible,
        "ms": {k: t["median_s"] * 1e3 for k, t in times.items()},
        "iqr_ms": {k: t["iqr_s"] * 1e3 for k, t in times.items()},
        "rounds": rounds,
    }


def markdown(results):
    machine = results["machine"]
    rows = []
    for row in results["rows"]:
        ms, iqr = row["ms"], row["iqr_ms"]
        rows.append(
            [
                row["model"],
                row["backend"],
                row["convolutions"],
                f"{ms['kernel']:.1f} ± {iqr['kernel']:.1f}",
                f"{ms['operator']:.1f} ± {iqr['operator']:.1f}",
                f"{ms['operator'] / ms['kernel']:.1f}",
                row["cannot_be_orthogonal"],
            ]
        )
    table = harness.markdown_table(
        [
            "model",
            "backend",
            "convolutions",
            "kernel ms (median ± IQR)",
            "operator ms (median ± IQR)",
            "operator / kernel",
            "no orthogonal operator",
        ],
        rows,
    )
    stamp = (
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores), Keras {machine['keras']}, "
        f"TensorFlow {machine['tensorflow']}, JAX {machine['jax']}, PyTorch {machine['torch']}; "
        f"{results['rows'][0]['rounds'] if results['rows'] else 0} interleaved rounds per backend."
    )
    notes = (
        "L1 penalty of every convolution kernel plus its gradient with respect to each, summed over the model, "
        "compiled as users run it (TensorFlow graph, JAX jit, PyTorch eager). `no orthogonal operator`: the "
        'convolutions whose shape admits no orthogonal operator on the side "auto" takes (they warn once).'
    )
    return f"{table}\n\n{notes}\n\n{stamp}\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 at alpha 0.35, few rounds")
    parser.add_argument("--backends", default=None, help="comma-separated Keras backends (default: each installed)")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models, rounds = (QUICK_MODELS, 2) if args.quick else (MODELS, 7)
    if args.worker:
        print(json.dumps([measure(name, rounds) for name in models]))
        return
    out = args.out or HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": harness.machine_stamp(), "quick": args.quick, "rows": []}
    for backend, rows in harness.run_in_backend_processes(__file__, args.backends, args.quick):
        for row in rows:
            row["backend"] = backend
            results["rows"].append(row)
            ms = row["ms"]
            print(f"{row['model']} on {backend}: kernel {ms['kernel']:.1f} ms, operator {ms['operator']:.1f} ms")
    harness.write_json(out / "operator.json", results)
    (out / "operator.md").write_text(markdown(results))
    print(f"wrote {out / 'operator.md'} and {out / 'operator.json'}")


if __name__ == "__main__":
    main()
