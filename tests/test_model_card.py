"""The model card: rendered from hand-made results, read back as GitHub would parse it, and a real export's."""

from __future__ import annotations

import dataclasses
import json

import jinja2
import pytest
from markdown_it import MarkdownIt  # Markdown parser of `rich`, which Keras depends on

from components.blessing import Blessing, ChanceTest
from components.model_card import MODEL_CARD_FILE, ModelCard, render_model_card, write_model_card

NAMES = ("cat", "dog", "bird|fish", "*star*", "_under_")  # Markdown's table bar and emphasis marks included
METRICS = {
    "test_loss": 0.512345,
    "test_accuracy": 49 / 59,
    "num_examples": 59,
    "per_class": {
        "cat": {"precision": 0.95, "recall": 0.9, "f1": 0.923077, "support": 20},
        "dog": {"precision": 0.812345, "recall": 0.85, "f1": 0.830769, "support": 1020},
        "bird|fish": {"precision": 0.7, "recall": 0.6, "f1": 0.646154, "support": 10},
        "*star*": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 5},
        "_under_": {"precision": 0.6, "recall": 0.75, "f1": 0.666667, "support": 4},
    },
    "confusion_matrix": [[18, 2, 0, 0, 0], [1, 17, 2, 0, 0], [0, 3, 6, 0, 1], [0, 0, 0, 5, 0], [0, 0, 1, 0, 3]],
}
WORST_FIRST = ["bird|fish", "_under_", "dog", "cat", "*star*"]  # by F1
WARNINGS = ("class imbalance 5.0:1 in train (dog: 1000, _under_: 200) exceeds validate.imbalance_warn_ratio=3",
            "2 of 59 test images are exact duplicates of training images (leakage)")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMAND = "python -m pipeline.run --preset smoke 'model.conv_widths=(8, 16)'"
REPRODUCTION = {
    "seeds": {"data.seed": 0, "train.seed": 42},
    "deterministic": True,
    "packages": {"tensorflow": "2.21.0", "keras": "3.15.1", "tensorflow-datasets": None},
    "python": "3.11.7",
    "platform": "Linux-6.1-x86_64-with-glibc2.36",
    "git": {"commit": COMMIT, "dirty": True},
    "devices": [{"kind": "GPU", "compute_capability": [8, 0]}, {"kind": "CPU", "compute_capability": None}],
}
CARD = ModelCard(
    model_name="pets", exported_at="2025-05-01 12:00:00 UTC", run_id="20250501-120000-abcdef",
    image_shape=(8, 8, 3), class_names=NAMES, num_parameters=1234567, onnx_opset=17,
    exported_with={"tensorflow": "2.21.0", "keras": "3.15.1"}, trained_precision="mixed_bfloat16",
    parity_max_abs_diff=2.5e-7, num_parity_examples=59, num_examples={"train": 12345, "val": 1372, "test": 59},
    data_fingerprint="d" * 64, metrics=METRICS,
    blessing=Blessing(True, "blessed: test accuracy 0.8305, no comparable baseline", None, 49 / 59,
                      ChanceTest("cat", 0.5, 49, 59, 1e-6), None, None,
                      {"min_accuracy": 0.5, "max_p_value": 0.01, "max_regression": 0.01}),
    data_warnings=WARNINGS, command=COMMAND, reproduction=REPRODUCTION,
)


def parse(markdown: str) -> list:
    return MarkdownIt("commonmark").enable("table").parse(markdown)


