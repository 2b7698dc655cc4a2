"""Fingerprints of code and outside state, and the clean-up of folders abandoned by killed runs."""

import os
import subprocess
import sys

from components.atomic import new_hidden_dir, remove_abandoned
from pipeline.fingerprint import code_fingerprint, project_imports, source_state


def test_stage_code_covers_the_project_modules_it_imports():
    assert project_imports("components.train") >= {"components.train", "components.model", "components.devices",
                                                   "components.artifacts"}
    assert "pipeline.config" not in project_imports("components.train")  # its part is the config section
    assert "components.export" not in project_imports("components.train")
    assert code_fingerprint("components.train") != code_fingerprint("components.evaluate")


def test_source_state_follows_size_and_mtime_of_every_file(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"12")
    before = source_state(f"idx:{tmp_path}")
    assert before == source_state(f"idx:{tmp_path}")
    os.utime(tmp_path / "a.gz", ns=(1, 1))
    assert source_state(f"idx:{tmp_path}") != before
    assert source_state("digits") is None


def test_only_folders_of_dead_processes_are_removed(tmp_path):
    mine = new_hidden_dir(tmp_path, "tmp")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".tmp-{int(dead.stdout)}-xyz"
    abandoned.mkdir()
    assert remove_abandoned(tmp_path, "tmp") == [abandoned]
    assert mine.exists() and mine.name.startswith(f".tmp-{os.getpid()}-")
