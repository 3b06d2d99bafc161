"""Every example runs to the end in its quick mode and writes what it promises.

The main example runs on every backend. The three longer ones hold no
backend-specific code either; they run on TensorFlow (Keras's default, as the
README runs them), to keep CI inside its time: 30 to 60 s each on JAX on 2
cores.
"""

import json
import math
import os
import subprocess
import sys
import zipfile

import pytest
from backends import only_on

# The examples belong to the full suite (`pytest -m slow`), not the default one.
pytestmark = pytest.mark.slow

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, out):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


LONGER = only_on("tensorflow", why="a longer example, run on Keras's default backend for CI's time")


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart(tmp_path):
    out = run_example("quickstart.py", tmp_path)
    assert "reloaded model predicts the same: True" in out
    for kernel in ("conv/kernel", "dense_64/kernel", "dense_32/kernel"):
        assert kernel in out
    assert zipfile.is_zipfile(tmp_path / "quickstart.keras")
    assert is_png(tmp_path / "quickstart_errors.png")


@LONGER
def test_transformer(tmp_path):
    out = run_example("transformer.py", tmp_path)
    assert "reloaded model predicts the same: True" in out
    assert "block0_attention/attention_output/kernel" in out
    assert is_png(tmp_path / "transformer_errors.png")
    assert os.listdir(tmp_path / "logs" / "ortho")  # the logger's TensorBoard run
    assert os.listdir(tmp_path / "logs" / "train")  # the TensorBoard callback's

    # The saved model has custom layers: the report opens it once it imports the example.
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_ortho",
            "report",
            str(tmp_path / "transformer.keras"),
            "--import",
            "examples.transformer",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(EXAMPLES),
    )
    assert report.returncode == 0, report.stderr
    kernels = json.loads(report.stdout)["kernels"]
    assert len(kernels) == 8 and all(k["slices"] == 4 for k in kernels)  # 2 blocks x 4 projections, per head


@LONGER
def test_cnn_comparison(tmp_path):
    out = run_example("cnn_comparison.py", tmp_path)
    lines = out.splitlines()
    header = next(line.split() for line in lines if line.split()[:1] == ["plain"])
    assert header == ["plain", "fixed", "decay", "target"]
    rows = {" ".join(line.split()[:-4]): line.split()[-4:] for line in lines}
    accuracy = [float(v) for v in rows["test accuracy"]]
    assert all(0 <= a <= 1 for a in accuracy), accuracy
    for label in ("error conv1/kernel", "error conv2/kernel"):
        plain, *regularized = (float(v) for v in rows[label])
        # Every regularized variant ends closer to orthogonal than the plain model.
        assert all(math.isfinite(e) and e < plain for e in regularized), (label, plain, regularized)
    assert is_png(tmp_path / "cnn_errors.png")
    # The same figures as the Markdown table the docs include.
    table = (tmp_path / "cnn_comparison.md").read_text().splitlines()
    cells = {row.split("|")[1].strip(): row.split("|")[2:-1] for row in table if row.startswith("| ")}
    assert [float(v) for v in cells["test accuracy"]] == pytest.approx(accuracy, abs=5e-4)
    assert [float(v) for v in cells["error, conv2/kernel"]] == pytest.approx(
        [float(v) for v in rows["error conv2/kernel"]], abs=0.05
    )


@LONGER
def test_finetune(tmp_path):
    out = run_example("finetune.py", tmp_path)
    kernels = [
        "conv/kernel",
        "depthwise/kernel",
        "lstm/lstm_cell/kernel",
        "lstm/lstm_cell/recurrent_kernel",
        "head/kernel",
    ]
    assert f"regularized {len(kernels)} kernels of the loaded model" in out
    rows = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.split()[:1] and line.split()[0] in kernels
    }
    assert sorted(rows) == sorted(kernels)
    assert (
        rows["depthwise/kernel"][0] == "16" and rows["lstm/lstm_cell/recurrent_kernel"][0] == "4"
    )  # per channel, per gate
    assert "the reloaded model carries the regularizers: True" in out
    # keras-hub comes with the test extra: its backbone, regularized per head, and again after reloading.
    assert "keras-hub BertBackbone: regularized 8 attention kernels" in out
    assert "4 heads" in out
    assert "reloaded backbone carries 0 regularizers; after regularize again, same penalty: True" in out


@pytest.mark.parametrize("name", ["quickstart.py", "transformer.py", "cnn_comparison.py", "finetune.py"])
def test_examples_document_how_to_run_them(name):
    with open(os.path.join(EXAMPLES, name)) as f:
        assert f"python examples/{name}" in f.read()
