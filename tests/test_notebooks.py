"""Execute every notebook in notebooks/ so that none of them rots.

Each runs top to bottom in a fresh kernel of this very interpreter (a kernel spec written to a
temporary folder, so no installed ``python3`` kernel is needed); a cell that raises, including
a failed ``assert`` checking what the notebook teaches, fails the test. Notebooks are stored
without outputs. The default run executes the first notebook; the others, 10-30 s each on two
cores, run with the slow tests (``-m slow``, which CI runs after the default run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "jaxdescent-test"
TIMEOUT = 240  # seconds per cell: generous for a loaded 2-core machine


def test_there_are_eight_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} has outputs; clear them before committing"
            )


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory):
    """A Jupyter data folder with one kernel spec: this interpreter, with ipykernel."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "jaxdescent tests",
                "language": "python",
                "env": {
                    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                    # notebook 08 fits 100,000 curves; the suite runs it on fewer
                    "JAXDESCENT_NOTEBOOK_FITS": "5000",
                },
            }
        )
    )
    return root


@pytest.mark.parametrize(
    "path",
    [p if p.name.startswith("01") else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_runs(path, kernels_dir, tmp_path, monkeypatch):
    if path.name.startswith("07") and "Misra1a" not in __import__("jaxdescent").nist.names():
        pytest.skip("the NIST data folder (shared/data/nist-strd) is not here")
    # JUPYTER_PATH comes first when kernel specs are looked up, so the notebook runs in a
    # kernel of this interpreter whatever kernels are installed.
    monkeypatch.setenv("JUPYTER_PATH", str(kernels_dir))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure
