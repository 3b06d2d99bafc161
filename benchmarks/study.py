"""Where orthogonality helps: the published tasks, every form, each factor tuned with the same budget.

The tasks are those on which the literature reports that orthogonality
matters (each cited in `PUBLISHED`, with the paper's figure or table):

* `copy_rnn_T*`, `copy_lstm_T*`: the copy memory task. Ten symbols from an
  alphabet of 8, T blanks, a marker, then the ten symbols to be recalled; a
  `SimpleRNN` or an `LSTM` predicts a symbol at every step. The memoryless
  baseline is a cross-entropy of `10 log 8 / (T + 20)`.
* `adding_rnn_T*`, `adding_relu_T100`: the adding problem with a tanh or ReLU
  `SimpleRNN`: the sum of the two marked values of a sequence of length T.
  Predicting 1 scores MSE 0.167.
* `depth_*`: a plain tanh MLP of width 64 and depth 8, 32 or 128 (no
  residuals, no normalization) on scikit-learn's digits. Test accuracy, and
  the ratio of the first to the last hidden kernel's gradient norm.
* `transformer`: the encoder of `examples/transformer.py`, its attention
  projections per head. Test accuracy, and how alike the heads end up.

The sequence tasks run at the papers' settings as far as two cores allow
(`SEQUENCE`: 128 units, 10,000 steps of a fresh batch of 128) and are scored by
the mean of their last evaluations, not by one final point.

The variants (`VARIANTS`): no orthogonality (Keras's default initializers: for
recurrent kernels that is already `Orthogonal`); Keras's `Orthogonal`
initializer alone; Keras's `OrthogonalRegularizer`; `OrthoRegularizer` with
each of its five norms; the L1 penalty from an orthogonal start; and
`OrthoConstraint` with each of its methods. The sequence tasks run four of them
(`SEQUENCE_VARIANTS`).

Every soft variant's factor is chosen by the same sweep (`FACTORS`: four
factors over three decades) on a validation split, on seed 0, on the first
task of its family; the chosen factor then runs on every task of the family
and every seed. The sweep's seed-0 run at the chosen factor is reused as that
seed's run.

Each run is saved as it ends (`study_runs/`, one file a run, named by the
task's settings); a rerun trains only what is missing, so the study runs in
parts (`--only` a task or family) on any backend and machine, and the page says
which part ran where:

    python benchmarks/study.py [--only copy_rnn,adding_rnn] [--seeds 3] [--jobs 2] [--out benchmarks/results]
    python benchmarks/study.py --render      # study.json, .md and figures from the saved runs

Writes `study.md`, `study.json`, `study.png` (learning curves) and
`study_depth.png` (accuracy and gradient ratio against depth); `--quick`
writes `study_quick*`: tiny tasks that check the script runs.
"""

import argparse
import concurrent.futures
import dataclasses
import fnmatch
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ortho  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import transformer as transformer_example  # noqa: E402

FACTORS = (1e-4, 1e-3, 1e-2, 1e-1)


# --- Variants ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    """What a run puts on the task's kernels: a start, a penalty (tuned by the sweep) or a constraint."""

    name: str
    orthogonal_start: bool = False
    penalty: str | None = None  # "keras" or one of OrthoRegularizer's norms
    method: str | None = None  # OrthoConstraint's method

    @property
    def tuned(self):
        return self.penalty is not None


VARIANTS = (
    Variant("none"),
    Variant("orth_init", orthogonal_start=True),
    Variant("keras", penalty="keras"),
    Variant("l1", penalty="l1"),
    Variant("fro", penalty="fro"),
    Variant("double", penalty="double"),
    Variant("spectral", penalty="spectral"),
    Variant("coherence", penalty="coherence"),
    Variant("l1+orth_init", orthogonal_start=True, penalty="l1"),
    Variant("constraint_svd", method="svd"),
    Variant("constraint_ns", method="newton_schulz"),
)
BY_NAME = {v.name: v for v in VARIANTS}


def attach(model, variant, include, factor):
    """Puts `variant` on the kernels whose path matches `include`; returns those kernels."""
    kernels = [v for v in model.trainable_weights if len(v.shape) >= 2 and fnmatch.fnmatchcase(v.path, include)]
    if not kernels:
        raise ValueError(f"include={include!r} matches no kernel of {model.name}")
    if variant.orthogonal_start:
        start = keras.initializers.Orthogonal(seed=keras.random.SeedGenerator(7))
        for v in kernels:
            v.assign(start(v.shape, v.dtype))
    if variant.penalty == "keras":
        # Keras's regularizer takes rank-2 kernels only; `applicable` keeps it off the others.
        for v in kernels:
            v.regularizer = keras.regularizers.OrthogonalRegularizer(factor)
    elif variant.penalty is not None:
        reduction = "mean" if variant.penalty in ("l1", "fro", "double") else "sum"
        regularizer = keras_ortho.OrthoRegularizer(factor, reduction=reduction, norm=variant.penalty)
        keras_ortho.regularize(model, regularizer, include=include)
    if variant.method is not None:
        keras_ortho.constrain(model, keras_ortho.OrthoConstraint(method=variant.method), include=include)
    return kernels


# --- Data ----------------------------------------------------------------------


def copy_data(count, delay, rng):
    """One-hot inputs `(count, delay + 20, 10)` and targets `(count, delay + 20)` of the copy task.

    Symbols 1-8 at steps 0-9, blanks (0), the marker (9) at step `delay + 9`,
    then the ten symbols expected over the last ten steps.
    """
    length = delay + 20
    symbols = rng.integers(1, 9, size=(count, 10))
    tokens = np.zeros((count, length), "int32")
    tokens[:, :10] = symbols
    tokens[:, delay + 9] = 9
    targets = np.zeros((count, length), "int32")
    targets[:, -10:] = symbols
    return np.eye(10, dtype="float32")[tokens], targets


