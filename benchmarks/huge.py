"""Huge kernels: the penalty and gradient of an `Embedding(1_000_000, 128)` table.

Each variant runs in a child process of its own, holding the table in a
`tf.Variable`. Memory is TensorFlow's allocator's peak while computing penalty
and gradient minus what it held just before
(`tf.config.experimental.get_memory_info`, peak reset before each call), in
units of the table's own size; the gradient, one table's worth, is part of it.
"""

import json
import os
import subprocess
import sys
import time

VARIANTS = ("ours", "autodiff", "keras")


def child(variant, rows, cols, calls):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import penalty
    import tensorflow as tf

    import keras_ortho

    variable = tf.Variable(tf.random.normal((rows, cols), stddev=rows**-0.5))
    if variant == "ours":
        compute = lambda v: keras_ortho.ortho_penalty(v, 0.01)  # noqa: E731
    elif variant == "autodiff":
        compute = lambda v: penalty.autodiff_penalty(v, None)  # noqa: E731
    else:
        compute = keras.regularizers.OrthogonalRegularizer(0.01, mode="columns")

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = compute(variable)
        return value, tape.gradient(value, variable)

    step()  # trace and warm up
    device = variable.device.split("device:")[-1] or "CPU:0"
    times, extra = [], []
    for _ in range(calls):
        before = tf.config.experimental.get_memory_info(device)["current"]
        tf.config.experimental.reset_memory_stats(device)
        start = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - start)
        extra.append(tf.config.experimental.get_memory_info(device)["peak"] - before)
        del result
    table_bytes = rows * cols * 4
    print(
        json.dumps(
            {
                "variant": variant,
                "device": device,
                "ms": float(np.median(times)) * 1e3,
                "extra_peak_mib": float(np.median(extra)) / 2**20,
                "extra_peak_in_tables": float(np.median(extra)) / table_bytes,
            }
        )
    )


def run(quick, log=print):
    rows, cols, calls = (100_000, 64, 2) if quick else (1_000_000, 128, 5)
    here = os.path.dirname(os.path.abspath(__file__))
    results = []
    for variant in VARIANTS:
        output = subprocess.run(
            [sys.executable, os.path.abspath(__file__), variant, str(rows), str(cols), str(calls)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
            # TensorFlow keeps allocator statistics on the CPU only with its BFC
            # allocator, its default only where oneDNN is on (Intel CPUs); elsewhere
            # (an AMD EPYC) get_memory_info raised "Allocator stats not available".
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": here, "TF_CPU_ALLOCATOR_USE_BFC": "true"},
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        r = results[-1]
        log(
            f"  Embedding({rows}, {cols}) {variant:<9} {r['ms']:8.1f} ms, extra peak memory "
            f"{r['extra_peak_mib']:7.0f} MiB = {r['extra_peak_in_tables']:.2f} x the table"
        )
    return {"shape": [rows, cols], "table_mib": rows * cols * 4 / 2**20, "rows": results}


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
