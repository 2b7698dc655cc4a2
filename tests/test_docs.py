"""The README and docs/*.md are code: every command in them runs as written, here (STYLE.md, rule 17).

The convention the pages follow, and this test checks:

- A ```bash block holds commands that run as written, a ```python block a program that runs as
  written. Each is run by the test that `RUN_BY` names for its page and section (the nearest heading
  above it), or listed in `NOT_RUN` with the reason it is not run here (it installs packages, needs
  Docker or the network, is the test suite itself, or is a measurement that takes minutes). A command
  that is neither fails `test_every_documented_command_is_run_or_listed`, so the docs cannot drift
  from the code unnoticed.
- A ```text block holds usage synopses with placeholders (UPPERCASE words such as `DIR`, `FILE` and
  `RUN_ID`, `<...>`, `[optional]`, `a|b`), diagrams and file contents; a ```toml block a config file.
  A line of a text block that begins like a command must hold a placeholder, so a real command cannot
  hide there, and every fence names its language.
- Inline code that begins like a command (`python ...`, `pip ...`, `pytest`, `curl ...`) is one too:
  with a placeholder it is a synopsis; otherwise it is a command of a block that a test runs, or it
  is listed in `NOT_RUN`. A `bench/*.py` script named anywhere exists and takes the flags given to it.
- Relative links and images lead to files, and `#anchors` to headings, that exist.

How commands run: in a temporary folder that stands for the repository's folder, where the README's
commands run. `bench/` and `examples/` are linked into it, so relative paths such as
`examples/networks.py` resolve, while everything a command writes (`runs/`, `saved_models/`,
`sample_images/`, `my.toml`) lands in the temporary folder; PYTHONPATH points at the repository. A bash
block runs in one `bash -c`, its commands in order under `set -e`; a python block runs with `python -c`.
A test runs the blocks of its sections in page order in one folder, after what the pages assume has
run: the README's and docs/using-the-model.md's examples follow `python -m pipeline.run`, and the smoke
run of docs/running.md ("Presets") stands for it (seconds instead of 15 s; it exports
`saved_models/digits/1` too). The tests that need that run are in the slow suite; the default suite
checks the pages' conventions. A server (`python -m pipeline.serve`, `tensorboard`) is started in
the background with `--port 0` appended; the commands that follow have `localhost:8501` (`localhost:6006`)
replaced by the address it chose, and it is stopped when the section is done.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import OFF_BY_DEFAULT, REPO_DIR

PAGES = ("README.md", *sorted(f"docs/{path.name}" for path in (REPO_DIR / "docs").glob("*.md")))
LANGUAGES = {"bash": "commands", "python": "a program", "text": "synopses, diagrams, files", "toml": "a config file",
             "yaml": "a manifest on paper (Kubernetes)"}
LINKED_INTO_WORKDIR = ("bench", "examples")  # what commands name by a path relative to the repository

# Which test (or fixture) runs the blocks of which section: (page, heading) -> its name. It runs every
# bash and python block of the section, in order, except the commands listed in NOT_RUN.
RUN_BY = {
    ("docs/running.md", "Presets"): "docs_workdir",
    ("docs/using-the-model.md", "Using the model"): "sample_images",
    ("README.md", "Predict and serve"): "test_readme_predict_and_serve",
    ("docs/using-the-model.md", "From the command line"): "test_predict_and_the_python_api",
    ("docs/using-the-model.md", "From Python"): "test_predict_and_the_python_api",
    ("docs/using-the-model.md", "Serve it over HTTP"): "test_serve_and_its_clients",
    ("docs/using-the-model.md", "With ONNX Runtime"): "test_onnx_runtime_examples",
    ("docs/inference-speed.md", "ONNX Runtime"): "test_onnx_runtime_examples",
    ("docs/data.md", "MNIST (or any image dataset) through TFDS"): "test_tfds_download_fails_fast_offline",
    ("docs/layout.md", "Adding a stage"): "repo_with_a_new_stage",
    # slow: each trains at least one model of the default size, or starts TensorFlow
    ("docs/running.md", "Running it"): "test_running_it",
    ("docs/data.md", "Image size"): "test_digits_at_another_image_size",
    ("docs/pretrained.md", "Warm start from an export"): "test_warm_start",
    ("docs/pretrained.md", "Pretrained backbones"): "test_a_pretrained_backbone",
    ("docs/tuning.md", "Tuning within a budget"): "test_tuning",
    ("docs/caching.md", "Choosing stages"): "test_caching_lineage_and_config_files",
    ("docs/caching.md", "Lineage"): "test_caching_lineage_and_config_files",
    ("README.md", "A config file"): "test_caching_lineage_and_config_files",
    ("docs/running.md", "A config file"): "test_caching_lineage_and_config_files",
    ("README.md", "Your own network"): "test_your_own_network",
    ("docs/your-network.md", "Your own network"): "test_your_own_network",
    ("docs/scaling.md", "Training on several workers"): "test_two_workers",
    ("docs/report.md", "TensorBoard"): "test_tensorboard",
    ("docs/using-the-model.md", "With TensorFlow"): "test_tensorflow_examples",
    ("docs/using-the-model.md", "With LiteRT"): "test_litert_example",
    ("docs/using-the-model.md", "int8 files"): "test_int8_files",
    ("docs/inference-speed.md", "The SavedModel from TensorFlow"): "test_tensorflow_examples",
    ("docs/buckets.md", "Data from a bucket"): "test_buckets",
    ("docs/buckets.md", "Publishing a model to a bucket"): "test_buckets",
    ("docs/buckets.md", "Using a model from a bucket"): "test_buckets",
}

_CI = ".ci/run runs it on a clean machine"
_MEASUREMENT = "a measurement that takes minutes on 2 cores; its figures are on the page"
# Documented commands no test here runs (as written, comments left out), and why.
NOT_RUN = {
    'pip install -e ".[dev]" && python -m pipeline.run': f"installs the project; {_CI} (pip install, then "
                                                          "python -m pipeline.run in a fresh folder)",
    'pip install -e ".[gpu,dev]"': "installs TensorFlow's CUDA libraries, for a machine with a GPU",
    'pip install -e ".[cloud]"': "installs s3fs and gcsfs; .ci/run installs s3fs with the dev extra, and "
                                 "test_buckets runs the page's commands against a local S3 server",
    "pytest": f"the test suite itself; {_CI}",
    "python -m pipeline.run tune.max_seconds=600": "a 10-minute search; the page's smoke-preset search (30 s) runs "
                                                   "in test_tuning",
    "pytest -m slow -n 0": f"the slow tests of this suite; {_CI}",
    "pytest -n 0": "the default suite in one process, the measurement the page compares with",
    "pytest tests/test_docs.py": "this test itself",
    'pip install -e ".[dev]"': f"installs the project; {_CI}",
    "apt-get install dataset-fashion-mnist": f"installs a Debian package (root, network); {_CI}",
    "apt-get install dataset-fashion-mnist chromium": f"installs Debian packages (root, network); {_CI}",
    'docker run --rm -p 8501:8501 -v "$PWD/saved_models/digits:/models/digits:ro" -e MODEL_NAME=digits '
    "tensorflow/serving": "needs Docker and TF Serving's image; neither is on this machine (the page says so)",
    'python -c "import tensorflow"': "the baseline of a measurement (TensorFlow's import time)",
    "time python -m pipeline.run --help": "a timing; test_running_it runs python -m pipeline.run --help",
    "python bench/inference.py": _MEASUREMENT,
    "python bench/inference.py saved_models/digits/1": _MEASUREMENT,
    "python bench/exported_files.py saved_models/digits/1 saved_models/fashion_mnist/1 --repeats 3": _MEASUREMENT,
    "python bench/ingest_memory.py": _MEASUREMENT,
    "python bench/bucket_ingest.py": _MEASUREMENT,
    "python bench/bucket_ingest.py --images 5000 --repeats 3": _MEASUREMENT,
    "python bench/peers.py": _MEASUREMENT,
    "python bench/peers.py --repeats 3": _MEASUREMENT,
    "python bench/peers.py --goals recipe": _MEASUREMENT,
    "python bench/throughput.py --repeats 1 --epochs 3": _MEASUREMENT,
    "python bench/cached_rerun.py": _MEASUREMENT,
    "python bench/warm_start.py": _MEASUREMENT,
    "python bench/warm_start.py --repeats 1 --warm-epochs 3": _MEASUREMENT,
    "python bench/backbones.py": _MEASUREMENT,
    "python bench/tune.py": _MEASUREMENT,
    "python bench/tune.py --seeds 0,1,2 --pruners median,hyperband": _MEASUREMENT,
    "python bench/default_epochs.py --repeats 2 --data digits,fashion_4k,fashion_8k,fashion_16k --rules "
    "before,after --peer fashion_8k": _MEASUREMENT,
    "python bench/transfer.py": _MEASUREMENT,
    "python bench/transfer.py --repeats 1 --seconds 60": _MEASUREMENT,
    "python bench/scale_memory.py --repeats 3": _MEASUREMENT,
    "python bench/multi_worker.py --repeats 3": _MEASUREMENT,
    "python bench/serve_load.py --clients 16 --seconds 10 --backends onnx savedmodel --batch-window-ms 0 1 2 5":
        _MEASUREMENT,
    "python bench/serve_load.py --compare-stacks --clients 16 --seconds 8": _MEASUREMENT,
    "python bench/serve_load.py --abuse --clients 16 --seconds 5 --backends onnx": _MEASUREMENT,
    "python -m pipeline.run --preset fashion": "20 epochs of Fashion-MNIST: 25 min on this machine's 2 cores in float32 "
                                              "(its CPU has no bfloat16; a clean-clone CI run); tests/test_fashion.py runs the same preset "
                                              "for 2 epochs, and docs/measurements.md has the measured figures",
    "python -m pipeline.run --preset fashion export.int8=true": "the Fashion run of docs/inference-speed.md's "
                                                               "table (minutes); test_int8_files runs digits' "
                                                               "with export.int8=true",
    "python -m pipeline.run model.builder=examples/networks.py:mlp export.model_name=mlp":
        "one of the table's measurements (the model.builder tests train every example network)",
}

PROGRAMS = ("python", "python3", "pip", "pytest", "apt-get", "curl", "tensorboard", "docker", "time", "bash")
PLACEHOLDER = re.compile(r"(?<![\w$])[A-Z][A-Z0-9_.]*[A-Z0-9](?![\w=])|<[^<>\s]+>|\[[^\]]*\]|\w\|\w")


# Reading the pages


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    line: int  # of the opening fence, from 1
    language: str
    heading: str  # the nearest heading above it
    text: str

    @property
    def commands(self) -> tuple[str, ...]:
        """A python block is one program; a bash block holds commands, continuation lines kept with them."""
        if self.language == "python":
            return (self.text,)
        commands, current = [], []
        for line in self.text.splitlines():
            if not current and (not line.strip() or line.strip().startswith("#")):
                continue
            current.append(line)
            if not line.rstrip().endswith("\\"):
                commands.append("\n".join(current))
                current = []
        return tuple(commands)

    def where(self) -> str:
        return f"{self.page} line {self.line} ({self.heading!r})"


def read_blocks(page: str) -> list[Block]:
    """Every fenced block of `page`, with the heading it stands under."""
    blocks, heading, fence = [], "", None
    lines = (REPO_DIR / page).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if fence is None and line.startswith("```"):
            fence, body = (number, line[3:].strip()), []
        elif fence is not None and line.startswith("```"):
            blocks.append(Block(page, fence[0], fence[1], heading, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    assert fence is None, f"{page} line {fence[0]}: a fence that is never closed"
    return blocks


def prose(page: str) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^```.*?^```", "", (REPO_DIR / page).read_text(), flags=re.S | re.M)


def inline_commands(page: str) -> list[str]:
    """Inline code spans of `page` that begin like a command, line breaks inside them made spaces."""
    spans = (re.sub(r"\s+", " ", span).strip() for span in re.findall(r"`([^`]+)`", prose(page)))
    return [span for span in spans if span == "pytest" or span.split(" ", 1)[0] in PROGRAMS
            and any(not word.startswith("-") for word in span.split()[1:])]


def without_comments(command: str) -> str:
    """The command as the shell runs it, on one line: comments dropped, continuations joined, spaces single."""
    lines = []
    for line in command.splitlines():
        quote, escaped = None, False
        for index, char in enumerate(line):
            if escaped:
                escaped = False
            elif char == "\\" and quote != "'":
                escaped = True
            elif quote:
                quote = None if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == "#" and (index == 0 or line[index - 1].isspace()):
                line = line[:index]
                break
        lines.append(line.rstrip().removesuffix("\\"))
    return " ".join(" ".join(lines).split())


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in read_blocks(page)]


def sections(*keys: tuple[str, str]) -> list[Block]:
    """The runnable blocks of these sections, in the order given and, within a section, in page order."""
    found = []
    for page, heading in keys:
        blocks = [block for block in read_blocks(page) if block.heading == heading
                  and block.language in ("bash", "python")]
        assert blocks, f"{page} has no bash or python block under {heading!r}: update RUN_BY"
        found += blocks
    return found


def sections_of(name: str) -> list[Block]:
    """The blocks `RUN_BY` gives the test or fixture called `name`."""
    return sections(*(key for key, runner in RUN_BY.items() if runner == name))


# Running them


def new_workdir(path: Path) -> Path:
    """A folder that stands for the repository's: its source folders linked, its outputs its own."""
    path.mkdir(parents=True, exist_ok=True)
    for name in LINKED_INTO_WORKDIR:
        if (REPO_DIR / name).is_dir() and not (path / name).exists():
            (path / name).symlink_to(REPO_DIR / name, target_is_directory=True)
    return path


