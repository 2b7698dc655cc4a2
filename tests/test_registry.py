"""The stage registry: every stage bound by name, and a new stage added in three places runs end to end."""

import dataclasses
import inspect
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pipeline.config import default_config
from pipeline.orchestrator import load_function
from pipeline.registry import RUN_VALUES, STAGE_NAMES, STAGES, RunPlaces, Stage, sections
from pipeline.registry import stage as stage_named
from tests.conftest import OFF_BY_DEFAULT, QUIET_ENV, REPO_DIR, finished_run, run_dirs_of


def resolved_names(stage: Stage, saved_models_dir: Path) -> set[str]:
    """The parameters a stage's `resolves` hook fills, found by calling it as the orchestrator does: with the
    default config, an empty saved-models folder and a stand-in for every earlier stage's artifact (the
    hooks read no more of one than the trained weights' hash)."""
    if stage.resolves is None:
        return set()
    stand_in = types.SimpleNamespace(weights_sha256="0" * 64)
    return set(stage.resolves(default_config(), dict.fromkeys(STAGE_NAMES, stand_in), RunPlaces(saved_models_dir)))


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_NAMES)
def test_each_stage_function_takes_exactly_what_the_registry_passes_by_name(stage, tmp_path):
    parameters = inspect.signature(load_function(stage)).parameters
    resolved = resolved_names(stage, tmp_path / "saved_models")
    named = {*stage.config, *stage.inputs, *stage.run_values, "out_dir"}
    assert not resolved & named, f"{stage.name}'s resolves hook fills {resolved & named}, which it is passed already"
    passed = named | resolved
    assert passed <= set(parameters), f"{stage.name} has no parameter for {passed - set(parameters)}"
    unfilled = {name for name, p in parameters.items() if p.default is inspect.Parameter.empty} - passed
    assert not unfilled, f"nothing passes {stage.name} its {unfilled}"
    assert set(stage.run_values) <= set(RUN_VALUES)
    assert all(STAGE_NAMES.index(name) < STAGE_NAMES.index(stage.name) for name in stage.inputs.values())


def test_every_key_a_stage_leaves_out_of_its_cache_key_is_one_of_its_sections_keys():
    for stage in STAGES:
        keys = {f"{section.name}.{item.name}" for section in stage.config.values()
                for item in dataclasses.fields(section)}
        assert set(stage.unkeyed) <= keys, f"{stage.name}'s unkeyed {set(stage.unkeyed) - keys} are no keys of it"
    assert stage_named("export").unkeyed == ("export.push_to",)


def test_every_section_belongs_to_a_stage_and_has_a_unique_name():
    names = [section.name for stage in STAGES for section in stage.config.values()]
    assert sorted(set(names)) == sorted(sections())
    assert len(STAGE_NAMES) == len(set(STAGE_NAMES))


NEW_MODULE = '''
"""A stage added for the test: one line naming the model's test accuracy."""

from dataclasses import dataclass
from pathlib import Path

from components.artifacts import Artifact, Metrics
from components.hashing import file_sha256
from components.config import AccuracyNoteConfig


@dataclass(frozen=True)
class AccuracyNote(Artifact):
    note_path: Path

    @property
    def fingerprint(self) -> str:
        return file_sha256(self.note_path)

    def facts(self) -> dict:
        return {"note": self.note_path.read_text().strip()}

    def summary(self) -> list[str]:
        return [f"note         {self.note_path.read_text().strip()}"]


def accuracy_note(config: AccuracyNoteConfig, metrics: Metrics, out_dir: Path) -> AccuracyNote:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "note.txt").write_text(f"{config.title} {metrics.test_accuracy:.4f}\\n")
    return AccuracyNote(out_dir / "note.txt")
'''
NEW_SECTION = '''

@dataclass(frozen=True)
class AccuracyNoteConfig(Section):
    name: ClassVar[str] = "note"
    title: str = setting("accuracy", "the word before the accuracy in note.txt")
'''
NEW_ENTRY = '''    Stage("note", "components.accuracy_note:accuracy_note", {"config": AccuracyNoteConfig},
          {"metrics": "evaluate"}),
)
STAGE_NAMES'''


@pytest.fixture(scope="module")
def repo_with_a_new_stage(tmp_path_factory):
    """A copy of the project with one stage added after export: a module, a config section, a registry entry."""
    repo = tmp_path_factory.mktemp("repo")
    for package in ("pipeline", "components"):
        shutil.copytree(REPO_DIR / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "components" / "accuracy_note.py").write_text(NEW_MODULE)
    with open(repo / "components" / "config.py", "a") as config_py:
        config_py.write(NEW_SECTION)
    registry = (repo / "pipeline" / "registry.py").read_text()
    registry = registry.replace("\n)\nSTAGE_NAMES", "\n" + NEW_ENTRY, 1)
    registry = registry.replace("from components.config import (",
                                "from components.config import (AccuracyNoteConfig, ")
    (repo / "pipeline" / "registry.py").write_text(registry)
    return repo


def run_in(repo, workdir, *args):
    runs_before = run_dirs_of(workdir)
    process = subprocess.run([sys.executable, "-m", "pipeline.run", "--workdir", str(workdir), *args], cwd=repo,
                             env={**QUIET_ENV, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    manifest = finished_run(workdir, process, runs_before).manifest
    return process, manifest, {stage["name"]: stage["status"] for stage in manifest["stages"]}


@pytest.mark.slow
def test_a_stage_added_in_one_module_one_entry_one_section_runs_caches_and_takes_overrides(
        repo_with_a_new_stage, tmp_path):
    repo, workdir = repo_with_a_new_stage, tmp_path / "work"
    args = ("--preset", "smoke", "train.epochs=1")
    process, manifest, statuses = run_in(repo, workdir, *args, "note.title=acc")
    assert list(statuses) == [*STAGE_NAMES, "note"] and statuses["note"] == "succeeded"
    note = f"acc {manifest['results']['test_accuracy']:.4f}"
    assert manifest["results"]["note"] == note and f"note         {note}" in process.stdout
    assert manifest["config"]["note"] == {"title": "acc"}

    _, _, again = run_in(repo, workdir, *args, "note.title=acc")
    off = dict.fromkeys(OFF_BY_DEFAULT, "skipped")  # tune and push are off by default
    assert again == {**{name: "cached" for name in [*STAGE_NAMES, "note"]}, **off}
    _, changed_manifest, changed = run_in(repo, workdir, *args, "note.title=Accuracy")
    # The report shows every setting, so it reruns too; every other stage is reused.
    assert changed == {**{name: "cached" for name in STAGE_NAMES}, **off, "report": "succeeded",
                       "note": "succeeded"}
    assert changed_manifest["results"]["note"].startswith("Accuracy ")
    _, _, only = run_in(repo, workdir, *args, "note.title=acc", "--only", "note")
    assert only["note"] == "succeeded"

    help_text = subprocess.run([sys.executable, "-m", "pipeline.run", "--help"], cwd=repo, capture_output=True,
                               text=True, env={**QUIET_ENV, "PYTHONPATH": str(repo)}, check=True).stdout
    assert "note.title='accuracy'" in help_text and "the word before the accuracy" in help_text
