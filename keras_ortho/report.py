"""`keras-ortho report MODEL`: the orthogonality of a saved model's kernels.

    python -m keras_ortho report model.keras [--all] [--json] [--plot errors.png] [--import MODULE]
                                             [--singular-values [--input-size N]] [--lipschitz]

Loads a `.keras` or legacy `.h5` model and prints, for every kernel regularized
by `OrthoRegularizer` (with `--all`, every floating weight of rank >= 2 too),
its path, shape, number of slices and the per-slice errors under its
regularizer's norm (`sum_jk |G_i|_jk` for the default "l1"; the output names
each; a convolution regularized with `operator=True` is measured as its
operator, one slice per group): min, median, max and the worst slices. With
`--singular-values`, also the largest and smallest singular value of every
convolution's operator, at its own input size in the model or at
`--input-size`. With `--lipschitz`, each layer's factor and the model's
bound on its Lipschitz constant (`keras_ortho.lipschitz_bound`). A model
with custom layers loads once `--import` has imported the modules that
register them.
"""

import argparse
import importlib
import importlib.util
import json
import os
import sys
import zipfile

import numpy as np

# Keras (and with it TensorFlow, seconds to import) loads only once the
# arguments are parsed and the model file checked: `--help` and a wrong path
# answer at once.

PROG = "keras-ortho"


class ReportError(Exception):
    """A failure to report on, in one line, without a traceback."""


def check_model_file(path):
    """A `.keras` or `.h5` file that exists and is what its name says, checked before Keras loads."""
    if not os.path.exists(path):
        raise ReportError(f"no such file: {path}")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ReportError(f"cannot read {path}: not a readable file")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise ReportError(f"cannot load {path}: expected a .keras or .h5 model file")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ReportError(f"cannot load {path}: the file is corrupt (a .keras file is a zip archive; this is not)")
    if path.endswith((".h5", ".hdf5")) and not _is_hdf5(path):
        raise ReportError(f"cannot load {path}: the file is corrupt (not an HDF5 file)")


def load_model(path):
    """Loads a `.keras` or `.h5` model, which `check_model_file` has passed, for inspection (not compiled)."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for bad files; report any in one line
        hint = (
            " (a custom layer? pass --import with the module that registers it)"
            if "deserializ" in str(error) or "Unknown" in str(error)
            else ""
        )
        raise ReportError(f"cannot load model from {path}: {_one_line(error)}{hint}") from None


def _one_line(error):
    """`Type: first line of the message`, for errors that may run to pages."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def _is_hdf5(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def import_modules(names):
    """Imports each module (a dotted name, or a .py file) so that it registers its custom objects."""
    for name in names:
        try:
            if name.endswith(".py"):
                if not os.path.isfile(name):
                    raise ImportError(f"no such file: {name}")
                spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(name))[0], name)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                if os.getcwd() not in sys.path and "" not in sys.path:
                    sys.path.insert(0, os.getcwd())  # as `python -m` puts it, for the console script
                importlib.import_module(name)
        except Exception as error:  # a module may fail in any way; report it in one line
            raise ReportError(f"--import {name}: {_one_line(error)}") from None


def measure(model, include_all=False, worst=3):
    """One entry per measured kernel: shape, slicing and per-slice error statistics."""
    from keras_ortho import _watch
    from keras_ortho._conv import OperatorPlan
    from keras_ortho._math import MEASURES, OPERATOR_MEASURES

    watched = _watch.regularized_weights(model, include_all=include_all)
    if not watched:
        return []
    errors = _watch.ErrorProbe(watched)()
    entries = []
    for w in watched:
        values = errors[w.path]
        order = np.argsort(-np.nan_to_num(values, nan=np.inf), kind="stable")[:worst]
        regularizer = _watch.ortho_regularizer_of(w.variable)
        operator = isinstance(w.plan, OperatorPlan)
        entries.append(
            {
                "path": w.path,
                "shape": list(w.plan.shape),
                "slices": w.num_slices,
                "slice_shape": [w.plan.rows, w.plan.cols],
                "gram": w.plan.mode,
                "regularized": regularizer is not None,
                "factor": None if regularizer is None else regularizer.factor,
                "norm": w.norm,
                "operator": operator,
                "measure": (OPERATOR_MEASURES if operator else MEASURES)[w.norm],
                "min": float(np.min(values)),
                "median": float(np.median(values)),
                "max": float(np.max(values)),
                "total": float(np.sum(values)),
                "penalty": _watch.penalty_in_loss(w.variable),
                "worst": [[int(i), float(values[i])] for i in order],
                "errors": [float(v) for v in values],
            }
        )
    return entries


