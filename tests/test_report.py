"""`keras-ortho report MODEL` against the numpy reference of the saved weights."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import reference
from models import mixed_layers_model

import keras_ortho
from keras_ortho.report import main


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report")
    model = mixed_layers_model()
    model.save(directory / "model.keras")
    model.save(directory / "model.h5")
    return model, directory


def expected_errors(model, include_all=False):
    """`{path: per-slice errors}` from the weights, by the rules of docs/slicing.md."""
    expected = {}
    for v in model.weights:
        regularizer = getattr(v, "regularizer", None)
        if regularizer is not None:
            expected[v.path] = reference.slice_errors(
                v.numpy(),
                regularizer.slice_axis,
                regularizer.mode,
                attention_output=v.path.endswith("attention_output/kernel"),
            )
        elif include_all and v.numpy().ndim >= 2:
            expected[v.path] = reference.slice_errors(v.numpy())
    return expected


def run_main(capsys, *args):
    """`(exit status, stdout, stderr)` of the command's `main` in this process.

    Errors are raised and reported inside `main`; the process around it
    (`test_a_failing_command_exits_1_with_one_line_and_no_traceback`) adds
    nothing to them, and starting one costs CI about ten seconds a call.
    """
    capsys.readouterr()  # drop what building a fixture printed
    status = main([*map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys, *args):
    status, out, err = run_main(capsys, "report", *args, "--json")
    assert status == 0, err
    return json.loads(out)


@pytest.mark.parametrize("filename", ["model.keras", "model.h5"])
def test_json_report_matches_reference(saved_model, capsys, filename):
    model, directory = saved_model
    report = run_json(capsys, directory / filename)
    expected = expected_errors(model)
    assert [k["path"] for k in report["kernels"]] == list(expected)
    for kernel in report["kernels"]:
        values = expected[kernel["path"]]
        np.testing.assert_allclose(kernel["errors"], values, rtol=1e-5)
        assert kernel["slices"] == len(values)
        assert kernel["min"] == pytest.approx(values.min(), rel=1e-5)
        assert kernel["median"] == pytest.approx(np.median(values), rel=1e-5)
        assert kernel["max"] == pytest.approx(values.max(), rel=1e-5)
        assert kernel["worst"][0] == [int(np.argmax(values)), pytest.approx(values.max(), rel=1e-5)]
        assert kernel["regularized"]


def test_all_adds_every_kernel_of_rank_two_or_more(saved_model, capsys):
    model, directory = saved_model
    report = run_json(capsys, directory / "model.keras", "--all")
    expected = expected_errors(model, include_all=True)
    assert [k["path"] for k in report["kernels"]] == list(expected)
    unregularized = [k for k in report["kernels"] if not k["regularized"]]
    assert unregularized  # the attention biases (heads, head_dim) are matrices too
    for kernel in report["kernels"]:
        np.testing.assert_allclose(kernel["errors"], expected[kernel["path"]], rtol=1e-5)


def test_table_lists_each_kernel_with_its_statistics(saved_model, capsys):
    model, directory = saved_model
    capsys.readouterr()
    assert main(["report", str(directory / "model.keras")]) == 0
    out = capsys.readouterr().out
    expected = expected_errors(model)
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["kernel", "shape", "slices", "Gram"]
    for path, values in expected.items():
        row = next(line for line in lines if line.startswith(path + " "))
        cells = row.split()
        assert int(cells[2]) == len(values)
        assert float(cells[6]) == pytest.approx(values.max(), rel=1e-3)


def test_plot_is_written_and_never_overwritten_silently(saved_model, tmp_path, capsys):
    _, directory = saved_model
    target = tmp_path / "report.png"
    assert main(["report", str(directory / "model.keras"), "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target.write_bytes(b"user data")
    assert main(["report", str(directory / "model.keras"), "--plot", str(target)]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"user data"
    assert main(["report", str(directory / "model.keras"), "--plot", str(target), "--overwrite"]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_without_regularized_kernels_says_so(tmp_path, capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "plain.keras")
    assert main(["report", str(tmp_path / "plain.keras")]) == 0
    assert "no kernel is regularized" in capsys.readouterr().out


def run_cli(*args, cwd=None):
    """The command in its own process, as a user runs it (start-up, exit status, what reaches stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    return subprocess.run(
        [sys.executable, "-m", "keras_ortho", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_a_failing_command_exits_1_with_one_line_and_no_traceback(tmp_path):
    result = run_cli("report", tmp_path / "missing.keras")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"keras-ortho: error: no such file: {tmp_path / 'missing.keras'}"], (
        result.stderr
    )


def test_plot_into_a_missing_directory_exits_with_one_line(saved_model, tmp_path, capsys):
    _, directory = saved_model
    target = tmp_path / "missing" / "errors.png"
    status, _, err = run_main(capsys, "report", directory / "model.keras", "--plot", target)
    assert status == 1
    assert err.strip().splitlines() == [f"keras-ortho: error: cannot write {target}: no directory {target.parent}"]


def test_plot_to_a_format_matplotlib_cannot_write_exits_with_one_line(saved_model, tmp_path, capsys):
    _, directory = saved_model
    status, out, err = run_main(capsys, "report", directory / "model.keras", "--plot", tmp_path / "out.txt")
    assert status == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--plot takes a file ending in one of" in lines[0], err
    assert ".png" in lines[0] and "received '.txt'" in lines[0]
    assert not (tmp_path / "out.txt").exists()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM = """
import keras

@keras.saving.register_keras_serializable(package="custom_report_test")
class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2 * x
"""


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    """A model with a custom layer registered by `custom_layers.py`, saved."""
    directory = tmp_path_factory.mktemp("custom")
    (directory / "custom_layers.py").write_text(CUSTOM)
    sys.path.insert(0, str(directory))
    try:
        import custom_layers
    finally:
        sys.path.remove(str(directory))
    inputs = keras.Input((4,))
    x = custom_layers.Doubling()(inputs)
    outputs = keras.layers.Dense(3, kernel_regularizer=keras_ortho.OrthoRegularizer(0.1), name="dense")(x)
    model = keras.Model(inputs, outputs)
    model.save(directory / "custom.keras")
    return model, directory


@pytest.mark.slow
def test_the_plot_adds_no_start_up_lines(saved_model, tmp_path):
    _, directory = saved_model
    result = run_cli("report", directory / "model.keras", "--plot", tmp_path / "errors.png")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no TensorFlow start-up lines, as without --plot
    assert (tmp_path / "errors.png").is_file()


@pytest.mark.slow
def test_custom_layers_load_after_import_and_the_table_is_all_there_is(custom_model):
    model, directory = custom_model
    without = run_cli("report", "custom.keras", cwd=directory)
    assert without.returncode == 1 and "pass --import" in without.stderr
    for module in ("custom_layers", "custom_layers.py"):
        result = run_cli("report", "custom.keras", "--import", module, "--json", cwd=directory)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # no TensorFlow start-up lines around the output
        report = json.loads(result.stdout)
        expected = reference.slice_errors(model.get_layer("dense").kernel.numpy())
        np.testing.assert_allclose(report["kernels"][0]["errors"], expected, rtol=1e-5)


def test_an_import_that_fails_is_one_line(custom_model, capsys):
    _, directory = custom_model
    status, _, err = run_main(capsys, "report", directory / "custom.keras", "--import", "no_such_module_here")
    assert status == 1
    assert err.strip().splitlines() == [
        "keras-ortho: error: --import no_such_module_here: ModuleNotFoundError: No module named 'no_such_module_here'"
    ]


def written(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.keras", "no such file"),
        (lambda d: written(d / "corrupt.keras", b"not a zip"), "the file is corrupt"),
        (lambda d: written(d / "corrupt.h5", b"not hdf5"), "the file is corrupt"),
        (lambda d: written(d / "empty.keras", b""), "the file is corrupt"),
        (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "expected a .keras or .h5"),
        (lambda d: d, "not a readable file"),
    ],
    ids=["missing", "corrupt", "corrupt h5", "empty", "wrong type", "directory"],
)
def test_bad_files_exit_1_with_one_line(tmp_path, capsys, make, message):
    status, out, err = run_main(capsys, "report", make(tmp_path))
    assert status == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("keras-ortho: error: ") and message in line, line


@pytest.mark.parametrize("args", [("--help",), ("missing.keras",), ("--worst", "0", "m.keras")])
def test_help_and_argument_errors_answer_before_keras_loads(tmp_path, args):
    """Keras with TensorFlow takes seconds to import: `-X importtime` lists every module the command imported."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_ortho", "report", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = [line.rsplit("|", 1)[-1].strip() for line in lines]
    assert "keras_ortho.report" in imported  # the listing is there
    assert not [m for m in imported if m.split(".")[0] in ("keras", "tensorflow", "jax", "torch")]
    assert result.returncode == (0 if args == ("--help",) else 1 if args == ("missing.keras",) else 2)


def test_console_script_is_installed():
    # Installed beside the interpreter, which need not be on PATH (a venv not activated).
    script = shutil.which("keras-ortho", path=os.path.dirname(sys.executable)) or shutil.which("keras-ortho")
    assert script is not None, "install the project: pip install -e '.[test]'"
    result = subprocess.run([script, "report", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--all" in result.stdout


def test_one_model_has_one_set_of_names_live_in_keras_and_in_h5(tmp_path, capsys):
    """Keras names a Sequential's weights `sequential/dense/kernel` as built and `dense/kernel` from `.keras`."""
    ortho = keras_ortho.OrthoRegularizer(0.01)
    inner = keras.Sequential([keras.layers.Dense(3, kernel_regularizer=ortho, name="inner_dense")], name="inner")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, kernel_regularizer=ortho, name="dense"), inner])
    assert model.layers[0].kernel.path == f"{model.name}/dense/kernel"  # what this test guards against
    logger = keras_ortho.OrthoLogger()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((2, 4), "float32"), np.zeros((2, 3), "float32"), verbose=0, callbacks=[logger])
    names = ["dense/kernel", "inner/inner_dense/kernel"]
    assert logger.watched_paths == names and list(logger.errors) == names
    assert sorted(keras_ortho.regularize(model, ortho)) == names
    for form in ("keras", "h5"):
        model.save(tmp_path / f"model.{form}")
        report = run_json(capsys, tmp_path / f"model.{form}")
        assert [e["path"] for e in report["kernels"]] == names, form


