"""Config: typed overrides, presets, derived defaults, and every value that cannot work refused up front."""

import dataclasses
import subprocess
import typing

import pytest

from components.config import SOURCE_KINDS, default_of
from components.errors import UserError
from pipeline import run
from pipeline.config import PRESETS, default_config, describe_keys, resolve, valid_keys
from pipeline.registry import STAGE_NAMES, changed_settings, sections
from pipeline.selection import select_stages
from tests.conftest import REPO_DIR

# Values of each key that cannot work. Every key is either here or in ANY_VALUE_WORKS: a new key
# fails `test_every_key_is_covered` until someone says which of its values must be refused.
BAD_VALUES = {
    "data.source": ["mnist", "idx:", "folder:", "tfds:", "digits:x", "s3://bucket/data", "idx:/nowhere",
                    "folder:/nowhere", "npz:/nowhere.npz", "folder:/etc/hostname", "npz:/tmp"],
    "data.class_names": ["a,,b", "a,a", ",", "a,b\x0bc", "a,b\u2028c"],
    "data.val_fraction": [0, 1, -0.1, 0.95],
    "data.test_fraction": [0, 1.5],
    "data.max_train_examples": [-1],
    "data.seed": [-1, 2**32],
    "data.image_size": [(0, 8), (8,), (8, 8, 8), (5000, 8)],
    "data.channels": [2, -1, 3],  # 3 is folder-only: refused for digits
    "data.on_bad_file": ["ignore", "skip"],  # skip is folder-only
    "data.shard_mb": [0, 0.001, -1, 5000],
    "validate.imbalance_warn_ratio": [0.5, -1],
    "validate.drift_warn_std": [0, -1],
    "preprocess.epsilon": [0, -1e-6, 1e309, 10],
    "model.builder": ["", "resnet", "networks:", ":build", "networks:1build", "no_such_module_x:build",
                      "/nowhere/networks.py:build", "components.config:no_such_function"],
    "model.options": [{"width": 24}, {1: 2}],  # the first: options for the built-in CNN, which takes none
    "model.conv_widths": [(), (0, 8), (16, -1), (10**6,)],
    "model.convs_per_block": [0, -1],
    "model.padding": ["full", ""],
    "model.dense_units": [-5, 10**10],
    "model.dropout": [1.0, -0.1],
    # weights: not a backbone's builder (the smoke run's is cnn), no such file, not a .weights.h5 name
    "model.weights": ["imagenet", "/nowhere/x.weights.h5", "weights.h5", "random"],
    "model.init": ["/nowhere", "/tmp", "components"],  # no such folder, no export in it
    "train.epochs": [-3, 100_001],
    "train.batch_size": [0, -1],
    "train.learning_rate": [-1, 0],
    "train.warmup": [-0.1, 0.6],
    "train.label_smoothing": [-0.1, 0.6],
    "train.augment": ["flip", "random", ""],
    "train.max_shift": [0, 0.6],
    "train.patience": [-1],
    "train.max_seconds": [-1, 1e8],
    "train.xla": ["yes", "true", "jit"],
    "train.precision": ["float16", "fp32"],
    "train.strategy": ["tpu", "multi"],
    "train.in_memory_mb": [-1, 2e6],
    "train.shuffle_mb": [0, -5, 2e6],
    "train.seed": [-1],
    "train.profile_batches": [(0, 2), (4, 2), (1, 2, 3)],
    "train.log_images": [-1, 100_000],
    "train.head_share": [-0.1, 0.95],
    "train.unfreeze_share": [0, 1.5],
    "train.fine_tune_lr_scale": [0, 2],
    "evaluate.batch_size": [0, -512],
    "evaluate.min_accuracy": [1.5, -0.1],
    "evaluate.max_p_value": [0, -0.1, 1.5],
    "evaluate.max_regression": [-0.1, 2],
    "export.model_name": ["../x", "a/b", ".", "..", "/abs", "name with space", "x" * 101, "-dash"],
    "export.parity_examples": [0, -1],
    "export.parity_atol": [0, -1],
    "export.onnx_opset": [7, 99],
    "export.int8_max_drop": [-0.1, 101],
    "export.calibration_examples": [0, 100_001],
    "export.score_examples": [0],
    "export.push_to": ["/tmp/models", "saved_models", "file:///tmp/models", "s3://"],  # local copies: saved_models/
    "report.mistakes": [-1, 401],
    "tune.max_seconds": [-1, 10],  # 10: below the 30 s a search needs (a trial of the defaults, cut short)
    "tune.max_trials": [-1],
    "tune.pruner": ["asha"],
    # The first: a space with no budget to search it (tests/test_tune_space.py sweeps bad spaces with one).
    "tune.space": [{"train.learning_rate": [0.001, 0.01]}, [1, 2]],
}
ANY_VALUE_WORKS = {"data.tfds_data_dir", "data.download", "model.batch_norm", "train.deterministic",
                   "evaluate.fail_if_not_blessed", "export.int8", "export.measure_speed"}


