"""The Python API, `from pipeline import run, load_model`: the command line's code, called from Python."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import pipeline.run as cli
from components.errors import UserError
from components.loaded_model import load_exported
from pipeline import load_model, run
from pipeline.api import override_texts
from pipeline.config import resolve, to_dict
from tests.conftest import read_split, run_python

HEAVY_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnxruntime")
REPORT_IMPORTS = f"""
import json, sys
def loaded(packages):
    return sorted(name for name in sys.modules if name.partition(".")[0] in packages)
import pipeline
after_package = loaded(("pipeline", "components", *{HEAVY_PACKAGES!r}))
from pipeline import run, load_model
print(json.dumps({{"after_package": after_package, "after_names": loaded(("tensorflow", "keras", "tf2onnx"))}}))
"""


def test_import_pipeline_loads_nothing_else_and_the_api_loads_no_tensorflow():
    result = run_python(REPORT_IMPORTS)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"after_package": ["pipeline"], "after_names": []}


@pytest.mark.parametrize("first_import", ["from pipeline import run", "import pipeline.run", "import pipeline",
                                          "from pipeline.run import main", "from pipeline import load_model"])
def test_pipeline_run_is_the_command_lines_module_and_runs_the_pipeline_when_called(first_import):
    result = run_python(f"""{first_import}
import sys
import pipeline
from pipeline import run
from components.errors import UserError
assert run is pipeline.run is sys.modules["pipeline.run"] and callable(run.main) and callable(run.parse_args)
try:
    run("smoke", {{"train.epochz": 3}})
except UserError as error:
    print(error)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unknown config key 'train.epochz'; did you mean train.epochs?")


def test_load_model_is_the_loader_predict_uses():
    assert load_model is load_exported


def test_python_values_resolve_to_the_config_their_command_line_texts_give():
    typed = {"train.epochs": np.int64(2), "model.conv_widths": (np.int64(4), 8), "model.batch_norm": False,
             "model.dropout": np.float32(0.25), "train.learning_rate": 1e-3, "evaluate.min_accuracy": 1,
             "train.profile_batches": [2, 3], "data.image_size": np.array([], int), "train.augment": "shift",
             "export.model_name": "digits-small", "data.class_names": "a,b,c,d,e,f,g,h,i,j"}
    texts = ["train.epochs=2", "model.conv_widths=(4, 8)", "model.batch_norm=false", "model.dropout=0.25",
             "train.learning_rate=0.001", "evaluate.min_accuracy=1.0", "train.profile_batches=(2, 3)",
             "data.image_size=()", "train.augment=shift", "export.model_name=digits-small",
             "data.class_names=a,b,c,d,e,f,g,h,i,j"]
    from_python = to_dict(resolve("smoke", override_texts(typed)))
    assert from_python == to_dict(resolve("smoke", texts)) != to_dict(resolve("smoke"))
    assert from_python["model"]["conv_widths"] == (4, 8) and from_python["train"]["epochs"] == 2
    assert from_python["model"]["dropout"] == 0.25 and from_python["train"]["profile_batches"] == (2, 3)
    assert from_python["export"]["model_name"] == "digits-small"
    assert override_texts(["train.epochs=2"]) == override_texts("train.epochs=2") == ["train.epochs=2"]


