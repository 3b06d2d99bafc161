"""Which form of orthogonality helps where: every norm, Keras's regularizer and the hard constraint.

Three tasks where orthogonality is known to matter, each trained from the same
initial weights (per seed) with:

* `none`: no orthogonality;
* `keras`: Keras's `OrthogonalRegularizer` (mean |cosine| between rows), on
  the rank-2 kernels it accepts;
* `l1`, `fro`, `double`, `spectral`, `coherence`: `OrthoRegularizer(norm=...)`
  ("mean" reduction for the three norms that sum entries);
* `constraint`: `OrthoConstraint` (SVD polar factor after every step).

Every regularizer's factor is set so that its penalty on Glorot-uniform
kernels of the same shapes is 10% of the model's initial data loss
(`CALIBRATION`): one rule for every form rather than a tuning per form that
would favour whichever was tuned most. (Not on the initial kernels: a GRU's
recurrent kernel starts orthogonal, where some penalties are zero.)

The tasks:

* `deep_mlp`: 20 `Dense(64, tanh)` layers, no residuals, on scikit-learn's
  digits (signal propagation), the hidden kernels regularized (not the
  classifier: an orthonormal one would bound the logits' scale). Test
  accuracy, and the ratio of the gradient norms of the first and the last
  hidden kernels after training.
* `adding`: the adding problem with T = 100 (sum of the two marked values of
  a sequence; predicting 1 scores MSE 0.167), a GRU(32) whose recurrent kernel
  is regularized per gate. Test MSE.
* `transformer`: the encoder of `examples/transformer.py` (does the first token
  appear again?), its attention projections regularized per head. Test
  accuracy and the mean |cosine| between the heads of each projection (how
  alike the heads end up).

    python benchmarks/study.py [--quick] [--seeds 3] [--out benchmarks/results]

Writes `study.md`, `study.json` and `study.png`. Runs on the Keras backend
KERAS_BACKEND names.
"""

import argparse
import fnmatch
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ortho  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
import transformer as transformer_example  # noqa: E402

VARIANTS = ("none", "keras", "l1", "fro", "double", "spectral", "coherence", "constraint")
CALIBRATION = 0.1


# --- Variants ------------------------------------------------------------------


def attach(model, variant, include, data_loss):
    """Puts `variant` on the kernels `include` matches; returns the factor used (None without one)."""
    if variant == "none":
        return None
    if variant == "constraint":
        keras_ortho.constrain(model, keras_ortho.OrthoConstraint(), include=include)
        return None

    def regularizer(factor):
        if variant == "keras":
            return keras.regularizers.OrthogonalRegularizer(factor)
        reduction = "mean" if variant in ("l1", "fro", "double") else "sum"
        return keras_ortho.OrthoRegularizer(factor, reduction=reduction, norm=variant)

    def put(factor):
        if variant != "keras":
            keras_ortho.regularize(model, regularizer(factor), include=include)
            return [v for v in model.trainable_weights if v.regularizer is not None]
        # Keras's regularizer takes rank-2 kernels only.
        kernels = [v for v in model.trainable_weights if len(v.shape) == 2 and _matches(v, include)]
        for v in kernels:
            v.regularizer = regularizer(factor)
        return kernels

    kernels = put(1.0)
    if not kernels:
        raise ValueError(f"variant {variant!r} found no kernel to act on")
    initial = [keras.ops.convert_to_numpy(v) for v in kernels]
    glorot = keras.initializers.GlorotUniform(seed=1234)
    for v in kernels:
        v.assign(glorot(v.shape, v.dtype))
    penalty = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    for v, value in zip(kernels, initial, strict=True):
        v.assign(value)
    factor = CALIBRATION * data_loss / penalty
    put(factor)
    return factor


def _matches(variable, include):
    return include is None or fnmatch.fnmatchcase(variable.path, include)


