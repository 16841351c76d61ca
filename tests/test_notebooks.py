"""Every notebook executes top to bottom (small configs, SPARSEJAX_NOTEBOOK_SMALL=1).

The small config a notebook shows is the session's run of that experiment (the
`small_run` fixture, which the experiment tests assert on): the notebook reads it
through SPARSEJAX_NOTEBOOK_RESULTS instead of training it again.
"""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration  # the integration tier: pytest -m integration (see README)

EXPERIMENT_OF = {"target_sparsity": "l1_selection"}  # notebook -> experiments.<module>, where the names differ
NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


def _experiment(path: str) -> str:
  name = os.path.basename(path)[:-len(".ipynb")]
  return EXPERIMENT_OF.get(name, name)


# Each notebook runs on the pytest-xdist worker of its experiment's test (the same
# group), so the session's one small run of that experiment serves both.
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xdist_group(_experiment(p))) for p in NOTEBOOKS],
                         ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch, small_run):
  small_run(_experiment(path))
  monkeypatch.setenv("SPARSEJAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("SPARSEJAX_NOTEBOOK_RESULTS", str(small_run.root))
  monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device inside the kernel
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any(o.get("output_type") == "display_data" for o in outputs), "shows figures/tables"
  # a table from a reduced run says so beside it
  for o in outputs:
    table = o.get("data", {}).get("text/markdown", "")
    if "|---" in table:
      assert "Reduced configuration" in table, table[:200]
  # Inline figures work: a cell that draws with pyplot shows a PNG (importing sparsejax
  # must not switch matplotlib's backend, which used to leave these cells empty).
  for cell in nb.cells:
    if cell.cell_type == "code" and "plt." in cell.source:
      assert any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])), cell.source[:200]