def _watch_share(model):
    from keras_ortho import _watch

    return _watch.carrying_share(model)


def measures_of(entries):
    """`{norm: what it measures}` of the measured kernels, in their order (a convolution's operator apart)."""
    return {e["norm"] + (" operator" if e["operator"] else ""): e["measure"] for e in entries}


def singular_values(model, input_size=None):
    """One entry per convolution: its path, the image size, and its operator's largest and smallest singular value."""
    from keras_ortho.conv import conv_singular_values

    try:
        values = conv_singular_values(model, input_size)
    except ValueError as error:
        raise ReportError(f"--singular-values: {error}".replace("Pass `input_size=`", "Pass --input-size")) from None
    return [
        {"path": path, "input_size": list(v.input_size), "largest": v.largest, "smallest": v.smallest}
        for path, v in values.items()
    ]


def lipschitz(model):
    """`{"bound": float, "layers": [{"layer", "kind", "factor", "exact"}]}`: the model's Lipschitz bound, per layer."""
    from keras_ortho.lipschitz import bound_and_factors

    try:
        bound, factors = bound_and_factors(model)
    except ValueError as error:
        raise ReportError(f"--lipschitz: {error}") from None
    return {"bound": bound, "layers": [f._asdict() for f in factors]}


def aligned(headers, rows):
    """The lines of a plain-text table: the headers, a rule, the rows, each column padded to its widest cell."""
    widths = [max(len(r[c]) for r in rows + [headers]) for c in range(len(headers))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, ["-" * w for w in widths]] + rows
    ]


def format_lipschitz(document):
    """A plain-text table of `lipschitz`'s per-layer factors, then the bound."""
    headers = ["layer", "kind", "factor", ""]
    rows = [
        [e["layer"], e["kind"], f"{e['factor']:.4g}", "exact" if e["exact"] else "bound"] for e in document["layers"]
    ]
    lines = aligned(headers, rows)
    head = f"Lipschitz bound of the model (L2, at its input size): {document['bound']:.6g}, from {len(rows)} layer(s)"
    return head + "\n" + "\n".join(lines) + "\n"


def format_singular_values(entries):
    """A plain-text table of `singular_values`' entries."""
    if not entries:
        return "no convolution to measure\n"
    headers = ["convolution", "image", "largest", "smallest"]
    rows = [
        [e["path"], "x".join(map(str, e["input_size"])), f"{e['largest']:.4g}", f"{e['smallest']:.4g}"] for e in entries
    ]
    lines = aligned(headers, rows)
    head = f"{len(entries)} convolution(s): singular values of the operator on a circular image (largest: Lipschitz)"
    return head + "\n" + "\n".join(lines) + "\n"


def format_table(model_path, entries):
    """A plain-text table, one row per kernel."""
    if not entries:
        return f"{model_path}: no kernel is regularized by OrthoRegularizer (use --all to measure every kernel)\n"
    penalty = sum(e["penalty"] for e in entries if e["penalty"] is not None)
    norms = measures_of(entries)
    headers = ["kernel", "shape", "slices", "Gram", "min", "median", "max", "worst slices"]
    rows = [
        [
            e["path"] + ("" if e["regularized"] else " (not regularized)"),
            "x".join(map(str, e["shape"])),
            str(e["slices"]),
            e["gram"],
            f"{e['min']:.4g}",
            f"{e['median']:.4g}",
            f"{e['max']:.4g}",
            ", ".join(f"#{i}: {v:.4g}" for i, v in e["worst"]),
        ]
        + ([e["norm"]] if len(norms) > 1 else [])
        for e in entries
    ]
    if len(norms) > 1:
        headers.append("norm")
    lines = aligned(headers, rows)
    measures = ", ".join(f"{measure} ({norm})" for norm, measure in norms.items())
    if len(norms) == 1:
        head = f"error of a slice = {measures}"
    else:
        head = f"error of a slice under each kernel's norm: {measures}"
    text = f"{model_path}: {len(entries)} kernel(s); {head}\n" + "\n".join(lines) + "\n"
    if any(e["regularized"] for e in entries):
        text += (
            f"penalty in the loss: {penalty:.6g} (each regularizer's factor and reduction applied; the errors "
            "above are unscaled)\n"
        )
    return text


