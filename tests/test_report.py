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
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from components.blessing import Blessing, ChanceTest
from components.findings import class_results, confusions, headline, worst_classes
from components.report import most_confident_mistakes
from pipeline.cache import read_entry
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
    run_dir = smoke_run.run_dir
    report_path = run_dir / "report.html"
    assert report_path.read_bytes() == (run_dir / "report" / "report.html").read_bytes()
    assert f"report.html  {report_path}" in smoke_run.stdout.splitlines()
    assert smoke_run.manifest["files"] == {"report.html": str(report_path)}


def test_the_summary_names_the_three_worst_classes_by_f1(smoke_run):
    per_class = _metrics(smoke_run.run_dir)["per_class"]
    worst = sorted(per_class, key=lambda name: (per_class[name]["f1"], per_class[name]["recall"], name))[:3]
    expected = "worst classes " + ", ".join(f"{name} (F1 {per_class[name]['f1']:.2f})" for name in worst)
    assert expected in smoke_run.stdout.splitlines()


def test_per_class_rows_equal_metrics_json_worst_first(smoke_run):
    run_dir = smoke_run.run_dir
    per_class = _metrics(run_dir)["per_class"]
    rows = _page(run_dir).rows
    assert set(rows) == set(per_class)  # every class, once
    for name, values in per_class.items():
        assert rows[name][1:] == [f"{values['precision']:.4f}", f"{values['recall']:.4f}", f"{values['f1']:.4f}",
                                  f"{values['support']:,}"], name
    shown_f1 = [float(cells[3]) for cells in rows.values()]
    assert shown_f1 == sorted(shown_f1)


def _headline_text(html_text: str) -> str:
    """The words of the page's headline section, tags dropped and entities decoded."""
    start = html_text.index('<section id="headline">')
    section = html_text[start:html_text.index("</section>", start)]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", section)).split())


# What an engineer says and a product manager need not read first: it belongs in the details further down.
JARGON = ("bless", "baseline", "bfloat16", "float32", "fingerprint", "evaluate.", "p =", "p <", "binomial", "export")


def test_the_headline_states_the_result_in_plain_words_and_the_commonest_mistake(smoke_run):
    run_dir = smoke_run.run_dir
    metrics = _metrics(run_dir)
    text = (run_dir / "report.html").read_text()
    headline_text = _headline_text(text)
    accuracy, total = metrics["test_accuracy"], metrics["num_examples"]
    assert headline_text.startswith(f"Ready to use: {100 * accuracy:.1f} % of test images classified correctly. "
                                    "Published as digits version 1.")
    assert _page(run_dir).texts["test_accuracy"] == f"{round(accuracy * total)} of {total} test images"
    assert f"{100 * accuracy:.2f} %" in headline_text
    assert not [word for word in JARGON if word in headline_text.lower()]
    assert smoke_run.manifest["results"]["blessing_reason"] in html.unescape(text)  # in the details
    matrix = np.array(metrics["confusion_matrix"])
    np.fill_diagonal(matrix, 0)
    names = list(metrics["per_class"])
    leaders = sorted(f"{names[true]} for {names[said]}" for true, said in zip(*np.nonzero(matrix == matrix.max())))
    # Which mistakes lead depends on the trained weights (this CPU's precision, say): each form of the sentence
    # is checked on fixed matrices (test_findings_rank_classes_and_mistakes, test_equally_frequent_mistakes_*);
    # here, that the smoke run's own leaders are in its headline.
    assert matrix.max() > 1, "the smoke run's model should repeat a mistake; the headline forms for no repeated " \
                             "mistake are tested on fixed matrices"
    if len(leaders) == 1:
        assert f"Mistakes {leaders[0]} most often ({matrix.max()} of " in headline_text
    else:
        assert f" most often, {matrix.max()} times each; " in headline_text
        assert headline_text.count(" for ") >= min(len(leaders), 3)
    assert "no earlier version of this model to compare with" in headline_text  # the smoke run's export is the first


def test_the_engineers_terms_are_in_the_details_not_the_headline(artifacts, tmp_path):
    from components.config import ReportConfig
    from components.report import report

    trained = dataclasses.replace(artifacts["train"], precision="mixed_bfloat16")
    made = report(ReportConfig(mistakes=0), artifacts["ingest"], artifacts["validate"],
                  trained, artifacts["evaluate"], artifacts["export"],
                  {}, "digits", tmp_path / "out",
                  tmp_path / "tensorboard", "run-x")
    text = made.report_path.read_text()
    headline_text = _headline_text(text)
    assert headline_text.startswith("Ready to use: ")
    assert not [word for word in JARGON if word in headline_text.lower()]
    details = text[text.index("</section>"):]
    for term in ("mixed_bfloat16", "data fingerprint", "blessed: test accuracy", "one-sided binomial test p &lt; 0.0001",
                 "evaluate.max_p_value=0.01"):
        assert term in details, term


