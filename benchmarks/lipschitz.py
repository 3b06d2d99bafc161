"""Lipschitz bounds: how tight, how fast, and what the constraint costs a training step, per backend.

    python benchmarks/lipschitz.py            # each backend installed; ResNet50 for speed
    python benchmarks/lipschitz.py --quick    # MobileNetV2 (alpha 0.35, 32 x 32): checks that the script runs

Three tables, each backend in a process of its own:

* **Tightness**: single convolutions with random kernels on small images. The
  exact norm of the operator the Keras layer applies (the identity basis
  pushed through the layer, numpy's SVD) beside `lipschitz_bound`, the
  circular operator's norm on the image's own size (`conv_singular_values`,
  which is no bound for zero padding), and the norm of the kernel reshaped
  to a matrix (what `keras.layers.SpectralNormalization` sets to 1).
* **Speed**: `lipschitz_bound(model)` and `conv_singular_values(model)`
  (each compiled by the backend; their second calls) against the same
  singular values in numpy on the host, as `conv_singular_values` computed
  them before it moved to the backend (`_conv.extreme_singular_values`),
  timed interleaved in one process.
* **The constraint's cost**: a training step with `LipschitzConstraint(1.0)`
  on every kernel against the same step without it, interleaved: a small CNN
  on 8 x 8 images on every backend, and ResNet50 at 224 x 224 (batch 4) on
  TensorFlow (not with `--quick`).

Medians over rounds with their interquartile range. Writes
`results/lipschitz.md` and `results/lipschitz.json` (`lipschitz_quick.*`
with `--quick`). Speed is never asserted.
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

# (name, layer constructor arguments, input shape): the tightness table's convolutions.
CONVOLUTIONS = (
    ("Conv2D 3x3 same, 16 to 16", ("Conv2D", (16, 3), {"padding": "same"}), (8, 8, 16)),
    ("Conv2D 3x3 same, 32 to 32", ("Conv2D", (32, 3), {"padding": "same"}), (8, 8, 32)),
    ("Conv2D 5x5 same, 8 to 16", ("Conv2D", (16, 5), {"padding": "same"}), (10, 10, 8)),
    ("Conv2D 3x3 valid stride 2", ("Conv2D", (16, 3), {"strides": 2}), (9, 9, 8)),
    ("Conv2D 3x3 same dilation 2", ("Conv2D", (8, 3), {"padding": "same", "dilation_rate": 2}), (8, 8, 8)),
    ("DepthwiseConv2D 3x3 stride 2", ("DepthwiseConv2D", (3,), {"padding": "same", "strides": 2}), (8, 8, 8)),
    ("Conv2DTranspose 3x3 stride 2", ("Conv2DTranspose", (8, 3), {"padding": "same", "strides": 2}), (4, 4, 8)),
    ("Conv1D 5 causal", ("Conv1D", (8, 5), {"padding": "causal"}), (16, 8)),
)


def speed_model(quick):
    import keras

    if quick:
        return "MobileNetV2 (alpha 0.35, 32 x 32)", keras.applications.MobileNetV2(
            weights=None, alpha=0.35, input_shape=(32, 32, 3)
        )
    return "ResNet50 (224 x 224)", keras.applications.ResNet50(weights=None)


def small_cnn(constraint):
    import keras

    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(16, 3, padding="same", activation="relu", kernel_constraint=constraint),
            L.Conv2D(32, 3, strides=2, padding="same", activation="relu", kernel_constraint=constraint),
            L.Conv2D(32, 3, padding="same", activation="relu", kernel_constraint=constraint),
            L.GlobalAveragePooling2D(),
            L.Dense(10, kernel_constraint=constraint),
        ]
    )


def tightness(rng):
    import keras
    import numpy as np

    import keras_ortho

    rows = []
    for name, (cls, args, kwargs), shape in CONVOLUTIONS:
        layer = getattr(keras.layers, cls)(*args, use_bias=False, **kwargs)
        model = keras.Sequential([keras.Input(shape), layer])
        kernel = layer.weights[0]
        kernel.assign(rng.normal(size=kernel.shape).astype("float32"))
        size = math.prod(shape)
        basis = np.eye(size, dtype="float32").reshape((size, *shape))
        operator = keras.ops.convert_to_numpy(layer(basis)).reshape(size, -1).astype("float64")
        exact = float(np.linalg.norm(operator, 2))
        w = keras.ops.convert_to_numpy(kernel).astype("float64")
        matrix = (
            w.reshape(-1, w.shape[-1]) if cls != "Conv2DTranspose" else np.moveaxis(w, -1, -2).reshape(-1, w.shape[-2])
        )
        rows.append(
            {
                "layer": name,
                "image": "x".join(map(str, shape[:-1])),
                "exact": exact,
                "bound": keras_ortho.lipschitz_bound(model),
                "circular": next(iter(keras_ortho.conv_singular_values(model).values())).largest,
                "reshaped": float(np.linalg.norm(matrix, 2)),
            }
        )
    return rows


def timed(variants, rounds):
    times = harness.median_times(variants, rounds=rounds, warmup=1)
    return {k: {"ms": t["median_s"] * 1e3, "iqr_ms": t["iqr_s"] * 1e3, "rounds": rounds} for k, t in times.items()}


def speed(quick):
    import keras

    import keras_ortho
    from keras_ortho import _conv, conv

    name, model = speed_model(quick)
    kernels = conv.plan_measurements(model)

    def on_the_host():
        return [_conv.extreme_singular_values(keras.ops.convert_to_numpy(v), g, n) for _, v, g, n in kernels]

    variants = {
        "lipschitz_bound": lambda: keras_ortho.lipschitz_bound(model),
        "conv_singular_values": lambda: keras_ortho.conv_singular_values(model),
        "numpy": on_the_host,
    }
    return {"model": name, "times": timed(variants, 1 if quick else 5)}


def step_cost(name, build, x, y, rounds):
    """A training step with and without the constraint on every kernel: one model each, interleaved."""
    import keras

    import keras_ortho

    models = {}
    for variant in ("plain", "constrained"):
        keras.utils.set_random_seed(0)
        model = build()
        if variant == "constrained":
            keras_ortho.constrain(model, keras_ortho.LipschitzConstraint(1.0))
        model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        models[variant] = model
    variants = {v: (lambda m=m: m.train_on_batch(x, y)) for v, m in models.items()}
    return {"model": name, "times": timed(variants, rounds)}


def worker(quick):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    result = {"backend": keras.backend.backend(), "tightness": tightness(rng), "speed": speed(quick), "steps": []}
    x, y = rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64)
    result["steps"].append(step_cost("small CNN (8 x 8, batch 64)", lambda: small_cnn(None), x, y, 5 if quick else 15))
    if not quick and keras.backend.backend() == "tensorflow":
        x, y = rng.normal(size=(4, 224, 224, 3)).astype("float32"), rng.integers(0, 1000, 4)
        build = lambda: keras.applications.ResNet50(weights=None, classifier_activation=None)  # noqa: E731
        result["steps"].append(step_cost("ResNet50 (224 x 224, batch 4)", build, x, y, 3))
    return result


def _seconds(time):
    """A median and its interquartile range in seconds, from `timed`'s milliseconds."""
    return f"{time['ms'] / 1e3:.2f} ± {time['iqr_ms'] / 1e3:.2f}"


