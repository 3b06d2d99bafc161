"""Every Python block of the README runs as written.

The blocks run in the README's order in one namespace, as a reader pastes them
into one session, in a fresh process and a scratch directory (they write files).
A block whose first line is `# KERAS_BACKEND=<name>` runs on its own, in a
process on that backend, in the suite's run on that backend.
"""

import pathlib
import re

import pytest

from backends import only_on, run_fresh

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
ALONE = re.compile(r"# KERAS_BACKEND=(\w+)")


def standalone(block):
    match = ALONE.match(block)
    return match[1] if match else None


SESSION = [b for b in BLOCKS if standalone(b) is None]
ALONE_BLOCKS = [b for b in BLOCKS if standalone(b) is not None]


def test_the_readme_has_the_blocks_this_suite_runs():
    assert len(BLOCKS) == len(SESSION) + len(ALONE_BLOCKS) and len(SESSION) >= 3 and len(ALONE_BLOCKS) >= 2


def test_the_session_blocks_run_in_order(tmp_path):
    run_fresh("\n".join(SESSION), cwd=tmp_path, timeout=600)
    assert (tmp_path / "log.csv").exists() and (tmp_path / "errors.png").exists() and (tmp_path / "model.keras").exists()


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, marks=only_on(standalone(b), why="the README gives this block for that backend"))
        for b in ALONE_BLOCKS
    ],
    ids=[standalone(b) for b in ALONE_BLOCKS],
)
def test_a_standalone_block_runs_on_its_backend(block, tmp_path):
    run_fresh(block, cwd=tmp_path, timeout=600)