def command_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_DIR), "TF_CPP_MIN_LOG_LEVEL": "3",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@dataclass(frozen=True)
class ServerKind:
    """A documented command that serves until stopped, and how a test finds where it listens."""

    program: str  # how its command begins
    address: str  # what the documented clients call
    listening: str  # a pattern of its log that holds the port it chose
    ready_path: str  # answers 200 once it serves


SERVERS = (
    ServerKind("python -m pipeline.serve", "localhost:8501", r"listening on http://[\d.]+:(\d+)", "/v2/health/ready"),
    ServerKind("tensorboard", "localhost:6006", r"TensorBoard [\d.]+ at http://[^:]+:(\d+)/", "/data/runs"),
)


@dataclass
class Ran:
    """What the blocks of a section printed, and the servers they started (alive until the section ends)."""

    outputs: list[str] = field(default_factory=list)
    servers: dict[str, str] = field(default_factory=dict)  # program -> http://127.0.0.1:PORT
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(self.outputs)

    def with_servers(self, text: str) -> str:
        """`text` with each documented server address replaced by where the server listens."""
        for kind in SERVERS:
            if kind.program in self.servers:
                text = text.replace(kind.address, self.servers[kind.program].removeprefix("http://"))
        return text


@contextlib.contextmanager
def documented(blocks: list[Block], workdir: Path, timeout: float = 900, exit_code: int = 0) -> Iterator[Ran]:
    """Run `blocks` in order in `workdir` (their commands in NOT_RUN left out); servers stop on leaving."""
    ran = Ran()
    try:
        for block in blocks:
            commands = [command for command in block.commands if without_comments(command) not in NOT_RUN]
            if block.language == "python" and commands:
                ran.outputs.append(run_program([sys.executable, "-c", ran.with_servers(block.text)], block,
                                               workdir, timeout, exit_code))
                continue
            script: list[str] = []
            for command in commands:
                kind = next((kind for kind in SERVERS if without_comments(command).startswith(kind.program)), None)
                if kind is None:
                    script.append(ran.with_servers(command))
                    continue
                if script:
                    ran.outputs.append(run_script(script, block, workdir, timeout, exit_code))
                    script = []
                start_server(kind, command, workdir, ran)
            if script:
                ran.outputs.append(run_script(script, block, workdir, timeout, exit_code))
        yield ran
    finally:
        for process in ran.processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_script(commands: list[str], block: Block, workdir: Path, timeout: float, exit_code: int) -> str:
    script = "set -e -o pipefail\ntrap 'echo \"failed ($?): $BASH_COMMAND\" >&2' ERR\n" + "\n".join(commands)
    return run_program(["bash", "-c", script], block, workdir, timeout, exit_code)