def adding_data(count, length, rng):
    """Inputs `(count, length, 2)` (a value and a marker) and the sum of the two marked values."""
    values = rng.random((count, length)).astype("float32")
    markers = np.zeros((count, length), "float32")
    rows = np.arange(count)
    markers[rows, rng.integers(0, length // 2, count)] = 1.0
    markers[rows, length // 2 + rng.integers(0, length // 2, count)] = 1.0
    return np.stack([values, markers], axis=-1), (values * markers).sum(axis=1, keepdims=True)


DIGITS_SPLIT = (1200, 1500)  # of 1797 digits: training, validation (to 1500), test (the rest)


def digits_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    train, val = DIGITS_SPLIT
    return (x[:train], y[:train]), (x[train:val], y[train:val]), (x[val:], y[val:])


# --- Tasks ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """A model, its data and its training budget; `family` shares one factor sweep."""

    name: str
    family: str
    kind: str  # "copy", "adding", "depth" or "transformer"
    size: int  # T for the sequence tasks, the depth for the MLP
    units: int = 64
    cell: str = "rnn"
    epochs: int = 30
    steps_per_epoch: int = 50
    batch: int = 64
    activation: str = "tanh"  # of the recurrence (SimpleRNN only) or the MLP
    learning_rate: float = 1e-3
    clipnorm: float | None = 1.0
    # Sequence tasks train on a fresh batch every step, `steps` in all, and are evaluated every `eval_every`
    # steps; their score is the mean of the last `scored` evaluations, not one noisy final point.
    steps: int = 0
    eval_every: int = 500
    scored: int = 4

    @property
    def streaming(self):
        return self.steps > 0

    @property
    def include(self):
        return {
            "copy": "*recurrent_kernel*",
            "adding": "*recurrent_kernel*",
            "depth": "hidden*",
            "transformer": "*attention*",
        }[self.kind]

    @property
    def score(self):
        """The metric the sweep selects on, and whether higher is better."""
        return ("accuracy", True) if self.kind in ("depth", "transformer") else ("loss", False)

    @property
    def baseline(self):
        """What a model that learns nothing scores (None where there is no such number)."""
        if self.kind == "copy":
            return 10 * np.log(8) / (self.size + 20)
        if self.kind == "adding":
            return 1 / 6
        return None


def data_of(task, quick):
    rng = np.random.default_rng(1)
    if task.kind == "depth":
        return digits_data()
    sizes = (task.steps_per_epoch * task.batch, 500, 1000)
    return tuple(transformer_example.make_data(n, rng) for n in sizes)


def build(task, seed):
    keras.utils.set_random_seed(seed)
    if task.kind == "transformer":
        model = transformer_example.build_model(0.0)
        keras_ortho.regularize(model, None)  # the example's own regularizer off: each variant puts its own
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model
    if task.kind == "depth":
        inputs = keras.Input((64,))
        h = inputs
        for i in range(task.size):
            h = keras.layers.Dense(task.units, activation=task.activation, name=f"hidden{i}")(h)
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
        model.compile(
            optimizer=keras.optimizers.SGD(task.learning_rate, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model
    if task.cell == "rnn":
        recurrent = keras.layers.SimpleRNN(task.units, activation=task.activation, return_sequences=task.kind == "copy")
    else:
        recurrent = keras.layers.LSTM(task.units, return_sequences=task.kind == "copy")
    if task.kind == "copy":
        inputs = keras.Input((task.size + 20, 10))
        outputs = keras.layers.Dense(9)(recurrent(inputs))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        inputs = keras.Input((task.size, 2))
        outputs = keras.layers.Dense(1)(recurrent(inputs))
        loss = keras.losses.MeanSquaredError()
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.RMSprop(task.learning_rate, clipnorm=task.clipnorm), loss=loss)
    return model


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
    if not cosines:
        raise ValueError(f"{model.name} has no attention kernel to compare")
    return float(np.mean(cosines))


def train(task, variant_name, factor, seed, quick):
    """One run: the model built from `seed`, the variant put on, trained; its curve and scores."""
    start = time.perf_counter()
    variant = BY_NAME[variant_name]
    model = build(task, seed)
    attach(model, variant, task.include, factor)
    result = {"task": task.name, "variant": variant_name, "factor": factor, "seed": seed}
    if task.streaming:
        result.update(train_streaming(task, model, seed))
    else:
        result.update(train_epochs(task, model, data_of(task, quick)))
    result["seconds"] = time.perf_counter() - start
    result["backend"] = keras.backend.backend()
    result["machine"] = harness.machine_stamp()
    return result


def train_streaming(task, model, seed):
    """A fresh batch every step; every `eval_every` steps, the data loss on fixed validation and test sets.

    The scores are the means of the last `task.scored` evaluations; `curve` is the test loss at each.
    """
    make = copy_data if task.kind == "copy" else adding_data
    x_val, y_val = make(512, task.size, np.random.default_rng(1))
    x_test, y_test = make(1024, task.size, np.random.default_rng(2))
    rng = np.random.default_rng(1000 + seed)  # the training stream: the seed's own, apart from both sets
    val, test = [], []
    for step in range(1, task.steps + 1):
        model.train_on_batch(*make(task.batch, task.size, rng))
        if step % task.eval_every == 0:
            val.append(data_loss(model, x_val, y_val))
            test.append(data_loss(model, x_test, y_test))
    return {
        "curve": test,
        "steps_per_point": task.eval_every,
        "val_loss": float(np.mean(val[-task.scored :])),
        "test_loss": float(np.mean(test[-task.scored :])),
        "test_loss_best": float(min(test)),
    }


def train_epochs(task, model, data):
    """Epochs over a fixed training set; scores on the validation and test sets at the end."""
    (x, y), (x_val, y_val), (x_test, y_test) = data
    history = model.fit(x, y, batch_size=task.batch, epochs=task.epochs, verbose=0, shuffle=True)
    result = {
        "curve": [float(v) for v in history.history["loss"]],
        "steps_per_point": int(np.ceil(len(x) / task.batch)),
    }
    for split, (xs, ys) in (("val", (x_val, y_val)), ("test", (x_test, y_test))):
        scores = model.evaluate(xs, ys, batch_size=256, verbose=0, return_dict=True)
        # With a regularizer, Keras's "loss" includes the penalty: the data loss is what the task scores.
        scores["loss"] = data_loss(model, xs, ys)
        for metric, value in scores.items():
            result[f"{split}_{metric}"] = float(value)
    if task.kind == "depth":
        first, last = gradient_norms(
            model,
            model.loss,
            x[:256],
            y[:256],
            [model.get_layer("hidden0").kernel, model.get_layer(f"hidden{task.size - 1}").kernel],
        )
        result["grad_first/last"] = first / last if last > 0 else float("nan")
    if task.kind == "transformer":
        result["head_similarity"] = head_similarity(model)
    return result


def data_loss(model, x, y):
    """The task's loss without the penalties `model.losses` adds."""
    predictions = model.predict(x, batch_size=256, verbose=0)
    return float(keras.ops.convert_to_numpy(model.loss(y, predictions)))


# The sequence tasks at the papers' settings, as far as 2 cores allow: 128 units (Arjovsky et al. 2016 and
# Henaff et al. 2016 use 80 to 128 and more), 10,000 steps (their runs are 10^4 steps and more), batch 128, a
# fresh batch every step. RMSprop 1e-3 with gradients clipped at norm 1, as before.
SEQUENCE = dict(units=128, batch=128, steps=10_000, eval_every=500, scored=4)


def tasks_of(quick):
    """The study's tasks; the first of each family holds its sweep."""
    if quick:
        tiny = dict(units=16, batch=32, steps=8, eval_every=4, scored=2)
        return (
            Task("copy_rnn_T5", "copy_rnn", "copy", 5, **tiny),
            Task("adding_rnn_T10", "adding_rnn", "adding", 10, **tiny),
            Task("depth_4", "depth", "depth", 4, units=16, epochs=2),
        )
    return (
        Task("copy_rnn_T100", "copy_rnn", "copy", 100, **SEQUENCE),
        Task("copy_rnn_T200", "copy_rnn", "copy", 200, **SEQUENCE),
        Task("adding_rnn_T100", "adding_rnn", "adding", 100, **SEQUENCE),
        Task("adding_rnn_T200", "adding_rnn", "adding", 200, **SEQUENCE),
        Task("adding_relu_T100", "adding_relu", "adding", 100, activation="relu", **SEQUENCE),
        Task("copy_lstm_T100", "copy_lstm", "copy", 100, cell="lstm", **SEQUENCE),
        Task("copy_lstm_T200", "copy_lstm", "copy", 200, cell="lstm", **SEQUENCE),
        Task("depth_32", "depth", "depth", 32, learning_rate=0.01, steps_per_epoch=19),
        Task("depth_8", "depth", "depth", 8, learning_rate=0.01, steps_per_epoch=19),
        Task("depth_128", "depth", "depth", 128, learning_rate=0.01, steps_per_epoch=19),
        Task("transformer", "transformer", "transformer", 0, epochs=6, steps_per_epoch=62),
    )


# The sequence tasks run these variants only: each run is 10,000 steps, and the two cores' budget goes to three
# seeds of the plain model, Keras's regularizer, the L1 penalty and the hard constraint rather than to every
# norm. The other norms were measured on these tasks at width 64 (the study of 2026-12-03).
SEQUENCE_VARIANTS = ("none", "keras", "l1", "constraint_svd")

# What the study tries where a published effect may not appear (item by item, one seed): each is a task of
# the main study with one thing changed, run with `none`, the L1 penalty at its family's chosen factor and
# the SVD constraint.
INVESTIGATIONS = (("copy_rnn_T100", "64 units (the earlier study's width)", {"units": 64}),)
QUICK_INVESTIGATIONS = (("copy_rnn_T5", "a linear recurrence (no tanh)", {"activation": "linear"}),)
INVESTIGATED_VARIANTS = ("none", "l1", "constraint_svd")


def applicable(task, variant):
    """None where `variant` runs on `task`, else why it does not."""
    if task.streaming and variant.name not in SEQUENCE_VARIANTS:
        return "not run on the sequence tasks (the budget went to seeds and steps)"
    if task.kind in ("copy", "adding") and variant.orthogonal_start:
        return "Keras's recurrent kernels start orthogonal already (as `none`)"
    if task.kind == "transformer" and variant.penalty == "keras":
        return "Keras's regularizer takes no rank-3 kernel"
    if task.kind != "transformer" and variant.penalty == "double":
        return "every slice is square, where DSO is exactly 2 x SO: the runs of fro at twice the factor"
    return None


# `--quick` checks that the script runs: these variants, tiny tasks, one seed.
QUICK_VARIANTS = ("none", "orth_init", "keras", "l1", "spectral", "constraint_svd")
QUICK_FACTORS = (1e-3, 1e-1)


# --- Published results, and how a verdict is reached --------------------------

PUBLISHED = {
    "copy": (
        "Arjovsky, Shah & Bengio 2016 (uRNN), Figure 1; Henaff, Szlam & LeCun 2016, Figure 1; "
        "Vorontsov et al. 2017, Section 4.1; Lezcano-Casado & Martinez-Rubio 2019 (expRNN), Figure 1",
        "RNNs whose recurrent matrix is orthogonal or unitary fall well below the baseline for T in the hundreds "
        "to thousands, where an LSTM and a plain tanh RNN stay at the baseline.",
    ),
    "adding": (
        "Le, Jaitly & Hinton 2015 (IRNN), Figure 2; Arjovsky, Shah & Bengio 2016 (uRNN), Figure 2",
        "an RNN with an identity or unitary recurrent matrix reaches an MSE far below the baseline of 0.167 "
        "for T = 100 and longer, where a plain tanh RNN stays at it.",
    ),
    "depth": (
        "Saxe, McClelland & Ganguli 2014, Section 3 and Figure 5; Pennington, Schoenholz & Ganguli 2017, "
        "Figure 4; Xiao et al. 2018, Figure 1",
        "deep tanh networks with orthogonal weights train at depths where Gaussian or Glorot weights fail, and "
        "keep the gradient norm of the first and last layers alike.",
    ),
    "transformer": (
        "Bansal, Chen & Wang 2018, Table 2 (WRN-28-10 on CIFAR-10: error 4.16 without orthogonality; "
        "SO, DSO, MC and SRIP lower, SRIP best at 3.60)",
        "every form of soft orthogonality lowers the error of a wide residual network on CIFAR-10, SRIP the most. "
        "That network takes GPU-days, which these 2-core machines do not have: here, the forms' ranking on the "
        "small attention task, and how alike its heads end up.",
    ),
}

# A variant "helps" when its mean beats `none`'s by more than both spreads together (and, on a sequence task,
# by a share of the memoryless baseline: seeds that all sit at the baseline have no spread, and a gap of a
# thousandth of it is no memory).
SEQUENCE_GAIN = 0.05
VERDICT_RULE = (
    "A variant helps when its mean beats `none`'s by more than the sum of the two standard deviations, and on "
    f"a sequence task by at least {SEQUENCE_GAIN:.0%} of the memoryless baseline as well. "
    "Sequence tasks: **reproduced** when a variant helps and ends below half the baseline while `none` stays "
    "within 10% of it; **partly reproduced** when a variant helps but the gap is smaller; **not reproduced** "
    "when none helps. Depth: reproduced when a variant helps at the deepest depth and `none` falls below 50% "
    "accuracy there. Transformer: the published gain is at a scale not run here, so the verdict is on the "
    "ranking only: reproduced when a variant helps."
)


def helps(cell, reference, metric, higher, task):
    """Whether `cell` beats `reference` on `task`'s `metric` by `VERDICT_RULE`."""
    (mean, std), (ref_mean, ref_std) = cell[metric], reference[metric]
    gap = mean - ref_mean if higher else ref_mean - mean
    floor = SEQUENCE_GAIN * task.baseline if task.kind in ("copy", "adding") else 0.0
    return gap > std + ref_std and gap >= floor


def helping_variants(task, cells):
    """The variants of `task`'s summary `cells` (which hold `none`) that help by `VERDICT_RULE`, in table order."""
    metric, higher = "test_" + task.score[0], task.score[1]
    return [v for v, cell in cells.items() if v != "none" and helps(cell, cells["none"], metric, higher, task)]


def progress(task, cells, variants, seeds):
    """`(runs saved, runs planned)` of `task`'s final runs."""
    return sum(cell["seeds"] for cell in cells.values()), seeds * sum(applicable(task, v) is None for v in variants)


def verdict(family_tasks, summary):
    """(verdict, the tasks' helping variants) of one kind of task, by `VERDICT_RULE`."""
    task = _judged(family_tasks)
    metric = "test_" + task.score[0]
    cells = summary.get(task.name, {})
    if "none" not in cells:
        return "not run", []
    helpful = helping_variants(task, cells)
    if not helpful:
        return "not reproduced", helpful
    none_mean = cells["none"][metric][0]
    if task.kind in ("copy", "adding"):
        best = min(cells[v][metric][0] for v in helpful)
        solved = best < 0.5 * task.baseline and none_mean > 0.9 * task.baseline
        return ("reproduced" if solved else "partly reproduced"), helpful
    if task.kind == "depth":
        return ("reproduced" if none_mean < 0.5 else "partly reproduced"), helpful
    return "reproduced", helpful


# --- Running ---------------------------------------------------------------------


def _limit_threads():
    """One thread per worker: the runs' steps are too small to share a core, so the workers share the cores."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


class RunStore:
    """Each finished run, saved as one JSON file the moment it ends: a rerun trains only what is missing.

    A run's file is named by its task's settings (all of them, hashed), the variant, the factor and the
    seed, so a run of changed settings is never taken for an old one. Parts of the study run on different
    days or machines merge here; each run records its backend and machine.
    """

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)

    def path(self, spec):
        task, variant, factor, seed = spec
        settings = json.dumps(dataclasses.asdict(task), sort_keys=True)
        digest = hashlib.sha1(settings.encode()).hexdigest()[:10]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{task.name}_{variant}_{factor}_seed{seed}")
        return self.folder / f"{stem}_{digest}.json"

    def get(self, spec):
        path = self.path(spec)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, spec, result):
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(spec)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(result, indent=1))
        partial.replace(path)  # whole or absent, also when the study is stopped while it writes


def run_all(jobs, specs, quick, store):
    """`train` on each spec that `store` lacks, in `jobs` processes, each saved as it ends; every spec's result."""
    todo = list({store.path(spec): spec for spec in specs if store.get(spec) is None}.values())
    print(f"{len(specs)} runs, {len(specs) - len(todo)} of them saved already", flush=True)
    if todo and jobs == 1:
        for spec in todo:
            store.put(spec, _report(train(*spec, quick)))
    elif todo:
        # XLA reads its flags when JAX starts, in each worker; the workers inherit them.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_limit_threads) as pool:
            futures = {pool.submit(train, *spec, quick): spec for spec in todo}
            for future in concurrent.futures.as_completed(futures):
                store.put(futures[future], _report(future.result()))
    return [store.get(spec) for spec in specs]


def _report(result):
    factor = "" if result["factor"] is None else f"factor {result['factor']:g}"
    print(
        f"{result['task']:<16} {result['variant']:<15} {factor:<13} seed {result['seed']}  "
        f"val loss {result['val_loss']:.4f}  test loss {result['test_loss']:.4f}  {result['seconds']:.1f}s",
        flush=True,
    )
    return result


def choose_factors(sweeps, tasks, factors):
    """`{family: {variant: factor}}`: the best validation score of each sweep that has all its factors."""
    by_name = {t.name: t for t in tasks}
    scores = {}
    for run in sweeps:
        task = by_name[run["task"]]
        metric, higher = task.score
        score = run[f"val_{metric}"]
        scores.setdefault(task.family, {}).setdefault(run["variant"], {})[run["factor"]] = score if higher else -score
    chosen = {
        family: {v: max(row, key=row.get) for v, row in cells.items() if set(row) == set(factors)}
        for family, cells in scores.items()
    }
    return {family: cells for family, cells in chosen.items() if cells}  # a family whose sweeps are all partial: none


def first_of_families(tasks):
    """`{family: its first task}`: the one whose validation split chooses the family's factors."""
    first = {}
    for task in tasks:
        first.setdefault(task.family, task)
    return first


def sweep_specs(tasks, variants, factors):
    return [
        (task, variant.name, factor, 0)
        for task in first_of_families(tasks).values()
        for variant in variants
        if variant.tuned and applicable(task, variant) is None
        for factor in factors
    ]


def final_specs(tasks, variants, seeds, chosen):
    """Every task, variant and seed whose factor is known (a tuned variant's sweep must be complete)."""
    return [
        (task, variant.name, chosen[task.family][variant.name] if variant.tuned else None, seed)
        for task in tasks
        for variant in variants
        if applicable(task, variant) is None and (not variant.tuned or variant.name in chosen.get(task.family, {}))
        for seed in range(seeds)
    ]


def investigation_specs(tasks, chosen, investigations):
    """Each investigation's changed task on seed 0 with `INVESTIGATED_VARIANTS`; `(spec, base, change)`."""
    by_name = {t.name: t for t in tasks}
    specs = []
    for base, change, overrides in investigations:
        if base not in by_name:
            continue
        task = dataclasses.replace(by_name[base], name=f"{base}, {change}", **overrides)
        for name in INVESTIGATED_VARIANTS:
            if BY_NAME[name].tuned and name not in chosen.get(task.family, {}):
                continue
            specs.append(((task, name, chosen[task.family][name] if BY_NAME[name].tuned else None, 0), base, change))
    return specs


def study(tasks, variants, factors, seeds, investigations, jobs, quick, store, sweep_tasks):
    """Trains what `tasks` need that `store` lacks: the families' sweeps, then every seed, then the investigations.

    `sweep_tasks` are the first tasks of `tasks`' families, whose validation splits choose the factors (a
    family's later task run alone still takes its factors from the first one's sweep).
    """
    specs = sweep_specs(sweep_tasks, variants, factors)
    print("sweeps: ", end="", flush=True)
    chosen = choose_factors(run_all(jobs, specs, quick, store), sweep_tasks, factors)
    print("final: ", end="", flush=True)
    run_all(jobs, final_specs(tasks, variants, seeds, chosen), quick, store)
    print("investigations: ", end="", flush=True)
    run_all(jobs, [spec for spec, _, _ in investigation_specs(tasks, chosen, investigations)], quick, store)


def collect(store, tasks, variants, factors, seeds, investigations):
    """The study's record from what `store` holds: sweeps, chosen factors, runs, investigations, meta."""
    saved = [(spec, store.get(spec)) for spec in sweep_specs(tasks, variants, factors)]
    sweeps = [run for _, run in saved if run is not None]
    chosen = choose_factors(sweeps, tasks, factors)
    planned = final_specs(tasks, variants, seeds, chosen)
    runs = [run for run in map(store.get, planned) if run is not None]
    tried = [
        {**run, "base": base, "change": change}
        for spec, base, change in investigation_specs(tasks, chosen, investigations)
        if (run := store.get(spec)) is not None
    ]
    places = {}
    every = {(r["task"], r["variant"], r["factor"], r["seed"]): r for r in [*sweeps, *runs, *tried]}
    for run in every.values():
        stamp = run["machine"]
        key = (run["backend"], stamp["cpu"], stamp["cores"], stamp["keras"])
        place = places.setdefault(key, {"runs": 0, "hours": 0.0, "first": stamp["date"], "last": stamp["date"]})
        place["runs"] += 1
        place["hours"] += run["seconds"] / 3600
        place["first"], place["last"] = min(place["first"], stamp["date"]), max(place["last"], stamp["date"])
    meta = {
        "seeds": seeds,
        "factors": list(factors),
        "ran_on": [
            {"backend": b, "cpu": cpu, "cores": cores, "keras": k, **place}
            for (b, cpu, cores, k), place in places.items()
        ],
        "missing": len(sweep_specs(tasks, variants, factors)) - len(sweeps) + len(planned) - len(runs),
    }
    return {"meta": meta, "chosen_factors": chosen, "sweeps": sweeps, "runs": runs, "investigations": tried}


# --- Output --------------------------------------------------------------------

METRICS = {
    "copy": [("test_loss", "test cross-entropy", "{:.4f}")],
    "adding": [("test_loss", "test MSE", "{:.4f}")],
    "depth": [("test_accuracy", "test accuracy", "{:.3f}"), ("grad_first/last", "grad norm first/last", "{:.3g}")],
    "transformer": [
        ("test_accuracy", "test accuracy", "{:.3f}"),
        ("head_similarity", "mean abs cosine between heads", "{:.3f}"),
    ],
}


def summarize(runs):
    """`{task: {variant: {metric: (mean, std)}}}` over seeds, seconds included; `"seeds"`: how many."""
    table = {}
    for run in runs:
        cell = table.setdefault(run["task"], {}).setdefault(run["variant"], {})
        for metric, value in run.items():
            if isinstance(value, float) and metric != "factor":
                cell.setdefault(metric, []).append(value)
    return {
        task: {
            variant: {
                **{m: (float(np.mean(v)), float(np.std(v))) for m, v in cells.items()},
                "seeds": len(cells["seconds"]),
            }
            for variant, cells in variants.items()
        }
        for task, variants in table.items()
    }


def markdown(tasks, variants, summary, sweeps, chosen, tried, meta):
    lines = [
        "# Where orthogonality helps",
        "",
        f"`benchmarks/study.py`, {meta['seeds']} seeds (mean ± std). "
        f"Every soft variant's factor was chosen from {list(meta['factors'])} on a validation split (seed 0, "
        "the first task of each family); the sweeps close this page. Seconds: one run (build, training, "
        "evaluation) on one worker, mean over seeds. Each run is saved as it ends, and the study runs in parts; "
        "where each part ran closes this page."
        + (f" **{meta['missing']} planned run(s) are not saved yet**: their cells say so." if meta["missing"] else ""),
        "",
        "## Verdicts",
        "",
        VERDICT_RULE,
        "",
        "| task | published (source) | verdict | variants that help |",
        "|---|---|---|---|",
    ]
    kinds = {}
    for task in tasks:
        kinds.setdefault(task.family if task.streaming else task.kind, []).append(task)
    # A sequence task's claim spans its lengths: each length gets its verdict. Depth is judged at the deepest.
    judged_apart = [[t] for ts in kinds.values() if ts[0].streaming for t in ts]
    judged_together = [ts for ts in kinds.values() if not ts[0].streaming]
    for kind_tasks in judged_apart + judged_together:
        kind = kind_tasks[0].family if kind_tasks[0].streaming else kind_tasks[0].kind
        source, claim = PUBLISHED[kind_tasks[0].kind]
        outcome, helping = verdict(kind_tasks, summary)
        judged = _judged(kind_tasks)
        runs, planned = progress(judged, summary.get(judged.name, {}), variants, meta["seeds"])
        if outcome != "not run" and runs < planned:
            outcome += f" (provisional: {runs} of {planned} runs)"
        shown = ", ".join(helping) if helping else "none"
        lines.append(f"| {kind} (judged on {judged.name}) | {claim} ({source}) | **{outcome}** | {shown} |")
    lines.append("")
    for task in tasks:
        columns = METRICS[task.kind]
        baseline = "" if task.baseline is None else f" Baseline (a model that learns nothing): {task.baseline:.4f}."
        lines += [
            f"## {task.name}",
            "",
            f"{_budget(task)}{baseline}",
            "",
            "| variant | factor | " + " | ".join(title for _, title, _ in columns) + " | seconds |",
            "|---|---|" + "---|" * (len(columns) + 1),
        ]
        for variant in variants:
            reason = applicable(task, variant)
            if reason is not None:
                lines.append(f"| {variant.name} | - | " + " | ".join("n/a" for _ in columns) + f" | {reason} |")
                continue
            factor = chosen.get(task.family, {}).get(variant.name)
            if variant.tuned and factor is None:
                lines.append(f"| {variant.name} | - | " + " | ".join("-" for _ in columns) + " | sweep not saved yet |")
                continue
            cell = summary.get(task.name, {}).get(variant.name)
            factor = f"{factor:g}" if variant.tuned else "-"
            if cell is None:
                lines.append(f"| {variant.name} | {factor} | " + " | ".join("-" for _ in columns) + " | not run yet |")
                continue
            shown = [f"{fmt.format(cell[m][0])} ± {fmt.format(cell[m][1])}" for m, _, fmt in columns]
            seconds = f"{cell['seconds'][0]:.1f}"
            if cell["seeds"] < meta["seeds"]:
                seconds += f" ({cell['seeds']} of {meta['seeds']} seeds)"
            lines.append(f"| {variant.name} | {factor} | " + " | ".join(shown) + f" | {seconds} |")
        lines.append("")
    lines += investigation_lines(tasks, summary, tried)
    lines += [
        "## Where the runs ran",
        "",
        "| backend | machine | Keras | runs | hours of one worker | saved from | to |",
        "|---|---|---|---|---|---|---|",
    ]
    for place in meta["ran_on"]:
        lines.append(
            f"| {place['backend']} | {place['cpu']}, {place['cores']} cores | {place['keras']} | {place['runs']} "
            f"| {place['hours']:.1f} | {place['first']} | {place['last']} |"
        )
    lines.append("")
    lines += ["## Factor sweeps", "", "Validation score of each factor, seed 0; the chosen one in bold.", ""]
    for family, cells in chosen.items():
        task = next((t for t in tasks if t.family == family), None)
        if task is None:  # its sweep is saved, none of its tasks' runs yet
            continue
        metric, higher = task.score
        factors = sorted({r["factor"] for r in sweeps if r["task"] == task.name})
        lines += [
            f"### {family} (on {task.name}, validation {metric}, {'higher' if higher else 'lower'} is better)",
            "",
            "| variant | " + " | ".join(f"{f:g}" for f in factors) + " |",
            "|---|" + "---|" * len(factors),
        ]
        for variant in cells:
            row = {
                r["factor"]: r[f"val_{metric}"] for r in sweeps if r["task"] == task.name and r["variant"] == variant
            }
            shown = [
                f"**{row[f]:.4f}**" if f == cells[variant] else f"{row[f]:.4f}" if f in row else "-" for f in factors
            ]
            lines.append(f"| {variant} | " + " | ".join(shown) + " |")
        lines.append("")
    return "\n".join(lines)


# The page's "In short" table: what a user wants, what to use, and the figures behind it, read from the
# summary. Sequence tasks' advice is the verdict's: the variants that help, or that none does.
# (want, use (None: from the verdict of `family`), factor of (family, variant) or None, family, figures)
SHORT = (
    (
        "a very deep plain network (tens to hundreds of layers, no residuals, no normalization) to train",
        '`OrthoConstraint(method="newton_schulz")` on its kernels',
        None,
        "depth",
        [
            ("depth_128", "test_accuracy", ("constraint_ns", "constraint_svd", "orth_init", "none")),
            ("depth_128", "grad_first/last", ("constraint_ns", "none")),
        ],
    ),
    (
        "a plain network of moderate depth (about 30 layers)",
        "`keras.initializers.Orthogonal()` as the kernel initializer, with or without "
        '`OrthoRegularizer(factor, reduction="mean")`',
        ("depth", "l1+orth_init"),
        "depth",
        [("depth_32", "test_accuracy", ("orth_init", "l1+orth_init", "none"))],
    ),
    (
        "a shallow network (under about 10 layers)",
        "nothing",
        None,
        "depth",
        [("depth_8", "test_accuracy", ("none", "l1", "constraint_ns"))],
    ),
    ("long memory in a tanh `SimpleRNN` (copy)", None, ("copy_rnn", "l1"), "copy_rnn", "verdict"),
    ("long memory in a tanh `SimpleRNN` (adding)", None, ("adding_rnn", "l1"), "adding_rnn", "verdict"),
    ("memory in a ReLU `SimpleRNN` (adding)", None, ("adding_relu", "l1"), "adding_relu", "verdict"),
    ("an `LSTM` on the copy task", None, ("copy_lstm", "l1"), "copy_lstm", "verdict"),
    (
        "attention heads that differ, or more accuracy from them",
        "nothing for accuracy; `OrthoLogger` to watch them",
        ("transformer", "l1"),
        "transformer",
        [
            ("transformer", "test_accuracy", ("none", "l1", "spectral", "orth_init", "constraint_svd")),
            ("transformer", "head_similarity", ("none",)),
        ],
    ),
)


def short_table(tasks, variants, record):
    """The page's "In short" table, every figure read from `record` (what `study.json` holds)."""
    summary, chosen, seeds = record["summary"], record["chosen_factors"], record["meta"]["seeds"]
    by_family = {}
    for task in tasks:
        by_family.setdefault(task.family, []).append(task)
    kind_of = {task.name: task.kind for task in tasks}
    lines = ["| you want | use | factor | what the study measured |", "|---|---|---|---|"]
    for want, use, factor_of, family, figures in SHORT:
        family_tasks = by_family.get(family, [])
        factor = "-" if factor_of is None else chosen.get(factor_of[0], {}).get(factor_of[1])
        factor = "not chosen yet" if factor is None else factor if isinstance(factor, str) else f"{factor:g}"
        if figures == "verdict":
            if not family_tasks:
                continue
            outcome, _ = verdict(family_tasks, summary)
            parts, figures, helped = [], [], []
            for task in sorted(family_tasks, key=lambda t: t.size):
                cells = summary.get(task.name, {})
                metric = "test_" + task.score[0]
                if "none" not in cells:
                    continue
                helpful = helping_variants(task, cells)
                solves = [w for w in helpful if cells[w][metric][0] < 0.5 * task.baseline]
                gains = [w for w in helpful if w not in solves]
                helped += [w for w in helpful if w not in helped]
                said = [f"{', '.join(f'`{w}`' for w in solves)} below half the baseline"] if solves else []
                said += [f"a small gain from {', '.join(f'`{w}`' for w in gains)}"] if gains else []
                none_mean, none_std = cells["none"][metric]
                lower = [v for v in cells if v != "none" and cells[v][metric][0] < none_mean]
                if not helpful and lower and none_std > 0.5 * abs(none_mean):  # an erratic baseline model
                    said.append(
                        f"{', '.join(f'`{v}`' for v in lower)} lower on average, but `none` varies too much "
                        f"across its {cells['none']['seeds']} seeds to tell"
                    )
                runs, planned = progress(task, cells, variants, seeds)
                partial = f" (provisional: {runs} of {planned} runs)" if runs < planned else ""
                parts.append(f"{task.name}: {'; '.join(said) or 'nothing helps'}{partial}")
                figures.append((task.name, metric, tuple(v.name for v in variants if v.name in cells)))
            use = "not run yet" if outcome == "not run" else "; ".join(parts)
            # The factor of each tuned variant that helped, as its family's sweep chose it.
            tuned = [(w, chosen.get(family, {}).get(w)) for w in helped if BY_NAME[w].tuned]
            factor = ", ".join(f"`{w}` {f:g}" for w, f in tuned if f is not None) or "-"
        measured = []
        for task_name, metric, names in figures:
            cells = summary.get(task_name, {})
            if task_name not in kind_of:  # a task with no run on the page (a quick study has no depth_128)
                measured.append(f"{task_name}: not run yet")
                continue
            # Each kind of task names and formats its own metrics (a copy task's loss is a cross-entropy, an
            # adding task's an MSE).
            title, fmt = next((t, f) for m, t, f in METRICS[kind_of[task_name]] if m == metric)
            shown = [
                f"{n} {fmt.format(cells[n][metric][0])} ± {fmt.format(cells[n][metric][1])}"
                for n in names
                if n in cells
            ]
            measured.append(f"{task_name}, {title}: " + (", ".join(shown) if shown else "not run yet"))
        lines.append(f"| {want} | {use} | {factor} | {'; '.join(measured)} |")
    return "\n".join(lines) + "\n"


def investigation_lines(tasks, summary, tried):
    """A table of what each investigation changed, beside the main study's seed-0 spread."""
    if not tried:
        return []
    by_name = {t.name: t for t in tasks}
    lines = [
        "## Investigations",
        "",
        "Where a published effect may not appear, one thing changed at a time (seed 0). Beside each run, the "
        "unchanged task's mean ± std over seeds.",
        "",
        "| task | change | variant | test loss | test loss unchanged |",
        "|---|---|---|---|---|",
    ]
    for run in tried:
        base = by_name[run["base"]]
        metric = "test_loss"
        mean, std = summary[base.name][run["variant"]][metric]
        lines.append(
            f"| {base.name} | {run['change']} | {run['variant']} | {run[metric]:.4f} | {mean:.4f} ± {std:.4f} |"
        )
    return lines + [""]


def _budget(task):
    """One sentence: how a task trains and what it is scored on."""
    if task.streaming:
        cell = "an LSTM" if task.cell == "lstm" else f"a SimpleRNN ({task.activation})"
        return (
            f"{cell} of {task.units} units; {task.steps:,} steps, each on a fresh batch of {task.batch}; scored by "
            f"the mean of the last {task.scored} evaluations (every {task.eval_every} steps, on fixed validation and "
            "test sets)."
        )
    batches = int(np.ceil(DIGITS_SPLIT[0] / task.batch)) if task.kind == "depth" else task.steps_per_epoch
    return f"{task.epochs} epochs of {batches} steps of batch {task.batch}."


def _judged(kind_tasks):
    """The task a verdict is judged on: the longest sequence, the deepest MLP."""
    return max(kind_tasks, key=lambda t: t.size)


def curves_chart(tasks, variants, runs, path):
    """Training loss against step, one panel per task, the mean over seeds of each variant."""
    from matplotlib.figure import Figure

    # Each family's tasks side by side, shortest (shallowest) first.
    families = list(dict.fromkeys(t.family for t in tasks))
    tasks = sorted(tasks, key=lambda t: (families.index(t.family), t.size))
    columns = 4
    rows = int(np.ceil(len(tasks) / columns))
    figure = Figure(figsize=(4.2 * columns, 3.3 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = {v.name: f"C{i}" for i, v in enumerate(variants)}
    for ax, task in zip(axes, tasks, strict=False):
        for variant in variants:
            curves = [r for r in runs if r["task"] == task.name and r["variant"] == variant.name]
            if not curves:
                continue
            mean = np.mean([r["curve"] for r in curves], axis=0)
            steps = curves[0]["steps_per_point"] * np.arange(1, len(mean) + 1)
            style = "--" if variant.method else ":" if variant.name == "none" else "-"
            ax.plot(
                steps,
                mean,
                style,
                color="black" if variant.name == "none" else colours[variant.name],
                linewidth=1.2,
                label=variant.name,
            )
        if task.baseline is not None:
            ax.axhline(task.baseline, color="0.5", linewidth=0.8)
            ax.text(0, task.baseline, " baseline", va="bottom", fontsize=7, color="0.4")
        ax.set_yscale("log")
        ax.set_title(task.name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("test loss" if task.streaming else "training loss (with penalty)")
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    # One entry per variant drawn anywhere: no panel holds them all (n/a cells).
    entries = {}
    for ax in axes[: len(tasks)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    labels = [v.name for v in variants if v.name in entries]
    figure.legend([entries[n] for n in labels], labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    figure.savefig(path, dpi=90)


def depth_chart(tasks, variants, summary, path):
    """Test accuracy and the first/last gradient ratio against depth."""
    from matplotlib.figure import Figure

    depth_tasks = sorted((t for t in tasks if t.kind == "depth"), key=lambda t: t.size)
    if not depth_tasks:
        return
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    accuracy, ratio = figure.subplots(1, 2)
    depths = [t.size for t in depth_tasks]
    for i, variant in enumerate(variants):
        cells = [summary[t.name].get(variant.name) for t in depth_tasks]
        if any(cell is None for cell in cells):
            continue
        style = dict(color="black" if variant.name == "none" else f"C{i}", marker="o", markersize=3, capsize=2)
        accuracy.errorbar(
            depths,
            [c["test_accuracy"][0] for c in cells],
            [c["test_accuracy"][1] for c in cells],
            label=variant.name,
            **style,
        )
        ratio.errorbar(
            depths, [c["grad_first/last"][0] for c in cells], [c["grad_first/last"][1] for c in cells], **style
        )
    for ax in (accuracy, ratio):
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.minorticks_off()
        ax.set_xlabel("depth (tanh layers of width 64)")
    accuracy.set_ylabel("test accuracy")
    ratio.set_yscale("log")
    ratio.set_ylabel("grad norm, first / last hidden kernel")
    ratio.axhline(1.0, color="0.5", linewidth=0.8)
    figure.legend(loc="outside right center", fontsize=8)
    figure.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny tasks, one seed, a few variants: checks it runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes (default: one per core)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated tasks or families to train (default: all); the page covers every saved run",
    )
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    parser.add_argument(
        "--render",
        action="store_true",
        help="write study.json, .md and figures from the saved runs, training nothing",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1; received {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1; received {args.jobs}")
    tasks = tasks_of(args.quick)
    selected = tasks
    if args.only is not None:
        names = args.only.split(",")
        known = {t.name for t in tasks} | {t.family for t in tasks}
        unknown = sorted(set(names) - known)
        if unknown:
            parser.error(f"--only: unknown task(s) or families {unknown}; choose from {sorted(known)}")
        # A family's sweep runs on its first task: a later task of it brings that task's sweep along.
        selected = tuple(t for t in tasks if t.name in names or t.family in names)
    variants = tuple(v for v in VARIANTS if v.name in QUICK_VARIANTS) if args.quick else VARIANTS
    factors = QUICK_FACTORS if args.quick else FACTORS
    seeds = 1 if args.quick else args.seeds
    investigations = QUICK_INVESTIGATIONS if args.quick else INVESTIGATIONS
    stem = args.out / ("study_quick" if args.quick else "study")
    store = RunStore(stem.parent / f"{stem.name}_runs")
    if not args.render:
        first = first_of_families(tasks)
        sweep_tasks = tuple(dict.fromkeys(first[t.family] for t in selected))
        study(selected, variants, factors, seeds, investigations, args.jobs, args.quick, store, sweep_tasks)
    record = collect(store, tasks, variants, factors, seeds, investigations)
    if not record["runs"]:
        raise SystemExit(f"study.py: error: no saved run in {store.folder}: nothing to write")
    record["meta"]["quick"] = args.quick
    record["summary"] = summarize(record["runs"])
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    shown = tuple(t for t in tasks if t.name in record["summary"])
    write_outputs(shown, variants, record, stem)
    print(f"wrote {stem}.md, .json and .png; {record['meta']['missing']} planned run(s) not saved yet")


def write_outputs(tasks, variants, record, stem):
    """`stem`.md and the figures from a study's record (what `study.json` holds)."""
    summary, runs = record["summary"], record["runs"]
    text = markdown(
        tasks, variants, summary, record["sweeps"], record["chosen_factors"], record["investigations"], record["meta"]
    )
    stem.with_suffix(".md").write_text(text)
    (stem.parent / f"{stem.name}_short.md").write_text(short_table(tasks, variants, record))
    curves_chart(tasks, variants, runs, stem.with_suffix(".png"))
    depth_chart(tasks, variants, summary, stem.parent / f"{stem.name}_depth.png")


if __name__ == "__main__":
    main()
