"""Benchmarks for keras_ortho, one entry point.

    python benchmarks/run.py            # full run, about 10 minutes on 2 cores
    python benchmarks/run.py --quick    # under a minute: checks the harness works

Writes `results.md`, `results.json` and `results.png` to `--out`
(default `benchmarks/results/`, `benchmarks/results/quick/` with `--quick`),
stamped with the machine and versions. Speed is never asserted here.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import harness  # noqa: E402
import huge  # noqa: E402
import logger_overhead  # noqa: E402
import penalty  # noqa: E402
import report  # noqa: E402
import training  # noqa: E402

SECTIONS = {
    "penalty": ("penalty + gradient per kernel shape, dtype and execution mode", penalty.run),
    "training": ("training-step cost of the regularizers", training.run),
    "logger": ("OrthoLogger overhead per epoch and per batch", logger_overhead.run),
    "huge": ("Embedding(1_000_000, 128): time and peak memory", huge.run),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description="keras_ortho benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    out = args.out or pathlib.Path(__file__).parent / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)

    results = {"machine": harness.machine_stamp(), "quick": args.quick}
    print(f"machine: {results['machine']}")
    for name in sections:
        title, run = SECTIONS[name]
        print(f"{name}: {title}")
        results[name] = run(args.quick)

    harness.write_json(out / "results.json", results)
    (out / "results.md").write_text(report.markdown(results))
    report.chart(results, out / "results.png")
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
