"""`python -m pipeline.runs`: list, show and compare, on real runs of the smoke preset in one workdir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import PRESETS, valid_keys
from pipeline.lineage import Lineage
from pipeline.runs import evaluate_metrics, file_safe
from pipeline.runs import main as runs_main
from tests.conftest import QUIET_ENV, REPO_DIR, read_split, run_pipeline_cli


@dataclass(frozen=True)
class Runs:
    """One workdir with run A (smoke preset), B (A with train.seed=7) and C (failed at ingest)."""

    workdir: Path
    a: str
    b: str
    failed: str

    def manifest(self, run_id: str) -> dict:
        return json.loads((self.workdir / "runs" / run_id / "manifest.json").read_text())

    def metrics(self, run_id: str) -> dict:
        return json.loads((self.workdir / "runs" / run_id / "evaluate" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    workdir = tmp_path_factory.mktemp("compare")
    empty_dir = tmp_path_factory.mktemp("no_idx_files")
    for args in (("--preset", "smoke"), ("--preset", "smoke", "train.seed=7")):
        result = run_pipeline_cli(workdir, *args)
        assert result.returncode == 0, result.stderr
    result = run_pipeline_cli(workdir, "--preset", "smoke", f"data.source=idx:{empty_dir}")
    assert result.returncode == 2, result.stderr
    a, b, failed = [run_dir.name for run_dir in result.run_dirs]
    return Runs(workdir, a, b, failed)


@pytest.fixture(scope="module")
def a_vs_b(runs) -> str:
    result = runs_cli(runs.workdir, "compare", runs.a, runs.b)
    assert result.returncode == 0, result.stderr
    return result.stdout


def exit_code(argv: list[str]) -> int:
    """`python -m pipeline.runs *argv` in this process; its output is left to capsys."""
    try:
        return runs_main(argv)
    except SystemExit as exit:  # argparse's errors
        return exit.code


def runs_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.runs --workdir workdir *args` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(workdir), *args],
                          cwd=REPO_DIR, env=QUIET_ENV, capture_output=True, text=True, timeout=120)


def section(output: str, title: str) -> list[str]:
    """The lines of the blank-line separated section whose first line starts with `title`."""
    (found,) = [block.splitlines() for block in output.split("\n\n") if block.startswith(title)]
    return found


def row(lines: list[str], name: str) -> list[str]:
    """The cells of the table row named `name` (tables separate cells by at least two spaces)."""
    (found,) = [line for line in lines if line.split("  ")[0].strip() == name]
    return found.split()


@pytest.mark.slow
def test_only_the_differing_config_key_is_listed_with_both_values(runs, a_vs_b):
    seed_a = json.loads((runs.workdir / "runs" / runs.a / "config.json").read_text())["train"]["seed"]
    assert section(a_vs_b, "config differences") == ["config differences (A -> B):", f"  train.seed: {seed_a} -> 7"]


@pytest.mark.slow
def test_accuracies_are_each_runs_manifest_value_with_the_difference(runs, a_vs_b):
    accuracy_a = runs.manifest(runs.a)["results"]["test_accuracy"]
    accuracy_b = runs.manifest(runs.b)["results"]["test_accuracy"]
    assert row(section(a_vs_b, "metrics"), "test_accuracy") == [
        "test_accuracy", f"{accuracy_a:.4f}", f"{accuracy_b:.4f}", f"{accuracy_b - accuracy_a:+.4f}"]


@pytest.mark.slow
def test_metrics_include_training_results_and_the_export(runs, a_vs_b):
    metrics = section(a_vs_b, "metrics")
    epochs_a, epochs_b = (runs.manifest(run_id)["results"]["epochs_run"] for run_id in (runs.a, runs.b))
    assert row(metrics, "epochs_run") == ["epochs_run", str(epochs_a), str(epochs_b), f"{epochs_b - epochs_a:+d}"]
    assert row(metrics, "export")[:2] == ["export", "digits/1"]  # B's depends on whether it regressed
    assert row(metrics, "blessed")[1] == "yes"


@pytest.mark.slow
def test_every_class_has_the_f1_of_its_metrics_json_worst_change_first(runs, a_vs_b):
    metrics_a, metrics_b = runs.metrics(runs.a), runs.metrics(runs.b)
    lines = section(a_vs_b, "per class")
    changes = []
    for name, scores_a in metrics_a["per_class"].items():
        scores_b = metrics_b["per_class"][name]
        change = scores_b["f1"] - scores_a["f1"]
        assert row(lines, name) == [name, *(f"{scores[key]:.4f}" for key in ("precision", "recall")
                                            for scores in (scores_a, scores_b)),
                                    f"{scores_a['f1']:.4f}", f"{scores_b['f1']:.4f}", f"{change:+.4f}"]
        changes.append((change, name))
    assert [line.split()[0] for line in lines[2:]] == [name for _, name in sorted(changes)]


@pytest.mark.slow
def test_a_run_compared_with_itself_has_no_differences(runs):
    result = runs_cli(runs.workdir, "compare", runs.a, runs.a)
    assert result.returncode == 0, result.stderr
    assert "no config differences" in result.stdout.splitlines()
    assert {row(section(result.stdout, "per class"), name)[-1] for name in runs.metrics(runs.a)["per_class"]} \
        == {"+0.0000"}


@pytest.mark.slow
def test_an_unknown_run_id_exits_2_with_one_line_naming_it_and_the_list_command(runs):
    result = runs_cli(runs.workdir, "compare", runs.a, "20000101-000000-nosuch")
    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "'20000101-000000-nosuch'" in line
    assert f"python -m pipeline.runs --workdir {runs.workdir}" in line


@pytest.mark.slow
def test_a_unique_prefix_names_its_run_and_a_shared_one_names_the_candidates(runs):
    result = runs_cli(runs.workdir, "compare", runs.a[:-1], runs.b[:-1])
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[:2]] == [["A", runs.a], ["B", runs.b]]
    assert runs_cli(runs.workdir, "show", runs.b[:-1]).stdout.startswith(f"run {runs.b}:")
    shared = os.path.commonprefix([runs.a, runs.b])
    result = runs_cli(runs.workdir, "compare", shared, runs.b)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert runs.a in line and runs.b in line


@pytest.mark.slow
def test_a_run_that_failed_before_evaluate_is_compared_without_per_class(runs):
    result = runs_cli(runs.workdir, "compare", runs.a, runs.failed)
    assert result.returncode == 0, result.stderr
    assert section(result.stdout, "per class") == [
        f"per class: run B ({runs.failed}, failed) has no evaluate metrics.json"]
    assert row(section(result.stdout, "metrics"), "test_accuracy")[2] == "-"


@pytest.mark.slow
def test_metrics_json_is_found_through_the_lineage_else_in_the_run_folder(runs, tmp_path):
    run = Lineage(runs.workdir / "lineage.sqlite").run(runs.a)
    assert evaluate_metrics(run, tmp_path) == runs.metrics(runs.a)  # tmp_path has no runs/: the lineage's path
    assert evaluate_metrics({**run, "executions": []}, runs.workdir) == runs.metrics(runs.a)
    assert evaluate_metrics({**run, "executions": []}, tmp_path) is None


@pytest.mark.slow
def test_the_list_shows_status_source_model_accuracy_and_export(runs):
    result = runs_cli(runs.workdir)
    assert result.returncode == 0, result.stderr
    accuracy = runs.manifest(runs.a)["results"]["test_accuracy"]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(runs.a)]
    assert line.split()[1:] == ["succeeded", *line.split()[2:4], "digits", "digits", f"{accuracy:.4f}", "yes",
                                "digits/1"]


def test_runs_on_different_data_are_flagged_and_classes_without_test_images_are_not_compared():
    from pipeline.runs import _data_note, class_changes

    run = {"results": {"data_fingerprint": "aaa"}}
    assert _data_note(run, {"results": {"data_fingerprint": "aaa"}}) == []
    assert _data_note(run, {"results": {}}) == []  # a run that failed before ingest: nothing to compare
    assert _data_note(run, {"results": {"data_fingerprint": "bbb"}})[0].startswith(
        "note: A and B were trained and tested on different data")
    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10}
    metrics_a = {"per_class": {"cat": scores, "dog": scores}}
    metrics_b = {"per_class": {"cat": {**scores, "f1": 0.7}, "dog": {**scores, "f1": 0.0, "support": 0}}}
    changes = {change.name: change.f1_change for change in class_changes(metrics_a, metrics_b)}
    assert changes["cat"] == pytest.approx(0.2) and changes["dog"] is None  # no test images of dogs in B


def show_sections(output: str) -> dict[str, list[str]]:
    """`show`'s lines by part: `results`, `config` (from their first line to the next part), `stages`."""
    parts: dict[str, list[str]] = {}
    name = "run"
    for line in output.splitlines():
        if not line.startswith(" "):
            name = line.split()[0].rstrip(":")
        parts.setdefault(name, []).append(line)
    return parts