def test_each_kernel_is_measured_and_named_by_its_regularizers_norm(tmp_path, capsys):
    """The report measures each kernel as its regularizer does, and says which norm a number is."""
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(8, kernel_regularizer=keras_ortho.OrthoRegularizer(0.1, norm="fro"), name="fro"),
            keras.layers.Dense(6, kernel_regularizer=keras_ortho.OrthoRegularizer(0.1, norm="spectral"), name="sp"),
        ]
    )
    model.save(tmp_path / "norms.keras")
    report = run_json(capsys, tmp_path / "norms.keras")
    assert [(k["path"], k["norm"]) for k in report["kernels"]] == [("fro/kernel", "fro"), ("sp/kernel", "spectral")]
    for kernel, layer in zip(report["kernels"], model.layers, strict=True):
        expected = reference.norm_errors(layer.kernel.numpy(), kernel["norm"])
        # The spectral norm comes from 32 power-iteration steps; the reference is an exact eigensolver.
        np.testing.assert_allclose(kernel["errors"], expected, rtol=1e-5 if kernel["norm"] == "fro" else 1e-3)
    status, out, _ = run_main(capsys, "report", tmp_path / "norms.keras")
    head, table = out.splitlines()[0], out.splitlines()[1]
    assert status == 0
    assert "||G_i||_F^2 (fro)" in head and "|lambda|_max(G_i) (spectral)" in head and "sum |G_i|" not in head
    assert table.split()[-1] == "norm"


def test_the_report_counts_the_kernels_that_carry_no_regularizer(tmp_path, capsys):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, kernel_regularizer=keras_ortho.OrthoRegularizer(0.01), name="a"),
            keras.layers.Dense(4, name="b"),
            keras.layers.Dense(2, name="c"),
        ]
    )
    model.save(tmp_path / "model.keras")
    status, out, _ = run_main(capsys, "report", tmp_path / "model.keras")
    assert status == 0 and "2 of the model's 3 kernels carry no OrthoRegularizer" in out
    kernel = model.get_layer("a").kernel.numpy().astype("float64")
    (penalty,) = re.findall(r"penalty in the loss: (\S+) ", out)
    np.testing.assert_allclose(float(penalty), reference.penalty(kernel, 0.01), rtol=1e-5)
    assert run_json(capsys, tmp_path / "model.keras")["kernels_without_regularizer"] == 2
