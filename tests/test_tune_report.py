"""What tune's record (`tuning.json`) looks like to people: report.html's Tuning section, `runs show` and
`runs compare`.

The record is written by hand (a search takes tens of seconds); the rest of the report's inputs are
the shared smoke run's artifacts, as tests/test_report.py uses them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from components.artifacts import Tuning
from pipeline.cache import read_entry

BUDGET = 40.0
TRIALS = [  # as components/tune.py records them: two pruned, one failed, trial 2 the best
    {"number": 0, "state": "complete", "value": 0.95, "values": {}, "val_accuracy_by_epoch": [0.9, 0.95],
     "started": 0.0, "ended": 6.0},
    {"number": 1, "state": "pruned", "value": 0.6, "values": {}, "val_accuracy_by_epoch": [0.5, 0.55, 0.6],
     "started": 6.5, "ended": 12.5},
    {"number": 2, "state": "complete", "value": 0.98, "values": {},
     "val_accuracy_by_epoch": [0.93, 0.98, 0.97, 0.96], "started": 13.0, "ended": 21.0},
    {"number": 3, "state": "fail", "value": None, "values": {}, "val_accuracy_by_epoch": [], "started": 21.5,
     "ended": 22.0, "error": "model.conv_widths=[64, 128]: the images are too small for 2 blocks"},
    {"number": 4, "state": "complete", "value": 0.9, "values": {}, "val_accuracy_by_epoch": [0.8, 0.85, 0.9],
     "started": 22.5, "ended": 30.0},
    {"number": 5, "state": "pruned", "value": 0.75, "values": {}, "val_accuracy_by_epoch": [0.7, 0.75],
     "started": 30.5, "ended": 34.0},
]
# The smoke preset's own values of the searched keys (pipeline/config.py PRESETS), and what the search chose.
DEFAULTS = {"train.learning_rate": 0.003, "train.batch_size": 32, "train.epochs": 3, "model.conv_widths": [8, 16]}
BEST = {"train.learning_rate": 0.0050117444671592005, "train.batch_size": 32, "train.epochs": 4,
        "model.conv_widths": [64, 128]}
RECORD = {
    "best": BEST, "defaults": DEFAULTS, "best_val_accuracy": 0.98, "best_trial": 2,
    "space": {"train.learning_rate": [0.001, 0.01, "log"], "train.batch_size": [32, 64, 128],
              "train.epochs": [1, 6], "model.conv_widths": [[16, 32], [64, 128]]},
    "seconds": 36.2, "budget_seconds": BUDGET, "trials": TRIALS,
    "importance": {"train.epochs": 0.1, "train.learning_rate": 0.6, "model.conv_widths": 0.25,
                   "train.batch_size": 0.05},
}


def write_tuning(folder: Path, **changes) -> Tuning:
    """`RECORD` with `changes` as a tune stage's output in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tuning.json").write_text(json.dumps({**RECORD, **changes}))
    return Tuning(folder / "tuning.json", folder / "study.sqlite")


@pytest.fixture(scope="module")
def artifacts(smoke_run) -> dict:
    """The smoke run's artifacts, as the orchestrator hands them to a stage."""
    return {record["name"]: read_entry((smoke_run.run_dir / record["name"]).resolve())
            for record in smoke_run.manifest["stages"]}


def render(artifacts: dict, out_dir: Path, tuning: Tuning | None) -> str:
    """report.html of the smoke run's artifacts with `tuning`, its text."""
    from components.config import ReportConfig
    from components.report import report

    made = report(ReportConfig(mistakes=4), artifacts["ingest"], artifacts["validate"],
                  artifacts["train"], artifacts["evaluate"], artifacts["export"], {}, "digits", out_dir,
                  out_dir / "tensorboard", "run-x", tuning=tuning)
    return made.report_path.read_text()


