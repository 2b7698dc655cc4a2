"""The pipeline engine: caching, stage selection, lineage, blessing, reproducibility, concurrency."""

import html
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.registry import STAGE_NAMES
from tests.conftest import OFF_BY_DEFAULT, QUIET_ENV, REPO_DIR, finished_run, run_dirs_of, run_pipeline_cli

# The stages a run without tune.max_seconds or export.push_to executes or finds cached; tune and push are off by
# default, and skipped.
STAGES = [name for name in STAGE_NAMES if name not in OFF_BY_DEFAULT]
# Seconds to import each (TensorFlow about 4 here): a run that only finds cached results needs none of them.
HEAVY_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "sklearn", "tensorflow_datasets")
# `python -m pipeline.run ARGS`, then, as its last line, the heavy packages it loaded and where TF was imported.
RUN_AND_REPORT_IMPORTS = f"""
import json, runpy, sys, traceback
tensorflow_imported_at = []
sys.addaudithook(lambda event, args: tensorflow_imported_at.append("".join(traceback.format_stack()))
                 if event == "import" and args[0] == "tensorflow" and not tensorflow_imported_at else None)
sys.argv[0] = "pipeline.run"
try:
    runpy.run_module("pipeline.run", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code == 0, exit.code
print(json.dumps({{"loaded": sorted(name for name in sys.modules if name in {HEAVY_PACKAGES!r}),
                  "tensorflow_imported_at": tensorflow_imported_at}}))
"""


