"""Certified and empirical robustness on the digits (8 x 8): a plain CNN against Lipschitz-constrained ones.

    python benchmarks/robustness.py [--quick] [--seeds 3] [--out benchmarks/results]

Three variants of one small CNN (three 3x3 convolutions, ReLU, a Dense head
giving logits), trained with the same budget on scikit-learn's digits
(pixels in [0, 1], 1,200 to train, 297 to validate, 300 to test):

* `plain`: no constraint;
* `lipschitz`: `LipschitzConstraint(1.0)` on every kernel, so the logits are
  1-Lipschitz in L2 (ReLU is);
* `ortho+lipschitz`: the same, and `OrthoRegularizer(operator=True)` on the
  convolutions, pulling each convolution's operator towards orthogonal.

A Lipschitz network's logits move little, so cross-entropy is taken on
`tau * logits`, and a certificate needs a margin: each variant's loss is
chosen from `LOSSES` (cross-entropy at two temperatures, and Tsuzuku et al.'s
Lipschitz-margin loss, which adds `sqrt(2) 0.3` to every wrong logit before
it) on the validation split (seed 0), by certified accuracy at radius 0.3,
ties broken by clean accuracy: every variant gets the same three tries.

For each run: clean test accuracy; certified accuracy at each radius of
`RADII` (`keras_ortho.certified_accuracy`: right, with a margin over
`sqrt(2) L`, Tsuzuku et al. 2018); and accuracy under an L2 PGD attack on the
cross-entropy at the same radii (`PGD_STEPS` steps of `2.5 eps / steps`,
no clipping to the pixel range, the stronger attack). An attack never goes
below the certificate; the script checks it and fails if it does.
Needs TensorFlow (the attack's gradients). Writes `results/robustness.md`
and `results/robustness.json` (`robustness_quick.*` with `--quick`).
"""

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ortho  # noqa: E402

L = keras.layers
VARIANTS = ("plain", "lipschitz", "ortho+lipschitz")
# (name, temperature, margin added to the wrong logits): the losses each variant chooses from.
LOSSES = (("ce tau 10", 10.0, 0.0), ("ce tau 100", 100.0, 0.0), ("margin 0.3, tau 10", 10.0, 2**0.5 * 0.3))
RADII = (0.0, 0.1, 0.3, 0.5, 1.0)
SELECTION_RADIUS = 0.3
PGD_STEPS = 20
ORTHO_FACTOR = 0.01


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1200], y[:1200]), (x[1200:1497], y[1200:1497]), (x[1497:], y[1497:])


def build(variant, seed):
    keras.utils.set_random_seed(seed)
    constraint = None if variant == "plain" else keras_ortho.LipschitzConstraint(1.0)
    ortho = keras_ortho.OrthoRegularizer(ORTHO_FACTOR, operator=True) if variant == "ortho+lipschitz" else None
    conv = dict(padding="same", activation="relu", kernel_constraint=constraint, kernel_regularizer=ortho)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(32, 3, **conv),
            L.Conv2D(64, 3, strides=2, **conv),
            L.Conv2D(64, 3, **conv),
            L.Flatten(),
            L.Dense(10, kernel_constraint=constraint),
        ]
    )


def loss_of(name):
    """Cross-entropy of `tau (logits + margin (1 - onehot(y)))` (Tsuzuku et al. 2018, with margin 0: plain)."""
    _, tau, margin = next(entry for entry in LOSSES if entry[0] == name)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(y, logits):
        wrong = 1.0 - keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y, (-1,)), "int32"), 10)
        return cross_entropy(y, tau * (logits + margin * wrong))

    return loss


def train(variant, loss, seed, epochs):
    (x, y), _, _ = digits()
    model = build(variant, seed)
    model.compile(keras.optimizers.Adam(1e-3), loss_of(loss))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
    return model


def pgd_accuracy(model, x, y, eps):
    """Accuracy under L2 projected gradient ascent on the cross-entropy, inside the ball of radius `eps`."""
    if eps == 0:
        return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    x = tf.constant(x)
    delta = tf.zeros_like(x)
    step = 2.5 * eps / PGD_STEPS
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    for _ in range(PGD_STEPS):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            value = loss(y, model(x + delta))
        grad = tape.gradient(value, delta)
        grad /= tf.norm(tf.reshape(grad, (len(y), -1)), axis=1)[:, None, None, None] + 1e-12
        delta += step * grad
        norms = tf.norm(tf.reshape(delta, (len(y), -1)), axis=1)
        delta *= tf.minimum(1.0, eps / (norms + 1e-12))[:, None, None, None]
    return float(np.mean(np.argmax(model(x + delta).numpy(), axis=1) == y))


