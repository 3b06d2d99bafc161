"""Timing and reporting shared by the benchmark sections.

Every section times its variants *interleaved* in one process: each round runs
every variant once (in a rotating order), so drifts of the machine (turbo,
other load) hit all variants alike; the figure quoted is the median over rounds.
"""

import datetime
import json
import math
import os
import platform
import time

import numpy as np

# How each Keras backend's figures are run: graph mode, jit, eager.
EXECUTION = {"tensorflow": "graph", "jax": "jit", "torch": "eager"}


def median_times(variants, rounds, calls=1, warmup=2, min_timing_s=0.0):
    """Median seconds per call of each variant, timed interleaved.

    Args:
        variants: `{name: zero-argument callable}`; each call must finish its
            work before returning (TensorFlow on CPU does; `sync` helps on GPU).
        rounds: how many times each variant is timed.
        calls: calls per timing, averaged.
        warmup: untimed calls per variant first (tracing, compilation).
        min_timing_s: more calls per timing where needed, so that the fastest
            variant's timing lasts at least this long (from its last warmup
            call): a kernel of a millisecond timed over three calls moves by
            tens of percent from run to run.

    Returns:
        `{name: {"median_s": float, "iqr_s": float, "rounds": int}}`.
    """
    last = {}  # each variant's last warmup call, in seconds
    for name, fn in variants.items():
        for _ in range(warmup):
            start = time.perf_counter()
            fn()
            last[name] = time.perf_counter() - start
    if min_timing_s and last:
        calls = max(calls, math.ceil(min_timing_s / max(min(last.values()), 1e-9)))
    names = list(variants)
    samples = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls)
    summary = {name: median_iqr(s) for name, s in samples.items()}
    return {name: {"median_s": median, "iqr_s": iqr, "rounds": rounds} for name, (median, iqr) in summary.items()}


def median_iqr(samples):
    """`(median, interquartile range)` of a list of numbers, as floats."""
    return float(np.median(samples)), float(np.subtract(*np.percentile(samples, [75, 25])))


def _version(package):
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_stamp():
    """What the figures were measured on (without importing any backend)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("keras", "tensorflow", "jax", "torch", "numpy")},
    }


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def run_in_backend_processes(script, backends, quick):
    """`[(backend, result)]`: `script --worker BACKEND [--quick]` in a process per backend; its last line, as JSON.

    `backends` is a comma-separated string, or None for each one installed.
    """
    import importlib.util
    import subprocess
    import sys

    names = backends.split(",") if backends else [b for b in EXECUTION if importlib.util.find_spec(b) is not None]
    results = []
    for backend in names:
        command = [sys.executable, str(script), "--worker", backend] + (["--quick"] if quick else [])
        env = {**os.environ, "KERAS_BACKEND": backend}
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
        results.append((backend, json.loads(done.stdout.strip().splitlines()[-1])))
    return results
