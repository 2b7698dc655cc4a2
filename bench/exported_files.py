"""Benchmark: every file of exported versions side by side: size, accuracy, batch-1 and batch-256 speed.

    python bench/exported_files.py saved_models/digits/1 saved_models/fashion_mnist/1 --repeats 3

For docs/inference-speed.md's "Which file to load". The versions must be exported with `export.int8=true`
for their int8 files to be in the table. Accuracy and agreement are export's (metadata.json: the test split,
scored when the version was exported). Speed: each file is timed in a fresh interpreter, through
`load_exported` as predict and serve load it (ONNX Runtime and LiteRT on one thread for batch 1, a thread
per core for batch 256; `components/speed.py`: 200 one-image calls, the median of 5 batch-256 calls);
the files take turns, `--repeats` rounds, and the table gives each figure's median over the rounds. Pixels
are the random 0..255 values of a fixed seed; the figures do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from components.model_files import FLOAT_TWIN, MODEL_FILES  # noqa: E402

QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_DIR)}
TIME_ONE = """
import dataclasses, json, sys
import numpy as np
from components.loaded_model import load_exported
from components.speed import measure_speed
version_dir, backend = sys.argv[1], sys.argv[2]
single, batched = (load_exported(version_dir, backend, batch_hint=hint) for hint in (1, 256))
shape = single.input.shape
pixels = np.random.default_rng(0).integers(0, 256, (256, *shape)).astype(np.float32)
print(json.dumps(dataclasses.asdict(measure_speed(single.probabilities, batched.probabilities, pixels))))
"""


def time_file(version_dir: Path, backend: str) -> dict[str, float]:
    """One round for one file, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", TIME_ONE, str(version_dir), backend], env=QUIET_ENV,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def table(version_dir: Path, repeats: int) -> str:
    """The version's files, measured, as a Markdown table."""
    files = json.loads((version_dir / "metadata.json").read_text())["files"]
    backends = [each.backend for each in MODEL_FILES if each.file_name in files]
    rounds = {backend: [] for backend in backends}
    for _ in range(repeats):
        for backend in backends:
            rounds[backend].append(time_file(version_dir, backend))
    speed = {backend: {key: statistics.median(each[key] for each in measured) for key in measured[0]}
             for backend, measured in rounds.items()}
    by_backend = {record["backend"]: record for record in files.values()}
    lines = [f"`{version_dir}` ({repeats} rounds, medians)", "",
             "| file | runtime | size | vs float | test accuracy | agreement | 1 image p50 / p99 | 256 images "
             "| vs float |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for backend in backends:
        record, twin = by_backend[backend], FLOAT_TWIN.get(backend)
        size_ratio = f"{record['bytes'] / by_backend[twin]['bytes']:.2f}×" if twin else ""
        throughput = speed[backend]["batch_256_images_per_second"]
        speed_ratio = f"{throughput / speed[twin]['batch_256_images_per_second']:.2f}×" if twin else ""
        lines.append(f"| `{record['file_name']}` | {record['runtime']} | {record['bytes'] / 1024:,.0f} KiB | "
                     f"{size_ratio} | {record['test_accuracy']:.4f} | {100 * record['agreement']:.2f} % | "
                     f"{speed[backend]['batch_1_p50_ms']:.3f} / {speed[backend]['batch_1_p99_ms']:.3f} ms | "
                     f"{throughput:,.0f} images/s | {speed_ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dirs", type=Path, nargs="+", metavar="VERSION_DIR")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every file (default: 3)")
    args = parser.parse_args()
    for version_dir in args.version_dirs:
        print(table(version_dir, args.repeats), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
