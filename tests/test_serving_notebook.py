"""notebooks/serving_client.ipynb runs top to bottom against the smoke run's export, committed without outputs."""

from __future__ import annotations

import re

import nbformat
from nbclient import NotebookClient

from components.loaded_model import load_exported
from tests.conftest import REPO_DIR, read_split

NOTEBOOK = REPO_DIR / "notebooks" / "serving_client.ipynb"


def test_serving_notebook_is_committed_without_outputs_and_imports_nothing_of_the_project():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in code)
    assert not any(re.search(r"^\s*(from|import)\s+(components|pipeline)\b", cell.source, re.M) for cell in code)
    starting = next(cell.source for cell in code if "pipeline.serve" in cell.source)
    assert "atexit.register(server.terminate)" in starting  # a failing later cell cannot leave it running


def test_serving_notebook_gets_the_exported_models_answers_over_both_protocols(smoke_run, monkeypatch):
    monkeypatch.setenv("PIPELINE_WORKDIR", str(smoke_run.workdir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))

    images, labels = read_split(smoke_run.run_dir / "ingest", limit=8)  # what `runs images` writes
    expected = load_exported(smoke_run.workdir / "saved_models" / "digits").probabilities(images).argmax(1).tolist()
    assert re.search(rf"true labels\s+{re.escape(str(labels.tolist()))}", printed), printed
    assert "status: [('1', 'AVAILABLE')]" in printed
    assert "pixels DT_FLOAT [-1, 8, 8, 1]" in printed and "probabilities DT_FLOAT [-1, 10]" in printed
    for what in ("REST instances predicted", "REST b64 PNG predicted", "v2 predicted"):
        assert re.search(rf"{what}\s+{re.escape(str(expected))}", printed), printed
    assert "a wrong shape gets 400 {'error': " in printed
    assert "live True ready True digits ready True" in printed
    assert float(re.search(r"max \|REST - v2\| = (\S+)", printed).group(1)) < 1e-5
    assert re.search(r"POST /v2/models/digits/infer 200 [\d.]+ ms", printed)  # the log's last lines
