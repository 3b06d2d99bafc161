"""Every measured figure a page quotes is in the tables it quotes, so that no page says what no run wrote.

The pages below quote the benchmarks. In their prose (outside code, inline
code and the tables they include) and in any table typed on the page, every
number with a decimal point, every percentage and every time or size (`ms`,
`s`, `MiB`, `GiB`) must be written, as digits, in a file the page includes
(`--8<--`) or in the results it names in `SOURCES`. A number that is not a
measurement (a definition, a constant, a paper's figure) is listed with the
reason it stands.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A number, and a unit after it: a figure when it has a decimal point or is a percentage, a time or a size.
FIGURE = re.compile(r"(?<![\w.^/=-])(\d+(?:\.\d+)?)(?![\w.]*\d)(%|\s?(?:ms|s|MiB|GiB)\b)?")
# A version ("Keras 3.8", "Python 3.11") names a release, not a measurement.
VERSION = re.compile(r"\b(?:Keras|Python|TensorFlow|JAX|PyTorch|NumPy|torch|jax|keras)[ =<>]+\d+(?:\.\d+)*")
NUMBER = re.compile(r"\d+(?:\.\d+)?")

NOT_MEASURED = {
    "README.md": {
        "15": "the quickstart's time on an idle machine, said with the machine (no benchmark times it)",
        "31.6": "the quickstart's time on a newcomer's busy machine, said with it",
        "32": "the range those two give",
        "1": "the share of the data loss `starting_factor` aims at, 1%",
    },
    "docs/performance.md": {
        "0.70": "the target ours/autodiff",
        "1.10": "the target ours/floor",
    },
    "docs/strength.md": {
        "1": "the share `starting_factor` aims at, 1%",
        "0.1": "the decade below it, 0.1%",
        "10": "the decade above it, 10%",
        "1.0": "an argument of the decayed schedule",
    },
    "docs/lipschitz.md": {
        "1.129": "gelu's constant, rounded up",
        "1.0999": "silu's constant, rounded up",
        "1.7581": "selu's constant",
        "1.80": "the exact norm of the page's worked counterexample, which a test computes",
        "1.05": "the Gram iteration's worst case at T = 6 and rank 512, from its formula",
        "0.1": "a radius (an argument), and the tolerance of the average pooling's bound, 0.1%",
        "0.3": "a radius, an argument",
        "1.0": "a bound, an argument",
        "1.5": "the goal for the constraint's cost, 1.5x",
        "1.25": "the tightness the tests require of every convolution",
    },
    "docs/when-it-helps.md": {
        "0.167": "the adding task's memoryless baseline, 1/6, from the task's definition",
        "4.16": "Bansal et al. 2018's WRN-28-10 error, a paper's figure",
        "0.1": "a factor, an argument",
    },
    "docs/backends.md": {},
    "docs/existing-models.md": {},
    "docs/operator.md": {},
    "docs/scaling.md": {},
}


# Results a page quotes without including them.
SOURCES = {
    "README.md": ["benchmarks/results/results.md"],
    "docs/backends.md": ["benchmarks/results/results.md"],
    "docs/existing-models.md": ["benchmarks/results/factors.md"],
    "docs/scaling.md": ["benchmarks/results/collectives.md"],
}
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)


def prose(text):
    """The text a reader reads as sentences: no code blocks, inline code, includes, tables or links' targets."""
    text = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`]*`", "", text)
    text = VERSION.sub("", text)
    text = re.sub(r"^--8<--.*$", "", text, flags=re.M)
    text = re.sub(r"^\|.*\|$", "", text, flags=re.M)  # a table typed on the page is checked as its cells below
    return re.sub(r"\]\([^)]*\)", "]", text)


def typed_table_cells(text):
    """The cells of tables typed on the page itself (not included): their figures need a source too."""
    rows = [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|- :")]
    return " ".join(rows)


def figures(text):
    return [m.group(1) for m in FIGURE.finditer(text) if "." in m.group(1) or m.group(2)]


def quoted(text):
    """The figures a page states: in its prose and in the tables typed on it."""
    return figures(prose(text)) + figures(typed_table_cells(text))


def sources(page):
    """The results `page` quotes: what it includes, and what `SOURCES` names."""
    return [*INCLUDE.findall((ROOT / page).read_text()), *SOURCES.get(page, [])]


def written_by_runs(paths):
    numbers = set()
    for path in paths:
        numbers.update(NUMBER.findall((ROOT / path).read_text()))
    return numbers


def test_the_checked_pages_exist_and_quote_results():
    assert len(NOT_MEASURED) >= 8
    for page in NOT_MEASURED:
        assert sources(page), page
        assert all((ROOT / path).is_file() for path in sources(page)), page
    assert {"0.428", "1.05"} <= written_by_runs(sources("docs/strength.md") + sources("docs/backends.md"))


def test_a_figure_is_found_in_prose_and_in_typed_tables():
    text = "It took 12.5 ms (3 s, 40%), a `7.5` in code; 3x3 kernels.\n| a | 0.954 |\n|---|---|\n"
    assert figures(prose(text)) == ["12.5", "3", "40"]
    assert figures(typed_table_cells(text)) == ["0.954"]


@pytest.mark.parametrize("page", sorted(NOT_MEASURED))
def test_every_measured_figure_on_a_page_is_in_the_benchmark_tables(page):
    text = (ROOT / page).read_text()
    allowed = written_by_runs(sources(page)) | set(NOT_MEASURED[page])
    assert [figure for figure in quoted(text) if figure not in allowed] == []


@pytest.mark.parametrize("page", sorted(NOT_MEASURED))
def test_every_number_let_stand_is_on_its_page(page):
    text = (ROOT / page).read_text()
    assert [number for number in NOT_MEASURED[page] if number not in quoted(text)] == []
