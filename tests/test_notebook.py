"""The notebook runs top to bottom against the smoke run's export, and is committed without outputs."""

import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO_DIR

NOTEBOOK = REPO_DIR / "notebooks" / "classify_with_exported_model.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count")
               for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_classifies_with_the_newest_export(smoke_run, monkeypatch):
    monkeypatch.setenv("PIPELINE_WORKDIR", str(smoke_run.workdir))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("PYTHONPATH", str(REPO_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "smoke_cnn/1 from run " + smoke_run.manifest["run_id"] in printed
    assert "of these 8 images classified correctly" in printed
