"""Markdown tables and the PNG chart of the benchmark results."""

import collectives
from harness import EXECUTION, markdown_table

TARGET_AUTODIFF, TARGET_FLOOR = 0.70, 1.10
TARGET_NORM_AUTODIFF = 0.8


def _ms(row, name):
    value = row["ms"].get(name)
    if value is None:
        return "fails" if name in row.get("failed", {}) else ""
    return f"{value:.2f}"


def penalty_table(section, only=None):
    headers = [
        "kernel",
        "dtype",
        "exec",
        "slices x Gram",
        "ours ms",
        "autodiff ms",
        "keras ms",
        "floor ms",
        "ours/autodiff",
        "ours/floor",
        "ours GFLOP/s",
    ]
    rows = [
        [
            r["kernel"],
            r["dtype"],
            r["execution"],
            f"{r['slices']} x {r['mode']}",
            _ms(r, "ours"),
            _ms(r, "autodiff"),
            _ms(r, "keras"),
            _ms(r, "floor"),
            f"{r['ours/autodiff']:.2f}",
            f"{r['ours/floor']:.2f}",
            f"{r['ours_gflops']:.0f}",
        ]
        for r in section["rows"]
        if only is None or only(r)
    ]
    failures = sorted(
        {
            f"{name}: {message}"
            for r in section["rows"]
            if only is None or only(r)
            for name, message in r.get("failed", {}).items()
        }
    )
    note = "".join(f"\n\n`fails`: {failure}" for failure in failures)
    return markdown_table(headers, rows) + note


def yardstick(section, name="tf.matmul"):
    n = section["matmul_size"]
    return (
        f"Plain square `{name}` ({n}x{n} by {n}x{n}) in the same run: "
        + ", ".join(f"{dtype} {gflops:.0f} GFLOP/s" for dtype, gflops in section["matmul_gflops"].items())
        + "."
    )


def backends_table(by_backend):
    """One row per kernel; per backend: ours ms, ours/autodiff, ours/floor (bold: target missed)."""
    backends = list(by_backend)
    headers = ["kernel", "slices x Gram"] + [
        f"{b} ({EXECUTION[b]}): {c}" for b in backends for c in ("ours ms", "/autodiff", "/floor")
    ]
    kernels = [r["kernel"] for r in by_backend[backends[0]]["rows"]]
    rows = []
    for kernel in kernels:
        cells = None
        for b in backends:
            r = next(r for r in by_backend[b]["rows"] if r["kernel"] == kernel)
            cells = cells or [kernel, f"{r['slices']} x {r['mode']}"]
            auto, floor = r["ours/autodiff"], r["ours/floor"]
            cells += [
                f"{r['ms']['ours']:.2f}",
                f"**{auto:.2f}**" if auto > TARGET_AUTODIFF else f"{auto:.2f}",
                f"**{floor:.2f}**" if floor > TARGET_FLOOR else f"{floor:.2f}",
            ]
        rows.append(cells)
    sticks = " ".join(f"{b}: " + yardstick(by_backend[b], "matmul") for b in backends)
    return markdown_table(headers, rows) + "\n\n" + sticks


def blocks_table(section):
    """The symmetric-Gram experiment: ours with other block sides, against the floor."""
    names = ("unblocked", "blocks 128", "blocks 512")
    rows = [
        [r["kernel"], f"{r['ours/floor']:.3f}"] + [f"{r[f'{n}/floor']:.3f}" for n in names]
        for r in section["rows"]
        if "unblocked/floor" in r
    ]
    if not rows:
        return ""
    return markdown_table(["kernel", "ours (blocks 256) / floor"] + [f"{n} / floor" for n in names], rows)


def training_table(section):
    headers = [
        "model",
        "none ms",
        "L2 ms",
        "Keras Orthogonal (rank-2 kernels) ms",
        "OrthoRegularizer (every kernel) ms",
    ]
    rows = []
    for r in section["rows"]:
        n, o, iqr = r["regularized_kernels"], r["overhead"], r["iqr_ms"]
        rows.append(
            [r["model"], f"{r['ms']['none']:.2f} +- {iqr['none']:.2f}"]
            + [
                f"{r['ms'][v]:.2f} +- {iqr[v]:.2f} ({o[v]:+.1%}, {n[v]} kernels)"
                for v in ("l2", "keras_orthogonal", "ortho")
            ]
        )
    return (
        markdown_table(headers, rows)
        + "\n\nMedian step time +- interquartile range; in brackets the change against no regularizer "
        "and how many kernels each regularizes.\n"
    )


