"""Benchmark: how many objects per second ingest lists and reads from a local S3 server (moto's).

    python bench/bucket_ingest.py                      # 20,000 Fashion-MNIST PNGs, 3 rounds
    python bench/bucket_ingest.py --images 2000 --repeats 1

The first `--images` training images of Fashion-MNIST (Debian's dataset-fashion-mnist) are written as
a `folder:` source (one sub-folder per class), uploaded to a fresh moto server on 127.0.0.1, and
ingested from `s3://` and from the local copy, alternating, each in a fresh subprocess. Reported: the
listing alone (what an unchanged source costs a cached run), and the whole ingest (list, fetch, decode,
write the shards), as objects per second; medians of the rounds. moto is a Python server on the same
two cores, so a real S3 endpoint on a network is a different measurement: this one says what the
reading code costs, not what S3 does.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from components.sources import read_idx_dir  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BUCKET = "bench"
INGEST = """
import sys, time
from pathlib import Path
from components.ingest import ingest
from components.config import DataConfig
from components.remote import is_url, list_objects
started = time.perf_counter()
url = sys.argv[1].partition(":")[2]
listing = (len(list_objects(url)), time.perf_counter() - started)[1] if is_url(url) else 0.0
started = time.perf_counter()
splits = ingest(DataConfig(source=sys.argv[1]), Path(sys.argv[2]))
print(listing, time.perf_counter() - started, sum(splits.num_examples.values()))
"""


def write_folder(num_images: int, folder_dir: Path) -> None:
    from PIL import Image

    data = read_idx_dir(FASHION_DIR)
    for index in range(num_images):
        path = folder_dir / str(data.train_labels[index]) / f"{index:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.train_images[index, ..., 0]).save(path)


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    return server, env


def upload(folder_dir: Path, env: dict[str, str]) -> float:
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    started = time.perf_counter()
    fs.put(str(folder_dir), f"{BUCKET}/fashion", recursive=True)
    return time.perf_counter() - started


def measure(source: str, work_dir: Path, env: dict[str, str]) -> tuple[float, float, int]:
    out_dir = Path(tempfile.mkdtemp(dir=work_dir))
    result = subprocess.run([sys.executable, "-c", INGEST, source, str(out_dir)], env={**os.environ, **env},
                            cwd=REPO_DIR, capture_output=True, text=True, check=True)
    listing, seconds, examples = result.stdout.split()[-3:]
    return float(listing), float(seconds), int(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="PNG files in the folder source")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each ingesting from S3 and locally")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(tmp)
        write_folder(args.images, work_dir / "fashion")
        server, env = start_moto()
        try:
            print(f"uploaded {args.images:,} objects in {upload(work_dir / 'fashion', env):.1f} s")
            rows = {"s3": [], "local": []}
            for _ in range(args.repeats):
                rows["s3"].append(measure(f"folder:s3://{BUCKET}/fashion", work_dir, env))
                rows["local"].append(measure(f"folder:{work_dir / 'fashion'}", work_dir, env))
        finally:
            server.terminate()
    for name, runs in rows.items():
        listing = statistics.median(run[0] for run in runs)
        seconds = statistics.median(run[1] for run in runs)
        listed = f"listing {args.images / listing:,.0f} objects/s ({listing:.2f} s), " if listing else ""
        print(f"{name:6s} {listed}ingest {args.images / seconds:,.0f} objects/s ({seconds:.1f} s; "
              f"rounds {', '.join(f'{run[1]:.1f}' for run in runs)})")


if __name__ == "__main__":
    main()
