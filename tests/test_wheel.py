"""The built wheel holds the whole package and nothing else: installed alone, every module imports.

Built with pip (as a user's `pip install .` builds it) into a scratch
directory, installed without dependencies into a fresh virtual environment,
and imported there with this environment's Keras and backends behind it on
the path.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from backends import only_on

# The wheel's build belongs to the full suite (`pytest -m slow`), not the default one.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]

IMPORT_ALL = """
import importlib, pathlib, pkgutil, sys
import keras_ortho
where = pathlib.Path(keras_ortho.__file__).resolve()
assert where.is_relative_to(pathlib.Path(sys.prefix).resolve()), where  # the wheel's copy, not the checkout
names = [m.name for m in pkgutil.walk_packages(keras_ortho.__path__, "keras_ortho.")]
for name in names:
    if name not in ("keras_ortho.__main__", "keras_ortho._backend.jax", "keras_ortho._backend.torch"):
        importlib.import_module(name)
assert (where.parent / "py.typed").exists()
print(" ".join(sorted(names)))
"""


@only_on("tensorflow", why="the wheel is the same on every backend; built once")
def test_the_wheel_installs_alone_and_imports_every_module(tmp_path):
    # From a copy without build outputs: setuptools would reuse a stale build/ of the checkout.
    source_tree = tmp_path / "source"
    shutil.copytree(
        ROOT, source_tree, ignore=shutil.ignore_patterns(".*", "build", "dist", "site", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source_tree)],
        check=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("keras_ortho-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    assert not [f for f in files if f.startswith("tests/") or "/test_" in f or f.startswith(("docs/", "benchmarks/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], check=True, timeout=300)
    # Keras and its backend from this environment, after the fresh one's own packages: a `.pth` file
    # appends this environment's site-packages (where a non-editable keras_ortho may be) behind them.
    (fresh_site,) = (venv / "lib").glob("python*/site-packages")
    here = [p for p in sys.path if p.endswith("site-packages")]
    (fresh_site / "outer_environment.pth").write_text("\n".join(here) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [python, "-c", IMPORT_ALL],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = result.stdout.split()
    source = {
        "keras_ortho." + p.relative_to(ROOT / "keras_ortho").with_suffix("").as_posix().replace("/", ".")
        for p in (ROOT / "keras_ortho").rglob("*.py")
        if p.name != "__init__.py"
    } | {"keras_ortho._backend"}
    assert set(modules) == source