def markdown(results):
    machine = results["machine"]
    lines = ["### Tightness", ""]
    first = results["rows"][0]
    rows = [
        [
            r["layer"],
            r["image"],
            f"{r['exact']:.4g}",
            f"{r['bound']:.4g} ({r['bound'] / r['exact']:.3f}x)",
            f"{r['circular']:.4g} ({r['circular'] / r['exact']:.3f}x)",
            f"{r['reshaped']:.4g} ({r['exact'] / r['reshaped']:.3f})",
        ]
        for r in first["tightness"]
    ]
    lines.append(
        harness.markdown_table(
            [
                "convolution (random kernel)",
                "image",
                "exact norm",
                "lipschitz_bound (/ exact)",
                "circular, own size (/ exact)",
                "reshaped kernel's norm (exact / it)",
            ],
            rows,
        )
    )
    lines += [
        "",
        f"On {first['backend']}. Exact: the operator the Keras layer applies, its identity basis pushed through "
        "it, by numpy's SVD. The circular operator's norm on the image's own size can fall below the exact one: "
        "it is not a bound for zero padding. `exact / reshaped` is the layer's norm when the reshaped kernel's "
        "is 1 (as `SpectralNormalization` leaves it).",
        "",
        "### Speed",
        "",
    ]
    rows = []
    for r in results["rows"]:
        t = r["speed"]["times"]
        host = t["numpy"]["ms"]
        rows.append(
            [
                r["speed"]["model"],
                r["backend"],
                _seconds(t["numpy"]),
                _seconds(t["lipschitz_bound"]),
                f"{host / t['lipschitz_bound']['ms']:.2f}",
                _seconds(t["conv_singular_values"]),
                f"{host / t['conv_singular_values']['ms']:.2f}",
            ]
        )
    lines.append(
        harness.markdown_table(
            [
                "model",
                "backend",
                "singular values in numpy s",
                "lipschitz_bound s",
                "its speed-up",
                "conv_singular_values s",
                "its speed-up",
            ],
            rows,
        )
    )
    lines += ["", "### The constraint's cost per training step", ""]
    rows = []
    for r in results["rows"]:
        for step in r["steps"]:
            plain, constrained = step["times"]["plain"], step["times"]["constrained"]
            rows.append(
                [
                    step["model"],
                    r["backend"],
                    f"{plain['ms']:.1f} ± {plain['iqr_ms']:.1f}",
                    f"{constrained['ms']:.1f} ± {constrained['iqr_ms']:.1f}",
                    f"{constrained['ms'] / plain['ms']:.2f}",
                ]
            )
    lines.append(
        harness.markdown_table(["model", "backend", "plain step ms", "with LipschitzConstraint ms", "ratio"], rows)
    )
    lines += [
        "",
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores), Keras {machine['keras']}, "
        f"TensorFlow {machine['tensorflow']}, JAX {machine['jax']}, PyTorch {machine['torch']}; medians ± "
        "interquartile range over interleaved rounds.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 at alpha 0.35 on 32 x 32, few rounds")
    parser.add_argument("--backends", default=None, help="comma-separated Keras backends (default: each installed)")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.quick)))
        return
    out = args.out or HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": harness.machine_stamp(), "quick": args.quick, "rows": []}
    for backend, row in harness.run_in_backend_processes(__file__, args.backends, args.quick):
        results["rows"].append(row)
        print(f"{backend}: done", flush=True)
    stem = "lipschitz_quick" if args.quick else "lipschitz"
    harness.write_json(out / f"{stem}.json", results)
    (out / f"{stem}.md").write_text(markdown(results))
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
