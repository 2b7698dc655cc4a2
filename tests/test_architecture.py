"""The architecture, checked: layers point one way, no import cycles, and the CLI's modules load no TensorFlow.

The layer and TensorFlow-free contracts live in setup.cfg's `[importlinter]` section, so `lint-imports`
and this suite check the same thing. Imports inside functions count as imports everywhere here.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import grimp

from tests.conftest import QUIET_ENV, REPO_DIR

PROJECT_PACKAGES = ("components", "pipeline")
# The CLI checks a command and prints --help with these alone: setup.cfg's tensorflow-free contract, read from it.
_SETUP = configparser.ConfigParser()
_SETUP.read(REPO_DIR / "setup.cfg")
TENSORFLOW_FREE_MODULES = tuple(_SETUP["importlinter:contract:tensorflow-free"]["source_modules"].split())
TENSORFLOW_PACKAGES = ("tensorflow", "keras")


def test_import_linter_contracts_are_kept():
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         str(REPO_DIR / "setup.cfg"), "--no-cache", "--no-logo"],
        cwd=REPO_DIR, env={**QUIET_ENV, "COLUMNS": "120"}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_two_project_modules_import_each_other():
    graph = grimp.build_graph(*PROJECT_PACKAGES, cache_dir=None)  # no .grimp_cache in the repo
    cycles = [_cycle_through(graph, module, other) for module in sorted(graph.modules)
              for other in sorted(graph.find_upstream_modules(module) & graph.find_downstream_modules(module))
              if module < other]
    assert not cycles, "modules that import each other (directly, through others, or inside a function); " \
                       "move what both need into a module of its own:\n" + "\n".join(cycles)


def _cycle_through(graph: grimp.ImportGraph, module: str, other: str) -> str:
    there = graph.find_shortest_chain(importer=module, imported=other)
    back = graph.find_shortest_chain(importer=other, imported=module)
    return f"{module} <-> {other}: " + " -> ".join((*there, *back[1:]))


def test_the_modules_the_cli_checks_with_load_no_tensorflow():
    result = _run_with_importtime("-c", f"import {', '.join(TENSORFLOW_FREE_MODULES)}")
    assert result.returncode == 0, result.stderr
    imports = _imports(result.stderr)
    assert set(TENSORFLOW_FREE_MODULES) <= {name for _, name in imports}  # the log was read
    assert not (chains := _tensorflow_import_chains(imports)), f"TensorFlow loaded through {chains}"


def test_help_exits_0_without_loading_tensorflow():
    result = _run_with_importtime("-m", "pipeline.run", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pipeline.run")
    imports = _imports(result.stderr)
    assert "pipeline.registry" in {name for _, name in imports}  # the log was read
    assert not (chains := _tensorflow_import_chains(imports)), f"TensorFlow loaded through {chains}"


def _run_with_importtime(*args: str) -> subprocess.CompletedProcess:
    """`python -X importtime *args` in a fresh process: stderr logs every module imported, nested."""
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO_DIR, env=QUIET_ENV,
                          capture_output=True, text=True, timeout=120)


def _imports(importtime_log: str) -> list[tuple[int, str]]:
    """(nesting depth, module) of each import in a `-X importtime` log; a module comes after those it imported."""
    names = [line.rpartition("|")[2] for line in importtime_log.splitlines() if line.startswith("import time:")]
    return [(len(name) - len(name.lstrip()), name.strip()) for name in names]


def _tensorflow_import_chains(imports: list[tuple[int, str]]) -> list[str]:
    """`__main__ -> project modules -> outside package` for each import that loaded TensorFlow or Keras."""
    chains = []
    for index, (depth, name) in enumerate(imports):
        if name in TENSORFLOW_PACKAGES:
            chain = [name]
            for outer_depth, outer_name in imports[index + 1:]:
                if outer_depth < depth:
                    chain.insert(0, outer_name)
                    depth = outer_depth
            outside = next(i for i, module in enumerate(chain) if module.partition(".")[0] not in PROJECT_PACKAGES)
            chains.append(" -> ".join(["__main__", *chain[: outside + 1]]))
    return sorted(set(chains))


def test_the_readmes_layout_names_every_module_and_only_modules_that_exist():
    readme = (REPO_DIR / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"[a-z_]+\.py|[a-z_]+/", layout))
    modules = {path.name for package in PROJECT_PACKAGES for path in (REPO_DIR / package).glob("*.py")
               if path.name != "__init__.py"}
    folders = {f"{path.name}/" for package in PROJECT_PACKAGES for path in (REPO_DIR / package).iterdir()
               if path.is_dir() and path.name != "__pycache__"}
    assert modules - named == set(), "modules the README's Layout does not place"
    assert folders - named == set(), "folders the README's Layout does not place"
    top_folders = {"components/", "pipeline/", "bench/", "examples/", "notebooks/", "tests/", "docs/", "saved_models/"}
    stale = {name for name in named - modules - folders - top_folders
             if not any(Path(REPO_DIR, folder, name).exists() for folder in ("bench", "pipeline/serving"))}
    assert stale == set(), "names in the README's Layout that are no file of the project"