def logger_table(section):
    s = section
    headers = ["record", "hook ms", "share", "target"]
    rows = [
        [
            "per epoch (`OrthoLogger()`)",
            f"{s['on_epoch_end_ms']:.2f}",
            f"{s['epoch_overhead']:.2%} of a {s['epoch_ms']:.0f} ms epoch",
            "< 1%",
        ],
        [
            "every batch (`every_n_batches=1`)",
            f"{s['on_train_batch_end_ms']:.2f}",
            f"{s['batch_overhead']:.2%} of a {s['step_ms']:.1f} ms step",
            "< 10%",
        ],
    ]
    fits = ", ".join(f"{k} {s['fit_ms'][k]:.0f} +- {s['fit_iqr_ms'][k]:.0f}" for k in s["fit_ms"])
    setup = ", ".join(f"{k} {v:.0f} ms" for k, v in s["setup_ms"].items())
    return (
        markdown_table(headers, rows)
        + f"\n\n{s['regularized_kernels']} regularized kernels, {s['steps_per_epoch']} steps per epoch. "
        + f"Whole 3-epoch fits, median +- interquartile range (ms): {fits}. "
        + f"One-time compile of a new logger's probe: {setup}.\n"
    )


def huge_table(section):
    rows, cols = section["shape"]
    headers = ["variant", "ms", "extra peak MiB", "x table"]
    body = [
        [r["variant"], f"{r['ms']:.1f}", f"{r['extra_peak_mib']:.0f}", f"{r['extra_peak_in_tables']:.2f}"]
        for r in section["rows"]
    ]
    return (
        f"`Embedding({rows}, {cols})`, float32, a {section['table_mib']:.0f} MiB table, "
        "penalty plus gradient in graph mode:\n\n" + markdown_table(headers, body) + "\n"
    )