def statuses(run) -> dict[str, str]:
    """Each stage's status but tune's and push's, which these runs leave off: they must say skipped, and why."""
    assert run.returncode == 0, run.stderr
    found = {stage["name"]: stage["status"] for stage in run.manifest["stages"]}
    for stage in run.manifest["stages"]:
        if stage["name"] in OFF_BY_DEFAULT:  # absent from a run that ends before it (--until preprocess)
            assert stage["status"] == "skipped"  # and why: off, or (push) no export to push
            assert stage["reason"] in (OFF_BY_DEFAULT[stage["name"]], "needs export, which did not run")
            del found[stage["name"]]
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with one finished smoke run (model `engine`), shared by the caching tests."""
    workdir = tmp_path_factory.mktemp("engine")
    first = run_pipeline_cli(workdir, "--preset", "smoke", "export.model_name=engine")
    assert set(statuses(first).values()) == {"succeeded"}
    return workdir


def test_rerunning_a_finished_command_reuses_every_stage(workdir):
    run = run_pipeline_cli(workdir, "--preset", "smoke", "export.model_name=engine")
    assert set(statuses(run).values()) == {"cached"}
    assert run.manifest["results"]["version_dir"].endswith("engine/1")
    assert sorted(p.name for p in (workdir / "saved_models" / "engine").iterdir()) == ["1"]
    assert "cached" in run.stdout


def test_a_fully_cached_rerun_loads_no_tensorflow(workdir):
    runs_before = run_dirs_of(workdir)
    result = subprocess.run([sys.executable, "-c", RUN_AND_REPORT_IMPORTS, "--workdir", str(workdir), "--preset",
                             "smoke", "export.model_name=engine"], cwd=REPO_DIR, env=QUIET_ENV, capture_output=True,
                            text=True, timeout=600)
    assert set(statuses(finished_run(workdir, result, runs_before)).values()) == {"cached"}
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["loaded"] == [], "".join(report["tensorflow_imported_at"]) or report["loaded"]


@pytest.mark.slow
def test_changing_epochs_reruns_train_and_what_follows_only(workdir):
    run = run_pipeline_cli(workdir, "--preset", "smoke", "export.model_name=engine_epochs", "train.epochs=2")
    assert statuses(run) == {"ingest": "cached", "validate": "cached", "preprocess": "cached",
                             "train": "succeeded", "evaluate": "succeeded", "export": "succeeded",
                             "report": "succeeded"}


@pytest.mark.slow
def test_changing_how_the_splits_are_made_reruns_everything_that_reads_them(workdir):
    run = run_pipeline_cli(workdir, "--preset", "smoke", "export.model_name=engine_split", "data.test_fraction=0.5")
    assert set(statuses(run).values()) == {"succeeded"}
    assert run.manifest["results"]["num_examples"]["test"] == 899
    metrics = json.loads(Path(run.manifest["artifacts"]["evaluate"]["metrics_path"]).read_text())
    assert metrics["num_examples"] == 899 and "test 899" in run.stdout


@pytest.mark.slow
def test_touching_the_source_files_reruns_ingest_but_not_what_the_same_content_feeds(workdir, idx_dir):
    # evaluate.max_p_value=1: three epochs on 48 images need not beat chance, and the export's caching is tested too.
    args = ("--preset", "smoke", f"data.source=idx:{idx_dir}", "data.val_fraction=0.2", "export.model_name=engine_t",
            "evaluate.max_p_value=1")
    assert set(statuses(run_pipeline_cli(workdir, *args)).values()) <= {"succeeded", "cached"}
    (idx_dir / "train-images-idx3-ubyte.gz").touch()
    assert statuses(run_pipeline_cli(workdir, *args)) == {
        "ingest": "succeeded", "validate": "cached", "preprocess": "cached",
        "train": "cached", "evaluate": "cached", "export": "cached", "report": "cached"}


@pytest.mark.slow  # 9 s: two more runs
def test_a_forced_stage_writes_a_new_cache_entry_and_earlier_runs_keep_theirs(workdir):
    base = ("--preset", "smoke", "export.model_name=engine")
    earlier_link = Path(run_pipeline_cli(workdir, *base).manifest["run_dir"]) / "validate"
    earlier_entry = earlier_link.resolve()
    earlier_state = {path.name: (path.stat().st_ino, path.read_bytes()) for path in earlier_entry.iterdir()}
    forced = run_pipeline_cli(workdir, *base, "--force", "validate")
    assert statuses(forced)["validate"] == "succeeded"
    forced_entry = (Path(forced.manifest["run_dir"]) / "validate").resolve()
    assert forced_entry != earlier_entry and forced_entry.parent == earlier_entry.parent
    assert forced_entry.name.startswith(earlier_entry.name.partition("-")[0] + "-")  # <fingerprint>-<n>
    # The earlier run's folder still links to the very files it used, unchanged.
    assert earlier_link.resolve() == earlier_entry
    assert {path.name: (path.stat().st_ino, path.read_bytes()) for path in earlier_entry.iterdir()} == earlier_state
    later = run_pipeline_cli(workdir, *base)  # the newest entry is the one a lookup finds
    assert statuses(later)["validate"] == "cached"
    assert (Path(later.manifest["run_dir"]) / "validate").resolve() == forced_entry


@pytest.mark.slow
def test_force_only_from_until(workdir):
    base = ("--preset", "smoke", "export.model_name=engine")
    assert statuses(run_pipeline_cli(workdir, *base, "--force", "validate"))["validate"] == "succeeded"
    forced = statuses(run_pipeline_cli(workdir, *base, "--force"))
    assert set(forced.values()) == {"succeeded"}
    assert statuses(run_pipeline_cli(workdir, *base, "--only", "evaluate")) == {
        "ingest": "cached", "validate": "cached", "preprocess": "cached", "train": "cached", "evaluate": "succeeded"}
    from_train = statuses(run_pipeline_cli(workdir, *base, "--from", "train"))
    assert [from_train[s] for s in STAGES] == ["cached"] * 3 + ["succeeded"] * (len(STAGES) - 3)
    assert list(statuses(run_pipeline_cli(workdir, *base, "--until", "preprocess"))) == STAGES[:3]


def test_only_a_stage_whose_inputs_are_not_cached_is_a_user_error(tmp_path):
    run = run_pipeline_cli(tmp_path, "--preset", "smoke", "--only", "train")
    assert run.returncode == 2
    assert "error: stage ingest has no cached result for this config" in run.stderr


@pytest.mark.slow
def test_editing_stage_code_or_a_helper_it_imports_reruns_from_there(tmp_path):
    repo = tmp_path / "repo"
    for package in ("pipeline", "components"):
        shutil.copytree(REPO_DIR / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    workdir = tmp_path / "work"

    def run() -> dict[str, str]:
        runs_before = run_dirs_of(workdir)
        process = subprocess.run([sys.executable, "-m", "pipeline.run", "--preset", "smoke", "--workdir",
                                  str(workdir), "train.epochs=1"], cwd=repo, capture_output=True, text=True,
                                 env={**QUIET_ENV, "PYTHONPATH": str(repo)}, timeout=600)
        assert process.returncode == 0, process.stderr
        return statuses(finished_run(workdir, process, runs_before))

    cached_until_train = {"ingest": "cached", "validate": "cached", "preprocess": "cached"}
    run()
    model_py = repo / "components" / "model.py"
    model_py.write_text(model_py.read_text() + "\n# a comment changes nothing that runs\n")
    assert set(run().values()) == {"cached"}
    # model.py is imported by train, evaluate and export (the float32 twin): all three rerun.
    model_py.write_text(model_py.read_text().replace("        x = keras.layers.ReLU()(x)\n",
                                                     "        x = keras.layers.ReLU(name=None)(x)\n"))
    assert run() == {**cached_until_train, "train": "succeeded", "evaluate": "succeeded", "export": "succeeded",
                     "report": "cached"}  # the same numbers: the report's inputs did not change
    # An edit of train's own code that changes no number: train reruns, its weights come out the
    # same, and what reads them (keyed by the weights, not by train's code) is reused.
    train_py = repo / "components" / "train.py"
    train_py.write_text(train_py.read_text() + "\n\ndef _unused_helper():\n    return 1\n")
    assert run() == {**cached_until_train, "train": "succeeded", "evaluate": "cached", "export": "cached",
                     "report": "cached"}


def test_lineage_lists_runs_and_shows_what_produced_an_export(workdir):
    rerun = run_pipeline_cli(workdir, "--preset", "smoke", "export.model_name=engine")  # a run of cache hits
    assert set(statuses(rerun).values()) == {"cached"}
    listing = subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(workdir)],
                             cwd=REPO_DIR, env=QUIET_ENV, capture_output=True, text=True, check=True).stdout
    with sqlite3.connect(workdir / "lineage.sqlite") as db:
        runs = db.execute("SELECT run_id, status FROM runs ORDER BY started").fetchall()
        first_export = db.execute(
            "SELECT e.run_id FROM executions e WHERE e.stage = 'export' AND e.cache_hit = 0 ORDER BY e.id").fetchone()
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        hits = db.execute("SELECT stage FROM executions WHERE run_id = ? AND cache_hit = 1 ORDER BY id",
                          (rerun.manifest["run_id"],)).fetchall()
    assert [stage for (stage,) in hits] == STAGES and all(status == "succeeded" for _, status in runs)
    assert all(run_id in listing for run_id, _ in runs)
    version_dir = workdir / "saved_models" / "engine" / "1"
    for target, cwd in ((str(version_dir), REPO_DIR), ("saved_models/engine/1", workdir)):  # absolute, relative
        shown = subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(workdir), "show", target],
                               cwd=cwd, env=QUIET_ENV, capture_output=True, text=True, check=True).stdout
        assert shown.splitlines()[0] == f"{target} was produced by run {first_export[0]}"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["data_fingerprint"] in shown
    assert 'export.model_name = "engine"' in shown and "tensorflow 2.21" in shown


@pytest.mark.slow
def test_an_unblessed_model_is_kept_but_not_exported(tmp_path):
    run = run_pipeline_cli(tmp_path, "--preset", "smoke", "evaluate.min_accuracy=0.999")
    assert run.returncode == 0, run.stderr
    assert statuses(run)["export"] == "skipped"
    assert run.manifest["results"]["blessed"] is False
    reason = run.manifest["results"]["blessing_reason"]
    assert reason.startswith("not blessed: test accuracy") and "evaluate.min_accuracy 0.999" in reason
    assert reason in run.stdout
    assert not (tmp_path / "saved_models").exists()
    assert (run.run_dir / "train" / "model.keras").exists()
    assert statuses(run)["report"] == "succeeded"  # a model that was not exported gets a report too
    assert f"not exported: {html.escape(reason)}" in (run.run_dir / "report.html").read_text()
    failing = run_pipeline_cli(tmp_path, "--preset", "smoke", "evaluate.min_accuracy=0.999",
                               "evaluate.fail_if_not_blessed=true")
    assert failing.returncode == 1
    assert failing.stderr.strip().splitlines()[-1].startswith("error: not blessed:")


@pytest.mark.slow
def test_a_regression_from_the_newest_export_is_not_blessed(tmp_path):
    good = run_pipeline_cli(tmp_path, "--preset", "smoke", "train.epochs=3")
    assert statuses(good)["export"] == "succeeded"
    worse = run_pipeline_cli(tmp_path, "--preset", "smoke", "train.epochs=1")  # worse, yet better than chance
    assert statuses(worse)["export"] == "skipped"
    reason = worse.manifest["results"]["blessing_reason"]
    assert reason.startswith("not blessed") and "baseline" in reason and "digits/1" in reason
    assert sorted(p.name for p in (tmp_path / "saved_models" / "digits").iterdir()) == ["1"]


@pytest.mark.slow
def test_two_runs_from_scratch_are_byte_identical(smoke_run, tmp_path):
    again = run_pipeline_cli(tmp_path, "--preset", "smoke", "train.profile_batches=(2, 3)")
    assert again.returncode == 0, again.stderr
    first_dir, second_dir = smoke_run.run_dir, again.run_dir
    metrics = [(run_dir / "evaluate" / "metrics.json").read_bytes() for run_dir in (first_dir, second_dir)]
    assert metrics[0] == metrics[1]
    import keras
    first = keras.models.load_model(first_dir / "train" / "model.keras").get_weights()
    second = keras.models.load_model(second_dir / "train" / "model.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


# What train.precision=auto (the smoke preset's) must resolve to on a machine, as docs/training.md states it.
AUTO_PRECISION = {
    "no GPU; a CPU without native bfloat16": "float32",
    "no GPU; a CPU with AVX512_BF16 or AMX": "mixed_bfloat16",
    "GPUs, all of compute capability 7.0 or more": "mixed_float16",
    "GPUs, one below compute capability 7.0 or of unknown capability": "float32",
}


def _described(devices: list[dict], cpu_flags: set[str]) -> str:
    """A machine in AUTO_PRECISION's words: the GPUs a run recorded, and its CPU's flags."""
    capabilities = [device["compute_capability"] for device in devices if device["kind"] == "GPU"]
    if capabilities:
        return ("GPUs, all of compute capability 7.0 or more" if all(c and tuple(c) >= (7, 0) for c in capabilities)
                else "GPUs, one below compute capability 7.0 or of unknown capability")
    native = cpu_flags & {"avx512_bf16", "amx_bf16"}
    return "no GPU; a CPU with AVX512_BF16 or AMX" if native else "no GPU; a CPU without native bfloat16"


def _cpu_flags() -> set[str]:
    """The flags Linux lists for this machine's CPU (none where /proc/cpuinfo says nothing)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return set(next((line.partition(":")[2].split() for line in lines if line.startswith("flags")), []))