def test_every_image_is_inline_and_nothing_is_fetched(smoke_run):
    run_dir = smoke_run.run_dir
    page = _page(run_dir)
    images = [attributes for tag, attributes in page.tags if tag == "img"]
    metrics = _metrics(run_dir)
    num_wrong = metrics["num_examples"] - round(metrics["test_accuracy"] * metrics["num_examples"])
    charts = 5  # confusion matrix, accuracy, loss, learning rate, class balance
    assert len(images) == charts + min(32, num_wrong) + len(metrics["per_class"])  # + mistakes, one per class
    assert all(attributes["src"].startswith(PNG_URI) and attributes["alt"] for attributes in images)
    decoded = {attributes["alt"]: Image.open(io.BytesIO(base64.b64decode(attributes["src"][len(PNG_URI):])))
               for attributes in images}
    # Each test image shown as a mistake, and each class's sample, is that image's own pixels, at its own size.
    test_images = read_split(run_dir / "ingest")[0]
    train_images, train_labels = read_split(run_dir / "ingest", "train")
    for index, name in enumerate(metrics["per_class"]):
        first = train_images[np.argmax(train_labels == index)]
        np.testing.assert_array_equal(np.asarray(decoded.pop(f"a training image of {name}")), first[..., 0])
    for alt in [alt for alt in decoded if alt.startswith("test image ")]:
        np.testing.assert_array_equal(np.asarray(decoded.pop(alt)), test_images[int(alt.split()[-1])][..., 0])
    # The charts: matplotlib figures of 4.2 x 3.0 inches at 100 dpi for the training curves, all drawn on.
    assert sorted(decoded) == ["accuracy per epoch", "confusion matrix", "images per class and split",
                               "learning rate per epoch", "loss per epoch"]
    assert {decoded[alt].size for alt in decoded if alt.endswith("per epoch")} == {(420, 300)}
    assert all(decoded[alt].width >= 400 and not_blank(decoded[alt].convert("RGB")) > 0.01 for alt in decoded)
    assert not {tag for tag, _ in page.tags} & {"script", "link", "iframe", "object", "embed", "base"}
    text = (run_dir / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text


def test_the_mistakes_shown_are_the_most_confident_ones_in_order(smoke_run):
    run_dir = smoke_run.run_dir
    labels = read_split(run_dir / "ingest")[1]
    probabilities = np.load(run_dir / "evaluate" / "predictions.npz")["probabilities"]
    shown = [int(attributes["data-index"]) for tag, attributes in _page(run_dir).tags if tag == "figure"
             and "data-index" in attributes]
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    assert set(shown) <= set(wrong.tolist()) and len(shown) == min(32, len(wrong))
    confidence = probabilities[shown].max(axis=1)
    assert (np.diff(confidence) <= 0).all() and confidence[-1] >= np.sort(probabilities[wrong].max(axis=1))[-len(shown)]


def test_reproduce_names_the_run_data_commit_command_and_changed_settings(smoke_run):
    text = (smoke_run.run_dir / "report.html").read_text()
    manifest = smoke_run.manifest
    assert manifest["run_id"] in text and manifest["results"]["data_fingerprint"] in text
    assert manifest["reproduction"]["git"]["commit"] in text
    assert "python -m pipeline.run --workdir" in text
    assert "&#39;train.profile_batches=(2, 3)&#39;" in text  # quoted as a shell needs it
    for key in ("model.conv_widths", "train.epochs", "train.batch_size", "train.profile_batches"):
        assert f"<code>{key}</code>" in text, key  # the smoke preset and the command line change these
    assert "<code>train.learning_rate</code>" not in text  # at its default
    assert "<code>export.model_name</code>" not in text  # derived from the data, not set


@pytest.fixture(scope="module")
def artifacts(smoke_run) -> dict:
    """The smoke run's artifacts, as the orchestrator hands them to a stage: the cache entries its folder links to."""
    return {record["name"]: read_entry((smoke_run.run_dir / record["name"]).resolve())
            for record in smoke_run.manifest["stages"]}


def _blessing_path(tmp_path: Path, artifacts: dict, **changes) -> Path:
    """The smoke run's blessing.json with `changes`, written into `tmp_path`."""
    blessing = json.loads(artifacts["evaluate"].blessing_path.read_text())
    path = tmp_path / "blessing.json"
    path.write_text(json.dumps({**blessing, **changes}))
    return path


def test_a_model_that_was_not_exported_gets_a_report_that_says_why(artifacts, tmp_path):
    from components.config import ReportConfig
    from components.report import report

    reason = "not blessed: test accuracy 0.8 < evaluate.min_accuracy 0.99"
    blessing_path = _blessing_path(tmp_path, artifacts, blessed=False, reason=reason, refused_by="evaluate.min_accuracy",
                                   rules={"min_accuracy": 0.99, "max_p_value": 0.01, "max_regression": 0.01})
    metrics = dataclasses.replace(artifacts["evaluate"], blessing_path=blessing_path, blessed=False)
    made = report(ReportConfig(mistakes=3), artifacts["ingest"], artifacts["validate"], artifacts["train"], metrics,
                  None, {}, "digits", tmp_path / "out", tmp_path / "tensorboard", "run-x")
    text = made.report_path.read_text()
    accuracy = artifacts["evaluate"].test_accuracy
    assert _headline_text(text).startswith(f"Not published: {100 * accuracy:.1f} % of test images classified "
                                           "correctly; the minimum set is 99.0 %. ")
    assert f"not exported: {html.escape(reason)}" in text
    assert "Exported files" not in text and "model.tflite" not in text
    assert "3 of the" in text and "Every setting is at its default." in text


def test_the_change_against_the_previous_export_is_shown_in_points(artifacts, tmp_path):
    from components.config import ReportConfig
    from components.report import report

    accuracy = artifacts["evaluate"].test_accuracy
    blessing_path = _blessing_path(tmp_path, artifacts, reason="blessed: vs baseline",
                                   baseline=str(tmp_path / "saved_models" / "digits" / "4"),
                                   baseline_accuracy=accuracy - 0.0125)
    metrics = dataclasses.replace(artifacts["evaluate"], blessing_path=blessing_path)
    made = report(ReportConfig(), artifacts["ingest"], artifacts["validate"], artifacts["train"],
                  metrics, artifacts["export"], {}, "digits", tmp_path / "out",
                  tmp_path / "tensorboard", "run-x")
    text = made.report_path.read_text()
    headline_text = _headline_text(text)
    assert "+1.25 points" in headline_text
    assert f"digits version 4 got {100 * accuracy - 1.25:.2f} % of the same test images right" in headline_text
    assert "<code>digits/4</code>" in text  # the baseline, in the details
    assert "Exported files" in text


def test_every_exported_file_is_shown_with_its_size_accuracy_and_speed(smoke_run):
    text = (smoke_run.run_dir / "report.html").read_text()
    version_dir = Path(smoke_run.manifest["results"]["version_dir"])
    files = json.loads((version_dir / "metadata.json").read_text())["files"]
    assert {"model.onnx", "model.tflite", "saved_model.pb"} <= set(files)
    table = text[text.index('id="files"'):]
    for name, score in files.items():
        row = table[table.index(f"<code>{name}</code>"):]
        row = row[:row.index("</tr>")]
        size = version_dir / name if name != "saved_model.pb" else None
        if size is not None:
            assert f"{size.stat().st_size / 1024:,.1f} KiB" in row
        assert f"{score['test_accuracy']:.4f}" in row and "images/s" in row and " ms</td>" in row
    parameters = json.loads((smoke_run.run_dir / "train" / "training.json").read_text())["parameters"]
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
    "test_accuracy": 0.925, "test_loss": 0.3, "num_examples": 40,
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
                                 "3 of 40 test images are misclassified in all.")
    perfect = {**METRICS, "test_accuracy": 1.0, "confusion_matrix": [[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 20, 0],
                                                                       [0, 0, 0, 0]]}
    assert headline(perfect) == "Makes no mistakes on the 40 test images."


