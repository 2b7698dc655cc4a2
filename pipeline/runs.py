"""Command line over the lineage database: which runs there were, and what produced what.

    python -m pipeline.runs [--workdir DIR]                                 # every run, newest first
    python -m pipeline.runs [--workdir DIR] show RUN_ID                     # one run's results, config, lineage
    python -m pipeline.runs [--workdir DIR] show saved_models/NAME/VERSION  # who produced an export
    python -m pipeline.runs [--workdir DIR] compare RUN_A RUN_B             # config, metrics, per class: A vs B
    python -m pipeline.runs [--workdir DIR] images [RUN_ID] [--split test] [--count 8] [--out sample_images]
                                                                            # a split's images as PNG files

A run id may be shortened to any prefix that names one run only; `images` takes the newest run
without one. Exit codes: 0 success, 2 a user's mistake (one line on stderr), 141 stdout's reader
closed the pipe (`| head`).
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

from components.artifacts import SPLITS, Splits
from components.errors import UserError
from components.hashing import file_sha256
from components.saved_models import METADATA_FILE
from components.shards.layout import LAYOUT_FILE, split_labels
from components.shards.record_reader import read_images_at
from pipeline.cache import read_entry
from pipeline.config import default_config, to_dict
from pipeline.lineage import Lineage
from pipeline.registry import derived_defaults
from pipeline.run import print_output

METRICS_FILE = "metrics.json"  # what the evaluate stage writes in its output folder (components/evaluate.py)
# Results of the export stage, shown together as one `export` row (`model/version`).
EXPORT_RESULTS = ("model_name", "version", "version_dir", "onnx_path")
FIRST_METRICS = ("test_accuracy", "test_loss", "blessed", "export")  # then the rest, in the order recorded
# Results of the tune stage (components/artifacts.py Tuning.facts), which `show` gives in a `tuned` part of their own.
TUNE_RESULTS = ("tune_trials", "tune_pruned", "tune_seconds", "tune_best", "tune_best_val_accuracy")
# How many targets each command takes (fewest, most), and what they are.
NUM_TARGETS = {"list": (0, 0), "show": (1, 1), "compare": (2, 2), "images": (0, 1)}
TARGETS_WANTED = {"list": "no arguments", "show": "one run id or saved_models/<name>/<version> folder",
                  "compare": "two run ids (RUN_A RUN_B)", "images": "at most one run id (default: the newest run)"}
IMAGES_DEFAULTS = {"split": "test", "count": 8, "out": Path("sample_images")}  # --split, --count, --out of `images`
MAX_CELL = 20  # widest value in a table; a longer one is cut, or printed in full below if the runs differ
WIDTH = 100  # columns `show` wraps its long values to


def list_runs(lineage: Lineage) -> str:
    """One line per run: id, status, data source, model, test accuracy, blessing, export, why it failed."""
    lines = [f"{'run_id':<24}{'status':<11}{'started':<21}{'source':<26}{'model':<16}{'test_acc':>9}  "
             f"{'blessed':<8}{'exported':<10}reason"]
    for run in lineage.runs():
        config = json.loads(run["config"] or "{}")
        results = run["results"]
        accuracy = f"{results['test_accuracy']:.4f}" if results.get("test_accuracy") is not None else "-"
        blessed = {None: "-", False: "no", True: "yes"}[results.get("blessed")]
        exported = _export_name(run) or "-"
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
    return "\n".join(header + _describe(_load_run(lineage, run_id), workdir))


def resolve_run_id(lineage: Lineage, text: str) -> str:
    """The run id that `text` is, or the only one it is a prefix of.

    Raises:
        UserError: no run has that id or prefix, or several runs share the prefix.
    """
    run_ids = [run["run_id"] for run in lineage.runs()]
    if text in run_ids:
        return text
    matches = [run_id for run_id in run_ids if run_id.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no run {text!r} in {lineage.db_path}; "
                        f"`python -m pipeline.runs --workdir {lineage.db_path.parent}` lists them")
    shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
    raise UserError(f"run id {text!r} matches {len(matches)} runs in {lineage.db_path}: {shown}; "
                    "give more of the id")


def write_images(lineage: Lineage, workdir: Path, run_text: str | None = None, split: str = "test", count: int = 8,
                 out_dir: Path = Path("sample_images")) -> tuple[str, list[Path]]:
    """Write the first `count` images of a run's split as 8-bit PNG files `<index>-<class>.png`.

    These are the files the README's predict and serve examples classify: the project makes them, in
    the size and channels the model takes, with their true class in the name. The pixels are read
    from the run's ingest output without TensorFlow, as the report stage reads them.

    Args:
        lineage: the workdir's lineage database.
        workdir: the orchestrator's workdir, where `runs/<id>/ingest/` is looked for if the lineage's path is gone.
        run_text: a run id or a prefix of one; None: the newest run.
        split: train, val or test.
        count: how many images, from the start of the split (all of it if it is shorter).
        out_dir: where the files go; created.

    Returns:
        The run id and the files written, in split order.

    Raises:
        UserError: no runs, an unknown run, a run without ingest output, count below 1, `out_dir` a file.
    """
    if count < 1:
        raise UserError(f"--count {count}: give a number of images of at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder (it is created if missing)")
    run = _load_run(lineage, run_text) if run_text is not None else _newest_run(lineage)
    splits = ingested_splits(run, workdir)
    indices = list(range(min(count, splits.num_examples[split])))
    if not indices:
        raise UserError(f"run {run['run_id']}'s {split} split holds no images; give another --split")
    labels = split_labels(splits, split)[indices]
    _create_folder(out_dir)
    paths = [out_dir / f"{index}-{file_safe(splits.class_names[label])}.png" for index, label in zip(indices, labels)]
    for path, image in zip(paths, read_images_at(splits, split, indices)):
        # As components.plots.thumbnail, whose module would load matplotlib (a second, here) for one line.
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")
    return run["run_id"], paths


def ingested_splits(run: dict[str, Any], workdir: Path) -> Splits:
    """The run's ingest output, found through the lineage, else through its run folder's `ingest` link.

    Raises:
        UserError: the run has none (it failed before ingest finished, or its cache was removed).
    """
    outputs = [Path(artifact["path"]) for execution in run.get("executions", []) if execution["stage"] == "ingest"
               for artifact in execution["artifacts"] if artifact["type"] == "output"]
    for splits_dir in outputs + [workdir / "runs" / run["run_id"] / "ingest"]:
        if (splits_dir / LAYOUT_FILE).is_file():
            splits = read_entry(splits_dir.resolve())
            if splits is not None:
                return splits
    raise UserError(f"run {run['run_id']} ({run['status']}) has no ingest output left (in its lineage or in "
                    f"{workdir / 'runs' / run['run_id'] / 'ingest'}); give a run that got past ingest")


def file_safe(name: str) -> str:
    """A class name as part of a file name: each run of characters other than letters, digits, - and _ is one _."""
    return re.sub(r"[^\w-]+", "_", name).strip("_") or "class"


def _newest_run(lineage: Lineage) -> dict[str, Any]:
    runs = lineage.runs()
    if not runs:
        raise UserError(f"no runs in {lineage.db_path}; run `python -m pipeline.run` there first")
    return _load_run(lineage, runs[0]["run_id"])


def _create_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {folder}: cannot create it ({error.strerror}); give a folder you can write in") \
            from None


def compare(lineage: Lineage, run_a: str, run_b: str, workdir: Path) -> str:
    """Two runs side by side: the config keys that differ, the results, and each class's precision, recall, F1.

    Args:
        lineage: the workdir's lineage database.
        run_a, run_b: run ids, or prefixes that name one run each; differences are B - A.
        workdir: the orchestrator's workdir, where `runs/<id>/evaluate/` is looked for if the lineage's path is gone.

    Returns:
        The report, aligned for a terminal.
    """
    a, b = _load_run(lineage, run_a), _load_run(lineage, run_b)
    sections = [
        [_run_line("A", a), _run_line("B", b), *_data_note(a, b)],
        config_differences(flat_config(a), flat_config(b)),
        tuned_setting_lines(a, b),
        metric_lines(run_metrics(a), run_metrics(b)),
        class_lines(a, b, workdir),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def _data_note(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """A warning when the runs were tested on different data: their numbers then differ for that reason too."""
    data_a, data_b = (run["results"].get("data_fingerprint") for run in (a, b))
    if data_a and data_b and data_a != data_b:
        return ["note: A and B were trained and tested on different data (their data fingerprints differ), so "
                "differences in their results are not the model's alone"]
    return []


def flat_config(run: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded config as `{"section.key": value}`."""
    return _flatten(json.loads(run["config"] or "{}"))


