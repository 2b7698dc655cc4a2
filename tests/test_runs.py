"""`python -m pipeline.runs`: list, show and compare, on real runs of the smoke preset in one workdir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.lineage import Lineage
from pipeline.runs import evaluate_metrics
from tests.conftest import QUIET_ENV, REPO_DIR, run_pipeline_cli


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


def test_only_the_differing_config_key_is_listed_with_both_values(runs, a_vs_b):
    seed_a = json.loads((runs.workdir / "runs" / runs.a / "config.json").read_text())["train"]["seed"]
    assert section(a_vs_b, "config differences") == ["config differences (A -> B):", f"  train.seed: {seed_a} -> 7"]


def test_accuracies_are_each_runs_manifest_value_with_the_difference(runs, a_vs_b):
    accuracy_a = runs.manifest(runs.a)["results"]["test_accuracy"]
    accuracy_b = runs.manifest(runs.b)["results"]["test_accuracy"]
    assert row(section(a_vs_b, "metrics"), "test_accuracy") == [
        "test_accuracy", f"{accuracy_a:.4f}", f"{accuracy_b:.4f}", f"{accuracy_b - accuracy_a:+.4f}"]


def test_metrics_include_training_results_and_the_export(runs, a_vs_b):
    metrics = section(a_vs_b, "metrics")
    epochs_a, epochs_b = (runs.manifest(run_id)["results"]["epochs_run"] for run_id in (runs.a, runs.b))
    assert row(metrics, "epochs_run") == ["epochs_run", str(epochs_a), str(epochs_b), f"{epochs_b - epochs_a:+d}"]
    assert row(metrics, "export")[:2] == ["export", "digits/1"]  # B's depends on whether it regressed
    assert row(metrics, "blessed")[1] == "yes"


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


def test_a_run_compared_with_itself_has_no_differences(runs):
    result = runs_cli(runs.workdir, "compare", runs.a, runs.a)
    assert result.returncode == 0, result.stderr
    assert "no config differences" in result.stdout.splitlines()
    assert {row(section(result.stdout, "per class"), name)[-1] for name in runs.metrics(runs.a)["per_class"]} \
        == {"+0.0000"}


def test_an_unknown_run_id_exits_2_with_one_line_naming_it_and_the_list_command(runs):
    result = runs_cli(runs.workdir, "compare", runs.a, "20000101-000000-nosuch")
    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "'20000101-000000-nosuch'" in line
    assert f"python -m pipeline.runs --workdir {runs.workdir}" in line


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


def test_a_run_that_failed_before_evaluate_is_compared_without_per_class(runs):
    result = runs_cli(runs.workdir, "compare", runs.a, runs.failed)
    assert result.returncode == 0, result.stderr
    assert section(result.stdout, "per class") == [
        f"per class: run B ({runs.failed}, failed) has no evaluate metrics.json"]
    assert row(section(result.stdout, "metrics"), "test_accuracy")[2] == "-"


def test_metrics_json_is_found_through_the_lineage_else_in_the_run_folder(runs, tmp_path):
    run = Lineage(runs.workdir / "lineage.sqlite").run(runs.a)
    assert evaluate_metrics(run, tmp_path) == runs.metrics(runs.a)  # tmp_path has no runs/: the lineage's path
    assert evaluate_metrics({**run, "executions": []}, runs.workdir) == runs.metrics(runs.a)
    assert evaluate_metrics({**run, "executions": []}, tmp_path) is None


def test_the_list_shows_status_source_model_accuracy_and_export(runs):
    result = runs_cli(runs.workdir)
    assert result.returncode == 0, result.stderr
    accuracy = runs.manifest(runs.a)["results"]["test_accuracy"]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(runs.a)]
    assert line.split()[1:] == ["succeeded", *line.split()[2:4], "digits", "digits", f"{accuracy:.4f}", "yes",
                                "digits/1"]


def test_runs_on_different_data_are_flagged_and_classes_without_test_images_are_not_compared():
    from pipeline.runs import _data_note, class_changes

    run = {"data_fingerprint": "aaa"}
    assert _data_note(run, {"data_fingerprint": "aaa"}) == []
    assert _data_note(run, {"data_fingerprint": "bbb"})[0].startswith("note: A and B were trained and tested on "
                                                                     "different data")
    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10}
    metrics_a = {"per_class": {"cat": scores, "dog": scores}}
    metrics_b = {"per_class": {"cat": {**scores, "f1": 0.7}, "dog": {**scores, "f1": 0.0, "support": 0}}}
    changes = {change.name: change.f1_change for change in class_changes(metrics_a, metrics_b)}
    assert changes["cat"] == pytest.approx(0.2) and changes["dog"] is None  # no test images of dogs in B