def _with_matrix(matrix: list[list[int]]) -> dict:
    wrong = sum(count for true, row in enumerate(matrix) for said, count in enumerate(row) if true != said)
    return {**METRICS, "test_accuracy": 1 - wrong / 40, "confusion_matrix": matrix}


def test_the_headline_names_no_most_frequent_mistake_when_none_is():
    once_each = _with_matrix([[8, 1, 1, 0], [1, 9, 0, 0], [1, 0, 19, 0], [0, 0, 0, 0]])
    assert headline(once_each) == ("4 of 40 test images are misclassified, each in a different way: no class is "
                                   "taken for the same other class twice.")
    few = _with_matrix([[9, 1, 0, 0], [0, 10, 0, 0], [1, 0, 19, 0], [0, 0, 0, 0]])
    assert headline(few) == "2 of 40 test images are misclassified, each in a different way: cat taken for dog and " \
                            "owl taken for cat."
    assert headline(_with_matrix([[10, 0, 0, 0], [0, 10, 0, 0], [1, 0, 19, 0], [0, 0, 0, 0]])) == (
        "Makes one mistake on the 40 test images: an image of owl taken for cat.")


def test_equally_frequent_mistakes_are_named_together():
    tied = _with_matrix([[8, 2, 0, 0], [2, 8, 0, 0], [1, 0, 19, 0], [0, 0, 0, 0]])
    assert headline(tied) == ("Mistakes cat for dog and dog for cat most often, 2 times each; "
                              "5 of 40 test images are misclassified in all.")
    many = _with_matrix([[6, 2, 2, 0], [2, 6, 2, 0], [2, 0, 18, 0], [0, 0, 0, 0]])
    assert headline(many) == ("Mistakes cat for dog, cat for owl, dog for cat and 2 other pairs most often, "
                              "2 times each; 10 of 40 test images are misclassified in all.")