@pytest.fixture(scope="module")
def pages(artifacts, tmp_path_factory) -> dict[str, str]:
    """The page without tuning, with the record, and with a record too short for importance."""
    folder = tmp_path_factory.mktemp("tuned_report")
    return {"untuned": render(artifacts, folder / "untuned", None),
            "tuned": render(artifacts, folder / "tuned", write_tuning(folder / "tune")),
            "no importance": render(artifacts, folder / "short", write_tuning(folder / "short_tune", importance={})),
            # start-up took the whole budget (a busy machine): no trial, and train used the config as given
            "no trial": render(artifacts, folder / "none", write_tuning(
                folder / "none_tune", trials=[], importance={}, best=DEFAULTS, best_val_accuracy=None,
                best_trial=None, seconds=38.5))}


def tuning_section(page: str) -> str:
    """The Tuning section's HTML: from its heading to the next section's."""
    start = page.index('<h2 id="tuning">')
    return page[start:page.index("<h2 ", start + 1)]


def words(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def images(fragment: str) -> dict[str, Image.Image]:
    """The inline PNGs of an HTML fragment by their alt text."""
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)">', fragment)
    return {alt: Image.open(io.BytesIO(base64.b64decode(data))) for data, alt in found}


def test_without_tuning_the_page_has_no_tuning_section_and_with_it_only_that_section_is_added(pages):
    untuned, tuned = pages["untuned"], pages["tuned"]
    assert 'id="tuning"' not in untuned and "Tuning" not in untuned and "trial" not in untuned
    section = tuning_section(tuned)
    assert tuned.replace(section, "") == untuned  # the rest of the page is the same, byte for byte
    assert tuned.index(section) < tuned.index('<h2 id="training">')  # tuning chose train's settings: before it


def test_the_section_says_in_plain_words_how_many_trials_ran_in_how_long_and_the_best(pages):
    text = words(tuning_section(pages["tuned"]))
    assert text.startswith("Tuning Before training, a search tried 6 combinations of settings in 36 s of its 40 s "
                           "budget: 3 ran to the end, 2 were stopped early as unpromising, 1 failed. The best, trial "
                           "2, classified 98.00 % of the validation images correctly, and training used its "
                           "settings.")
    assert "The dotted line is the budget's end." in text and "went to starting up" not in text  # trial 0 at 0 s
    assert f"trial 3: {TRIALS[3]['error']}" in text  # the failed trial, with why


def test_the_section_has_the_trials_chart_and_the_importance_bars(pages):
    charts = images(tuning_section(pages["tuned"]))
    assert list(charts) == ["validation accuracy by trial over the search", "importance of each setting"]
    assert charts["validation accuracy by trial over the search"].size == (840, 360)
    assert charts["importance of each setting"].size == (700, 90 + 32 * len(RECORD["importance"]))
    for chart in charts.values():
        pixels = np.asarray(chart.convert("L"))
        assert (pixels < 128).mean() > 0.01, "drawn on"


def test_a_search_without_a_finished_trial_says_training_used_the_config_as_given(pages):
    text = words(tuning_section(pages["no trial"]))
    assert text.startswith("Tuning Before training, a search tried 0 combinations of settings in 38 s of its 40 s "
                           "budget: 0 ran to the end. No trial finished within the budget (starting up took 38 s of "
                           "it), so training used the config as given.")
    assert "Too few trials finished (0;" in text


def test_too_few_trials_for_importance_is_said_instead_of_a_chart(pages):
    section = tuning_section(pages["no importance"])
    assert list(images(section)) == ["validation accuracy by trial over the search"]
    assert "Too few trials finished (3; it takes at least 3 that differ) to tell which settings mattered." in \
        words(section)


