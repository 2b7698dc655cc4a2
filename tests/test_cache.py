"""The stage cache: entries are never changed once committed; lookups find the newest that still holds what it held."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from components.artifacts import ExportedModel, Report
from components.saved_models import METADATA_FILE
from pipeline.cache import StageCache, read_entry

FINGERPRINT = "f" * 64


def _report(cache: StageCache, text: str) -> Report:
    """An execution's output in a fresh work folder, as a stage leaves it."""
    work_dir = cache.new_work_dir("report")
    (work_dir / "report.html").write_text(text)
    return cache.commit("report", FINGERPRINT, work_dir, Report(work_dir / "report.html"))


def test_each_commit_of_a_fingerprint_is_a_new_entry_and_earlier_ones_stay(tmp_path):
    cache = StageCache(tmp_path / "cache")
    first = _report(cache, "first")
    assert first.report_path == tmp_path / "cache" / "report" / FINGERPRINT / "report.html"
    first_inode = first.report_path.stat().st_ino
    second = _report(cache, "second")  # a forced rerun
    third = _report(cache, "third")
    assert [path.name for path in cache.entries("report", FINGERPRINT)] == [
        FINGERPRINT, f"{FINGERPRINT}-2", f"{FINGERPRINT}-3"]
    assert (second.report_path.parent.name, third.report_path.parent.name) == (f"{FINGERPRINT}-2", f"{FINGERPRINT}-3")
    assert first.report_path.read_text() == "first" and first.report_path.stat().st_ino == first_inode
    assert cache.lookup("report", FINGERPRINT) == third
    assert cache.entry_dir("report", FINGERPRINT) == third.report_path.parent
    assert read_entry(first.report_path.parent) == first  # what an earlier run's folder links to


def test_an_entry_that_no_longer_holds_what_it_held_is_passed_over_and_the_rerun_is_a_new_entry(tmp_path):
    cache = StageCache(tmp_path / "cache")
    version_dir = tmp_path / "saved_models" / "digits" / "1"

    def export(model: str) -> ExportedModel:
        work_dir = cache.new_work_dir("export")
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / METADATA_FILE).write_text(json.dumps({"model": model}))
        return cache.commit("export", FINGERPRINT, work_dir,
                            ExportedModel(version_dir, 1, version_dir / METADATA_FILE, 0.0))

    export("ours")
    shutil.rmtree(version_dir)
    assert cache.lookup("export", FINGERPRINT) is None  # the folder is gone
    version_dir.mkdir(parents=True)
    (version_dir / METADATA_FILE).write_text(json.dumps({"model": "another"}))
    assert cache.lookup("export", FINGERPRINT) is None  # its number taken by another model: no hit either
    again = export("ours again")
    assert cache.entry_dir("export", FINGERPRINT).name == f"{FINGERPRINT}-2"
    assert cache.lookup("export", FINGERPRINT) == again


def test_entries_are_numbered_by_value_not_by_name(tmp_path):
    cache = StageCache(tmp_path / "cache")
    for _ in range(11):
        _report(cache, "x")
    names = [path.name for path in cache.entries("report", FINGERPRINT)]
    assert names[-2:] == [f"{FINGERPRINT}-10", f"{FINGERPRINT}-11"]
    assert not (tmp_path / "cache" / "report" / "other").exists()
    assert Path(cache.entry_dir("report", FINGERPRINT)).name == f"{FINGERPRINT}-11"
