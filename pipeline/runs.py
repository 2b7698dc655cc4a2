"""Command line over the lineage database: which runs there were, and what produced what.

    python -m pipeline.runs [--workdir DIR]                                 # every run, newest first
    python -m pipeline.runs [--workdir DIR] show RUN_ID                     # one run's lineage
    python -m pipeline.runs [--workdir DIR] show saved_models/NAME/VERSION  # who produced an export
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.lineage import Lineage


def list_runs(lineage: Lineage) -> str:
    """One line per run: id, status, test accuracy, blessing, exported version."""
    lines = [f"{'run_id':<24}{'status':<11}{'started':<20}{'test_acc':>9}  {'blessed':<8}exported"]
    for run in lineage.runs():
        accuracy = f"{run['test_accuracy']:.4f}" if run["test_accuracy"] is not None else "-"
        blessed = {None: "-", 0: "no", 1: "yes"}[run["blessed"]]
        lines.append(f"{run['run_id']:<24}{run['status']:<11}{_time(run['started']):<20}{accuracy:>9}  "
                     f"{blessed:<8}{run['exported_version'] or '-'}")
    return "\n".join(lines)


def show(lineage: Lineage, target: str) -> str:
    """The lineage of a run, or of the run that produced an exported version folder."""
    run_id, header = target, []
    if Path(target).exists():
        path = str(Path(target).resolve())
        run_id = lineage.producer_of(path)
        if run_id is None:
            raise UserError(f"{target}: no run in {lineage.db_path} produced it; pass --workdir of the run")
        header = [f"{target} was produced by run {run_id}"]
    run = lineage.run(run_id)
    if run is None:
        raise UserError(f"no run {run_id!r} in {lineage.db_path}; `python -m pipeline.runs` lists them")
    return "\n".join(header + _describe(run))


def _describe(run: dict[str, Any]) -> list[str]:
    reproduction = json.loads(run["reproduction"] or "{}")
    git = reproduction.get("git") or {}
    lines = [
        f"run {run['run_id']}: {run['status']}, started {_time(run['started'])}",
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
        print(show(lineage, args.target) if args.command == "show" else list_runs(lineage))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
