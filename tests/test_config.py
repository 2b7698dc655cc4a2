"""Config: typed overrides, presets, and refusals that name the valid keys."""

import dataclasses

import pytest

from pipeline.config import PRESETS, PipelineConfig, apply_overrides, resolve, valid_keys
from components.errors import UserError
from tests.conftest import run_pipeline_cli


def test_overrides_are_typed_by_the_field():
    config = resolve("default", ["train.epochs=3", "train.learning_rate=1e-3", "model.batch_norm=false",
                                 "model.conv_widths=(16, 32, 64)", "data.source=idx:/some/dir",
                                 "evaluate.batch_size=7"])
    assert config.train.epochs == 3
    assert config.train.learning_rate == 0.001
    assert config.model.batch_norm is False
    assert config.model.conv_widths == (16, 32, 64)
    assert config.data.source == "idx:/some/dir"
    assert config.evaluate.batch_size == 7


def test_int_is_accepted_where_a_float_is_expected():
    assert resolve("default", ["train.learning_rate=1"]).train.learning_rate == 1.0


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=three", "train.epochs='three' is not a valid int"),
    ("train.epochs=2.5", "not a valid int"),
    ("model.batch_norm=maybe", "not a valid bool"),
    ("model.conv_widths=(16, 'a')", "tuple of ints"),
])
def test_bad_values_are_refused(override, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        resolve("default", [override])


@pytest.mark.parametrize("override, message", [
    ("model.padding=full", "model.padding='full' is not one of same, valid"),
    ("train.precision=float16", "train.precision='float16' is not one of auto, float32"),
    ("data.on_bad_file=maybe", "data.on_bad_file='maybe' is not one of fail, skip"),
    ("model.dropout=1.5", "model.dropout=1.5 is out of range; use a value from 0 to 0.99"),
    ("data.val_fraction=0", "data.val_fraction=0.0 is out of range"),
    ("train.epochs=0", "train.epochs=0 is out of range"),
])
def test_values_outside_the_allowed_ones_are_refused(override, message):
    with pytest.raises(UserError) as caught:
        resolve("default", [override])
    assert str(caught.value).startswith(message)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(UserError) as caught:
        resolve("default", ["train.epoch=3"])
    assert "unknown config key 'train.epoch'" in str(caught.value)
    assert "train.epochs" in str(caught.value) and "data.source" in str(caught.value)


def test_unknown_section_and_malformed_override_are_refused():
    with pytest.raises(UserError, match="unknown config section 'trian'"):
        resolve("default", ["trian.epochs=3"])
    with pytest.raises(UserError, match="section.key=value"):
        resolve("default", ["epochs"])


def test_presets_apply_over_defaults_and_overrides_over_presets():
    smoke = resolve("smoke")
    assert smoke.train.epochs == PRESETS["smoke"]["train.epochs"]
    assert smoke.data == PipelineConfig().data
    assert resolve("smoke", ["train.epochs=5"]).train.epochs == 5
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of: default, smoke, fashion"):
        resolve("nope")


def test_every_preset_key_is_valid():
    for overrides in PRESETS.values():
        apply_overrides(PipelineConfig(), overrides)
        assert set(overrides) <= set(valid_keys())


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PipelineConfig().train.epochs = 1  # type: ignore[misc]


def test_cli_refuses_a_bad_key_with_one_line_and_exit_2(tmp_path):
    run = run_pipeline_cli(tmp_path, "--preset", "smoke", "train.epoch=1")
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert run.stderr.startswith("error: unknown config key 'train.epoch'")
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_a_file_as_workdir(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    run = run_pipeline_cli(not_a_folder, "--preset", "smoke")
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: --workdir {not_a_folder} is a file; give a folder (it is created if missing)"
