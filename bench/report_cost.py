"""What seeing the results costs a run: the report stage, and the confusion matrix after every epoch.

    python bench/report_cost.py [--repeats 3] [--preset default] [--workdir DIR]
    python bench/report_cost.py --reuse WORKDIR [--repeats 3]

Runs the pipeline `--repeats` times from scratch through the CLI (each in a fresh workdir) and reads
each stage's seconds from the manifest: the report stage against the whole run. Then, on the last
run's confusion matrix, times `ConfusionImages.on_epoch_end` (the Pillow heatmap and its event; the
counts come from Keras's own validation pass) against a mean epoch of that run (train seconds / epochs). Medians, with
every repeat in brackets.

`--reuse WORKDIR` trains nothing: it calls the report stage's function `--repeats` times on the
newest run's artifacts in WORKDIR (e.g. after a `--preset fashion` run), in this process (the first
call pays the imports), and times the confusion matrix on that run's model.
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


def run_once(preset: str, workdir: Path) -> dict:
    """One pipeline run from scratch; its manifest plus the wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.run", "--workdir", str(workdir), "--preset", preset],
                   cwd=REPO_DIR, check=True, capture_output=True)
    wall = time.perf_counter() - started
    run_dir = max((workdir / "runs").iterdir(), key=lambda path: (path / "config.json").stat().st_mtime_ns)
    return {**json.loads((run_dir / "manifest.json").read_text()), "wall": wall, "run_dir": str(run_dir)}


def confusion_seconds(run_dir: Path, repeats: int = 5) -> float:
    """Median seconds of one `ConfusionImages.on_epoch_end` (the Pillow heatmap and its event) on the run's
    validation confusion matrix; the counts themselves come from the training loop's validation pass."""
    import numpy as np

    from components.tensorboard_log import EventLog
    from components.train_tensorboard import ConfusionImages

    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    class_names = tuple(metrics["per_class"])
    matrix = np.array(metrics["confusion_matrix"], np.int64)
    with tempfile.TemporaryDirectory() as log_dir, EventLog(Path(log_dir)) as event_log:
        callback = ConfusionImages(event_log, lambda: matrix, class_names)
        times = []
        for epoch in range(repeats + 1):
            start = time.perf_counter()
            callback.on_epoch_end(epoch)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def newest_run_dir(workdir: Path) -> Path:
    """The newest run that succeeded and exported its model."""
    finished = [path for path in (workdir / "runs").iterdir() if (path / "manifest.json").is_file()
                and "export" in json.loads((path / "manifest.json").read_text())["artifacts"]]
    return max(finished, key=lambda path: (path / "config.json").stat().st_mtime_ns)


def report_seconds(run_dir: Path, repeats: int) -> list[float]:
    """Seconds of each call of the report stage's function on a finished run's artifacts."""
    from components.config import ReportConfig
    from components.report import report
    from pipeline.cache import read_entry

    manifest = json.loads((run_dir / "manifest.json").read_text())
    artifacts = {record["name"]: read_entry((run_dir / record["name"]).resolve()) for record in manifest["stages"]}
    times = []
    for _ in range(repeats + 1):
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.perf_counter()
            report(ReportConfig(), artifacts["ingest"], artifacts["validate"], artifacts["train"],
                   artifacts["evaluate"], artifacts["export"], {}, "bench", Path(out_dir) / "report",
                   Path(out_dir) / "tensorboard", "bench")
            times.append(time.perf_counter() - start)
    return times


def reuse(workdir: Path, repeats: int) -> None:
    run_dir = newest_run_dir(workdir)
    first, *times = report_seconds(run_dir, repeats)
    results = json.loads((run_dir / "manifest.json").read_text())["results"]
    epoch = results["train_seconds"] / results["epochs_run"]
    confusion = confusion_seconds(run_dir)
    print(f"{run_dir}: report stage {statistics.median(times):.2f} s {[round(t, 2) for t in times]} (first call, "
          f"with imports: {first:.2f} s); confusion matrix after an epoch {confusion * 1e3:.1f} ms against a "
          f"mean epoch of {epoch:.2f} s ({confusion / epoch:.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--reuse", type=Path, default=None, help="a workdir with a finished run: time the "
                        "report stage on its artifacts only")
    args = parser.parse_args()
    if args.reuse:
        reuse(args.reuse, args.repeats)
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="report_cost-"))
    manifests = [run_once(args.preset, root / f"run{index}") for index in range(args.repeats)]
    report = [next(s["seconds"] for s in m["stages"] if s["name"] == "report") for m in manifests]
    total = [sum(s["seconds"] for s in m["stages"]) for m in manifests]
    walls = [m["wall"] for m in manifests]
    print(f"{args.preset}: report stage {statistics.median(report):.2f} s {report}; stages total "
          f"{statistics.median(total):.1f} s {total}; wall {statistics.median(walls):.1f} s "
          f"{[round(w, 1) for w in walls]}; report share {statistics.median(report) / statistics.median(walls):.1%}")
    last = manifests[-1]
    epoch = last["results"]["train_seconds"] / last["results"]["epochs_run"]
    confusion = confusion_seconds(Path(last["run_dir"]))
    print(f"{args.preset}: confusion matrix after an epoch {confusion * 1e3:.1f} ms against a mean epoch of "
          f"{epoch:.2f} s ({confusion / epoch:.1%})")


if __name__ == "__main__":
    main()
