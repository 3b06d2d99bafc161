"""Markdown tables of the benchmark results."""

from harness import markdown_table


def _ms(row, name):
    value = row["ms"].get(name)
    return "" if value is None else f"{value:.2f}"


def penalty_table(section):
    headers = [
        "kernel", "dtype", "exec", "slices x Gram", "ours ms", "autodiff ms", "keras ms",
        "floor ms", "ours/autodiff", "ours/floor", "ours GFLOP/s",
    ]
    rows = [
        [
            r["kernel"], r["dtype"], r["execution"],
            f"{r['slices']} x {r['mode']}",
            _ms(r, "ours"), _ms(r, "autodiff"), _ms(r, "keras"), _ms(r, "floor"),
            f"{r['ours/autodiff']:.2f}", f"{r['ours/floor']:.2f}", f"{r['ours_gflops']:.0f}",
        ]
        for r in section["rows"]
    ]
    yardstick = ", ".join(
        f"{dtype} {gflops:.0f} GFLOP/s" for dtype, gflops in section["matmul_gflops"].items()
    )
    return markdown_table(headers, rows) + f"\n\nPlain square `tf.matmul` in the same run: {yardstick}.\n"


def markdown(results):
    m = results["machine"]
    parts = [
        "# keras_ortho benchmark results",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores"
        + (f", GPUs {m['gpus']}" if m["gpus"] else ", no GPU")
        + f"), Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}."
        + (" Quick mode: tiny sizes, few rounds; not for quoting." if results["quick"] else ""),
        "",
        "Medians over interleaved rounds in one process; ratios are of medians.",
        "",
    ]
    if "penalty" in results:
        parts += ["## Penalty plus gradient", "", penalty_table(results["penalty"])]
    return "\n".join(parts) + "\n"