def run_program(argv: list[str], block: Block, workdir: Path, timeout: float, exit_code: int) -> str:
    process = subprocess.run(argv, cwd=workdir, env=command_env(), capture_output=True, text=True, timeout=timeout)
    assert process.returncode == exit_code, (
        f"{block.where()}: exit code {process.returncode}, expected {exit_code}\n{block.text}\n"
        f"--- stdout\n{process.stdout[-3000:]}\n--- stderr\n{process.stderr[-3000:]}")
    return process.stdout + process.stderr if exit_code else process.stdout


def start_server(kind: ServerKind, command: str, workdir: Path, ran: Ran, timeout: float = 300) -> None:
    """Start a documented server command with `--port 0`, and wait until it answers."""
    log_path = workdir / f"{kind.program.split()[-1]}-{len(ran.processes)}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([*shlex.split(without_comments(command)), "--port", "0"], cwd=workdir,
                                   env=command_env(), stdout=log, stderr=subprocess.STDOUT)
    ran.processes.append(process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{command!r} stopped:\n{log_path.read_text()}"
        if found := re.search(kind.listening, log_path.read_text()):
            url = f"http://127.0.0.1:{found.group(1)}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + kind.ready_path, timeout=5) as reply:
                    if reply.status == 200:
                        ran.servers[kind.program] = url
                        return
        time.sleep(0.2)
    raise AssertionError(f"{command!r} did not answer in {timeout} s:\n{log_path.read_text()}")


# The pages hold what the convention says


def test_every_fenced_block_names_its_language():
    unnamed = [block.where() for block in all_blocks() if block.language not in LANGUAGES]
    assert not unnamed, f"name the block's language, one of {', '.join(LANGUAGES)}: {unnamed}"


def test_every_documented_command_is_run_or_listed():
    module = sys.modules[__name__]
    assert not [name for name in RUN_BY.values() if not hasattr(module, name)], "RUN_BY names no test"
    unclaimed = [f"{block.where()}: {without_comments(command)}" for block in all_blocks()
                 if block.language in ("bash", "python") and (block.page, block.heading) not in RUN_BY
                 for command in block.commands if without_comments(command) not in NOT_RUN]
    assert not unclaimed, ("commands neither run by a test nor listed in NOT_RUN (add the section to RUN_BY, "
                           "or the command to NOT_RUN with the reason):\n" + "\n".join(unclaimed))
    for key in RUN_BY:
        sections(key)


def test_every_command_not_run_is_still_documented():
    documented_commands = {without_comments(command) for block in all_blocks() for command in block.commands}
    documented_commands |= {span for page in PAGES for span in inline_commands(page)}
    assert not set(NOT_RUN) - documented_commands, "NOT_RUN lists commands the docs no longer hold"


def test_inline_commands_are_synopses_or_commands_that_run():
    run = {without_comments(command) for key in RUN_BY for block in sections(key) for command in block.commands}
    loose = [f"{page}: `{span}`" for page in PAGES for span in inline_commands(page)
             if not PLACEHOLDER.search(span) and span not in run and span not in NOT_RUN]
    assert not loose, "inline commands that no test runs (put them in a block a test runs, or in NOT_RUN):\n" + \
        "\n".join(loose)


def test_commands_in_text_blocks_have_placeholders():
    real = [f"{block.where()}: {line.strip()}" for block in all_blocks() if block.language == "text"
            for line in block.text.splitlines() if line.strip().split(" ", 1)[0] in PROGRAMS
            and not PLACEHOLDER.search(line)]
    assert not real, "a command without placeholders belongs in a ```bash block, where it runs:\n" + "\n".join(real)


def test_bench_scripts_exist_and_take_the_documented_flags():
    commands = [without_comments(command) for block in all_blocks() for command in block.commands]
    commands += [span for page in PAGES for span in prose(page).split("`")]
    checked = 0
    for command in commands:
        for script, arguments in re.findall(r"(bench/\w+\.py)((?: +[^ `|;]+)*)", command):
            assert (REPO_DIR / script).is_file(), f"{command!r}: no {script}"
            source = (REPO_DIR / script).read_text()
            flags = re.findall(r"(?<!\S)(--[\w-]+)", arguments)
            assert all(f'"{flag}"' in source for flag in flags), f"{command!r}: {script} takes no {flags}"
            checked += 1
    assert checked >= 10


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def test_relative_links_and_images_lead_somewhere():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", prose(page))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (REPO_DIR / page).parent / path if path else REPO_DIR / page
            if not linked.exists():
                broken.append(f"{page}: {target} (no such file)")
            elif anchor and anchor not in {github_anchor(line.lstrip("#")) for line in
                                           prose(str(linked.relative_to(REPO_DIR))).splitlines()
                                           if line.startswith("#")}:
                broken.append(f"{page}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


# The README and docs/, run


@pytest.fixture(scope="session")
def docs_workdir(tmp_path_factory) -> Path:
    """A folder after `python -m pipeline.run --preset smoke` (docs/running.md, "Presets")."""
    workdir = new_workdir(tmp_path_factory.mktemp("docs"))
    with documented(sections_of("docs_workdir"), workdir) as ran:
        assert "run " in ran.stdout and ": succeeded" in ran.stdout
    assert (workdir / "saved_models" / "digits" / "1" / "model.onnx").is_file()
    return workdir


@pytest.fixture(scope="session")
def sample_images(docs_workdir) -> list[Path]:
    """docs/using-the-model.md's first command: a few of the run's test images as PNG files."""
    with documented(sections_of("sample_images"), docs_workdir):
        pass
    images = sorted((docs_workdir / "sample_images").glob("*.png"))
    assert images and all(re.fullmatch(r"\d+-\d\.png", path.name) for path in images), images
    return images


def json_values(text: str) -> list:
    """Every JSON value in `text`, as curl prints bodies one after another."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while (index := text.find("{", index)) >= 0:
        value, index = decoder.raw_decode(text, index)
        values.append(value)
    return values


@pytest.mark.slow  # the docs' smoke run (17 s) and the commands after it
def test_readme_predict_and_serve(docs_workdir):
    """The README's examples, after its first command (here the smoke run that stands for it)."""
    with documented(sections_of("test_readme_predict_and_serve"), docs_workdir) as ran:
        predicted, served, python = ran.outputs
    images = sorted((docs_workdir / "sample_images").glob("*.png"))
    assert len(images) == 8
    assert all(f"sample_images/{path.name}" in predicted for path in images)
    ((probabilities,),) = (answer["predictions"] for answer in json_values(served))
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1, abs=1e-4)
    accuracy, *lines = python.splitlines()
    assert 0 < float(accuracy) <= 1
    assert [line.split() for line in lines] == [[path.name, line.split()[1]] for path, line in zip(images, lines)]
    assert all(line.split()[1] in "0123456789" for line in lines)


@pytest.mark.slow  # the docs' smoke run (17 s) and the commands after it
def test_predict_and_the_python_api(sample_images, docs_workdir):
    with documented(sections_of("test_predict_and_the_python_api"), docs_workdir) as ran:
        predicted, python = ran.outputs
    table, _, as_json = predicted.partition("\n[")
    assert all(table.count(f"sample_images/{path.name}") == 2 for path in sample_images)  # ONNX, then LiteRT
    onnx_table, litert_table = (table[start:] for start in (0, table.index("path", 1)))
    assert onnx_table[:len(onnx_table) - len(litert_table)].split() == litert_table.split()  # the same answers
    classified = json.loads("[" + as_json)
    assert [entry["path"] for entry in classified] == [f"sample_images/{path.name}" for path in sample_images]
    assert [len(entry["predictions"]) for entry in classified] == [3] * len(sample_images)
    rows = (docs_workdir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,rank,label,probability" and len(rows) == 1 + len(sample_images)
    accuracy, report_path = python.splitlines()[0].split()
    assert 0 < float(accuracy) <= 1 and Path(report_path).name == "report.html" and Path(report_path).is_file()
    predictions = python.splitlines()[1:1 + len(sample_images)]
    assert all(re.fullmatch(r"\d \(('\d', ){2}'\d'\) \(.*\)", line) for line in predictions), predictions


@pytest.mark.slow  # the docs' smoke run (17 s) and the commands after it
def test_serve_and_its_clients(sample_images, docs_workdir):
    with documented(sections_of("test_serve_and_its_clients"), docs_workdir) as ran:
        curled, triton = ran.outputs
    status, metadata, rows, image = json_values(curled)
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert "serving_uint8" in json.dumps(metadata)
    assert [len(answer["predictions"][0]) for answer in (rows, image)] == [10, 10]
    assert len(re.findall(r"\d\.\d*(?:e[-+]\d+)?", triton)) == 10  # print(probabilities): [1, 10]


@pytest.mark.slow  # the docs' smoke run (17 s) and the commands after it
def test_onnx_runtime_examples(sample_images, docs_workdir):
    with documented(sections_of("test_onnx_runtime_examples"), docs_workdir) as ran:
        plain, with_options = ran.outputs
    assert len(plain.strip("[]\n").split()) == len(sample_images)
    assert with_options == plain  # the classes: onnx_session's options change no answer


def test_tfds_download_fails_fast_offline(tmp_path):
    try:
        socket.getaddrinfo("storage.googleapis.com", 443)
        pytest.skip("online: the command would download MNIST and train on it for minutes")
    except OSError:
        pass
    with documented(sections_of("test_tfds_download_fails_fast_offline"), new_workdir(tmp_path), exit_code=2) as ran:
        lines = ran.stdout.splitlines()
    (error,) = (line for line in lines if line.startswith("error:"))
    assert error.startswith("error: data.source=tfds:mnist: cannot reach storage.googleapis.com") and \
        "data.source=digits" in error
    assert not any("Traceback" in line for line in lines)


@pytest.mark.slow
def test_digits_at_another_image_size(tmp_path):
    with documented(sections_of("test_digits_at_another_image_size"), new_workdir(tmp_path)):
        pass
    manifest = json.loads(max((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "succeeded" and manifest["config"]["data"]["image_size"] == [32, 32]
    metadata = json.loads((tmp_path / "saved_models" / "digits32" / "1" / "metadata.json").read_text())
    assert metadata["input"]["shape"][1:] == [32, 32, 1]


@pytest.mark.slow
def test_warm_start(tmp_path):
    with documented(sections_of("test_warm_start"), new_workdir(tmp_path)) as ran:
        pass
    assert "parent     digits/1 (model.init" in ran.stdout
    metadata = json.loads((tmp_path / "saved_models" / "digits" / "2" / "metadata.json").read_text())
    assert metadata["parent"] == "digits/1"
    assert "Trained from `digits/1`" in (tmp_path / "saved_models" / "digits" / "2" / "model_card.md").read_text()


@pytest.mark.slow
def test_tuning(tmp_path):
    with documented(sections_of("test_tuning"), new_workdir(tmp_path)) as ran:
        pass
    assert "tuned        " in ran.stdout and "chosen       train.learning_rate=" in ran.stdout
    manifest = json.loads(max((tmp_path / "runs").glob("*/manifest.json")).read_text())
    tune = next(stage for stage in manifest["stages"] if stage["name"] == "tune")
    assert tune["status"] == "succeeded" and tune["seconds"] <= 1.05 * 30
    assert manifest["results"]["tune_trials"] >= 2


@pytest.mark.slow
def test_a_pretrained_backbone(tmp_path):
    with documented(sections_of("test_a_pretrained_backbone"), new_workdir(tmp_path)):
        pass
    manifest = json.loads(max((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "succeeded" and manifest["results"]["network"] == "mobilenet_v3_small"
    metadata = json.loads((tmp_path / "saved_models" / "digits_mobilenet" / "1" / "metadata.json").read_text())
    assert metadata["input"]["shape"][1:] == [32, 32, 1]  # 8x8 digits, resized up to the backbone's smallest


@pytest.mark.slow
def test_running_it(tmp_path):
    with documented(sections_of("test_running_it"), new_workdir(tmp_path)) as ran:
        (help_text,) = ran.outputs
    manifest = json.loads(max((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["config"]["train"]["epochs"] == 5 and manifest["config"]["model"]["conv_widths"] == [16, 32]
    assert "train.epochs=0" in help_text and "smoke:" in help_text


@pytest.mark.slow
def test_caching_lineage_and_config_files(tmp_path):
    workdir = new_workdir(tmp_path)
    blocks = sections_of("test_caching_lineage_and_config_files")
    with documented(blocks, workdir) as ran:
        output = ran.stdout
    runs = [dict(re.findall(r"^(\w+) +(succeeded|cached|skipped) ", summary, re.M))
            for summary in re.findall(r"^run \S+: succeeded\n(.*?)^total", output, re.M | re.S)]
    for run in runs:  # tune and push are off by default: skipped in every run that reaches them
        for name in OFF_BY_DEFAULT:
            assert run.pop(name, "skipped") == "skipped", runs
    first, epochs_40, forced, only_evaluate, from_train, until_validate, *from_files = runs
    stages = list(first)
    assert len(stages) == 7 and set(first.values()) == set(forced.values()) == {"succeeded"}, runs
    assert [epochs_40[stage] for stage in stages[:4]] == ["cached"] * 3 + ["succeeded"], runs
    assert list(only_evaluate)[-1] == "evaluate" and only_evaluate["evaluate"] == "succeeded", runs
    assert [from_train[stage] for stage in stages] == ["cached"] * 3 + ["succeeded"] * 4, runs
    assert until_validate == {"ingest": "cached", "validate": "cached"}, runs
    # --config my.toml (the README's, then docs/running.md's), then the newest run's config.json: all cached
    assert from_files == [dict.fromkeys(stages, "cached")] * 3, runs
    assert (workdir / "my.toml").read_text().count("[train]") == 1


@pytest.mark.slow
def test_your_own_network(tmp_path):
    with documented(sections_of("test_your_own_network"), new_workdir(tmp_path)):
        pass
    manifest = json.loads(max((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["config"]["model"]["builder"] == "examples/networks.py:small_resnet"
    assert manifest["config"]["model"]["options"] == {"width": 16}


@pytest.mark.slow
def test_two_workers(tmp_path):
    with documented(sections_of("test_two_workers"), new_workdir(tmp_path)) as ran:
        assert "worker 1 of 2 workers: trained with the chief" in ran.stdout
    manifests = list((tmp_path / "work" / "runs").glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["status"] == "succeeded"


@pytest.mark.slow
def test_tensorboard(docs_workdir):
    with documented(sections_of("test_tensorboard"), docs_workdir) as ran:
        with urllib.request.urlopen(ran.servers["tensorboard"] + "/data/runs", timeout=30) as reply:
            runs = json.load(reply)
    assert any(run.startswith("digits/") for run in runs), runs


@pytest.mark.slow
def test_litert_example(sample_images, docs_workdir):
    with documented(sections_of("test_onnx_runtime_examples"), docs_workdir) as ran:
        onnx_classes = ran.outputs[0]
    with documented(sections_of("test_litert_example"), docs_workdir) as ran:
        (litert_classes,) = ran.outputs
    assert litert_classes == onnx_classes and len(litert_classes.strip("[]\n").split()) == len(sample_images)


@pytest.mark.slow
def test_int8_files(sample_images, tmp_path):
    workdir = new_workdir(tmp_path)
    shutil.copytree(sample_images[0].parent, workdir / "sample_images")
    with documented(sections_of("test_int8_files"), workdir) as ran:
        pass
    metadata = json.loads((workdir / "saved_models" / "digits" / "1" / "metadata.json").read_text())
    assert metadata["left_out"] == {} and {"model_int8.tflite", "model_int8.onnx"} <= set(metadata["files"])
    assert all(f"sample_images/{path.name}" in ran.stdout for path in sample_images)


@pytest.mark.slow  # 15 s: XLA compiles the page's jit_compile example
def test_tensorflow_examples(sample_images, docs_workdir):
    with documented(sections_of("test_tensorflow_examples"), docs_workdir) as ran:
        signature, compiled = ran.outputs
    assert len(signature.split()) == len(sample_images)
    assert compiled == signature  # the classes: XLA agrees with the signature


# Adding a stage (docs/layout.md): the example applied as written, and a stage that cannot be imported


def apply_example(blocks: list[Block], repo: Path) -> None:
    """Apply docs/layout.md's blocks to a copy of the project as their first line says.

    A block begins with `# <file>`. A new file is written whole. Into an existing one, import lines go
    after its last import, and the entries of `NAME: ... = (` / `...,` / entries / `)` go before the end
    of its `NAME`; anything else is appended.
    """
    for block in blocks:
        first, _, body = block.text.partition("\n")
        path = repo / first.removeprefix("# ").strip()
        if not path.exists():
            path.write_text(body + "\n")
            continue
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        imports = [line for line in body.splitlines() if line.startswith(("from ", "import "))]
        rest = "\n".join(line for line in body.splitlines() if line not in imports).strip("\n")
        if found := re.fullmatch(r"(\w+)(?::[^=]*)? = \(\n +\.\.\.,\n(.*)\n\)", rest, re.S):
            name, entries = found.groups()
            end = next(node.end_lineno for node in tree.body if name in assigned_names(node))
            lines[end - 1:end - 1] = entries.splitlines()
            rest = ""
        last_import = max(node.end_lineno for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
        lines[last_import:last_import] = imports
        path.write_text("\n".join(lines) + ("\n\n\n" + rest if rest else "") + "\n")


def assigned_names(node: ast.stmt) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return {target.id for target in targets if isinstance(target, ast.Name)}


@pytest.fixture(scope="module")
def repo_with_a_new_stage(tmp_path_factory) -> Path:
    """A copy of `components/` and `pipeline/` with docs/layout.md's "Adding a stage" applied."""
    repo = tmp_path_factory.mktemp("repo")
    for package in ("components", "pipeline"):
        shutil.copytree(REPO_DIR / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    apply_example(sections_of("repo_with_a_new_stage"), repo)
    return repo


def run_in_copy(repo: Path, workdir: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=900,
                          env={**command_env(), "PYTHONPATH": str(repo)})


def test_the_added_stage_is_in_the_registry_and_its_setting_in_help(repo_with_a_new_stage, tmp_path):
    process = run_in_copy(repo_with_a_new_stage, tmp_path, "python -m pipeline.run --help")
    assert process.returncode == 0, process.stderr
    assert "note.title='accuracy'" in process.stdout and "the word before the accuracy in note.txt" in process.stdout


def test_a_stage_module_not_yet_written_stops_the_run_before_its_first_stage(repo_with_a_new_stage, tmp_path):
    (repo_with_a_new_stage / "components" / "accuracy_note.py").rename(tmp_path / "accuracy_note.py")
    try:
        process = run_in_copy(repo_with_a_new_stage, new_workdir(tmp_path / "work"),
                              "python -m pipeline.run --preset smoke")
    finally:
        (tmp_path / "accuracy_note.py").rename(repo_with_a_new_stage / "components" / "accuracy_note.py")
    assert process.returncode == 2, process.stderr
    assert process.stderr.splitlines() == [
        "error: stage note in pipeline/registry.py's STAGES: target=components.accuracy_note:accuracy_note: "
        "no module named 'components.accuracy_note' (searched PYTHONPATH and the current folder); give "
        "MODULE:FUNCTION, where MODULE is an importable module (on PYTHONPATH) or a path to a .py file"]
    assert not (tmp_path / "work" / "runs").exists() and "stage ingest" not in process.stdout


@pytest.mark.slow
def test_the_added_stage_runs_and_writes_its_note(repo_with_a_new_stage, tmp_path):
    (smoke_command,) = sections_of("docs_workdir")[0].commands
    process = run_in_copy(repo_with_a_new_stage, tmp_path, smoke_command)
    assert process.returncode == 0, process.stderr
    manifest = json.loads(max((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert [stage["name"] for stage in manifest["stages"]][-1] == "note"
    assert manifest["stages"][-1]["status"] == "succeeded"
    note = f"accuracy {manifest['results']['test_accuracy']:.4f}"
    run_dir = Path(manifest["run_dir"])
    assert (run_dir / "note" / "note.txt").read_text() == note + "\n"
    assert manifest["results"]["note"] == note and f"note         {note}" in process.stdout


@pytest.mark.parametrize("function, says", [
    ("components.accuracy_note:accuracy_note", "no module named 'components.accuracy_note'"),
    ("components.report:accuracy_note", "defines no 'accuracy_note'"),
], ids=["missing module", "missing function"])
def test_a_registry_entry_that_cannot_be_found_is_refused_before_any_stage(monkeypatch, capsys, tmp_path,
                                                                           function, says):
    import pipeline.orchestrator
    from pipeline.run import main

    last = pipeline.orchestrator.STAGES[-1]
    monkeypatch.setattr(pipeline.orchestrator, "STAGES", (*pipeline.orchestrator.STAGES[:-1],
                                                     dataclasses.replace(last, target=function)))
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # main's SIGTERM handler stays out of pytest
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # and so does its quiet TensorFlow import
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    assert main(["--preset", "smoke", "--workdir", str(tmp_path / "work")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: stage {last.name} in pipeline/registry.py's STAGES: target={function}: ")
    assert says in line
    assert not (tmp_path / "work" / "runs").exists()


@pytest.mark.slow  # two smoke runs (one on 5,000 Fashion-MNIST images read from the bucket), predict, a server
def test_buckets(s3_server, monkeypatch, tmp_path):
    """docs/buckets.md end to end: data read from a bucket, models pushed to it, predict and serve from it."""
    for name, value in s3_server.env.items():  # the page's setup: these variables set, `my-bucket` made
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KERAS_PIPELINE_CACHE", str(tmp_path / "cache"))
    client = s3_server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="my-bucket")
    for path in sorted(Path("/usr/share/datasets/fashion-mnist").glob("*-ubyte.gz")):  # Debian's files, uploaded
        client.upload_file(str(path), "my-bucket", f"fashion-mnist/{path.name}")
    workdir = new_workdir(tmp_path)
    with documented(sections_of("test_buckets"), workdir) as ran:
        output = ran.stdout
        with urllib.request.urlopen(ran.servers["python -m pipeline.serve"] + "/v1/models/fashion_mnist") as reply:
            served = json.load(reply)
    assert served["model_version_status"][0]["version"] == "1"  # trained on the bucket's data, served from it
    assert "pushed       s3://my-bucket/models/fashion_mnist/1 (pushed)" in output
    assert "pushed       s3://my-bucket/models/digits/1 (pushed)" in output
    for name in ("fashion_mnist", "digits"):
        local_dir = workdir / "saved_models" / name / "1"
        local = {path.relative_to(local_dir).as_posix() for path in local_dir.rglob("*") if path.is_file()}
        listing = client.list_objects_v2(Bucket="my-bucket", Prefix=f"models/{name}/")
        keys = {item["Key"] for item in listing["Contents"]}
        assert keys == {f"models/{name}/1/{file}" for file in local}
    images = sorted((workdir / "sample_images").glob("*.png"))
    assert images and all(path.name in output for path in images)
