"""Benchmark: a fully cached `python -m pipeline.run` against a bare `python -c "import tensorflow"`.

    python bench/cached_rerun.py               # 5 of each, alternating; medians and their ratio
    python bench/cached_rerun.py --repeats 9

One uncached run of the default config (digits) fills a temporary workdir first; each timed rerun
must then find all six stages cached (checked in its manifest). Both commands start a fresh
interpreter with the same environment, so Python's own start-up is in both figures, and they
alternate, so a load that comes and goes on the machine falls on both. Issue 8, goal 6: the cached
rerun's median at most 0.6x the import's, measured in the same run of this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
GOAL_RATIO = 0.6  # cached rerun / import tensorflow, at most


def seconds_to_run(command: list[str]) -> float:
    """Wall seconds of `command` in a fresh process, from the repository folder; it must succeed."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr}")
    return seconds


def stage_statuses(workdir: Path) -> dict[str, str]:
    """Each stage's status in the newest run under `workdir`."""
    manifest = json.loads(sorted((workdir / "runs").glob("*/manifest.json"))[-1].read_text())
    return {stage["name"]: stage["status"] for stage in manifest["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timings of each command, alternating")
    args = parser.parse_args()
    import_tensorflow = [sys.executable, "-c", "import tensorflow"]
    with tempfile.TemporaryDirectory() as workdir:
        run = [sys.executable, "-m", "pipeline.run", "--workdir", workdir]
        print(f"uncached run (default config, digits): {seconds_to_run(run):.1f} s")
        imports, reruns = [], []
        print(f"{'repeat':<8}{'import tensorflow':>20}{'cached rerun':>16}")
        for repeat in range(1, args.repeats + 1):
            imports.append(seconds_to_run(import_tensorflow))
            reruns.append(seconds_to_run(run))
            if set(stage_statuses(Path(workdir)).values()) != {"cached"}:
                sys.exit(f"rerun {repeat} was not fully cached: {stage_statuses(Path(workdir))}")
            print(f"{repeat:<8}{imports[-1]:>18.2f} s{reruns[-1]:>14.2f} s")
    import_median, rerun_median = statistics.median(imports), statistics.median(reruns)
    ratio = rerun_median / import_median
    print(f"{'median':<8}{import_median:>18.2f} s{rerun_median:>14.2f} s")
    print(f"cached rerun / import tensorflow = {ratio:.2f} (goal <= {GOAL_RATIO}: "
          f"{'met' if ratio <= GOAL_RATIO else 'not met'})")


if __name__ == "__main__":
    main()