def shown_results(lines: list[str]) -> dict[str, str]:
    """`show`'s results by name, a value wrapped over several lines joined again."""
    shown: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("   "):
            shown[name] += " " + line.strip()
        else:
            name, value = line.split(maxsplit=1)
            shown[name] = value.strip()
    return shown


@pytest.mark.slow
def test_show_gives_the_results_and_the_changed_settings_one_per_line(runs):
    result = runs_cli(runs.workdir, "show", runs.b)
    assert result.returncode == 0, result.stderr
    parts = show_sections(result.stdout)
    results = runs.manifest(runs.b)["results"]
    shown = shown_results(parts["results"])
    assert list(shown)[:4] == ["test_accuracy", "test_loss", "blessed", "export"]
    assert shown["test_accuracy"] == f"{results['test_accuracy']:.4f}" and shown["test_loss"] == \
        f"{results['test_loss']:.4f}"
    assert shown["blessed"] == results["blessing_reason"]  # B: not blessed, as it regressed from A
    assert shown["export"] == (results.get("version_dir") or "-")
    assert shown["epochs_run"] == str(results["epochs_run"])
    assert shown["class_names"] == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    config_json = runs.workdir / "runs" / runs.b / "config.json"
    changed = {**PRESETS["smoke"], "train.seed": 7}
    assert parts["config"] == [
        f"config     settings: {len(changed)} differ from the defaults; every one is in {config_json}",
        f"           repeat the run: python -m pipeline.run --workdir {runs.workdir} --config {config_json}",
        *(f"  {key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}"
          for key, value in sorted(changed.items(), key=lambda item: valid_keys().index(item[0])))]
    assert config_json.is_file()
    assert all(len(line) <= 100 for line in parts["results"] + parts["config"][2:])
    assert parts["stages"][0] == "stages:" and len(parts["stages"]) > 7


