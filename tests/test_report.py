"""`keras-ortho report MODEL` against the numpy reference of the saved weights."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import reference
from keras_ortho.report import main
from models import mixed_layers_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report")
    model = mixed_layers_model()
    model.save(directory / "model.keras")
    model.save(directory / "model.h5")
    return model, directory


def expected_errors(model, include_all=False):
    """`{path: per-slice errors}` from the weights, by the README's rules."""
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


def run_json(capsys, *args):
    capsys.readouterr()  # drop what building the fixture printed
    assert main(["report", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


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


def run_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "keras_ortho", *map(str, args)],
        capture_output=True, text=True, timeout=300, env=env,
    )


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.keras", "no such file"),
        (lambda d: (d / "corrupt.keras").write_bytes(b"not a zip") and d / "corrupt.keras",
         "cannot load model from"),
        (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "expected a .keras or .h5"),
        (lambda d: d, "not a readable file"),
    ],
    ids=["missing", "corrupt", "wrong type", "directory"],
)
def test_bad_files_exit_non_zero_with_one_line_and_no_traceback(tmp_path, make, message):
    result = run_cli("report", make(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("keras-ortho: error: ")
    assert message in result.stderr.strip().splitlines()[-1]


def test_console_script_is_installed():
    # Installed beside the interpreter, which need not be on PATH (a venv not activated).
    script = shutil.which("keras-ortho", path=os.path.dirname(sys.executable)) or shutil.which(
        "keras-ortho"
    )
    assert script is not None, "install the project: pip install -e '.[test]'"
    result = subprocess.run([script, "report", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--all" in result.stdout
