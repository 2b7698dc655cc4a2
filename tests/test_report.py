"""report.html and TensorBoard: what a person sees equals what the run measured.

Most tests read the shared smoke run's outputs; the numbers are checked against `metrics.json`,
the TensorBoard event files are read back with TensorBoard's own reader.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import html.parser
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.findings import class_results, confusions, headline, worst_classes
from components.report import most_confident_mistakes
from pipeline.cache import StageCache
from tests.conftest import read_split

PNG_URI = "data:image/png;base64,"


class _Page(html.parser.HTMLParser):
    """The parts of report.html the tests look at: images, links, scripts, per-class rows."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: dict[str, list[str]] = {}
        self.texts: dict[str, str] = {}
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._metric: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "tr" and "data-class" in attributes:
            self._row = attributes["data-class"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        self._metric = attributes.get("data-metric", self._metric)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._metric is not None:
            self.texts[self._metric] = data.strip()
            self._metric = None


def _page(run_dir: Path) -> _Page:
    page = _Page()
    page.feed((run_dir / "report.html").read_text())
    return page


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluate" / "metrics.json").read_text())


def test_every_run_writes_report_html_and_the_summary_names_it(smoke_run):
    run_dir = smoke_run.run_dirs[-1]
    report_path = run_dir / "report.html"
    assert report_path.read_bytes() == (run_dir / "report" / "report.html").read_bytes()
    assert f"report.html  {report_path}" in smoke_run.stdout.splitlines()
    assert smoke_run.manifest["files"] == {"report.html": str(report_path)}


def test_the_summary_names_the_three_worst_classes_by_f1(smoke_run):
    per_class = _metrics(smoke_run.run_dirs[-1])["per_class"]
    worst = sorted(per_class, key=lambda name: (per_class[name]["f1"], per_class[name]["recall"], name))[:3]
    expected = "worst classes " + ", ".join(f"{name} (F1 {per_class[name]['f1']:.2f})" for name in worst)
    assert expected in smoke_run.stdout.splitlines()


def test_per_class_rows_equal_metrics_json_worst_first(smoke_run):
    run_dir = smoke_run.run_dirs[-1]
    per_class = _metrics(run_dir)["per_class"]
    rows = _page(run_dir).rows
    assert set(rows) == set(per_class)  # every class, once
    for name, values in per_class.items():
        assert rows[name][1:] == [f"{values['precision']:.4f}", f"{values['recall']:.4f}", f"{values['f1']:.4f}",
                                  f"{values['support']:,}"], name
    shown_f1 = [float(cells[3]) for cells in rows.values()]
    assert shown_f1 == sorted(shown_f1)


def test_the_headline_states_accuracy_blessing_and_the_commonest_mistake(smoke_run):
    run_dir = smoke_run.run_dirs[-1]
    metrics = _metrics(run_dir)
    text = (run_dir / "report.html").read_text()
    page = _page(run_dir)
    assert page.texts["test_accuracy"].startswith(f"{metrics['test_accuracy']:.4f} on {metrics['num_examples']}")
    assert f"{100 * metrics['test_accuracy']:.2f}&thinsp;%" in text
    assert ">blessed<" in text and smoke_run.manifest["results"]["blessing_reason"] in text
    matrix = np.array(metrics["confusion_matrix"])
    np.fill_diagonal(matrix, 0)
    true, predicted = np.unravel_index(matrix.argmax(), matrix.shape)
    names = list(metrics["per_class"])
    assert f"Mistakes {names[true]} for {names[predicted]} most often ({matrix.max()} of" in text
    assert "no earlier export of this model to compare with" in text  # the smoke run's export is the first


def test_every_image_is_inline_and_nothing_is_fetched(smoke_run):
    run_dir = smoke_run.run_dirs[-1]
    page = _page(run_dir)
    images = [attributes for tag, attributes in page.tags if tag == "img"]
    metrics = _metrics(run_dir)
    num_wrong = metrics["num_examples"] - round(metrics["test_accuracy"] * metrics["num_examples"])
    charts = 5  # confusion matrix, accuracy, loss, learning rate, class balance
    assert len(images) == charts + min(32, num_wrong) + len(metrics["per_class"])  # + mistakes, one per class
    for attributes in images:
        assert attributes["src"].startswith(PNG_URI) and attributes["alt"]
        assert Image.open(io.BytesIO(base64.b64decode(attributes["src"][len(PNG_URI):]))).size[0] >= 8
    assert not {tag for tag, _ in page.tags} & {"script", "link", "iframe", "object", "embed", "base"}
    text = (run_dir / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text


def test_the_mistakes_shown_are_the_most_confident_ones_in_order(smoke_run):
    run_dir = smoke_run.run_dirs[-1]
    labels = read_split(run_dir / "ingest")[1]
    probabilities = np.load(run_dir / "evaluate" / "predictions.npz")["probabilities"]
    shown = [int(attributes["data-index"]) for tag, attributes in _page(run_dir).tags if tag == "figure"
             and "data-index" in attributes]
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    assert set(shown) <= set(wrong.tolist()) and len(shown) == min(32, len(wrong))
    confidence = probabilities[shown].max(axis=1)
    assert (np.diff(confidence) <= 0).all() and confidence[-1] >= np.sort(probabilities[wrong].max(axis=1))[-len(shown)]


def test_reproduce_names_the_run_data_commit_command_and_changed_settings(smoke_run):
    text = (smoke_run.run_dirs[-1] / "report.html").read_text()
    manifest = smoke_run.manifest
    assert manifest["run_id"] in text and manifest["results"]["data_fingerprint"] in text
    assert manifest["reproduction"]["git"]["commit"] in text
    assert "python -m pipeline.run --workdir" in text
    assert "&#39;train.profile_batches=(2, 3)&#39;" in text  # quoted as a shell needs it
    for key in ("model.conv_widths", "train.epochs", "train.batch_size", "train.profile_batches"):
        assert f"<code>{key}</code>" in text, key  # the smoke preset and the command line change these
    assert "<code>train.learning_rate</code>" not in text  # at its default


@pytest.fixture(scope="module")
def artifacts(smoke_run) -> dict:
    """The smoke run's artifacts, as the runner hands them to a stage."""
    cache = StageCache(smoke_run.workdir / "cache")
    return {record["name"]: cache.lookup(record["name"], record["fingerprint"])
            for record in smoke_run.manifest["stages"]}


def test_a_model_that_was_not_exported_gets_a_report_that_says_why(artifacts, tmp_path):
    from components.config import ReportConfig
    from components.report import report

    blessing_path = tmp_path / "blessing.json"
    reason = "not blessed: test accuracy 0.8 < evaluate.min_accuracy 0.99"
    blessing_path.write_text(json.dumps({"blessed": False, "reason": reason, "baseline": None,
                                         "baseline_accuracy": None}))
    metrics = dataclasses.replace(artifacts["evaluate"], blessing_path=blessing_path, blessed=False)
    made = report(ReportConfig(mistakes=3), artifacts["ingest"], artifacts["validate"], artifacts["train"], metrics,
                  None, {"values": {"export.model_name": "digits"}, "changed": {}}, tmp_path / "out",
                  tmp_path / "tensorboard", "run-x")
    text = made.report_path.read_text()
    assert ">not blessed<" in text and f"not exported: {html.escape(reason)}" in text
    assert "latency" not in text and "SavedModel on disk" not in text
    assert "3 of the" in text and "Every setting is at its default." in text


def test_the_change_against_the_previous_export_is_shown_in_points(artifacts, tmp_path):
    from components.config import ReportConfig
    from components.report import report

    accuracy = artifacts["evaluate"].test_accuracy
    blessing_path = tmp_path / "blessing.json"
    blessing_path.write_text(json.dumps({"blessed": True, "reason": "blessed: vs baseline",
                                         "baseline": str(tmp_path / "saved_models" / "digits" / "4"),
                                         "baseline_accuracy": accuracy - 0.0125}))
    metrics = dataclasses.replace(artifacts["evaluate"], blessing_path=blessing_path)
    made = report(ReportConfig(measure_latency=False), artifacts["ingest"], artifacts["validate"], artifacts["train"],
                  metrics, artifacts["export"], {"values": {}, "changed": {}}, tmp_path / "out",
                  tmp_path / "tensorboard", "run-x")
    text = made.report_path.read_text()
    assert "+1.25 points" in text and "digits/4 scored" in text
    assert "SavedModel on disk" in text and "latency" not in text


def test_latency_and_sizes_are_measured_on_the_export(smoke_run):
    text = (smoke_run.run_dirs[-1] / "report.html").read_text()
    onnx_kib = Path(smoke_run.manifest["results"]["onnx_path"]).stat().st_size / 1024
    assert f"<td>{onnx_kib:,.1f} KiB</td>" in text
    assert "latency, 1 image (ONNX Runtime, median)" in text and "latency, 256 images" in text
    parameters = json.loads((smoke_run.run_dirs[-1] / "train" / "training.json").read_text())["parameters"]
    assert parameters > 1000 and f"<td>{parameters:,}</td>" in text


def test_most_confident_mistakes_come_first():
    labels = np.array([0, 1, 2, 0, 1])
    probabilities = np.array([[0.9, 0.1, 0.0],   # right
                              [0.6, 0.4, 0.0],   # wrong, 0.6
                              [0.05, 0.9, 0.05],  # wrong, 0.9
                              [0.2, 0.7, 0.1],   # wrong, 0.7
                              [0.0, 1.0, 0.0]])  # right
    assert most_confident_mistakes(labels, probabilities, 10).tolist() == [2, 3, 1]
    assert most_confident_mistakes(labels, probabilities, 2).tolist() == [2, 3]
    assert most_confident_mistakes(labels, probabilities, 0).tolist() == []


METRICS = {
    "test_accuracy": 0.9, "test_loss": 0.3, "num_examples": 40,
    "per_class": {"cat": {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 10},
                  "dog": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10},
                  "owl": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 20},
                  "yak": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}},
    "confusion_matrix": [[9, 1, 0, 0], [2, 8, 0, 0], [0, 0, 20, 0], [0, 0, 0, 0]],
}


