"""The research notebooks run top to bottom (at their "test" size) and are stored clean.

Each notebook ends with assertions on its own story (a prox checked against
its optimality condition, RMDA/RAMDA identifying the optimal support, ...),
so an execution error here means either broken code or a broken claim.
"""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
EXPECTED = {"quickstart.ipynb", "structure_identification.ipynb", "custom_regularizer.ipynb"}


def test_every_notebook_is_collected():
  assert EXPECTED <= {os.path.basename(p) for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.setenv("RMDA_JAX_NOTEBOOK_SIZE", "test")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert figures, "every notebook draws at least one figure"
  first_lines = [o.text for o in outputs if o.output_type == "stream" and o.name == "stdout"]
  assert first_lines and first_lines[0].startswith("size=test"), "the size parameter is honoured"