def plain(inline) -> str:
    """An inline token's text as a reader sees it: escapes undone, emphasis marks gone."""
    return "".join(child.content for child in inline.children if child.type in ("text", "text_special",
                                                                                "code_inline"))


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Every table as rows of {header: cell text}, keyed by its first header."""
    found, rows, in_cell = {}, [], False
    for token in parse(markdown):
        if token.type in ("th_open", "td_open", "th_close", "td_close"):
            in_cell = token.type.endswith("open")
        elif token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and in_cell:
            rows[-1].append(plain(token))
        elif token.type == "table_close":
            header, *body = rows
            found[header[0]] = [dict(zip(header, row, strict=True)) for row in body]
            rows = []
    return found


def section(markdown: str, heading: str) -> str:
    """The lines under `heading`, up to the next heading of its level or above."""
    level = heading.index(" ")
    lines = markdown.splitlines()[markdown.splitlines().index(heading) + 1:]
    end = next((i for i, line in enumerate(lines) if line.startswith("#") and line.index(" ") <= level), len(lines))
    return "\n".join(lines[:end]) + "\n"


def list_items(markdown: str) -> list[str]:
    """The text of every list item, nested ones included."""
    items, depth = [], 0
    for token in parse(markdown):
        depth += {"list_item_open": 1, "list_item_close": -1}.get(token.type, 0)
        if token.type == "inline" and depth:
            items.append(plain(token))
    return items


@pytest.fixture(scope="module")
def card_text() -> str:
    return render_model_card(CARD, 7)


def test_every_table_has_a_header_row_and_as_many_cells_in_every_row(card_text):
    table_lines = [line for line in card_text.splitlines() if line.startswith("|")]
    found = tables(card_text)
    assert list(found) == ["Field", "Tensor", "Split", "Metric", "Class", "Output index", "What", "Package"]
    # Every line that looks like a table row was parsed as one: header and separator rows, and no stray bar.
    assert len(table_lines) == sum(len(rows) + 2 for rows in found.values())


def test_every_class_name_appears_in_the_class_list_in_output_order(card_text):
    rows = tables(section(card_text, "### Intended use"))["Output index"]
    assert [(row["Output index"], row["Class"]) for row in rows] == [(str(i), name) for i, name in enumerate(NAMES)]


def test_the_per_class_table_is_worst_first_with_the_metrics_to_four_decimals(card_text):
    rows = tables(card_text)["Class"]
    assert [row["Class"] for row in rows] == WORST_FIRST
    for row in rows:
        expected = METRICS["per_class"][row["Class"]]
        for column, key in (("Precision", "precision"), ("Recall", "recall"), ("F1", "f1")):
            assert row[column] == f"{expected[key]:.4f}", (row, column)
        assert row["Test images"] == f"{expected['support']:,}"
    assert rows[2]["Precision"] == "0.8123" and rows[2]["Test images"] == "1,020"  # rounded, separated


def test_accuracy_loss_and_counts_are_formatted(card_text):
    metrics = {row["Metric"]: row["Value"] for row in tables(card_text)["Metric"]}
    assert metrics["Test accuracy"] == "0.8305" and metrics["Test loss (cross-entropy)"] == "0.5123"
    assert [row["Images"] for row in tables(card_text)["Split"]] == ["12,345", "1,372", "59"]
    details = {row["Field"]: row["Value"] for row in tables(card_text)["Field"]}
    assert details["Parameters"] == "1,234,567" and details["Version"].startswith("7 (saved_models/pets/7/)")


def test_limitations_name_the_three_worst_classes_in_order_and_the_most_common_confusion(card_text):
    items = list_items(section(card_text, "### Limitations"))
    worst = next(item for item in items if item.startswith("Worst classes"))
    positions = [worst.index(f"{name} (F1") for name in WORST_FIRST[:3]]
    assert positions == sorted(positions) and "cat (F1" not in worst
    assert "bird|fish predicted as dog, 3 of 10 test images of bird|fish" in items[1]


def test_validate_warnings_appear_word_for_word(card_text):
    assert set(WARNINGS) <= set(list_items(section(card_text, "### Limitations")))


def test_without_warnings_the_card_says_none():
    text = render_model_card(dataclasses.replace(CARD, data_warnings=()), 1)
    assert "- **Data warnings from validate:** none." in text


def test_the_reproduce_section_has_the_command_commit_dirty_flag_seeds_and_packages(card_text):
    reproduce = section(card_text, "## How to reproduce")
    fences = [token for token in parse(reproduce) if token.type == "fence"]
    assert [(fence.info, fence.content) for fence in fences] == [("bash", COMMAND + "\n")]
    rows = {row["What"]: row["Value"] for row in tables(reproduce)["What"]}
    assert rows["Git commit"].startswith(f"{COMMIT}, with uncommitted changes")
    assert rows["Seeds"] == "data.seed=0, train.seed=42" and rows["Data fingerprint"] == "d" * 64
    assert rows["Devices"] == "GPU (compute capability 8.0), CPU"
    assert rows["Run id"] == CARD.run_id
    packages = {row["Package"]: row["Version"] for row in tables(reproduce)["Package"]}
    assert packages == {"tensorflow": "2.21.0", "keras": "3.15.1", "tensorflow-datasets": "not installed"}


def test_a_clean_checkout_and_a_command_with_backticks():
    command = "python -m pipeline.run 'export.model_name=```x'"
    reproduction = {**REPRODUCTION, "git": {"commit": COMMIT, "dirty": False}}
    reproduce = section(render_model_card(dataclasses.replace(CARD, command=command, reproduction=reproduction), 1),
                        "## How to reproduce")
    assert [token.content for token in parse(reproduce) if token.type == "fence"] == [command + "\n"]
    assert {row["What"]: row["Value"] for row in tables(reproduce)["What"]}["Git commit"] == \
        f"{COMMIT}, clean work tree"


def test_outside_the_pipeline_the_card_says_what_was_not_recorded():
    text = render_model_card(dataclasses.replace(CARD, command="", reproduction=None), 1)
    reproduce = section(text, "## How to reproduce")
    assert "The command was not recorded" in reproduce and "```" not in reproduce
    assert "not recorded: export was called outside the pipeline (python -m pipeline.run)" in reproduce


def test_a_baseline_is_compared_by_name_accuracy_and_difference():
    blessing = dataclasses.replace(CARD.blessing, baseline="/srv/saved_models/pets/3", baseline_accuracy=0.8,
                                   reason="blessed: test accuracy 0.8305 vs baseline 0.8000 (pets/3)")
    metrics = {row["Metric"]: row["Value"]
               for row in tables(render_model_card(dataclasses.replace(CARD, blessing=blessing), 4))["Metric"]}
    assert metrics["Baseline"] == "pets/3: test accuracy 0.8000 on the same images (+0.0305 for this model)"
    assert metrics["Blessing"] == blessing.reason


@pytest.mark.parametrize("field, missing", [("metrics", "test_loss"), ("reproduction", "python"),
                                            ("num_examples", "val")])
def test_a_missing_field_is_an_error_not_a_blank(field, missing):
    incomplete = {key: value for key, value in getattr(CARD, field).items() if key != missing}
    with pytest.raises(jinja2.UndefinedError, match=missing):
        render_model_card(dataclasses.replace(CARD, **{field: incomplete}), 1)


def test_the_card_names_the_number_its_folder_gets_when_another_export_takes_the_first(tmp_path, monkeypatch):
    import components.export as export_module

    model_dir = tmp_path / "pets"
    staging_dir = model_dir / ".staging-1-abc"
    staging_dir.mkdir(parents=True)
    (model_dir / "1").mkdir()
    (model_dir / "1" / "metadata.json").write_text("{}")
    real_listing, listings = export_module.numbered_entries, []

    def listed_before_version_1_appeared(directory):
        listings.append(directory)
        return [] if len(listings) == 1 else real_listing(directory)

    monkeypatch.setattr(export_module, "numbered_entries", listed_before_version_1_appeared)
    version_dir = export_module._publish(staging_dir, model_dir,
                                         lambda version: write_model_card(staging_dir, CARD, version))
    assert version_dir == model_dir / "2" and len(listings) == 2
    assert (version_dir / MODEL_CARD_FILE).read_text().startswith("# Model card: pets, version 2\n")
    assert sorted(path.name for path in model_dir.iterdir()) == ["1", "2"]


def test_a_smoke_export_has_a_card_that_agrees_with_its_metadata(smoke_run):
    version_dir = smoke_run.workdir / "saved_models" / "digits" / "1"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    text = (version_dir / MODEL_CARD_FILE).read_text()
    assert text.startswith("# Model card: digits, version 1\n")
    metrics = {row["Metric"]: row["Value"] for row in tables(text)["Metric"]}
    assert metrics["Test accuracy"] == f"{metadata['metrics']['test_accuracy']:.4f}"
    assert metrics["Test loss (cross-entropy)"] == f"{metadata['metrics']['test_loss']:.4f}"
    assert [row["Class"] for row in tables(text)["Output index"]] == metadata["class_names"]
    assert sum(int(row["Test images"].replace(",", "")) for row in tables(text)["Class"]) == \
        smoke_run.manifest["results"]["num_examples"]["test"]
    reproduce = {row["What"]: row["Value"] for row in tables(section(text, "## How to reproduce"))["What"]}
    assert reproduce["Run id"] == metadata["run_id"] == smoke_run.manifest["run_id"]
    assert reproduce["Data fingerprint"] == metadata["data_fingerprint"]
    assert reproduce["Git commit"].startswith(smoke_run.manifest["reproduction"]["git"]["commit"])
    command = next(token.content for token in parse(text) if token.type == "fence")
    assert command.startswith("python -m pipeline.run --workdir ") and "--preset smoke" in command