def gradient_norms(model, loss, x, y, variables):
    """`||d loss / d v||` of each of `variables` on one batch, on any backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        grads = tape.gradient(value, [v.value for v in variables])
    elif backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]

        def of(values):
            prediction, _ = model.stateless_call(values, fixed, x)
            return loss(y, prediction)

        all_grads = jax.grad(of)(trainable)
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        grads = [all_grads[index[id(v)]] for v in variables]
    else:
        import torch

        value = loss(y, model(x, training=False))
        grads = torch.autograd.grad(value, [v.value for v in variables])
    return [float(np.linalg.norm(keras.ops.convert_to_numpy(g))) for g in grads]


# --- Tasks ---------------------------------------------------------------------


def deep_mlp(variant, seed, quick):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = 1400
    depth = 4 if quick else 20
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(64, activation="tanh", name=f"hidden{i}")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss, metrics=["accuracy"])
    data_loss = model.evaluate(x[:split], y[:split], verbose=0)[0]
    # The hidden stack only: an orthonormal classifier would bound the logits' scale.
    factor = attach(model, variant, "hidden*", data_loss)
    model.fit(x[:split], y[:split], epochs=1 if quick else 30, batch_size=64, verbose=0)
    accuracy = model.evaluate(x[split:], y[split:], verbose=0)[1]
    first, last = gradient_norms(
        model, loss, x[:256], y[:256], [model.get_layer("hidden0").kernel, model.get_layer(f"hidden{depth - 1}").kernel]
    )
    return {"factor": factor, "accuracy": accuracy, "grad_first/last": first / last if last > 0 else float("nan")}


def adding_data(count, length, rng):
    values = rng.random((count, length)).astype("float32")
    markers = np.zeros((count, length), "float32")
    for row in markers:
        first, second = rng.choice(length // 2), length // 2 + rng.choice(length // 2)
        row[[first, second]] = 1.0
    return np.stack([values, markers], axis=-1), (values * markers).sum(axis=1, keepdims=True)


def adding(variant, seed, quick):
    length = 20 if quick else 100
    rng = np.random.default_rng(1)
    x, y = adding_data(512 if quick else 4000, length, rng)
    x_test, y_test = adding_data(256 if quick else 1000, length, rng)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((length, 2))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GRU(32, name="gru")(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=1.0), loss="mse")
    data_loss = model.evaluate(x, y, verbose=0)
    factor = attach(model, variant, "*recurrent_kernel*", data_loss)
    model.fit(x, y, epochs=1 if quick else 12, batch_size=64, verbose=0)
    return {"factor": factor, "mse": model.evaluate(x_test, y_test, verbose=0)}


def head_similarity(model):
    """Mean |cosine| between the heads of every attention projection (1: identical directions)."""
    cosines = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.MultiHeadAttention):
            continue
        for v in layer.trainable_weights:
            if not v.path.endswith("kernel"):
                continue
            w = keras.ops.convert_to_numpy(v)
            axis = 0 if "attention_output" in v.path else 1
            heads = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            heads = heads / np.linalg.norm(heads, axis=1, keepdims=True)
            similarity = np.abs(heads @ heads.T)
            cosines.append(similarity[np.triu_indices(len(heads), 1)].mean())
    return float(np.mean(cosines))


def transformer(variant, seed, quick):
    rng = np.random.default_rng(0)
    x, y = transformer_example.make_data(512 if quick else 4000, rng)
    x_test, y_test = transformer_example.make_data(256 if quick else 1000, rng)
    keras.utils.set_random_seed(seed)
    model = transformer_example.build_model(0.0)
    keras_ortho.regularize(model, None)  # the example's own regularizer off: each variant puts its own
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    data_loss = model.evaluate(x, y, verbose=0)[0]
    # Keras's regularizer takes no rank-3 kernel: every attention kernel is one.
    factor = None if variant == "keras" else attach(model, variant, "*attention*", data_loss)
    model.fit(x, y, epochs=1 if quick else 8, batch_size=64, verbose=0)
    return {
        "factor": factor,
        "accuracy": model.evaluate(x_test, y_test, verbose=0)[1],
        "head_similarity": head_similarity(model),
    }


TASKS = {"deep_mlp": deep_mlp, "adding": adding, "transformer": transformer}
# Keras's regularizer cannot act where every kernel is of rank 3.
NOT_APPLICABLE = {("transformer", "keras")}
# `--quick` checks that the script runs: every variant on the first task, where
# runs take seconds, and these on the others, whose runs are mostly compilation.
QUICK_VARIANTS = ("none", "keras", "l1", "constraint")


# --- Output --------------------------------------------------------------------


def summarize(runs):
    """`{task: {variant: {metric: (mean, std)}}}` over seeds, seconds included."""
    table = {}
    for run in runs:
        cell = table.setdefault(run["task"], {}).setdefault(run["variant"], {})
        for metric, value in run["metrics"].items():
            if metric != "factor":
                cell.setdefault(metric, []).append(value)
        cell.setdefault("seconds", []).append(run["seconds"])
    return {
        task: {
            variant: {m: (float(np.mean(v)), float(np.std(v))) for m, v in cells.items()}
            for variant, cells in variants.items()
        }
        for task, variants in table.items()
    }


def markdown(summary, meta):
    lines = [
        "# Which orthogonality helps where",
        "",
        f"`benchmarks/study.py`, {meta['backend']} backend, {meta['seeds']} seeds, mean ± std; "
        f"{meta['machine']}. Each factor set so that the penalty on Glorot-uniform kernels of the same shapes is "
        f"{CALIBRATION:.0%} of the initial data loss. Seconds: the whole run (fit and evaluation), mean over seeds.",
        "",
    ]
    columns = {
        "deep_mlp": [("accuracy", "test accuracy", "{:.3f}"), ("grad_first/last", "grad norm first/last", "{:.3g}")],
        "adding": [("mse", "test MSE (predicting 1: 0.167)", "{:.4f}")],
        "transformer": [
            ("accuracy", "test accuracy", "{:.3f}"),
            ("head_similarity", "mean abs cosine between heads", "{:.3f}"),
        ],
    }
    for task, variants in summary.items():
        lines += [
            f"## {task}",
            "",
            "| variant | " + " | ".join(title for _, title, _ in columns[task]) + " | seconds |",
            "|---|" + "---|" * (len(columns[task]) + 1),
        ]
        for variant in VARIANTS:
            if (task, variant) in NOT_APPLICABLE:
                lines.append(f"| {variant} | " + " | ".join("n/a (rank-3 kernels)" for _ in columns[task]) + " | - |")
                continue
            cell = variants.get(variant)
            if cell is None:
                continue
            shown = [f"{fmt.format(cell[m][0])} ± {fmt.format(cell[m][1])}" for m, _, fmt in columns[task]]
            lines.append(f"| {variant} | " + " | ".join(shown) + f" | {cell['seconds'][0]:.1f} |")
        lines.append("")
    return "\n".join(lines)


def chart(summary, path):
    from matplotlib.figure import Figure

    panels = [
        ("deep_mlp", "accuracy", "deep MLP: test accuracy"),
        ("adding", "mse", "adding T=100: test MSE"),
        ("transformer", "accuracy", "transformer: test accuracy"),
    ]
    panels = [panel for panel in panels if panel[0] in summary]  # `--tasks` may leave some out
    figure = Figure(figsize=(4 * len(panels), 3.6), layout="constrained")
    for ax, (task, metric, title) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        variants = [v for v in VARIANTS if v in summary.get(task, {})]
        means = [summary[task][v][metric][0] for v in variants]
        stds = [summary[task][v][metric][1] for v in variants]
        colours = ["0.6" if v == "none" else "C0" if v not in ("keras", "constraint") else "C1" for v in variants]
        ax.bar(range(len(variants)), means, yerr=stds, color=colours, capsize=3)
        ax.set_xticks(range(len(variants)), variants, rotation=40, ha="right")
        ax.set_title(title)
        if metric == "mse":
            ax.axhline(1 / 6, color="0.3", linestyle="--", linewidth=1)
            ax.text(len(variants) - 0.5, 1 / 6, "predict 1", ha="right", va="bottom", fontsize=8)
        else:
            low = min(m - s for m, s in zip(means, stds, strict=True))
            ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(m + s for m, s in zip(means, stds, strict=True)) + 0.03))
    figure.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny runs, one seed, fewer variants past the first task: checks it runs"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for number, task in enumerate(tasks):
        for variant in VARIANTS:
            if (task, variant) in NOT_APPLICABLE or (args.quick and number > 0 and variant not in QUICK_VARIANTS):
                continue
            for seed in range(seeds):
                start = time.perf_counter()
                metrics = TASKS[task](variant, seed, args.quick)
                seconds = time.perf_counter() - start
                runs.append({"task": task, "variant": variant, "seed": seed, "metrics": metrics, "seconds": seconds})
                print(f"{task:<12} {variant:<10} seed {seed}  {metrics}  {seconds:.1f}s", flush=True)
    meta = {
        "backend": keras.backend.backend(),
        "seeds": seeds,
        "quick": args.quick,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Keras {keras.__version__}",
    }
    summary = summarize(runs)
    stem = "study_quick" if args.quick else "study"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary}, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(summary, meta))
    chart(summary, args.out / f"{stem}.png")
    print(f"wrote {args.out / (stem + '.md')}, .json and .png")


if __name__ == "__main__":
    main()
