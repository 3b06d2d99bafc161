"""Benchmarks for keras_ortho, one entry point.

    python benchmarks/run.py            # full run, a few minutes on 2 cores
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
import penalty  # noqa: E402
import report  # noqa: E402

SECTIONS = ("penalty",)


def main(argv=None):
    parser = argparse.ArgumentParser(description="keras_ortho benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
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
    if "penalty" in sections:
        print("penalty + gradient, float32, graph mode:")
        results["penalty"] = penalty.run(args.quick)

    harness.write_json(out / "results.json", results)
    (out / "results.md").write_text(report.markdown(results))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
