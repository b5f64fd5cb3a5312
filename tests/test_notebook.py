"""The portfolio notebook runs top to bottom (a short training run, the release reports, a served model)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_notebook_executes(tmp_path):
    notebook = nbformat.read(ROOT / "notebooks" / "exploration.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("imdb-sentiment" in str(o) for o in outputs)  # the served model answered