def versions(m):
    names = {"keras": "Keras", "tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    return ", ".join(f"{label} {m[key]}" for key, label in names.items() if m.get(key))


def layout_table(by_backend):
    """For slices along a middle axis: how much of ours/floor is the layout change itself."""
    lines = [
        "| kernel | backend | ours/floor | (floor + layout change)/floor | ours/(floor + layout change) "
        "| bare/(floor + layout change) | ours/bare | PyTorch minimum/(floor + layout change) | ours/minimum |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, section in by_backend.items():
        for r in section["rows"]:
            if "layout/floor" in r:
                later = [r.get("bare/(floor+layout)"), r.get("ours/bare")]
                minimum = [r.get("minimum/(floor+layout)"), r.get("ours/minimum")]
                lines.append(
                    f"| {r['kernel']} | {backend} ({r['execution']}) | {r['ours/floor']:.2f} "
                    f"| {r['layout/floor']:.2f} | {_flag(r['ours/(floor+layout)'], 1.15)} | "
                    + " | ".join("not measured" if x is None else f"{x:.2f}" for x in later)
                    + " | "
                    + " | ".join("-" if x is None else f"{x:.2f}" for x in minimum)
                    + " |"
                )
    return "\n".join(lines) if len(lines) > 2 else ""


def steps_table(by_backend):
    """Two tables, one row per backend and model: ms per step of each variant, then the ratios."""
    times = [
        "| backend | model | kernels | plain ms | regularized ms | lazy (1 in 16) ms | penalty alone ms "
        "| one kernel at a time ms | gradient added ms | Keras L2 ms | L2 alone, gradient added ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = [
        "| backend | model | regularized/plain | lazy/plain | overhead/penalty alone | overhead/one at a time "
        "| overhead/gradient added | beyond Keras L2 | penalty GFLOP/s | of these kernels' bare products "
        "| of a square matmul's |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, section in by_backend.items():
        for r in section["rows"]:
            ms, iqr = r["ms"], r["iqr_ms"]
            cell = lambda v, ms=ms, iqr=iqr: f"{ms[v]:.1f} (IQR {iqr[v]:.1f})" if v in ms else "not measured"  # noqa: E731
            times.append(
                f"| {backend} ({r['execution']}) | {r['model']} | {r['kernels']} | {cell('plain')} | {cell('ortho')} "
                f"| {cell('lazy')} | {cell('penalty')} | {cell('serial')} | {cell('added')} | {cell('l2')} "
                f"| {cell('l2 added')} |"
            )
            ratios.append(
                f"| {backend} | {r['model']} | {r['ortho_over_plain']:.2f} | {r['lazy_over_plain']:.2f} "
                f"| {_overhead_cell(r)} | {_overhead_cell(r, 'serial')} | {_overhead_cell(r, 'added')} "
                f"| {_overhead_cell(r, key='beyond_l2')} "
                f"| {r['penalty_gflops']:.0f} | {_share(r, 'penalty_over_products')} "
                f"| {r['penalty_over_matmul']:.0%} |"
            )
    return "\n".join(times) + "\n\n" + "\n".join(ratios)


def _overhead_cell(row, yardstick="penalty", key=None):
    """The ratio of medians, and (from rounds measured since) the median and IQR of each round's."""
    key = key or f"overhead_over_{yardstick}"
    if key not in row:
        return "not measured"
    if f"{key}_rounds" not in row:
        return f"{row[key]:.2f}"
    median, iqr = row[f"{key}_rounds"]
    return f"{row[key]:.2f} (rounds: {median:.2f}, IQR {iqr:.2f})"


def _share(row, key):
    return f"{row[key]:.0%}" if key in row else "not measured"


def _flag(ratio, target):
    """The ratio, in bold where it misses its target."""
    return f"**{ratio:.2f}**" if ratio > target else f"{ratio:.2f}"


def norms_table(by_backend):
    """One row per backend and kernel, one column pair per norm: ours/autodiff and ours/floor."""
    norms = []
    for section in by_backend.values():
        for r in section["rows"]:
            if r["norm"] not in norms:
                norms.append(r["norm"])
    lines = [
        "| backend | kernel | " + " | ".join(f"{n}: ms, /autodiff, /floor" for n in norms) + " |",
        "|---|---|" + "---|" * len(norms),
    ]
    for backend, section in by_backend.items():
        kernels = list(dict.fromkeys(r["kernel"] for r in section["rows"]))
        for kernel in kernels:
            cells = {r["norm"]: r for r in section["rows"] if r["kernel"] == kernel}
            lines.append(
                f"| {backend} | {kernel} | "
                + " | ".join(
                    f"{cells[n]['ms']['ours']:.2f} (IQR {cells[n]['iqr_ms']['ours']:.2f}), "
                    f"{_flag(cells[n]['ours/autodiff'], TARGET_NORM_AUTODIFF)}, {cells[n]['ours/floor']:.2f}"
                    if n in cells
                    else "-"
                    for n in norms
                )
                + " |"
            )
    return "\n".join(lines)


def projections_table(by_backend):
    """One row per backend and kernel: ms of one OrthoConstraint projection per method, and per L1 penalty."""
    lines = [
        "| backend | kernel | svd ms | newton_schulz ms | L1 penalty + gradient ms | svd / penalty "
        "| newton_schulz / penalty |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, section in by_backend.items():
        for r in section.get("projections", []):
            ms, iqr = r["ms"], r["iqr_ms"]
            cell = lambda v, ms=ms, iqr=iqr: f"{ms[v]:.2f} (IQR {iqr[v]:.2f})"  # noqa: E731
            lines.append(
                f"| {backend} | {r['kernel']} | {cell('svd')} | {cell('newton_schulz')} | {cell('l1 penalty')} "
                f"| {r['svd/l1 penalty']:.1f} | {r['newton_schulz/l1 penalty']:.1f} |"
            )
    return "\n".join(lines)


def _measured(by_backend):
    """The sentence " Measured <date>, ..." for a per-backend section measured apart from the stamped run."""
    dates = sorted({s["measured"][:10] for s in by_backend.values() if "measured" in s})
    return "".join(f" Measured {d}, apart from the run stamped above." for d in dates)


def markdown(results):
    m = results["machine"]
    parts = [
        "# keras_ortho benchmark results",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, no GPU), Python {m['python']}, "
        + versions(m)
        + "."
        + (" Quick mode: tiny sizes, few rounds; not for quoting." if results["quick"] else ""),
        "",
        "Medians over interleaved rounds in one process per backend; ratios are of medians. "
        f"Targets: ours/autodiff <= {TARGET_AUTODIFF}, ours/floor <= {TARGET_FLOOR}.",
        "",
    ]
    if results.get("backends"):
        parts += [
            "## Penalty plus gradient on each backend, float32",
            "",
            "TensorFlow in graph mode (`tf.function`), JAX under `jax.jit`, PyTorch eagerly; "
            "each backend in its own process." + _measured(results["backends"]),
            "",
            backends_table(results["backends"]),
            "",
        ]
        layout = layout_table(results["backends"])
        if layout:
            parts += [
                "### Slices along a middle axis: the layout change, measured",
                "",
                "The floor multiplies a stack already laid out as `(slices, rows, cols)`. A weight "
                "`(l, m, n)` sliced along axis 1 must be moved to that layout and its gradient moved "
                "back; `floor + layout change` does exactly that around the floor's two products, and "
                "returns the gradient dense in the weight's layout, as an optimizer needs it (on PyTorch "
                "the product is written straight into that layout, the cheapest way measured: 3 to 6% "
                "over the plain product on the two large kernels, 44% on the MHA query's 768x64 heads, "
                "where a product then a copy costs 10 to 48%). `bare` is the work `ours` does, called "
                "directly: the layout change, the Gram, the elementwise passes over it (`|G|` summed, "
                "`sign(G)`) and the gradient product with its scale, "
                "without the custom gradient, checks and planning around them. So `bare/(floor + layout "
                "change)` is the elementwise work, and `ours/bare` what the framework around it costs. "
                "On PyTorch, `minimum` is the same math as one hand-written `torch.autograd.Function` in "
                "plain torch calls, with no Keras: what any eager PyTorch implementation of it pays, "
                "autograd and the unfused passes over the Gram included. "
                "Goal: ours/(floor + layout change) <= 1.15 (bold where missed).",
                "",
                layout,
                "",
            ]
    if "penalty" in results:
        section = results["penalty"]
        parts += [
            "## TensorFlow: penalty plus gradient, float32, graph mode",
            "",
            penalty_table(section, lambda r: (r["dtype"], r["execution"]) == ("float32", "graph")),
            "",
            yardstick(section),
            "",
            "### Symmetric Gram: block side",
            "",
            "Grams of side >= 1024 are built from their upper block triangle "
            "(`keras_ortho/_backend/tensorflow.py`); the same penalty and gradient with other block sides:",
            "",
            blocks_table(section),
            "",
            "## TensorFlow: penalty plus gradient, other dtypes and execution modes",
            "",
            penalty_table(section, lambda r: (r["dtype"], r["execution"]) != ("float32", "graph")),
            "",
        ]
    if results.get("norms"):
        parts += [
            "## Every norm: penalty plus gradient on each backend, float32",
            "",
            "`ours` is `ortho_penalty(w, norm=...)` with its closed-form gradient; `autodiff` the same formula "
            'in plain `keras.ops` left to the backend\'s autodiff ("double" building both Grams as its formula '
            'reads, "spectral" differentiating through the same 32 power-iteration steps); `floor` the Gram '
            f"and one gradient product on the laid-out stack. Target: ours/autodiff <= {TARGET_NORM_AUTODIFF} "
            "(bold where missed). Each cell: ours ms (IQR), ours/autodiff, ours/floor." + _measured(results["norms"]),
            "",
            norms_table(results["norms"]),
            "",
            "### The hard constraint: one projection per optimizer step",
            "",
            "`OrthoConstraint` on the same kernels, compiled the same way: one projection (what Keras runs "
            "after each step) per method, against the L1 penalty plus gradient.",
            "",
            projections_table(results["norms"]),
            "",
        ]
    if results.get("steps"):
        parts += [
            "## Training step of real models, on each backend",
            "",
            "Per step, from `fit` epochs of 16 steps (so `lazy` holds one regularized step); "
            "`penalty alone` is value and gradient of every kernel's penalty, compiled as `fit` runs it, and "
            "`one kernel at a time` the same with each kernel waiting for the last one's gradient."
            + _measured(results["steps"])
            + " `overhead/penalty alone` is `(regularized - plain) / penalty alone` of the medians, then the "
            "median and IQR of the same ratio round by round (each round's two steps measured side by side); "
            "`overhead/one at a time` the same against the serial figure. Alone on idle cores, TensorFlow's "
            "graph runs independent kernels' penalties side by side; in a step the model's own operations "
            "keep the cores busy, and the penalty costs what it costs one kernel at a time (eager PyTorch "
            "always runs it so, and XLA on the CPU measured the same both ways). "
            "`gradient added` is the penalty alone with each kernel's gradient added into a gradient of its "
            "size, as the step adds it into the data gradient: one pass over the weights, which any "
            "regularizer's gradient costs in a step, and `overhead/gradient added` the ratio against it. "
            "`Keras L2` is the control: `fit` with Keras's own `L2` on the same kernels, which pays what the "
            "step charges every regularized weight (collecting its loss, summing it into the total, its "
            "backward node) and little else; `L2 alone, gradient added` is that `L2` alone as `gradient added` "
            "measures the penalty. `beyond Keras L2` is `(regularized - Keras L2) / (gradient added - L2 alone, "
            "gradient added)`: what the penalty costs in the step beyond what the step charges any regularizer, "
            "over what it costs alone beyond `L2` (goal: at most 1.1). "
            "The penalty's GFLOP/s (its Grams and gradient products) are set against the same products of "
            "these kernels alone, laid out beforehand (goal: at least 80%), and against a square float32 "
            "matmul of side 1024.",
            "",
            steps_table(results["steps"]),
            "",
        ]
    if "training" in results:
        parts += ["## Training step", "", training_table(results["training"]), ""]
    if "logger" in results:
        parts += ["## OrthoLogger overhead", "", logger_table(results["logger"]), ""]
    if "huge" in results:
        parts += ["## Huge kernel", "", huge_table(results["huge"]), ""]
    if "collectives" in results:
        section = results["collectives"]
        parts += [
            "## JAX: collectives per sharding layout",
            "",
            collectives.markdown(section["rows"], section["devices"]),
            "",
        ]
    return "\n".join(parts) + "\n"


def chart(results, path):
    """Ratios of the headline configuration and the training-step overheads; False with nothing to draw."""
    from matplotlib.figure import Figure

    panels = [k for k in ("backends", "penalty", "training") if results.get(k)]
    if not panels:
        return False
    figure = Figure(figsize=(6.5 * len(panels), 4.6), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, key in zip(axes, panels, strict=True):
        if key == "backends":
            by_backend = results["backends"]
            labels = [r["kernel"] for r in next(iter(by_backend.values()))["rows"]]
            width = 0.8 / len(by_backend)
            for j, (backend, section) in enumerate(by_backend.items()):
                ax.barh(
                    [i + (j - (len(by_backend) - 1) / 2) * width for i in range(len(labels))],
                    [r["ours/floor"] for r in section["rows"]],
                    width,
                    label=f"{backend} ({EXECUTION[backend]})",
                )
            ax.axvline(TARGET_FLOOR, color="black", linestyle="--", linewidth=1)
            ax.axvline(1.0, color="grey", linewidth=0.8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("ours / matmul floor (lower is faster); dashed: target")
            ax.set_title("penalty + gradient, float32, per backend")
            ax.legend(fontsize=8, loc="lower right")
        elif key == "penalty":
            rows = [
                r for r in results["penalty"]["rows"] if (r["dtype"], r["execution"]) == ("float32", "graph")
            ] or results["penalty"]["rows"]
            labels = [r["kernel"] for r in rows]
            y = range(len(rows))
            ax.barh([i - 0.2 for i in y], [r["ours/autodiff"] for r in rows], 0.4, label="ours / autodiff")
            ax.barh([i + 0.2 for i in y], [r["ours/floor"] for r in rows], 0.4, label="ours / matmul floor")
            ax.axvline(TARGET_AUTODIFF, color="C0", linestyle="--", linewidth=1)
            ax.axvline(TARGET_FLOOR, color="C1", linestyle="--", linewidth=1)
            ax.axvline(1.0, color="grey", linewidth=0.8)
            ax.set_yticks(list(y), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("time ratio (lower is faster); dashed: targets")
            ax.set_title("penalty + gradient, float32, graph mode")
            ax.legend(fontsize=8, loc="lower right")
        else:
            rows = results["training"]["rows"]
            variants = ("l2", "keras_orthogonal", "ortho")
            names = {
                "l2": "Keras L2 (all)",
                "keras_orthogonal": "Keras Orthogonal (rank 2)",
                "ortho": "OrthoRegularizer (all)",
            }
            for j, v in enumerate(variants):
                ax.bar(
                    [i + (j - 1) * 0.27 for i in range(len(rows))],
                    [100 * r["overhead"][v] for r in rows],
                    0.27,
                    label=names[v],
                )
            ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_ylabel("training-step overhead vs no regularizer (%)")
            ax.set_title("training step")
            ax.legend(fontsize=8)
    m = results["machine"]
    later = sorted({s["measured"] for s in (results.get("backends") or {}).values() if "measured" in s})
    when = m["date"] + (f"; per-backend panel {', '.join(later)}" if later else "")
    figure.suptitle(f"keras_ortho benchmarks: {m['cpu']}, {m['cores']} cores, {versions(m)}, {when}", fontsize=10)
    figure.savefig(path, dpi=100)