def evaluate(model, x, y):
    bound = keras_ortho.lipschitz_bound(model)
    result = {"bound": bound, "certified": {}, "pgd": {}}
    for eps in RADII:
        result["certified"][str(eps)] = keras_ortho.certified_accuracy(model, x, y, eps, bound=bound)
        result["pgd"][str(eps)] = pgd_accuracy(model, x, y, eps)
        if result["pgd"][str(eps)] < result["certified"][str(eps)]:
            raise SystemExit(f"robustness.py: an attack at radius {eps} went below the certificate: {result}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two epochs, one seed: checks that the script runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    parser.add_argument("--render", action="store_true", help="write the table again from the saved .json")
    args = parser.parse_args(argv)
    stem = args.out / ("robustness_quick" if args.quick else "robustness")
    if args.render:
        stem.with_suffix(".md").write_text(markdown(json.loads(stem.with_suffix(".json").read_text())))
        return
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1; received {args.seeds}")
    epochs, seeds = (2, 1) if args.quick else (60, args.seeds)
    _, (x_val, y_val), (x_test, y_test) = digits()
    chosen, sweeps = {}, []
    for variant in VARIANTS:
        scores = {}
        for loss, *_ in LOSSES:
            model = train(variant, loss, 0, epochs)
            bound = keras_ortho.lipschitz_bound(model)
            certified = keras_ortho.certified_accuracy(model, x_val, y_val, SELECTION_RADIUS, bound=bound)
            clean = keras_ortho.certified_accuracy(model, x_val, y_val, 0.0, bound=bound)
            scores[loss] = (certified, clean)
            sweeps.append({"variant": variant, "loss": loss, "val_certified": certified, "val_clean": clean})
            print(f"sweep {variant:<16} {loss:<20} val certified@{SELECTION_RADIUS} {certified:.3f} clean {clean:.3f}")
        chosen[variant] = max(scores, key=scores.get)
    runs = []
    for variant in VARIANTS:
        for seed in range(seeds):
            model = train(variant, chosen[variant], seed, epochs)
            run = {"variant": variant, "loss": chosen[variant], "seed": seed, **evaluate(model, x_test, y_test)}
            runs.append(run)
            print(f"{variant:<16} seed {seed} bound {run['bound']:.3g} certified {run['certified']} pgd {run['pgd']}")
    record = {
        "machine": harness.machine_stamp(),
        "epochs": epochs,
        "seeds": seeds,
        "chosen": chosen,
        "sweeps": sweeps,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    harness.write_json(stem.with_suffix(".json"), record)
    stem.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {stem}.md and .json")


def markdown(record):
    def cell(values):
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    lines = [
        "| variant | loss | Lipschitz bound | clean | "
        + " | ".join(f"certified / PGD at {eps}" for eps in RADII if eps > 0)
        + " |",
        "|---|---|---|---|" + "---|" * sum(eps > 0 for eps in RADII),
    ]
    for variant in VARIANTS:
        runs = [r for r in record["runs"] if r["variant"] == variant]
        bounds = [r["bound"] for r in runs]
        row = [variant, record["chosen"][variant], f"{np.mean(bounds):.4g} ± {np.std(bounds):.2g}"]
        row.append(cell([r["pgd"]["0.0"] for r in runs]))
        for eps in RADII[1:]:
            certified = cell([r["certified"][str(eps)] for r in runs])
            attacked = cell([r["pgd"][str(eps)] for r in runs])
            row.append(f"{certified} / {attacked}")
        lines.append("| " + " | ".join(row) + " |")
    machine = record["machine"]
    lines += [
        "",
        f"Test accuracies (300 digits), mean ± std over {record['seeds']} seeds, {record['epochs']} epochs of Adam "
        "1e-3, batch 64. Certified: right, with a certified radius above the radius (`certified_accuracy`). PGD: "
        f"right after an L2 attack of {PGD_STEPS} steps inside the radius; never below the certified accuracy "
        f"(checked). Loss: the one each variant chose from {[name for name, *_ in LOSSES]} (`tau` its temperature). "
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores), Keras {machine['keras']}, "
        f"TensorFlow {machine['tensorflow']}.",
        "",
        "The loss sweep (seed 0, validation): certified accuracy at radius "
        f"{SELECTION_RADIUS}, then clean accuracy, of each variant with each loss.",
        "",
        "| variant | " + " | ".join(name for name, *_ in LOSSES) + " |",
        "|---|" + "---|" * len(LOSSES),
    ]
    for variant in VARIANTS:
        cells = {r["loss"]: r for r in record["sweeps"] if r["variant"] == variant}
        shown = [f"{cells[n]['val_certified']:.3f}, {cells[n]['val_clean']:.3f}" for n, *_ in LOSSES if n in cells]
        lines.append(f"| {variant} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
