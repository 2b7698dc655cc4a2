"""The lineage database under several processes that open and write it at the same moment."""

import multiprocessing
import sqlite3
import time
from pathlib import Path

from pipeline.lineage import Lineage


def _write_a_run(db_path: str, index: int, start_at: float) -> None:
    while time.time() < start_at:  # all processes open the new file together
        pass
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
        start_at = time.time() + 0.3
        processes = [context.Process(target=_write_a_run, args=(str(db_path), i, start_at)) for i in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [process.exitcode for process in processes] == [0] * 4
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'succeeded'").fetchone() == (4,)
            assert db.execute("SELECT COUNT(*) FROM executions").fetchone() == (40,)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