RULES = {"min_accuracy": 0.95, "max_p_value": 0.01, "max_regression": 0.01}
BLESSED = Blessing(True, "blessed: ...", None, 0.925, ChanceTest("owl", 0.5, 37, 40, 1e-6), None, None, RULES)


def refused(by: str, **fields) -> Blessing:
    return dataclasses.replace(BLESSED, blessed=False, reason="not blessed: ...", refused_by=by, **fields)



@pytest.mark.parametrize("accuracy, blessing, published_as, expected", [
    (0.925, BLESSED, "pets version 3",
     "Ready to use: 92.5 % of test images classified correctly. Published as pets version 3."),
    (0.99996, BLESSED, None,
     "Ready to use: 99.9 % of test images classified correctly. Not published by this run."),
    (0.525, refused("evaluate.max_p_value", chance=ChanceTest("owl", 0.5, 21, 40, 0.44)), None,
     "Not published: 52.5 % of test images classified correctly, not clearly better than always answering “owl” "
     "(about 50.0 %): on 40 test images the difference may be luck."),
    (0.3, refused("evaluate.max_p_value", chance=ChanceTest("owl", 0.5, 12, 40, 0.99)), None,
     "Not published: 30.0 % of test images classified correctly, no better than always answering “owl” "
     "(about 50.0 %)."),
    (0.925, refused("evaluate.min_accuracy"), None,
     "Not published: 92.5 % of test images classified correctly; the minimum set is 95.0 %."),
    (0.9, refused("evaluate.max_regression", baseline="/srv/saved_models/pets/4", baseline_accuracy=0.925), None,
     "Not published: 90.0 % of test images classified correctly, 2.5 points below pets version 4 on the same "
     "test images."),
])
def test_the_verdict_says_in_plain_words_whether_to_use_the_model(accuracy, blessing, published_as, expected):
    from components.findings import verdict

    assert verdict(accuracy, blessing, published_as) == expected


def test_the_count_in_every_confusion_cell_is_sized_to_its_cell():
    from components import plots

    rng = np.random.default_rng(0)
    for num_classes, peak in ((10, 360), (10, 5), (30, 1000)):
        matrix = rng.integers(0, 4, (num_classes, num_classes))
        np.fill_diagonal(matrix, peak)
        figure = plots.confusion_figure(matrix, [f"class {index}" for index in range(num_classes)])
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        axes = figure.axes[0]
        cell = axes.get_window_extent(renderer).width / num_classes  # pixels
        counts = {text.get_text(): text for text in axes.texts}
        assert set(counts) >= {str(peak), "1", "3"}
        widest = counts[str(peak)].get_window_extent(renderer)
        assert widest.width < 0.9 * cell, (num_classes, peak)  # fits, with a margin
        for text in axes.texts:
            assert 0.25 * cell < text.get_window_extent(renderer).height < cell, (num_classes, peak)
        if num_classes == 10:  # legible: the old 7-point counts were 1.3 % of the figure's width
            assert counts["1"].get_fontsize() >= 14
            assert counts["1"].get_window_extent(renderer).height > 0.02 * figure.bbox.width


def test_the_class_balance_legend_covers_no_bar():
    from components import plots

    counts = {"train": [129, 130, 128, 131, 127, 129, 131, 128, 125, 131], "val": [14] * 10, "test": [36] * 10}
    figure = plots.class_balance_figure(counts, [str(index) for index in range(10)])
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    axes = figure.axes[0]
    legend = axes.get_legend().get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in axes.patches]
    assert len(bars) == 30
    assert not [bar for bar in bars if legend.overlaps(bar)]
    assert figure.bbox.contains(legend.x0, legend.y0) and figure.bbox.contains(legend.x1, legend.y1)  # not cut off