@pytest.mark.parametrize("typed, text", [
    ({"train.epoch": 3}, "train.epoch=3"),                      # unknown key
    ({"train.epochs": 2.5}, "train.epochs=2.5"),                # wrong type
    ({"train.epochs": "three"}, "train.epochs=three"),
    ({"model.conv_widths": (8, 16.0)}, "model.conv_widths=(8, 16.0)"),
    ({"model.batch_norm": "yes"}, "model.batch_norm=yes"),
    ({"train.learning_rate": -0.1}, "train.learning_rate=-0.1"),  # a value that cannot work
    ({"model.conv_widths": ()}, "model.conv_widths=()"),
    ({"export.model_name": "../x"}, "export.model_name=../x"),
    ({"data.channels": 3}, "data.channels=3"),                  # a folder-only key on digits
])
def test_a_bad_override_raises_the_command_lines_error_and_runs_nothing(typed, text, tmp_path, capsys):
    with pytest.raises(UserError) as raised:
        run("smoke", typed, workdir=tmp_path / "api")
    assert cli.main(["--workdir", str(tmp_path / "cli"), "--preset", "smoke", text]) == 2
    assert capsys.readouterr().err == f"error: {raised.value}\n"
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize("selection, message", [
    ({"only": "training"}, "only='training' is not a stage; the stages are ingest, validate,"),
    ({"force": "exports"}, "force='exports' is not a stage"),
    ({"only": "train", "start": "train"}, "only='train' runs one stage and start='train' a range"),
    ({"start": "export", "until": "train"}, "--until train comes before --from export"),
])
def test_a_bad_stage_selection_is_a_user_error(selection, message, tmp_path):
    with pytest.raises(UserError, match=f"^{message}"):
        run("smoke", workdir=tmp_path / "api", **selection)
    assert not (tmp_path / "api").exists()


def test_run_returns_the_manifest_of_a_run_that_exports(smoke_run, tmp_path):
    """In a copy of the smoke workdir: the same training config as Python values, exported under another name."""
    workdir = tmp_path / "work"
    shutil.copytree(smoke_run.workdir, workdir, symlinks=True)
    manifest = run("smoke", {"train.profile_batches": (2, 3), "train.epochs": 3, "model.conv_widths": (8, 16),
                             "export.model_name": "digits_api", "export.measure_speed": False}, workdir=workdir)
    assert json.loads(json.dumps(manifest, default=str)) == \
        json.loads((Path(manifest["run_dir"]) / "manifest.json").read_text())
    statuses = {stage["name"]: stage["status"] for stage in manifest["stages"]}
    assert manifest["status"] == "succeeded" and statuses["export"] == "succeeded"
    assert statuses["train"] == "cached", "Python values resolved to another training config than the CLI's"
    version_dir = workdir.resolve() / "saved_models" / "digits_api" / "1"
    assert manifest["results"]["version_dir"] == str(version_dir) and (version_dir / "model.onnx").is_file()
    assert manifest["config"]["export"]["measure_speed"] is False
    images = read_split(Path(manifest["run_dir"]) / "ingest", limit=16)[0]
    exported = load_model(workdir / "saved_models" / "digits_api").probabilities(images)
    trained = load_model(smoke_run.workdir / "saved_models" / "digits").probabilities(images)
    np.testing.assert_allclose(exported, trained, atol=1e-6)  # the same trained model, exported again


def test_a_workdir_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "work").write_text("a file")
    with pytest.raises(UserError, match=f"^workdir {tmp_path / 'work'} is a file; give a folder"):
        run("smoke", workdir=tmp_path / "work")


def test_config_files_are_read_as_the_command_lines(tmp_path, capsys):
    experiment = tmp_path / "experiment.toml"
    experiment.write_text("[train]\nepochs = 0.5\n")
    with pytest.raises(UserError) as raised:
        run("smoke", workdir=tmp_path / "api", config_files=[experiment])
    assert cli.main(["--workdir", str(tmp_path / "cli"), "--config", str(experiment)]) == 2
    assert capsys.readouterr().err == f"error: {raised.value}\n"
    assert str(experiment) in str(raised.value) and not (tmp_path / "api").exists()


def test_the_reproduce_command_of_an_api_run_names_its_config_files():
    from pipeline.api import _equivalent_command

    command = _equivalent_command("default", ["train.epochs=2"], ["a.toml", "runs/x/config.json"], Path("w"),
                                  False, None, None, None, False)
    assert command == ("python -m pipeline.run --preset default --workdir w --config a.toml --config "
                       "runs/x/config.json train.epochs=2")
