"""Every Python block of the README and of the documentation pages runs as written.

Each document's blocks run in its order in one namespace, as a reader pastes
them into one session, in a fresh process and a scratch directory (they write
files). A block whose first line is `# KERAS_BACKEND=<name>` runs on its own,
in a process on that backend, in the suite's run on that backend.
"""

import pathlib
import re

import pytest
from backends import only_on, run_fresh

# The documents' blocks belong to the full suite (`pytest -m slow`), not the default one.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALONE = re.compile(r"# KERAS_BACKEND=(\w+)")


def blocks_of(document):
    return re.findall(r"^```python\n(.*?)^```$", document.read_text(), flags=re.S | re.M)


def standalone(block):
    match = ALONE.match(block)
    return match[1] if match else None


SESSIONS = {doc.relative_to(ROOT).as_posix(): [b for b in blocks_of(doc) if standalone(b) is None] for doc in DOCUMENTS}
SESSIONS = {name: blocks for name, blocks in SESSIONS.items() if blocks}
ALONE_BLOCKS = [
    (doc.relative_to(ROOT).as_posix(), b) for doc in DOCUMENTS for b in blocks_of(doc) if standalone(b) is not None
]


def test_the_documents_have_the_blocks_this_suite_runs():
    assert len(DOCUMENTS) >= 14  # the README and the pages of mkdocs.yml
    assert {"README.md", "docs/index.md", "docs/norms.md", "docs/strength.md"} <= set(SESSIONS)
    assert len(ALONE_BLOCKS) >= 2


# What a document's blocks say they write.
WRITES = {"docs/index.md": ["log.csv", "errors.png", "model.keras"]}


@pytest.mark.parametrize("document", sorted(SESSIONS))
def test_the_blocks_of_a_document_run_in_order(document, tmp_path):
    run_fresh("\n".join(SESSIONS[document]), cwd=tmp_path, timeout=600)
    assert [name for name in WRITES.get(document, []) if not (tmp_path / name).exists()] == []


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, marks=only_on(standalone(b), why="the documentation gives this block for that backend"))
        for _, b in ALONE_BLOCKS
    ],
    ids=[f"{doc}-{standalone(b)}" for doc, b in ALONE_BLOCKS],
)
def test_a_standalone_block_runs_on_its_backend(block, tmp_path):
    run_fresh(block, cwd=tmp_path, timeout=600)