def test_show_counts_what_the_data_source_implies_as_defaults(tmp_path):
    from pipeline.config import resolve, to_dict
    from pipeline.runs import config_lines

    config = resolve("default", ["data.source=tfds:fashion_mnist", "train.epochs=3"])
    assert (config.export.model_name, config.train.augment) == ("fashion_mnist", "shift+flip")  # as recorded
    lines = config_lines({"run_id": "r1", "config": json.dumps(to_dict(config))}, tmp_path)
    assert lines[0].startswith("config     settings: 2 differ from the defaults;")
    assert lines[2:] == ['  data.source = "tfds:fashion_mnist"', "  train.epochs = 3"]


@pytest.mark.slow
def test_show_of_a_run_that_failed_at_ingest_has_its_error_and_no_results(runs):
    result = runs_cli(runs.workdir, "show", runs.failed)
    assert result.returncode == 0, result.stderr
    parts = show_sections(result.stdout)
    assert parts["error"][0] == f"error      {runs.manifest(runs.failed)['error']}"
    assert parts["results"] == ["results    none recorded"]


def test_images_writes_the_splits_pixels_as_png_files_that_predict_classifies(smoke_run, tmp_path):
    out_dir = tmp_path / "sample_images"
    result = runs_cli(smoke_run.workdir, "images", "--out", str(out_dir))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    run_dir = smoke_run.run_dir
    images, labels = read_split(run_dir / "ingest", "test", limit=8)
    paths = [out_dir / f"{index}-{label}.png" for index, label in enumerate(labels)]  # digits: class names 0-9
    assert result.stdout.splitlines() == [f"wrote 8 test images of run {run_dir.name} to {out_dir}:", *map(str, paths)]
    assert sorted(out_dir.iterdir()) == sorted(paths)
    for path, image in zip(paths, images):
        with Image.open(path) as png:
            assert (png.format, png.mode) == ("PNG", "L")
            np.testing.assert_array_equal(np.asarray(png), image[..., 0])
    predicted = subprocess.run([sys.executable, "-m", "pipeline.predict", str(smoke_run.workdir / "saved_models" /
                                                                              "digits"), str(out_dir)],
                               cwd=REPO_DIR, env=QUIET_ENV, capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    assert [line.split()[0] for line in predicted.stdout.splitlines()] == ["path", *map(str, paths)]


@pytest.mark.slow
def test_images_of_a_named_run_and_split_with_class_names_made_file_safe(runs, tmp_path, capsys):
    assert exit_code(["--workdir", str(runs.workdir), "images", runs.a[:-2], "--split", "train", "--count", "3",
                      "--out", str(tmp_path / "new" / "folder")]) == 0
    images, labels = read_split(runs.workdir / "runs" / runs.a / "ingest", "train", limit=3)
    written = capsys.readouterr().out.splitlines()
    assert written[0] == f"wrote 3 train images of run {runs.a} to {tmp_path / 'new' / 'folder'}:"
    assert [Path(line).name for line in written[1:]] == [f"{index}-{label}.png" for index, label in enumerate(labels)]
    assert [file_safe(name) for name in ("T-shirt/top", "Ankle boot", " a:b? ", "猫", "../..", "")] == [
        "T-shirt_top", "Ankle_boot", "a_b", "猫", "class", "class"]


@pytest.mark.parametrize("args, message", [
    (["images", "--count", "0"], "error: --count 0: give a number of images of at least 1"),
    (["images", "--out", "{file}"], "error: --out {file} is a file; give a folder (it is created if missing)"),
    (["images", "20000101-nosuch"], "error: no run '20000101-nosuch' in {workdir}/lineage.sqlite; "),
    (["images", "{failed}"], "error: run {failed} (failed) has no ingest output left"),
    (["images", "a", "b"], "error: images takes at most one run id (default: the newest run), got 2 (a b)"),
    (["images", "--count", "x"], "error: argument --count: invalid int value: 'x' (see python -m pipeline.runs"),
    (["show", "{failed}", "--count", "3"], "error: --count belongs to the images command, not to show"),
])
@pytest.mark.slow
def test_bad_images_arguments_are_one_line_and_exit_2(args, message, runs, tmp_path, capsys):
    names = {"file": tmp_path / "a_file", "workdir": runs.workdir, "failed": runs.failed}
    names["file"].write_text("")
    assert exit_code(["--workdir", str(runs.workdir), *(arg.format(**names) for arg in args)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith(message.format(**names))
    assert list(tmp_path.iterdir()) == [names["file"]]  # no --out folder made


def test_images_without_runs_says_so(tmp_path, capsys):
    Lineage(tmp_path / "lineage.sqlite")  # an empty database
    assert exit_code(["--workdir", str(tmp_path), "images"]) == 2
    assert capsys.readouterr().err == f"error: no runs in {tmp_path / 'lineage.sqlite'}; run `python -m pipeline.run` " \
                                      "there first\n"


def to_closed_pipe(*command: str) -> subprocess.CompletedProcess:
    """`python -m *command` with stdout a pipe whose reader has gone, as after `| head -1` read its line.

    The read end is closed before the command starts, so its first write fails every time; behind
    `| head -1` a short output fits the pipe's buffer and is written before head exits.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", *command], cwd=REPO_DIR, env=QUIET_ENV, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.slow
def test_runs_exits_quietly_on_a_closed_pipe(runs):
    for command in ("list", "show", "compare"):
        result = to_closed_pipe("pipeline.runs", "--workdir", str(runs.workdir), command,
                                *{"list": [], "show": [runs.a], "compare": [runs.a, runs.b]}[command])
        assert (result.returncode, result.stderr) == (141, ""), command


def test_predict_piped_to_head_prints_one_line_and_no_traceback(smoke_run, tmp_path):
    """A real `| head -1`: 2,000 result lines outgrow the pipe's buffer, so predict writes after head has gone."""
    image_path = tmp_path / "black.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image_path)
    (tmp_path / "images").mkdir()
    for index in range(2000):
        (tmp_path / "images" / f"{index:04d}.png").symlink_to(image_path)
    command = f"{sys.executable} -m pipeline.predict {smoke_run.workdir / 'saved_models' / 'digits'} {tmp_path / 'images'}"
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -1"], cwd=REPO_DIR, env=QUIET_ENV,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (141, "")
    assert result.stdout.split() == ["path", "label", "probability"]