def test_the_settings_listed_as_changed_are_those_a_person_changed():
    from pipeline.config import resolve
    from pipeline.registry import report_settings

    def changed(*overrides: str) -> dict:
        return report_settings(resolve("default", list(overrides)))["changed_settings"]

    assert changed() == {}  # the model's name and augmentation: derived
    assert changed("train.epochs=3") == {"train.epochs": 3}
    assert changed("export.model_name=mine") == {"export.model_name": "mine"}
    assert changed("train.augment=none") == {"train.augment": "none"}
    for source in ("tfds:fashion_mnist", "idx:/usr/share/datasets/fashion-mnist"):
        # a data source is the one change: what it implies for the name and augmentation is not another
        assert changed(f"data.source={source}") == {"data.source": source}


def test_the_reports_key_covers_what_it_shows_and_not_every_setting():
    from pipeline.config import resolve
    from pipeline.registry import report_settings, stage

    report = stage("report")
    assert "config_values" in report.run_values  # HParams' every value: passed, never keyed
    assert report_settings(resolve("default")) == {"changed_settings": {}, "model_name": "digits"}
    shown = report_settings(resolve("default", ["evaluate.batch_size=64"]))
    assert shown == {"changed_settings": {"evaluate.batch_size": 64}, "model_name": "digits"}


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


@pytest.mark.slow
@pytest.mark.parametrize("width", [412, 1000])  # a phone, a laptop
def test_the_report_renders_in_chromium_with_text_and_charts(smoke_run, tmp_path, width):
    image = screenshot((smoke_run.run_dir / "report.html").as_uri(), tmp_path / "report.png", width, 2400)
    pixels = np.asarray(image)
    assert image.size == (width, 2400)
    assert 0.03 < not_blank(image) < 0.9
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # charts, not only text


NASTY_NAMES = ("cost_$1_$", r"$\frac$", "$^$", "a & <b>", "x" * 40)


def test_charts_draw_class_names_as_text_whatever_they_hold(monkeypatch):
    """Every string a chart draws is recorded as the renderer draws it: each class name must be drawn as it is
    (as plain text, not as a formula), as often as the chart shows it."""
    from collections import Counter

    from matplotlib.backends.backend_agg import RendererAgg
    from PIL import ImageDraw

    from components import plots

    drawn: list[tuple[str, object]] = []  # (text, how matplotlib parses it: False for plain text)
    agg_text, pillow_text = RendererAgg.draw_text, ImageDraw.ImageDraw.text

    def agg_records(self, gc, x, y, text, prop, angle, ismath=False, mtext=None):
        drawn.append((text, ismath))
        return agg_text(self, gc, x, y, text, prop, angle, ismath, mtext)

    def pillow_records(self, xy, text, *args, **kwargs):
        drawn.append((text, False))
        return pillow_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(RendererAgg, "draw_text", agg_records)
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", pillow_records)
    matrix = np.arange(25).reshape(5, 5)
    images = np.zeros((5, 8, 8, 1), np.uint8)
    names = Counter(NASTY_NAMES)
    for draw, expected in (
            (lambda: plots.confusion_heatmap(matrix, NASTY_NAMES, title=NASTY_NAMES[0]),
             names + names + Counter([NASTY_NAMES[0]])),  # each name on both axes, the first also as the title
            (lambda: plots.class_balance({"train": [1, 2, 3, 4, 5]}, NASTY_NAMES), names),
            (lambda: plots.image_grid(images, list(NASTY_NAMES)), names),
            (lambda: plots.quick_confusion_image(matrix, NASTY_NAMES, NASTY_NAMES[1]),  # rows: "<index> <name>"
             Counter([f"{index} {name}" for index, name in enumerate(NASTY_NAMES)] + [NASTY_NAMES[1]]))):
        drawn.clear()
        assert draw().startswith(b"\x89PNG")
        as_text = Counter(text for text, parsed in drawn if parsed is False)
        assert not expected - as_text, f"not drawn as plain text: {list(expected - as_text)}; drawn: {drawn}"


def test_percentages_never_claim_a_certainty_the_model_did_not_have():
    from components.report import percent

    shown = [percent(p) for p in (0.254, 0.5, 0.994, 0.9951, 0.99996, 1.0)]
    assert shown == ["25", "50", "99", "99.5", "99.9", "100.0"]
