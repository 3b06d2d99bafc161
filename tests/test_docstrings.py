"""The docstrings are the reference: every public name documents itself, and its examples run.

The examples are doctests, run here on each backend (the suite runs once per
`KERAS_BACKEND`), in a scratch directory.
"""

import doctest
import inspect

import pytest

import keras_ortho

PUBLIC = sorted(keras_ortho.__all__)


def test_the_public_names_are_the_documented_ones():
    assert len(PUBLIC) == 18
    assert all(hasattr(keras_ortho, name) for name in PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_documents_its_arguments_errors_and_an_example(name):
    doc = inspect.getdoc(getattr(keras_ortho, name))
    for section in ("Args:", "Raises:", "Example"):
        assert section in doc, (name, section)
    if inspect.isfunction(getattr(keras_ortho, name)):
        assert "Returns:" in doc, name
    assert ">>> " in doc, name


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", PUBLIC)
def test_the_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example may write files
    obj = getattr(keras_ortho, name)
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(obj, name, globs={}) if t.examples]
    assert len(tests) == 1, name
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    runner.run(tests[0], out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 2 and result.failed == 0, "".join(report)