def test_every_key_is_covered():
    assert set(BAD_VALUES) | ANY_VALUE_WORKS == set(valid_keys()), "say which values of the new key cannot work"
    assert not set(BAD_VALUES) & ANY_VALUE_WORKS


BAD_OVERRIDES = [f"{key}={value}" for key, values in BAD_VALUES.items() for value in values]


@pytest.mark.parametrize("override", BAD_OVERRIDES)
def test_a_value_that_cannot_work_is_one_line_exit_2_and_no_run_folder(override, tmp_path, capsys):
    key = override.partition("=")[0]
    assert run.main(["--workdir", str(tmp_path / "work"), "--preset", "smoke", override]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    assert key in stderr  # says where
    assert not (tmp_path / "work").exists()  # refused before any work: no run folder, no workdir


@pytest.mark.parametrize("key", valid_keys())
def test_a_value_of_the_wrong_type_is_refused_with_the_default(key):
    hint = typing.get_type_hints(type(default_config().sections[key.partition(".")[0]]))[key.partition(".")[2]]
    if hint is str:
        pytest.skip("any text is a str")
    with pytest.raises(UserError, match=rf"^{key}=.* is not a valid .*default: "):
        resolve("default", [f"{key}=[1, 'x']"])


def test_every_field_has_a_meaning_and_every_default_passes_its_own_check():
    for key, default, meaning in describe_keys():
        assert len(meaning) > 10, key
    for section in sections().values():
        for item in dataclasses.fields(section):
            check = item.metadata["check"]
            assert check is None or check.test(default_of(item)), f"{section.name}.{item.name}"


def test_overrides_are_typed_by_the_field(tmp_path):
    config = resolve("default", ["train.epochs=3", "train.learning_rate=1e-3", "model.batch_norm=false",
                                 "model.conv_widths=(16, 32, 64)", f"data.source=idx:{tmp_path}",
                                 "evaluate.batch_size=7", "train.learning_rate=1"])
    assert config.train.epochs == 3
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.model.batch_norm is False
    assert config.model.conv_widths == (16, 32, 64)
    assert config.data.source == f"idx:{tmp_path}"
    assert config.evaluate.batch_size == 7


def sources_of_each_kind(tmp_path) -> list[str]:
    """A data.source of every kind whose path exists, as the config's checks ask."""
    (tmp_path / "data.npz").touch()
    sources = ["digits", f"idx:{tmp_path}", f"npz:{tmp_path / 'data.npz'}", "tfds:mnist", f"folder:{tmp_path}"]
    assert {source.partition(":")[0] for source in sources} == set(SOURCE_KINDS)
    return sources


def test_image_size_applies_to_every_source_and_channels_and_on_bad_file_to_folders_only(tmp_path):
    for source in sources_of_each_kind(tmp_path):
        assert resolve("default", [f"data.source={source}", "data.image_size=(32, 24)"]).data.image_size == (32, 24)
        for override in ("data.channels=1", "data.on_bad_file=skip"):
            if source.startswith("folder:"):
                resolve("default", [f"data.source={source}", override])
                continue
            key = override.partition("=")[0]
            with pytest.raises(UserError, match=rf"^{key}=.* applies only to folder: sources, and "
                                                rf"data.source='{source}' is not one; remove {key}$"):
                resolve("default", [f"data.source={source}", override])


def test_overrides_of_one_section_are_checked_together_in_any_order(tmp_path):
    for order in (["data.channels=3", f"data.source=folder:{tmp_path}"],  # channels: folder: sources only
                  [f"data.source=folder:{tmp_path}", "data.channels=3"]):
        assert resolve("default", order).data.channels == 3


@pytest.mark.parametrize("typo, suggestion", [("train.epoch", "train.epochs"), ("trian.epochs", "train.epochs"),
                                              ("model.dense_unit", "model.dense_units"),
                                              ("export.modelname", "export.model_name")])
def test_an_unknown_key_gets_the_nearest_one_in_a_short_line(typo, suggestion):
    with pytest.raises(UserError) as caught:
        resolve("default", [f"{typo}=3"])
    message = str(caught.value)
    assert f"unknown config key {typo!r}; did you mean {suggestion}?" in message
    assert len(message) < 160 and "data.source" not in message


def test_an_unrecognisable_key_names_the_sections_and_a_malformed_override_the_form():
    with pytest.raises(UserError, match="sections are data, validate, preprocess, tune, train, model, evaluate, "
                                        "export"):
        resolve("default", ["zzz.qqq=3"])
    with pytest.raises(UserError, match="section.key=value"):
        resolve("default", ["epochs"])


@pytest.mark.parametrize("source, name", [
    ("digits", "digits"), ("idx:{tmp}/fashion-mnist", "fashion_mnist"), ("folder:{tmp}/Pets/", "pets"),
    ("tfds:emnist/letters", "emnist_letters"), ("npz:{tmp}/mnist.npz", "mnist"), ("folder:{tmp}/Pets/..", "model"),
])
def test_the_model_is_named_after_its_data_unless_named(source, name, tmp_path):
    for folder in ("fashion-mnist", "Pets"):
        (tmp_path / folder).mkdir()
    (tmp_path / "mnist.npz").write_bytes(b"")
    source = source.format(tmp=tmp_path)
    assert resolve("default", [f"data.source={source}"]).export.model_name == name
    assert resolve("default", [f"data.source={source}", "export.model_name=mine"]).export.model_name == "mine"


@pytest.mark.parametrize("source, augment", [
    ("digits", "shift"), ("tfds:fashion_mnist", "shift+flip"), ("tfds:cifar10", "shift+flip"),
    ("idx:{tmp}/fashion-mnist", "shift+flip"), ("folder:{tmp}/Pets", "shift"),  # a mirrored 3 is no digit
])
def test_the_augmentation_flips_only_data_a_flip_keeps_the_class_of_unless_set(source, augment, tmp_path):
    for folder in ("fashion-mnist", "Pets"):
        (tmp_path / folder).mkdir()
    source = source.format(tmp=tmp_path)
    assert resolve("default", [f"data.source={source}"]).train.augment == augment
    assert resolve("default", [f"data.source={source}", "train.augment=none"]).train.augment == "none"


def test_presets_apply_over_defaults_and_overrides_over_presets():
    smoke = resolve("smoke")
    assert smoke.train.epochs == PRESETS["smoke"]["train.epochs"] != default_config().train.epochs
    assert smoke.data == default_config().data
    assert resolve("smoke", ["train.epochs=5"]).train.epochs == 5
    assert changed_settings(resolve("smoke", ["train.epochs=5"]).sections)["train.epochs"] == 5
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of: default, smoke, fashion"):
        resolve("nope")
    for overrides in PRESETS.values():
        assert set(overrides) <= set(valid_keys())


def test_help_lists_every_key_with_default_and_meaning_and_every_preset(capsys):
    with pytest.raises(SystemExit) as caught:
        run.parse_args(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for key, default, meaning in describe_keys():
        line = next((line for line in text.splitlines() if line.strip().startswith(f"{key}=")), None)
        assert line is not None and repr(default) in line and meaning in line, key
    for name, overrides in PRESETS.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{name}:"))
        assert all(f"{key}={value!r}" in line for key, value in overrides.items()), name


def test_cli_refuses_a_file_as_workdir(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert run.main(["--workdir", str(not_a_folder), "--preset", "smoke"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: --workdir {not_a_folder} is a file; give a folder (it is created if missing)"


def test_a_presets_class_names_are_not_carried_to_another_source():
    with pytest.raises(UserError, match="--preset fashion names the classes of idx:"):
        resolve("fashion", ["data.source=digits"])
    assert resolve("fashion", ["data.source=digits", "data.class_names="]).data.class_names == ""


def test_cli_refuses_a_workdir_it_cannot_create_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert run.main(["--workdir", str(tmp_path / "file" / "work"), "--preset", "smoke"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --workdir {tmp_path / 'file' / 'work'}: cannot create it "
                                               "(Not a directory); give a folder you can write in")


@pytest.mark.parametrize("argv, force, overrides", [
    (["--force"], "all", []),
    (["--force", "train"], "train", []),
    (["--force", "train.epochs=5"], "all", ["train.epochs=5"]),  # an override after --force is no stage name
    (["train.epochs=5", "--force", "--preset", "smoke"], "all", ["train.epochs=5"]),
    (["--force", "all", "train.epochs=5"], "all", ["train.epochs=5"]),
    (["--force=export", "train.epochs=5"], "export", ["train.epochs=5"]),
    ([], None, []),
])
def test_force_takes_a_stage_name_only(argv, force, overrides):
    args = run.parse_args(argv)
    assert (args.force, args.overrides) == (force, overrides)
    expected = set(STAGE_NAMES) if force == "all" else {force} - {None}
    assert select_stages(args.force, args.only, args.first, args.until).force == expected


def test_force_with_an_unknown_stage_name_is_still_refused(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--force", "train.epochs=5", "--force", "trian"])
    assert "argument --force: invalid choice: 'trian'" in capsys.readouterr().err


def test_help_shows_the_defaults_of_preset_and_workdir_and_the_force_syntax(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "named set of overrides (default: default)" in text
    assert "holds runs/, cache/, saved_models/ (default: the current folder)" in text
    assert "--force [STAGE] rerun every stage (--force alone), or just STAGE (one of: ingest, validate," in text


def test_what_runs_write_into_a_workdir_at_the_repository_root_is_ignored_by_git():
    written = ["runs/x/config.json", "cache/train/x/artifact.json", "lineage.sqlite", "tensorboard/digits/x/events",
               "saved_models/digits/1/model.onnx", "sample_images/0-7.png"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=REPO_DIR, capture_output=True,
                             text=True)
    assert ignored.stdout.split() == written
    kept = subprocess.run(["git", "check-ignore", "--no-index", "saved_models/README.md"], cwd=REPO_DIR)
    assert kept.returncode == 1  # not ignored: the folder's README stays in git
