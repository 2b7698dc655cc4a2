"""Command line over the lineage database: which runs there were, and what produced what.

    python -m pipeline.runs [--workdir DIR]                                 # every run, newest first
    python -m pipeline.runs [--workdir DIR] show RUN_ID                     # one run's lineage
    python -m pipeline.runs [--workdir DIR] show saved_models/NAME/VERSION  # who produced an export
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from components.artifacts import METADATA_FILE, file_sha256
from components.errors import UserError
from pipeline.lineage import Lineage


def list_runs(lineage: Lineage) -> str:
    """One line per run: id, status, data source, model, test accuracy, blessing, export, why it failed."""
    lines = [f"{'run_id':<24}{'status':<11}{'started':<21}{'source':<26}{'model':<16}{'test_acc':>9}  "
             f"{'blessed':<8}{'exported':<10}reason"]
    for run in lineage.runs():
        config = json.loads(run["config"] or "{}")
        accuracy = f"{run['test_accuracy']:.4f}" if run["test_accuracy"] is not None else "-"
        blessed = {None: "-", 0: "no", 1: "yes"}[run["blessed"]]
        exported = "/".join(Path(run["exported_version"]).parts[-2:]) if run["exported_version"] else "-"
        lines.append(f"{run['run_id']:<24}{run['status']:<11}{_time(run['started']):<21}"
                     f"{_shorten(config.get('data', {}).get('source', '-'), 25):<26}"
                     f"{_shorten(config.get('export', {}).get('model_name', '-'), 15):<16}{accuracy:>9}  "
                     f"{blessed:<8}{exported:<10}{run.get('error') or ''}")
    return "\n".join(lines)


def show(lineage: Lineage, target: str, workdir: Path) -> str:
    """The lineage of a run, or of the run that produced an exported version folder.

    A folder is looked for as given (relative to the current folder, or absolute), then inside `workdir`.
    """
    run_id, header = target, []
    folder = next((path for path in (Path(target), workdir / target) if path.is_dir()), None)
    if folder is not None:
        metadata = folder / METADATA_FILE  # an export: named by its content too, as its folder may be reused
        run_id = lineage.producer_of(str(folder.resolve()), file_sha256(metadata) if metadata.is_file() else None)
        if run_id is None:
            raise UserError(f"{target}: no run in {lineage.db_path} produced it; pass the --workdir its run used")
        header = [f"{target} was produced by run {run_id}"]
    run = lineage.run(run_id)
    if run is None:
        raise UserError(f"no run {run_id!r} in {lineage.db_path}; `python -m pipeline.runs` lists them")
    return "\n".join(header + _describe(run))


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _describe(run: dict[str, Any]) -> list[str]:
    reproduction = json.loads(run["reproduction"] or "{}")
    git = reproduction.get("git") or {}
    lines = [
        f"run {run['run_id']}: {run['status']}, started {_time(run['started'])}"
        + (f"\nerror      {run['error']}" if run.get("error") else ""),
        f"command    {run['command']}",
        f"data       sha256 {run['data_fingerprint'] or '-'}",
        f"code       git {git.get('commit', '-')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        "packages   " + ", ".join(f"{k} {v}" for k, v in reproduction.get("packages", {}).items() if v),
        "config     " + json.dumps(json.loads(run["config"]), separators=(",", ":")),
        "stages:",
    ]
    for execution in run["executions"]:
        lines.append(f"  {execution['stage']:<11}{execution['status']:<10}  fingerprint "
                     f"{execution['fingerprint'][:16]}  code {execution['code_fingerprint'][:16]}")
        for artifact in execution["artifacts"]:
            arrow = "<-" if artifact["type"] == "input" else "->"
            lines.append(f"      {arrow} {artifact['stage']:<11}{artifact['path']}  {artifact['fingerprint'][:16]}")
    return lines


def _time(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.runs", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="the runner's workdir")
    parser.add_argument("command", nargs="?", choices=["list", "show"], default="list")
    parser.add_argument("target", nargs="?", help="with show: a run id or an exported version folder")
    args = parser.parse_args(argv)
    db_path = args.workdir / "lineage.sqlite"
    try:
        if not db_path.exists():
            raise UserError(f"no lineage database at {db_path}; run `python -m pipeline.run` there first")
        if args.command == "show" and not args.target:
            raise UserError("show needs a run id or a saved_models/<name>/<version> folder")
        lineage = Lineage(db_path)
        print(show(lineage, args.target, args.workdir) if args.command == "show" else list_runs(lineage))
    except sqlite3.DatabaseError as error:
        print(f"error: {db_path} cannot be read as a lineage database ({error}); restore it or move it aside",
              file=sys.stderr)
        return 2
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
