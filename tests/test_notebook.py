"""The notebook runs top to bottom against the smoke run's export, and is committed without outputs."""

import re

import nbformat
import numpy as np
from nbclient import NotebookClient

from tests.conftest import REPO_DIR

NOTEBOOK = REPO_DIR / "notebooks" / "classify_with_exported_model.ipynb"


def test_notebook_is_committed_without_outputs_and_imports_nothing_of_the_project():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in code)
    assert not any(re.search(r"^\s*(from|import)\s+(components|pipeline)\b", cell.source, re.M) for cell in code)


def test_notebook_classifies_as_the_exported_model_does(smoke_run, monkeypatch):
    import onnxruntime

    monkeypatch.setenv("PIPELINE_WORKDIR", str(smoke_run.workdir))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "digits/1 from run " + smoke_run.manifest["run_id"] in printed

    with np.load(smoke_run.run_dirs[-1] / "ingest" / "test.npz") as test:
        images, labels = test["images"][:8], test["labels"][:8]
    session = onnxruntime.InferenceSession(smoke_run.manifest["results"]["onnx_path"])
    predicted = session.run(["probabilities"], {"pixels": images.astype(np.float32)})[0].argmax(1)
    assert re.findall(r"predicted\s+(\S+)", printed) == [str(p) for p in predicted]
    assert f"{(predicted == labels).mean():.0%} of these 8 images classified correctly" in printed