def test_the_chosen_values_stand_against_the_configs_with_the_changed_ones_highlighted(pages):
    rows = re.findall(r'<tr( class="changed")? data-setting="([^"]+)">(.*?)</tr>', tuning_section(pages["tuned"]))
    cells = {key: [words(cell) for cell in re.findall(r"<td>(.*?)</td>", row)] for _, key, row in rows}
    assert cells == {
        "train.learning_rate": ["train.learning_rate", "0.001 to 0.01, log scale", "0.003", "0.005012"],
        "train.batch_size": ["train.batch_size", "one of 32, 64, 128", "32", "32"],
        "train.epochs": ["train.epochs", "1 to 6", "3", "4"],
        "model.conv_widths": ["model.conv_widths", "one of [16, 32], [64, 128]", "[8, 16]", "[64, 128]"],
    }
    assert [key for changed, key, _ in rows if changed] == ["train.learning_rate", "train.epochs",
                                                            "model.conv_widths"]


def test_the_trials_chart_draws_each_trial_by_its_state_over_seconds_into_the_search():
    from components import plots

    axes = plots.tuning_trials_figure(TRIALS, best_trial=2).axes[0]
    lines = [line for line in axes.get_lines() if len(line.get_xdata()) > 1]  # the trials' lines
    assert len(lines) == 5  # the failed trial has no epochs to draw
    by_start = {round(float(line.get_xdata()[0]), 6): line for line in lines}
    # Epochs spread evenly over each trial's time: trial 2 ran 13-21 s, 4 epochs: at 15, 17, 19, 21 s.
    best = by_start[15.0]
    np.testing.assert_allclose(best.get_xdata(), [15, 17, 19, 21])
    np.testing.assert_allclose(best.get_ydata(), TRIALS[2]["val_accuracy_by_epoch"])
    assert to_hex(best.get_color()) == plots.BEST_COLOR
    pruned = by_start[8.5]
    assert pruned.get_linestyle() == "--" and to_hex(pruned.get_color()) == plots.PRUNED_COLOR
    assert {to_hex(by_start[start].get_color()) for start in (3.0, 25.0)} == {plots.TRAIN_COLOR}
    markers = sorted((line.get_label(), float(line.get_xdata()[0]), float(line.get_ydata()[0]))
                     for line in axes.get_lines() if line.get_marker() in ("*", "x"))
    # The star at the best trial's score (its kept epoch, the second), a cross where each pruned one stopped.
    assert markers == [("best: trial 2, 98.00%", 17.0, 0.98), ("stopped early (pruned)", 12.5, 0.6),
                       ("stopped early (pruned)", 34.0, 0.75)]
    assert axes.get_xlim()[1] >= 34.0 and axes.get_xlabel() == "seconds into the search (its start-up included)"
    numbers = sorted(text.get_text() for text in axes.texts)
    assert numbers == ["0", "1", "2", "4", "5"]  # each drawn trial, numbered as the page's text names them


def test_the_trials_chart_marks_the_budgets_end():
    from components import plots

    axes = plots.tuning_trials_figure(TRIALS, best_trial=2, budget_seconds=BUDGET).axes[0]
    ends = [line for line in axes.get_lines() if line.get_label() == "the budget's end"]
    assert [list(line.get_xdata()) for line in ends] == [[BUDGET, BUDGET]] and axes.get_xlim()[1] >= BUDGET


def test_the_importance_bars_put_the_most_important_setting_on_top():
    from components import plots

    axes = plots.setting_importance_figure(RECORD["importance"]).axes[0]
    widths = [patch.get_width() for patch in axes.patches]
    names = [label.get_text() for label in axes.get_yticklabels()]
    assert names == ["train.learning_rate", "model.conv_widths", "train.epochs", "train.batch_size"]
    assert widths == [0.6, 0.25, 0.1, 0.05]
    assert axes.yaxis_inverted()  # the first bar on top
    assert [text.get_text().strip() for text in axes.texts] == ["60%", "25%", "10%", "5%"]


# `python -m pipeline.runs show` and `compare` of a tuned run, on a lineage written by hand.

