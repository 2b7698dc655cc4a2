"""The lineage database: a run's results as recorded, files of older schemas, several processes writing at once."""

import json
import multiprocessing
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from multiprocessing.synchronize import Barrier
from pathlib import Path

from pipeline.lineage import Lineage, newest_run
from pipeline.runs import main as runs_main

# The runs table as the first lineage wrote it, before `error` and `results`: four results had columns.
FIRST_RUNS_TABLE = """CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, started REAL NOT NULL, ended REAL,
    host TEXT, pid INTEGER, command TEXT, config TEXT, reproduction TEXT,
    data_fingerprint TEXT, test_accuracy REAL, blessed INTEGER, exported_version TEXT)"""
STARTED = 1_700_000_000.0  # 2023-11-14, when the old runs below started (a second apart)


def test_a_run_keeps_its_results_as_recorded_whatever_their_keys(tmp_path):
    lineage = Lineage(tmp_path / "lineage.sqlite")
    results = {"test_accuracy": 0.5, "blessed": False, "version_dir": None, "a_new_stage": {"its_fact": [1, 2]}}
    lineage.start_run("run1", "python -m pipeline.run", {}, {})
    lineage.end_run("run1", "succeeded", None, results)
    assert lineage.run("run1")["results"] == results == newest_run(tmp_path / "lineage.sqlite")["results"]
    with closing(sqlite3.connect(tmp_path / "lineage.sqlite")) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(runs)")]
    assert columns == ["run_id", "status", "started", "ended", "host", "pid", "command", "config", "reproduction",
                       "error", "results"]  # none named after a stage's result


def write_first_schema_database(db_path: Path) -> None:
    """A lineage file of the first schema with runs succeeded and exported, not blessed, failed, and killed."""
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()  # its pid: a process that is gone
    rows = [("exported", "succeeded", "d" * 64, 0.75, 1, "/w/saved_models/digits/3"),
            ("refused", "succeeded", "e" * 64, 0.25, 0, None),
            ("failed", "failed", None, None, None, None),
            ("killed", "running", None, None, None, None)]
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute(FIRST_RUNS_TABLE)
        for index, (run_id, status, *results) in enumerate(rows):
            db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, 'python -m pipeline.run', '{}', '{}', ?, ?, ?, ?)",
                       (run_id, status, STARTED + index, None if status == "running" else STARTED + index + 0.5,
                        socket.gethostname(), finished.pid, *results))


def test_runs_of_the_first_schema_have_the_results_of_its_columns(tmp_path):
    db_path = tmp_path / "lineage.sqlite"
    write_first_schema_database(db_path)
    assert newest_run(db_path)["status"] == "killed"  # read only: before a Lineage adds `error` and `results`
    lineage = Lineage(db_path)
    lineage.start_run("new", "python -m pipeline.run", {}, {})
    lineage.end_run("new", "succeeded", None, {"test_accuracy": 0.5, "epochs_run": 3})
    assert {run["run_id"]: run["results"] for run in lineage.runs()} == {
        "new": {"test_accuracy": 0.5, "epochs_run": 3},
        "killed": {}, "failed": {},
        "refused": {"data_fingerprint": "e" * 64, "test_accuracy": 0.25, "blessed": False},
        "exported": {"data_fingerprint": "d" * 64, "test_accuracy": 0.75, "blessed": True,
                     "version_dir": "/w/saved_models/digits/3"}}
    assert not {"data_fingerprint", "test_accuracy", "blessed", "exported_version"} & set(lineage.run("exported"))


def test_results_recorded_whole_are_read_over_the_old_columns_beside_them(tmp_path):
    db_path = tmp_path / "lineage.sqlite"
    write_first_schema_database(db_path)
    Lineage(db_path)  # adds `results`: from then on until now the lineage wrote both
    recorded = {"data_fingerprint": "d" * 64, "test_accuracy": 0.75, "blessed": True, "blessing_reason": "blessed",
                "epochs_run": 3, "version_dir": "/w/saved_models/digits/3"}
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE runs SET results = ? WHERE run_id = 'exported'", (json.dumps(recorded),))
    assert Lineage(db_path).run("exported")["results"] == recorded


def test_the_runs_command_lists_shows_and_compares_first_schema_runs_by_their_columns(tmp_path, capsys):
    write_first_schema_database(tmp_path / "lineage.sqlite")
    assert runs_main(["--workdir", str(tmp_path)]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [cells[:2] + cells[4:] for cells in listed] == [  # no date and time: they are local
        ["killed", "killed", "-", "-", "-", "-", "-"], ["failed", "failed", "-", "-", "-", "-", "-"],
        ["refused", "succeeded", "-", "-", "0.2500", "no", "-"],
        ["exported", "succeeded", "-", "-", "0.7500", "yes", "digits/3"]]
    assert runs_main(["--workdir", str(tmp_path), "show", "exported"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert f"data       sha256 {'d' * 64}" in shown
    results = shown.index("results:")
    assert shown[results + 1:results + 4] == [
        "  test_accuracy  0.7500", "  blessed        yes", "  export         /w/saved_models/digits/3"]
    assert runs_main(["--workdir", str(tmp_path), "show", "failed"]) == 0
    assert "results    none recorded" in capsys.readouterr().out.splitlines()
    assert runs_main(["--workdir", str(tmp_path), "compare", "exported", "refused"]) == 0
    compared = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert compared[2].startswith("note: A and B were trained and tested on different data")
    assert {"test_accuracy 0.7500 0.2500 -0.5000", "blessed yes no", "export digits/3 -"} <= set(compared)


def _write_a_run(db_path: str, index: int, all_started: Barrier) -> None:
    all_started.wait(timeout=60)  # all processes open the new file together, however slowly they started
    lineage = Lineage(Path(db_path))
    lineage.start_run(f"run{index}", "python -m pipeline.run", {}, {})
    for step in range(10):
        lineage.record_execution(f"run{index}", "ingest", "f" * 64, "c" * 64, "succeeded", False, time.time(),
                                 [("ingest", f"/in/{index}", "a")], [("ingest", f"/out/{index}/{step}", "b")])
    lineage.end_run(f"run{index}", "succeeded", None, {"test_accuracy": 0.5})


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(5):
        db_path = tmp_path / f"lineage{trial}.sqlite"
        all_started = context.Barrier(4)
        processes = [context.Process(target=_write_a_run, args=(str(db_path), i, all_started)) for i in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [process.exitcode for process in processes] == [0] * 4
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'succeeded'").fetchone() == (4,)
            assert db.execute("SELECT COUNT(*) FROM executions").fetchone() == (40,)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
