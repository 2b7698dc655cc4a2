"""Lineage in one SQLite file: runs, stage executions and the artifacts they used and produced.

ML Metadata's model in four tables. Every write is one short transaction in WAL mode with a busy
timeout, so several orchestrator processes can share a workdir.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

from components.atomic import pid_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, started REAL NOT NULL, ended REAL,
    host TEXT, pid INTEGER, command TEXT, config TEXT, reproduction TEXT, error TEXT, results TEXT);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
    stage TEXT NOT NULL, fingerprint TEXT NOT NULL, code_fingerprint TEXT, status TEXT NOT NULL,
    cache_hit INTEGER NOT NULL DEFAULT 0, started REAL NOT NULL, ended REAL);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stage TEXT NOT NULL, path TEXT NOT NULL,
    fingerprint TEXT NOT NULL, UNIQUE (path, fingerprint));
CREATE TABLE IF NOT EXISTS events (
    execution_id INTEGER NOT NULL REFERENCES executions(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    type TEXT NOT NULL CHECK (type IN ('input', 'output')));
CREATE INDEX IF NOT EXISTS executions_by_run ON executions(run_id);
CREATE INDEX IF NOT EXISTS artifacts_by_path ON artifacts(path);
"""
# Columns added since the first schema; a database written before them gets them on opening.
ADDED_COLUMNS = {"runs": ("error TEXT", "results TEXT")}
# Columns into which the lineage once copied four results (column: result key, type). Databases written
# then still have them; they are read only for a run recorded before `results` existed, which has nothing else.
LEGACY_RESULT_COLUMNS = {"data_fingerprint": ("data_fingerprint", str), "test_accuracy": ("test_accuracy", float),
                         "blessed": ("blessed", bool), "exported_version": ("version_dir", str)}


class Lineage:
    """The lineage database of one workdir."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        for attempt in range(100):
            try:
                with closing(sqlite3.connect(self.db_path, timeout=60)) as db:
                    # Persistent in the file. Switching modes can fail at once with "database is locked"
                    # (no busy wait) while another process opens the file for the first time: retry.
                    db.execute("PRAGMA journal_mode=WAL")
                    with db:
                        db.executescript(SCHEMA)
                        _add_missing_columns(db)
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 99:
                    raise
                time.sleep(0.05)

    def start_run(self, run_id: str, command: str, config: dict, reproduction: dict) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO runs (run_id, status, started, host, pid, command, config, reproduction) "
                       "VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
                       (run_id, time.time(), socket.gethostname(), os.getpid(), command,
                        json.dumps(config), json.dumps(reproduction)))

    def end_run(self, run_id: str, status: str, error: str | None, results: dict[str, Any]) -> None:
        """Close a run with its status, its error (None on success) and what its artifacts reported.

        The results are kept as given (JSON): their keys are the artifacts' (`facts()`), not the lineage's.
        """
        with self._transaction() as db:
            db.execute("UPDATE runs SET status = ?, ended = ?, error = ?, results = ? WHERE run_id = ?",
                       (status, time.time(), error, json.dumps(results), run_id))

    def record_execution(self, run_id: str, stage: str, fingerprint: str, code_fingerprint: str, status: str,
                         cache_hit: bool, started: float, inputs: list[tuple[str, str, str]],
                         outputs: list[tuple[str, str, str]]) -> None:
        """One stage execution with its input and output artifacts as (stage, path, fingerprint)."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO executions (run_id, stage, fingerprint, code_fingerprint, status, cache_hit, started, "
                "ended) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, stage, fingerprint, code_fingerprint, status, cache_hit, started, time.time()))
            for event_type, artifacts in (("input", inputs), ("output", outputs)):
                for artifact in artifacts:
                    db.execute("INSERT OR IGNORE INTO artifacts (stage, path, fingerprint) VALUES (?, ?, ?)", artifact)
                    (artifact_id,) = db.execute("SELECT id FROM artifacts WHERE path = ? AND fingerprint = ?",
                                                artifact[1:]).fetchone()
                    db.execute("INSERT INTO events VALUES (?, ?, ?)", (cursor.lastrowid, artifact_id, event_type))

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, as `_run_from_row` gives it."""
        return [_run_from_row(row) for row in self._query("SELECT * FROM runs ORDER BY started DESC")]

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = [row for row in self.runs() if row["run_id"] == run_id]
        if not rows:
            return None
        run = rows[0]
        run["executions"] = self._query("SELECT * FROM executions WHERE run_id = ? ORDER BY id", (run_id,))
        for execution in run["executions"]:
            execution["artifacts"] = self._query(
                "SELECT events.type, artifacts.stage, artifacts.path, artifacts.fingerprint FROM events "
                "JOIN artifacts ON artifacts.id = events.artifact_id WHERE events.execution_id = ?",
                (execution["id"],))
        return run

    def producer_of(self, path: str, fingerprint: str | None = None) -> str | None:
        """The run whose (non-cached) execution first produced the artifact at `path` (with `fingerprint`).

        A path can be reused (an export folder removed, and the number taken again): the fingerprint
        tells which of the artifacts that had it is there now.
        """
        rows = self._query(
            "SELECT executions.run_id FROM artifacts JOIN events ON events.artifact_id = artifacts.id "
            "JOIN executions ON executions.id = events.execution_id WHERE artifacts.path = ? "
            "AND (? IS NULL OR artifacts.fingerprint = ?) AND events.type = 'output' "
            "ORDER BY executions.cache_hit, executions.id LIMIT 1", (path, fingerprint, fingerprint))
        return rows[0]["run_id"] if rows else None

    def _query(self, sql: str, parameters: tuple = ()) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql, parameters)]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as db, db:
            yield db

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=60)



def newest_run(db_path: Path) -> dict[str, Any] | None:
    """The newest run of a lineage database, read without writing to it (None if it cannot be read).

    For a process that must not write the workdir's lineage, such as a worker of a multi-worker run;
    the run is as `Lineage.runs` gives it.
    """
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs ORDER BY started DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return _run_from_row(dict(row)) if row else None


def _run_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of `runs` as its readers take it.

    `results` parsed (a dict, empty if none were recorded), the LEGACY_RESULT_COLUMNS left out, and `status`
    `killed` for a run marked running whose process on this host is gone.
    """
    run = {key: value for key, value in row.items() if key not in LEGACY_RESULT_COLUMNS}
    if row.get("results") is not None:  # a database only read (`newest_run`) may predate the column
        run["results"] = json.loads(row["results"])
    else:  # still running, killed, or recorded before `results` existed (then the old columns say more)
        run["results"] = {key: kind(row[column]) for column, (key, kind) in LEGACY_RESULT_COLUMNS.items()
                          if row.get(column) is not None}
    if run["status"] == "running" and run["host"] == socket.gethostname() and not pid_alive(run["pid"]):
        run["status"] = "killed"
    return run


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        existing = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in existing:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
