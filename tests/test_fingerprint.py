"""Fingerprints of code and outside state, and the clean-up of folders abandoned by killed runs."""

import os
import subprocess
import sys

from components.atomic import new_hidden_dir, remove_abandoned
from pipeline.fingerprint import code_fingerprint, project_imports, source_state


def test_stage_code_covers_the_project_modules_it_imports():
    assert project_imports("components.train") >= {"components.train", "components.model", "components.train_plan",
                                                   "components.devices", "components.artifacts"}  # devices: indirectly
    assert "pipeline.config" not in project_imports("components.train")  # its part is the config section
    assert "components.export" not in project_imports("components.train")
    assert code_fingerprint("components.train") != code_fingerprint("components.evaluate")


def test_source_state_shows_every_edit_of_the_data(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data / "a").mkdir(parents=True)
    (elsewhere / "b").mkdir(parents=True)
    (data / "a" / "1.png").write_bytes(b"12")
    (elsewhere / "b" / "2.png").write_bytes(b"34")
    (data / "b").symlink_to(elsewhere / "b")
    (data / "loop").symlink_to(data)  # a link back up the tree is read once
    states = [source_state(f"folder:{data}")]
    assert states[0] == source_state(f"folder:{data}") and "b/2.png" in [entry[0] for entry in states[0]]

    def changed(edit) -> bool:
        edit()
        states.append(source_state(f"folder:{data}"))
        return states[-1] != states[-2]

    assert changed(lambda: os.utime(data / "a" / "1.png", ns=(1, 1)))  # touched
    old = os.stat(data / "a" / "1.png")
    assert changed(lambda: ((data / "a" / "1.png").write_bytes(b"21"),  # same size and time, new bytes
                            os.utime(data / "a" / "1.png", ns=(old.st_atime_ns, old.st_mtime_ns))))
    assert changed(lambda: (elsewhere / "b" / "2.png").write_bytes(b"345"))  # behind a link
    assert changed(lambda: (data / "c").mkdir())  # a new, empty class folder
    assert source_state("digits") is None


def test_only_folders_of_dead_processes_are_removed(tmp_path):
    mine = new_hidden_dir(tmp_path, "tmp")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".tmp-{int(dead.stdout)}-xyz"
    abandoned.mkdir()
    assert remove_abandoned(tmp_path, "tmp") == [abandoned]
    assert mine.exists() and mine.name.startswith(f".tmp-{os.getpid()}-")