def test_findings_rank_classes_and_mistakes():
    # Ties go to the lower recall; a class without test images is last, whatever its zeros.
    assert [result.name for result in class_results(METRICS)] == ["dog", "cat", "owl", "yak"]
    assert [result.name for result in worst_classes(METRICS, 2)] == ["dog", "cat"]  # no test images: not ranked
    assert [(c.true_name, c.predicted_name, c.count, c.support) for c in confusions(METRICS)] == [
        ("dog", "cat", 2, 10), ("cat", "dog", 1, 10)]
    assert headline(METRICS) == ("Mistakes dog for cat most often (2 of 10 test images of dog); "
                                 "4 of 40 test images are misclassified in all.")
    perfect = {**METRICS, "test_accuracy": 1.0, "confusion_matrix": [[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 20, 0],
                                                                       [0, 0, 0, 0]]}
    assert headline(perfect) == "Makes no mistakes on the 40 test images."


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    return found


def screenshot(url: str, png_path: Path, width: int, height: int, wait_ms: int = 0) -> Image.Image:
    """A headless Chromium screenshot of `url`."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={png_path}", url]
    if wait_ms:
        command.insert(-1, f"--virtual-time-budget={wait_ms}")
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    return Image.open(png_path).convert("RGB")


def not_blank(image: Image.Image) -> float:
    """The share of pixels that are not (near) white."""
    pixels = np.asarray(image, dtype=np.int16)
    return float((pixels.min(axis=2) < 230).mean())


@pytest.mark.parametrize("width", [412, 1000])  # a phone, a laptop
def test_the_report_renders_in_chromium_with_text_and_charts(smoke_run, tmp_path, width):
    image = screenshot((smoke_run.run_dirs[-1] / "report.html").as_uri(), tmp_path / "report.png", width, 2400)
    pixels = np.asarray(image)
    assert image.size == (width, 2400)
    assert 0.03 < not_blank(image) < 0.9
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # charts, not only text


NASTY_NAMES = ("cost_$1_$", r"$\frac$", "$^$", "a & <b>", "x" * 40)


def test_charts_draw_class_names_as_text_whatever_they_hold():
    from components import plots

    matrix = np.arange(25).reshape(5, 5)
    images = np.zeros((5, 8, 8, 1), np.uint8)
    for png in (plots.confusion_heatmap(matrix, NASTY_NAMES, title=NASTY_NAMES[0]),
                plots.class_balance({"train": [1, 2, 3, 4, 5]}, NASTY_NAMES),
                plots.image_grid(images, list(NASTY_NAMES)),
                plots.quick_confusion_image(matrix, NASTY_NAMES, NASTY_NAMES[1])):
        assert png.startswith(b"\x89PNG")


def test_percentages_never_claim_a_certainty_the_model_did_not_have():
    from components.report import percent

    shown = [percent(p) for p in (0.254, 0.5, 0.994, 0.9951, 0.99996, 1.0)]
    assert shown == ["25", "50", "99", "99.5", "99.9", "100.0"]