def run_report(args, out=None):
    out = out or sys.stdout
    if args.input_size is not None and not args.singular_values:
        raise ReportError("--input-size goes with --singular-values")
    if args.plot is not None and os.path.exists(args.plot) and not args.overwrite:
        raise ReportError(f"{args.plot} exists; pass --overwrite to replace it")
    if args.plot is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        raise ReportError(f"cannot write {args.plot}: no directory {os.path.dirname(args.plot) or '.'}")
    if args.plot is not None:
        from keras_ortho._command import quiet_start_up

        with quiet_start_up():  # the plotting module loads Keras, and with it TensorFlow's start-up lines
            from keras_ortho.plotting import _import_matplotlib

        try:
            Figure, _ = _import_matplotlib()
        except ImportError as error:
            raise ReportError(str(error)) from None
        formats = Figure().canvas.get_supported_filetypes()
        extension = os.path.splitext(args.plot)[1].lstrip(".").lower()
        if extension not in formats:
            raise ReportError(
                f"cannot write {args.plot}: --plot takes a file ending in one of "
                f"{', '.join('.' + f for f in sorted(formats))}; received '.{extension}'"
            )
    check_model_file(args.model)
    from keras_ortho._command import import_keras

    import_keras()
    # What a saved file names as `keras_ortho>...` is registered as these load.
    import keras_ortho.constraint  # noqa: F401
    import keras_ortho.lipschitz  # noqa: F401
    import keras_ortho.regularizer  # noqa: F401

    import_modules(args.imports)
    model = load_model(args.model)
    entries = measure(model, include_all=args.all, worst=args.worst)
    carrying, kernels = _watch_share(model)
    spectra = singular_values(model, args.input_size) if args.singular_values else None
    bounds = lipschitz(model) if args.lipschitz else None
    if args.json:
        document = {"model": args.model, "kernels": entries, "kernels_without_regularizer": kernels - carrying}
        if spectra is not None:
            document["convolutions"] = spectra
        if bounds is not None:
            document["lipschitz"] = bounds
        json.dump(document, out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(args.model, entries))
        if carrying and carrying < kernels and not args.all:
            out.write(
                f"{kernels - carrying} of the model's {kernels} kernels carry no OrthoRegularizer (--all measures "
                "them; a model saved after `regularize` whose layers' configs drop it reloads without it)\n"
            )
        if spectra is not None:
            out.write(format_singular_values(spectra))
        if bounds is not None:
            out.write(format_lipschitz(bounds))
    if args.plot is not None:
        if not entries:
            raise ReportError("nothing to plot: no kernel measured")
        from keras_ortho.plotting import plot_errors

        norms = measures_of(entries)
        plot_errors(
            {e["path"]: np.array([e["errors"]]) for e in entries},
            path=args.plot,
            title=f"{os.path.basename(args.model)}: errors of each slice, as saved",
            measure=next(iter(norms.values())) if len(norms) == 1 else "error (each kernel's norm)",
        )
        if not args.json:
            out.write(f"plot written to {args.plot}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="keras_ortho command line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="orthogonality of a saved model's kernels", description=__doc__.split("\n\n")[2]
    )
    report.add_argument("model", help="a .keras or .h5 model file")
    report.add_argument("--all", action="store_true", help="every kernel of rank >= 2, not only regularized ones")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument("--plot", metavar="FILE.png", help="also draw the per-slice errors")
    report.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    report.add_argument("--worst", type=_positive_int, default=3, metavar="K", help="worst slices to list (default 3)")
    report.add_argument(
        "--lipschitz",
        action="store_true",
        help="also each layer's factor and the model's bound on its L2 Lipschitz constant",
    )
    report.add_argument(
        "--singular-values",
        action="store_true",
        help="also the largest and smallest singular value of every convolution's operator",
    )
    report.add_argument(
        "--input-size",
        type=_positive_int,
        metavar="N",
        help="with --singular-values: an N x N (x N) image for every convolution, not each one's own",
    )
    report.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a dotted name or a .py file) first, for the custom objects it registers; repeatable",
    )
    return parser


def main(argv=None):
    """Console entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run_report(args)
    except ReportError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0
