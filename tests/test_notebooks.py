"""Each notebooks/NN_*.py (the source) has a paired .ipynb with the same cells, committed without outputs."""
from pathlib import Path

import jupytext
import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_notebooks():
    assert SOURCES, "no notebooks/NN_*.py found"
    assert sorted(p.stem for p in NB_DIR.glob("[0-9][0-9]_*.ipynb")) == [p.stem for p in SOURCES]


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_pair_matches_by_content(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make notebooks`"
    assert _cells(jupytext.read(py)) == _cells(nbformat.read(ipynb, as_version=4)), \
        f"{ipynb.name} differs from {py.name}: run `make notebooks`"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_committed_without_outputs(py):
    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{py.stem}: outputs committed"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_source_has_kernelspec_and_imports_iuq(py):
    text = py.read_text()
    assert "kernelspec" in text and "python3" in text, "keep the kernelspec header (DESIGN §7)"
    assert "import iuq_lite as iuq" in text
