"""The notebooks run top to bottom against the smoke run, and are committed without outputs.

`classify_with_exported_model.ipynb` is a consumer that knows nothing of the project: it imports only
ONNX Runtime, LiteRT (`ai_edge_litert`), NumPy, Pillow and the standard library, and runs where the project
cannot be imported.
`quickstart.ipynb` is the project's own tour: the pipeline through the Python API, then the export.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from components.findings import worst_classes
from tests.conftest import OFF_BY_DEFAULT, QUIET_ENV, REPO_DIR, read_split, write_image_folder

NOTEBOOK = REPO_DIR / "notebooks" / "classify_with_exported_model.ipynb"
QUICKSTART = REPO_DIR / "notebooks" / "quickstart.ipynb"
CONSUMER_MODULES = {"json", "os", "pathlib", "tempfile", "numpy", "onnxruntime", "ai_edge_litert", "PIL"}
# Shadows the project's packages on a kernel's PYTHONPATH: importing either fails, naming the notebook's mistake.
REFUSING_PACKAGE = 'raise ImportError("the consumer notebook must not import the project")\n'


def _code(path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def _imported_modules(sources: list[str]) -> set[str]:
    """The top-level package of every `import` and `from ... import` in the cells."""
    names = set()
    for node in (node for source in sources for node in ast.walk(ast.parse(source))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").partition(".")[0])
    return names


def _execute(path: Path) -> tuple[nbformat.NotebookNode, str]:
    """Run the notebook in a fresh kernel from its folder; return it and everything its cells printed."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    return notebook, printed


def _onnx_predicted(onnx_path: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"pixels": images.astype(np.float32)})[0]


def _litert_predicted(tflite_path: Path, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(tflite_path)).get_signature_runner("serving_default")
    return runner(pixels=images.astype(np.float32))["probabilities"]


@pytest.mark.parametrize("path", [NOTEBOOK, QUICKSTART], ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.get("outputs") and not cell.get("execution_count") for cell in code)


def test_consumer_notebook_imports_only_onnx_runtime_litert_numpy_pillow_and_the_standard_library():
    sources = _code(NOTEBOOK)
    assert {"onnxruntime", "ai_edge_litert"} <= _imported_modules(sources) <= CONSUMER_MODULES
    assert not any(re.search(r"\b(components|pipeline)\b|tensorflow|import_module|__import__", source)
                   for source in sources)


@pytest.fixture
def without_the_project(tmp_path, monkeypatch) -> Path:
    """A PYTHONPATH on which `components` and `pipeline` cannot be imported, for kernels started in this test."""
    shadow_dir = tmp_path / "shadow"
    for package in ("components", "pipeline"):
        (shadow_dir / package).mkdir(parents=True)
        (shadow_dir / package / "__init__.py").write_text(REFUSING_PACKAGE)
    monkeypatch.setenv("PYTHONPATH", str(shadow_dir))
    return shadow_dir


def test_the_shadow_packages_keep_the_project_out(without_the_project, tmp_path):
    result = subprocess.run([sys.executable, "-c", "import pipeline"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)  # the environment is monkeypatched: the one the kernel inherits
    assert result.returncode == 1 and "must not import the project" in result.stderr


@pytest.mark.parametrize("layout", ["a folder per class", "runs images"])
def test_notebook_classifies_as_the_exported_model_does(smoke_run, monkeypatch, without_the_project, tmp_path,
                                                        layout):
    images, labels = read_split(smoke_run.run_dir / "ingest", limit=8)
    class_names = smoke_run.manifest["artifacts"]["ingest"]["class_names"]
    if layout == "runs images":  # `<index>-<class>.png`, as the README writes them for predict
        written = subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(smoke_run.workdir),
                                  "images", "--out", str(tmp_path / "sample")], capture_output=True, text=True,
                                 timeout=120, cwd=REPO_DIR, env=QUIET_ENV)  # the project's, not the kernel's
        assert written.returncode == 0, written.stderr
        paths = [tmp_path / "sample" / f"{index}-{class_names[label]}.png" for index, label in enumerate(labels)]
    else:
        paths = write_image_folder(tmp_path / "sample", images, labels, class_names)
    order = np.argsort([str(path) for path in paths])  # the notebook reads them in sorted order
    images, labels = images[order], labels[order]
    monkeypatch.setenv("PIPELINE_WORKDIR", str(smoke_run.workdir))
    monkeypatch.setenv("PIPELINE_IMAGES", str(tmp_path / "sample"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    _, printed = _execute(NOTEBOOK)
    assert "digits/1 from run " + smoke_run.manifest["run_id"] in printed

    predicted = _onnx_predicted(smoke_run.manifest["results"]["onnx_path"], images).argmax(1)
    assert re.findall(r"predicted\s+(\S+)", printed) == [str(p) for p in predicted]
    assert f"{(predicted == labels).mean():.0%} of these 8 images of known class classified correctly" in printed
    assert re.findall(r"true\s+(\S+)", printed) == [class_names[label] for label in labels]

    assert "model.tflite agrees with model.onnx on all 8 images" in printed  # the notebook asserts how closely
    int8_path = Path(smoke_run.manifest["results"]["onnx_path"]).with_name("model_int8.tflite")
    if int8_path.is_file():  # the smoke run exports with export.int8=true; its gate decides whether the file stays
        int8 = _litert_predicted(int8_path, images).argmax(1)
        assert (f"model_int8.tflite: {', '.join(class_names[guess] for guess in int8)} "
                f"({(int8 == predicted).sum()} of 8 as model.onnx)") in printed
    else:
        assert "model_int8.tflite" not in printed


@pytest.mark.slow
def test_quickstart_runs_the_pipeline_reads_its_results_and_classifies(smoke_run, monkeypatch, tmp_path):
    workdir = tmp_path / "work"  # a copy of the smoke run's workdir: the notebook's run finds every stage cached
    shutil.copytree(smoke_run.workdir, workdir, symlinks=True)
    monkeypatch.setenv("QUICKSTART_WORKDIR", str(workdir))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    _, printed = _execute(QUICKSTART)
    run_dir = max((workdir / "runs").iterdir(), key=lambda path: (path / "config.json").stat().st_mtime_ns)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert run_dir.name != smoke_run.manifest["run_id"] and manifest["status"] == "succeeded"
    # Trained as the smoke run was; exported anew, without the int8 files and timings the shared run adds
    assert {stage["name"]: stage["status"] for stage in manifest["stages"]} == {
        stage["name"]: "skipped" if stage["name"] in OFF_BY_DEFAULT else "succeeded" if stage["name"] in ("export",
                                                                                                       "report")
        else "cached" for stage in manifest["stages"]
    }, "the notebook's config is not smoke's"

    results = manifest["results"]
    assert f"test accuracy {results['test_accuracy']:.4f}, blessed: {results['blessed']}" in printed
    metrics = json.loads(Path(manifest["artifacts"]["evaluate"]["metrics_path"]).read_text())
    assert re.findall(r"worst class (\S+): F1", printed) == [result.name for result in worst_classes(metrics)]
    report_path = manifest["files"]["report.html"]
    assert f"report: {report_path}\n" in printed and Path(report_path).is_file()

    images, labels = read_split(run_dir / "ingest", limit=6)
    probabilities = _onnx_predicted(results["onnx_path"], images)
    expected = [(f"test_{index}.png", str(label), str(row.argmax()), f"{row.max():.3f}")
                for index, (label, row) in enumerate(zip(labels, probabilities))]
    assert re.findall(r"(test_\d\.png)  true (\S+)  predicted (\S+) \(p=([\d.]+)", printed) == expected