@pytest.fixture
def lineage_of_two_runs(tmp_path) -> Path:
    """A workdir whose lineage holds `tuned` (smoke, tune.max_seconds=40, RECORD's results) and `untuned`."""
    from pipeline.config import resolve, to_dict
    from pipeline.lineage import Lineage

    lineage = Lineage(tmp_path / "lineage.sqlite")
    facts = write_tuning(tmp_path / "tune").facts()
    for run_id, overrides, results in (("tuned", ["tune.max_seconds=40"], {"test_accuracy": 0.97, **facts}),
                                       ("untuned", [], {"test_accuracy": 0.95})):
        lineage.start_run(run_id, "python -m pipeline.run", to_dict(resolve("smoke", overrides)), {})
        lineage.end_run(run_id, "succeeded", None, results)
    return tmp_path


def runs_output(capsys, *argv: str) -> str:
    from pipeline.runs import main

    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_runs_show_gives_the_search_and_each_chosen_value_against_the_config(lineage_of_two_runs, capsys):
    output = runs_output(capsys, "--workdir", str(lineage_of_two_runs), "show", "tuned")
    lines = output.splitlines()
    start = lines.index("tuned      6 trials (2 pruned) in 36 s of 40, best validation accuracy 0.9800; train used:")
    assert lines[start + 1:start + 5] == ["  train.learning_rate = 0.0050117444671592005  (config: 0.003)",
                                          "  train.batch_size = 32",
                                          "  train.epochs = 4  (config: 3)",
                                          "  model.conv_widths = [64, 128]  (config: [8, 16])"]
    assert lines[start + 5].startswith("config ")
    assert "tune_" not in output  # not again, flattened, among the results
    untuned = runs_output(capsys, "--workdir", str(lineage_of_two_runs), "show", "untuned")
    assert "tuned " not in untuned and "train used" not in untuned


def test_runs_show_of_a_search_without_a_finished_trial_says_so(tmp_path, capsys):
    from pipeline.config import resolve, to_dict
    from pipeline.lineage import Lineage

    facts = write_tuning(tmp_path / "tune", best_val_accuracy=None, best_trial=None).facts()
    lineage = Lineage(tmp_path / "lineage.sqlite")
    lineage.start_run("cut", "python -m pipeline.run", to_dict(resolve("smoke", ["tune.max_seconds=40"])), {})
    lineage.end_run("cut", "succeeded", None, {"test_accuracy": 0.9, **facts})
    output = runs_output(capsys, "--workdir", str(tmp_path), "show", "cut")
    assert "in 36 s of 40, no trial finished; train used:" in output


def test_runs_compare_sets_the_chosen_values_against_the_untuned_runs_config(lineage_of_two_runs, capsys):
    output = runs_output(capsys, "--workdir", str(lineage_of_two_runs), "compare", "tuned", "untuned")
    (section,) = [block.splitlines() for block in output.split("\n\n") if block.startswith("settings tune searched")]
    assert section == ["settings tune searched, as train used them (A: tune's choice; B: its config):",
                       "  train.learning_rate: 0.0050117444671592005 -> 0.003",
                       "  train.batch_size:    32 -> 32",
                       "  train.epochs:        4 -> 3",
                       "  model.conv_widths:   [64, 128] -> [8, 16]"]
    reverse = runs_output(capsys, "--workdir", str(lineage_of_two_runs), "compare", "untuned", "tuned")
    assert "  model.conv_widths:   [8, 16] -> [64, 128]" in reverse.splitlines()
    assert "(A: its config; B: tune's choice)" in reverse
    metrics = [line.split()[0] for block in output.split("\n\n") if block.startswith("metrics")
               for line in block.splitlines()]
    assert "tune_trials" in metrics and not [name for name in metrics if name.startswith("tune_best.")]
    alone = runs_output(capsys, "--workdir", str(lineage_of_two_runs), "compare", "untuned", "untuned")
    assert "settings tune searched" not in alone  # neither run tuned: no such section