def config_differences(config_a: dict[str, Any], config_b: dict[str, Any]) -> list[str]:
    """One line `section.key: A-value -> B-value` per key that differs; `(missing)` where a run lacks it."""
    keys = sorted(key for key in config_a.keys() | config_b.keys()
                  if key not in config_a or key not in config_b or config_a[key] != config_b[key])
    if not keys:
        return ["no config differences"]
    width = max(len(key) for key in keys) + 1
    return ["config differences (A -> B):"] + [
        f"  {key + ':':<{width}} {_config_value(config_a, key)} -> {_config_value(config_b, key)}" for key in keys]


def tuned_setting_lines(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The values train used of the settings tune searched, `section.key: A-value -> B-value`: tune's choice in a
    tuned run, the config's value in one that was not; no lines when neither run was tuned."""
    chosen_a, chosen_b = (run["results"].get("tune_best") or {} for run in (a, b))
    if not chosen_a and not chosen_b:
        return []
    keys = list(chosen_a) + [key for key in chosen_b if key not in chosen_a]
    used_a, used_b = ({key: json.dumps(chosen[key]) if key in chosen else _config_value(flat_config(run), key)
                       for key in keys} for run, chosen in ((a, chosen_a), (b, chosen_b)))
    origin = {label: "tune's choice" if chosen else "its config"
              for label, chosen in (("A", chosen_a), ("B", chosen_b))}
    width = max(len(key) for key in keys) + 1
    return [f"settings tune searched, as train used them (A: {origin['A']}; B: {origin['B']}):"] + [
        f"  {key + ':':<{width}} {used_a[key]} -> {used_b[key]}" for key in keys]


def run_metrics(run: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded results, nested ones flattened, the export's as one `export` value (None: none); tune's
    chosen values are left to `tuned_setting_lines`."""
    results = _flatten({key: value for key, value in run["results"].items() if key != "tune_best"})
    rest = {key: value for key, value in results.items() if key not in EXPORT_RESULTS}
    rest["export"] = _export_name(run)
    first = {key: rest.pop(key) for key in FIRST_METRICS if key in rest}
    return first | rest


def metric_lines(metrics_a: dict[str, Any], metrics_b: dict[str, Any]) -> list[str]:
    """The results as a table (name, A, B, B - A); a long value that differs is printed in full below it."""
    names = list(metrics_a) + [name for name in metrics_b if name not in metrics_a]
    cells = {name: (_cell(metrics_a.get(name)), _cell(metrics_b.get(name))) for name in names}
    long = [name for name, (a, b) in cells.items() if a != b and max(len(a), len(b)) > MAX_CELL]
    rows = [("metrics", "A", "B", "B-A")] + [
        (name, *cells[name], _difference(metrics_a.get(name), metrics_b.get(name)))
        for name in names if name not in long]
    return _table(rows) + [line for name in long for line in (f"{name}:", f"  A  {cells[name][0]}",
                                                              f"  B  {cells[name][1]}")]


@dataclass(frozen=True)
class ClassScores:
    """One class's test results, as in `metrics.json`'s `per_class`."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ClassChange:
    """One class's test results in run A and in run B (None in a run whose test data lacks the class)."""

    name: str
    a: ClassScores | None
    b: ClassScores | None

    @property
    def f1_change(self) -> float | None:
        """F1 in B minus F1 in A; None unless both runs have the class."""
        return self.b.f1 - self.a.f1 if self.a and self.b else None


def class_changes(metrics_a: dict[str, Any], metrics_b: dict[str, Any]) -> list[ClassChange]:
    """Every class of either run's `metrics.json`, the largest F1 drop first; classes in one run only last."""
    scores_a, scores_b = _class_scores(metrics_a), _class_scores(metrics_b)
    names = list(scores_a) + [name for name in scores_b if name not in scores_a]
    changes = [ClassChange(name, scores_a.get(name), scores_b.get(name)) for name in names]
    return sorted(changes, key=lambda change: (change.f1_change is None, change.f1_change or 0.0))


def class_lines(a: dict[str, Any], b: dict[str, Any], workdir: Path) -> list[str]:
    """The per-class table, or one line per run that has no evaluate results to compare."""
    metrics_a, metrics_b = evaluate_metrics(a, workdir), evaluate_metrics(b, workdir)
    missing = [f"per class: run {label} ({run['run_id']}, {run['status']}) has no evaluate {METRICS_FILE}"
               for label, run, metrics in (("A", a, metrics_a), ("B", b, metrics_b)) if metrics is None]
    if missing:
        return missing
    header = ("class", "precision A", "precision B", "recall A", "recall B", "F1 A", "F1 B", "F1 B-A")
    rows = [_class_row(change) for change in class_changes(metrics_a, metrics_b)]
    return ["per class, worst F1 change first:"] + _table([header, *rows])


def evaluate_metrics(run: dict[str, Any], workdir: Path) -> dict[str, Any] | None:
    """The run's evaluate `metrics.json`, found through the lineage, else in its run folder; None if neither."""
    outputs = [Path(artifact["path"]) / METRICS_FILE for execution in run.get("executions", [])
               if execution["stage"] == "evaluate"
               for artifact in execution["artifacts"] if artifact["type"] == "output"]
    candidates = outputs + [workdir / "runs" / run["run_id"] / "evaluate" / METRICS_FILE]
    path = next((path for path in candidates if path.is_file()), None)
    return json.loads(path.read_text()) if path else None


def _load_run(lineage: Lineage, text: str) -> dict[str, Any]:
    """The run (with its executions) named by a run id or a prefix of one."""
    run = lineage.run(resolve_run_id(lineage, text))
    assert run is not None  # resolve_run_id found it in the same table
    return run


def _run_line(label: str, run: dict[str, Any]) -> str:
    source = json.loads(run["config"] or "{}").get("data", {}).get("source", "-")
    return (f"{label}  {run['run_id']}  {run['status']:<10} started {_time(run['started'])}  source {source}"
            + (f"\n   error: {run['error']}" if run.get("error") else ""))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys: `{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_value(config: dict[str, Any], key: str) -> str:
    return json.dumps(config[key]) if key in config else "(missing)"


def _cell(value: Any) -> str:
    """A value as shown in a table: floats to 4 decimals, booleans as yes/no, lists comma-separated."""
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _difference(a: Any, b: Any) -> str:
    """B - A for two numbers (booleans are not), signed; empty otherwise."""
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (a, b)):
        return ""
    return f"{b - a:+d}" if isinstance(a, int) and isinstance(b, int) else f"{b - a:+.4f}"


def _class_scores(metrics: dict[str, Any]) -> dict[str, ClassScores]:
    """Each class's scores; a class without test images has none (its zeros say nothing)."""
    return {name: ClassScores(scores["precision"], scores["recall"], scores["f1"])
            for name, scores in metrics["per_class"].items() if scores["support"]}


def _class_row(change: ClassChange) -> tuple[str, ...]:
    """name, precision A and B, recall A and B, F1 A and B, F1 change; `-` where a run lacks the class."""
    def score(result: ClassScores | None, field: str) -> str:
        return f"{getattr(result, field):.4f}" if result else "-"

    change_text = f"{change.f1_change:+.4f}" if change.f1_change is not None else ""
    return (change.name, score(change.a, "precision"), score(change.b, "precision"), score(change.a, "recall"),
            score(change.b, "recall"), score(change.a, "f1"), score(change.b, "f1"), change_text)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned columns: the first (names) left-aligned, the others right-aligned and cut to MAX_CELL."""
    rows = [(row[0], *(_shorten_end(cell, MAX_CELL) for cell in row[1:])) for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])])
            .rstrip() for row in rows]


def _export_name(run: dict[str, Any]) -> str | None:
    """`model/version` of the run's export, or None."""
    version_dir = run["results"].get("version_dir")
    return "/".join(Path(version_dir).parts[-2:]) if version_dir else None


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _shorten_end(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _describe(run: dict[str, Any], workdir: Path) -> list[str]:
    """A run for `show`: what ran, its results, the settings it changed, then its stages and artifacts."""
    reproduction = json.loads(run["reproduction"] or "{}")
    git = reproduction.get("git") or {}
    lines = [
        f"run {run['run_id']}: {run['status']}, started {_time(run['started'])}"
        + (f"\nerror      {run['error']}" if run.get("error") else ""),
        f"command    {run['command']}",
        f"data       sha256 {run['results'].get('data_fingerprint') or '-'}",
        *([f"parent     {run['results']['parent']} (model.init: training started from that export)"]
          if run["results"].get("parent") else []),
        f"code       git {git.get('commit', '-')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        *_wrapped("packages   ", ", ".join(f"{k} {v}" for k, v in reproduction.get("packages", {}).items() if v)),
        *result_lines(run),
        *tuning_lines(run),
        *config_lines(run, workdir),
        "stages:",
    ]
    for execution in run["executions"]:
        lines.append(f"  {execution['stage']:<11}{execution['status']:<10}  fingerprint "
                     f"{execution['fingerprint'][:16]}  code {execution['code_fingerprint'][:16]}")
        for artifact in execution["artifacts"]:
            arrow = "<-" if artifact["type"] == "input" else "->"
            lines.append(f"      {arrow} {artifact['stage']:<11}{artifact['path']}  {artifact['fingerprint'][:16]}")
    return lines


def result_lines(run: dict[str, Any]) -> list[str]:
    """`results:` and one line per recorded result: test accuracy and loss, the blessing and why, the export first."""
    results = run["results"]
    if not results:
        return ["results    none recorded"]
    shown = {"test_accuracy": results.get("test_accuracy"), "test_loss": results.get("test_loss"),
             "blessed": results.get("blessing_reason") or results.get("blessed"),
             "export": results.get("version_dir") or ("-" if "blessed" in results else None)}
    skipped = {"blessing_reason", "data_fingerprint", *EXPORT_RESULTS}  # shown above, or in `data`
    rest = _flatten({key: value for key, value in results.items() if key not in TUNE_RESULTS})
    shown |= {key: value for key, value in rest.items() if key not in skipped and key not in shown}
    width = max(len(key) for key in shown) + 2
    return ["results:"] + [line for key, value in shown.items() if value is not None
                           for line in _wrapped(f"  {key:<{width}}", _result_text(value))]


def tuning_lines(run: dict[str, Any]) -> list[str]:
    """`tuned` and what the search did, then each value it chose (train used it) with the config's when they differ;
    no lines for a run that was not tuned."""
    results = run["results"]
    if "tune_best" not in results:
        return []
    config = flat_config(run)
    budget = f" of {config['tune.max_seconds']:g}" if "tune.max_seconds" in config else ""
    best = results["tune_best_val_accuracy"]
    outcome = "no trial finished" if best is None else f"best validation accuracy {best:.4f}"
    head = (f"tuned      {results['tune_trials']} trials ({results['tune_pruned']} pruned) in "
            f"{results['tune_seconds']:.0f} s{budget}, {outcome}; train used:")
    return [head] + [f"  {key} = {json.dumps(value)}" + ("" if config.get(key) == value
                                                           else f"  (config: {_config_value(config, key)})")
                     for key, value in results["tune_best"].items()]


def _result_text(value: Any) -> str:
    """A result as `show` prints it: as in a table, but lists spaced so they wrap (class names, image shape)."""
    return ", ".join(map(str, value)) if isinstance(value, list) and value else _cell(value)


def config_lines(run: dict[str, Any], workdir: Path) -> list[str]:
    """The settings that differ from the defaults, one `section.key = value` a line, and where all of them are.

    A default derived from the data (the model's name, the augmentation) counts as a default.
    """
    config = flat_config(run)
    defaults = _flatten(json.loads(json.dumps(to_dict(default_config()))))
    source = config.get("data.source", defaults["data.source"])
    defaults |= derived_defaults(source)
    changed = {key: value for key, value in config.items() if key not in defaults or defaults[key] != value}
    config_json = workdir / "runs" / run["run_id"] / "config.json"
    again = f"python -m pipeline.run{'' if workdir == Path('.') else f' --workdir {workdir}'} --config {config_json}"
    summary = f"{len(changed)} differ from the defaults" if changed else "all at their defaults"
    return [f"config     settings: {summary}; every one is in {config_json}", f"           repeat the run: {again}",
            *(line for key, value in changed.items() for line in _wrapped(f"  {key} = ", json.dumps(value)))]


def _wrapped(label: str, text: str) -> list[str]:
    """`label` then `text`, wrapped to WIDTH columns under the text's first column."""
    return textwrap.wrap(text, WIDTH, initial_indent=label, subsequent_indent=" " * len(label),
                         break_long_words=False, break_on_hyphens=False) or [label.rstrip()]


def _time(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


class _ArgumentParser(argparse.ArgumentParser):
    """Reports a bad command line as one `error:` line, like every other mistake of the user's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; options and targets in any order. A bad one exits 2 with one `error:` line."""
    parser = _ArgumentParser(prog="python -m pipeline.runs", description=__doc__.split("\n\n")[0],
                             epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="the orchestrator's workdir (default: the current folder)")
    parser.add_argument("command", nargs="?", choices=list(NUM_TARGETS), default="list",
                        help="what to do (default: list)")
    parser.add_argument("targets", nargs="*", metavar="target",
                        help="show: a run id or an exported version folder; compare: two run ids; images: a run id "
                             "(default: the newest run)")
    images = parser.add_argument_group("images", "write a run's images as 8-bit PNG files <index>-<class>.png")
    images.add_argument("--split", choices=SPLITS, help=f"the split (default: {IMAGES_DEFAULTS['split']})")
    images.add_argument("--count", type=int, metavar="N",
                        help=f"how many, from the split's start (default: {IMAGES_DEFAULTS['count']})")
    images.add_argument("--out", type=Path, metavar="DIR",
                        help=f"where they go; created (default: {IMAGES_DEFAULTS['out']})")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    db_path = args.workdir / "lineage.sqlite"
    try:
        if not db_path.exists():
            raise UserError(f"no lineage database at {db_path}; run `python -m pipeline.run` there first")
        output = _run_command(Lineage(db_path), args)
    except sqlite3.DatabaseError as error:
        print(f"error: {db_path} cannot be read as a lineage database ({error}); restore it or move it aside",
              file=sys.stderr)
        return 2
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return print_output(output)


def _run_command(lineage: Lineage, args: argparse.Namespace) -> str:
    """The output of one command, once its targets and options are checked."""
    command, targets = args.command, args.targets
    fewest, most = NUM_TARGETS[command]
    if not fewest <= len(targets) <= most:
        raise UserError(f"{command} takes {TARGETS_WANTED[command]}, got {len(targets)} "
                        f"({' '.join(targets) or 'none'}); see `python -m pipeline.runs --help`")
    options = [f"--{name}" for name in IMAGES_DEFAULTS if getattr(args, name) is not None]
    if options and command != "images":
        raise UserError(f"{' and '.join(options)} {'belongs' if len(options) == 1 else 'belong'} to the images "
                        f"command, not to {command}")
    if command == "images":
        settings = {name: IMAGES_DEFAULTS[name] if getattr(args, name) is None else getattr(args, name)
                    for name in IMAGES_DEFAULTS}
        run_id, paths = write_images(lineage, args.workdir, targets[0] if targets else None, settings["split"],
                                     settings["count"], settings["out"])
        return "\n".join([f"wrote {len(paths)} {settings['split']} images of run {run_id} to {settings['out']}:",
                          *map(str, paths)])
    if command == "show":
        return show(lineage, targets[0], args.workdir)
    return compare(lineage, *targets, args.workdir) if command == "compare" else list_runs(lineage)


if __name__ == "__main__":
    sys.exit(main())