def test_manifest_records_what_a_reproduction_needs(smoke_run):
    manifest = smoke_run.manifest
    reproduction = manifest["reproduction"]
    assert reproduction["seeds"] == {"data.seed": 0, "train.seed": 42}
    assert reproduction["packages"]["tensorflow"].startswith("2.21")
    assert reproduction["devices"][-1]["kind"] == "CPU"
    expected_precision = AUTO_PRECISION[_described(reproduction["devices"], _cpu_flags())]
    assert manifest["results"]["precision"] == expected_precision and len(manifest["results"]["data_fingerprint"]) == 64
    assert manifest["config"]["train"]["seed"] == 42
    head = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout, as in CI's clean clone
        assert reproduction["git"]["commit"] == head.stdout.strip()


@pytest.mark.slow
def test_two_runners_at_once_on_one_workdir(tmp_path):
    commands = [[sys.executable, "-m", "pipeline.run", "--preset", "smoke", "--workdir", str(tmp_path),
                 "evaluate.max_regression=1.0", f"train.epochs={epochs}"] for epochs in (2, 3)]
    processes = [subprocess.Popen(command, cwd=REPO_DIR, env=QUIET_ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    model_dir = tmp_path / "saved_models" / "digits"
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == ["1", "2"]
    for version in ("1", "2"):
        assert (model_dir / version / "saved_model.pb").exists() and (model_dir / version / "model.onnx").exists()
    run_ids = {json.loads((model_dir / v / "metadata.json").read_text())["run_id"] for v in ("1", "2")}
    assert len(run_ids) == 2
    with sqlite3.connect(tmp_path / "lineage.sqlite") as db:
        assert db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall() == [("succeeded", 2)]
        assert db.execute("SELECT COUNT(*) FROM executions").fetchone() == (2 * len(STAGES),)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.slow
def test_the_same_command_twice_at_once_trains_once(tmp_path):
    command = [sys.executable, "-m", "pipeline.run", "--preset", "smoke", "--workdir", str(tmp_path)]
    processes = [subprocess.Popen(command, cwd=REPO_DIR, env=QUIET_ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/manifest.json")]
    train_statuses = sorted(next(s["status"] for s in m["stages"] if s["name"] == "train") for m in manifests)
    assert train_statuses == ["cached", "succeeded"]
    assert [p.name for p in (tmp_path / "saved_models" / "digits").iterdir() if p.name.isdigit()] == ["1"]


@pytest.mark.slow
def test_an_export_folder_replaced_by_another_model_is_never_served_from_the_cache(tmp_path):
    def run(*args):
        process = run_pipeline_cli(tmp_path, "--preset", "smoke", "train.epochs=1", "evaluate.max_regression=1", *args)
        return process, statuses(process)

    first_weights = run("train.seed=1")[0].manifest["artifacts"]["train"]["weights_sha256"]
    shutil.rmtree(tmp_path / "saved_models" / "digits")
    other_run_id = run("train.seed=3")[0].manifest["run_id"]  # takes the number digits/1 again, other weights
    again, again_statuses = run("train.seed=1")
    assert again_statuses["train"] == "cached"
    assert again_statuses["evaluate"] == "succeeded"  # its baseline is another model now
    version_dir = Path(again.manifest["results"]["version_dir"])
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["weights_sha256"] == first_weights
    assert version_dir.name == "2"
    shown = subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(tmp_path), "show",
                            str(tmp_path / "saved_models" / "digits" / "1")], cwd=REPO_DIR, env=QUIET_ENV,
                           capture_output=True, text=True, check=True).stdout
    assert shown.splitlines()[0].endswith(f"was produced by run {other_run_id}")


@pytest.mark.slow
def test_after_an_export_a_rerun_is_cached_and_reports_the_change_from_the_previous_export(tmp_path):
    assert run_pipeline_cli(tmp_path, "--preset", "smoke").returncode == 0  # digits/1
    second = ("--preset", "smoke", "train.epochs=4", "evaluate.max_regression=1")
    exported = run_pipeline_cli(tmp_path, *second)
    assert exported.manifest["results"]["version_dir"].endswith("digits/2")
    again = run_pipeline_cli(tmp_path, *second)
    assert set(statuses(again).values()) == {"cached"}  # compared with digits/1 again, not with itself
    report = (again.run_dir / "report.html").read_text()
    assert "digits version 1 got" in report and " points</div>" in report
    # A model that is not blessed is still compared with the newest export of another model.
    unblessed = run_pipeline_cli(tmp_path, "--preset", "smoke", "train.epochs=2", "evaluate.min_accuracy=0.999")
    assert unblessed.manifest["results"]["blessed"] is False
    blessing = json.loads(Path(unblessed.manifest["artifacts"]["evaluate"]["blessing_path"]).read_text())
    assert blessing["baseline"].endswith("digits/2") and blessing["baseline_accuracy"] is not None
    assert "digits version 2 got" in (unblessed.run_dir / "report.html").read_text()
