"""The GPU check script runs its checks end to end on the CPU (`--device cpu`)."""

import os
import subprocess
import sys

import pytest
from backends import BACKEND, only_on

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_check.py")


@only_on("jax", "torch", why="the GPU machines have no TensorFlow, so the check runs on JAX and PyTorch")
@pytest.mark.slow
def test_gpu_check_passes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--device", "cpu", "--quick", "--backends", BACKEND, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every check passed" in result.stdout
    report = out.read_text()
    assert f"## {BACKEND} on " in report and "all within tolerance" in report
    assert "FAILED" not in report


def test_gpu_check_refuses_a_backend_it_does_not_cover(tmp_path):
    result = subprocess.run(
        [sys.executable, SCRIPT, "--device", "cpu", "--backends", "tensorflow", "--out", str(tmp_path / "x.md")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--backends takes jax and torch" in result.stderr
