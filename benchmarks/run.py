"""Benchmarks for keras_ortho, one entry point.

    python benchmarks/run.py            # full run, about 40 minutes on 2 cores (Intel Xeon)
    python benchmarks/run.py --quick    # about 4 minutes on 2 cores: checks the harness works
    python benchmarks/run.py --backends jax,torch --sections backends

Each Keras backend runs in a process of its own (KERAS_BACKEND is fixed when
Keras is imported). The `backends` section (penalty plus gradient on the same
shapes) runs on every backend asked for; the other sections measure TensorFlow
in depth and run in its process; `collectives` compiles on JAX over 4 host
devices, in a process of its own. Writes `results.md`, `results.json` and
`results.png` to `--out` (default `benchmarks/results/`, `benchmarks/results/quick/`
with `--quick`), stamped with the machine and versions. Speed is never asserted here.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
# section: (title, module, backends it runs on)
SECTIONS = {
    "backends": ("penalty + gradient on each Keras backend", "backend_penalty", BACKENDS),
    "penalty": ("TensorFlow: penalty + gradient per shape, dtype and execution mode", "penalty", ("tensorflow",)),
    "training": ("TensorFlow: training-step cost of the regularizers", "training", ("tensorflow",)),
    "steps": ("training step of real models: plain, regularized, lazy, penalty alone", "step_cost", BACKENDS),
    "norms": ("every norm: penalty + gradient, ours against autodiff and the floor", "norm_cost", BACKENDS),
    "logger": ("TensorFlow: OrthoLogger overhead per epoch and per batch", "logger_overhead", ("tensorflow",)),
    "huge": ("TensorFlow: Embedding(1_000_000, 128), time and peak memory", "huge", ("tensorflow",)),
    "collectives": ("JAX: collectives of penalty + gradient per sharding layout", "collectives", ("jax",)),
}

# Sections measured on every backend: their results are kept per backend.
PER_BACKEND = ("backends", "steps", "norms")


def run_worker(backend, sections, quick):
    """This process runs on `backend`: measures its sections, returns `{section: result}`."""
    import importlib
    import time

    results = {}
    for name in sections:
        title, module, _ = SECTIONS[name]
        print(f"{name} ({backend}): {title}", flush=True)
        start = time.perf_counter()
        results[name] = importlib.import_module(module).run(quick)
        print(f"{name} ({backend}): done in {time.perf_counter() - start:.0f} s", flush=True)
    return results


def spawn(backend, sections, quick):
    """Runs `sections` in a new process on `backend`; returns its results."""
    with tempfile.TemporaryDirectory() as directory:
        out = pathlib.Path(directory) / "worker.json"
        command = [
            sys.executable,
            str(HERE / "run.py"),
            "--worker",
            backend,
            "--sections",
            ",".join(sections),
            "--worker-out",
            str(out),
        ] + (["--quick"] if quick else [])
        subprocess.run(command, check=True, env={**os.environ, "KERAS_BACKEND": backend})
        return json.loads(out.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description="keras_ortho benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)"
    )
    parser.add_argument("--backends", default=None, help="comma-separated Keras backends (default: each one installed)")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if args.worker:
        harness.write_json(args.worker_out, run_worker(args.worker, sections, args.quick))
        return

    installed = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    backends = args.backends.split(",") if args.backends else installed
    missing = sorted(set(backends) - set(installed))
    if missing:
        parser.error(f"backend(s) {missing} not installed here; installed: {installed}")
    out = args.out or HERE / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)

    results = {"machine": harness.machine_stamp(), "quick": args.quick, **{name: {} for name in PER_BACKEND}}
    print(f"machine: {results['machine']}")
    for backend in backends:
        mine = [s for s in sections if backend in SECTIONS[s][2]]
        if not mine:
            continue
        measured = spawn(backend, mine, args.quick)
        for name in PER_BACKEND:
            if name in measured:
                results[name][backend] = measured.pop(name)
        results.update(measured)

    harness.write_json(out / "results.json", results)
    import report

    (out / "results.md").write_text(report.markdown(results))
    drawn = report.chart(results, out / "results.png") is not False
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}" + (f" and {out / 'results.png'}" if drawn else ""))


if __name__ == "__main__":
    main()
