"""Config files: `--config FILE` (TOML or a run's config.json), its layering and errors, and `--print-config`."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import tomli_w

from components.config import ModelConfig, default_of
from components.errors import UserError
from pipeline import run
from pipeline.config import PRESETS, default_config, resolve, resolve_settings, to_dict, valid_keys
from pipeline.registry import sections
from tests.conftest import OFF_BY_DEFAULT, QUIET_ENV, REPO_DIR, SMOKE_OVERRIDES, run_pipeline_cli
from tests.test_config import BAD_VALUES

CNN_KEYS = [f"model.{key}" for key in ModelConfig.CNN_KEYS]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def network(tmp_path) -> str:
    """`model.builder` naming a function of a .py file (found by reading it, never run here)."""
    write(tmp_path / "net.py", "def build(input_shape, num_classes, **options):\n    raise NotImplementedError\n")
    return f"{tmp_path / 'net.py'}:build"


def refused(capsys, *argv: str) -> str:
    """`python -m pipeline.run *argv`, in process: exit code 2 and one `error:` line, which is returned."""
    assert run.main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err.strip()


def test_a_toml_file_sets_typed_values_a_table_per_section(tmp_path, network):
    path = write(tmp_path / "my.toml", f"""
        [data]
        val_fraction = 0.2
        [train]
        epochs = 3
        learning_rate = 1          # an int for a float
        profile_batches = [2, 4]
        [model]
        builder = "{network}"
        options = {{ width = 24, blocks = [1, 2], head = {{ dropout = 0.5 }}, name = "(8, 16)" }}
        [export]
        model_name = "007"         # a string stays a string
        """)
    config = resolve("default", (), [path])
    assert (config.data.val_fraction, config.train.epochs, config.train.profile_batches) == (0.2, 3, (2, 4))
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.model.options == {"width": 24, "blocks": [1, 2], "head": {"dropout": 0.5}, "name": "(8, 16)"}
    assert config.export.model_name == "007"
    assert dataclasses.replace(config.data, val_fraction=0.1) == default_config().data


def test_layers_apply_defaults_then_preset_then_files_in_order_then_the_command_line(tmp_path):
    first = write(tmp_path / "first.toml", "[train]\nepochs = 4\nbatch_size = 16\nseed = 1\n")
    second = write(tmp_path / "second.json", json.dumps({"train": {"epochs": 5, "seed": 2}}))
    config = resolve("smoke", ["train.seed=3"], [first, second])
    assert (config.train.batch_size, config.train.epochs, config.train.seed) == (16, 5, 3)
    assert config.train.log_images == PRESETS["smoke"]["train.log_images"]  # the preset, where no file sets it
    assert config.train.label_smoothing == default_config().train.label_smoothing
    assert resolve("smoke", (), [second, first]).train.epochs == 4  # the later file wins


def test_a_section_is_checked_with_its_final_values_whichever_layer_set_them(tmp_path):
    channels = write(tmp_path / "channels.toml", "[data]\nchannels = 3\n")  # folder: sources only
    config = resolve("default", [f"data.source=folder:{tmp_path}"], [channels])
    assert (config.data.channels, config.data.source) == (3, f"folder:{tmp_path}")


def test_a_runs_config_json_resolves_to_that_runs_config(tmp_path, network):
    for preset, overrides in (("smoke", ["train.epochs=2"]), ("fashion", []), ("smoke", [f"model.builder={network}",
                                                                                          'model.options={"w": 2}'])):
        config = resolve(preset, overrides)
        path = write(tmp_path / "config.json", json.dumps(to_dict(config), indent=2))
        for loaded_with in PRESETS:  # its derived values (model name, augmentation) and CNN keys read back as set
            assert resolve(loaded_with, (), [path]) == config, (preset, overrides, loaded_with)


def test_an_older_runs_config_json_with_a_retired_key_still_resolves_with_a_warning(tmp_path, caplog):
    from pipeline.config import RETIRED_KEYS

    written = to_dict(resolve("smoke"))
    for key in RETIRED_KEYS:
        section, name = key.split(".")
        written[section][name] = True
    path = write(tmp_path / "config.json", json.dumps(written))
    assert resolve("default", (), [path]) == resolve("smoke")
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: {key} is retired, ignored; its place: {place}" for key, place in RETIRED_KEYS.items()]
    with pytest.raises(UserError, match="unknown config key 'report.measure_latency'; did you mean "
                                        "export.measure_speed"):
        resolve("default", ["report.measure_latency=true"])


def test_another_builder_drops_the_presets_cnn_keys_and_refuses_those_set_by_a_file(tmp_path, network, capsys):
    builder = write(tmp_path / "builder.toml", f'[model]\nbuilder = "{network}"\n')
    for config in (resolve("smoke", (), [builder]), resolve("smoke", [f"model.builder={network}"])):
        assert config.model == dataclasses.replace(ModelConfig(), builder=network)
        assert config.train.epochs == PRESETS["smoke"]["train.epochs"]  # the rest of the preset applies
    cnn = write(tmp_path / "cnn.toml", "[model]\ndense_units = 64\n")
    message = refused(capsys, "--workdir", str(tmp_path / "work"), "--config", str(cnn), f"model.builder={network}")
    assert message.startswith(f"error: {cnn}: model.dense_units=64 sets the built-in CNN, and model.builder=")
    message = refused(capsys, "--workdir", str(tmp_path / "work"), "--config", str(builder), "model.dense_units=64")
    assert message.startswith("error: model.dense_units=64 sets the built-in CNN")  # from the command line
    assert not (tmp_path / "work").exists()


def wrong_types(key: str) -> list:
    """Values of another type than the key's: every field gets a mixed list; and text where it is no str."""
    section_name, _, field_name = key.partition(".")
    hint = typing.get_type_hints(sections()[section_name])[field_name]
    if hint is str:
        return [[1, "x"], 3, True]
    default = default_of(next(item for item in dataclasses.fields(sections()[section_name])
                              if item.name == field_name))
    # Text that the command line would read as the right value: a file's strings stay strings.
    text = {bool: "true", dict: None}.get(hint, str(list(default) if isinstance(default, tuple) else default))
    return [[1, "x"], *([text] if text is not None else []), *([1.5] if hint in (int, bool, dict) else [])]


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_every_key_refuses_a_wrong_typed_value_in_a_file_naming_the_file_and_the_key(suffix, tmp_path, capsys):
    checked = 0
    for key in valid_keys():
        section_name, _, field_name = key.partition(".")
        for value in wrong_types(key):
            data = {section_name: {field_name: value}}
            path = tmp_path / f"wrong{suffix}"
            path.write_text(tomli_w.dumps(data) if suffix == ".toml" else json.dumps(data))
            message = refused(capsys, "--workdir", str(tmp_path / "work"), "--config", str(path))
            assert message.startswith(f"error: {path}: {key}={value!r} is not a valid "), message
            assert "default: " in message
            checked += 1
    assert checked >= 2 * len(valid_keys())
    assert not (tmp_path / "work").exists()


def test_every_value_that_cannot_work_is_refused_from_a_file_naming_the_file(tmp_path):
    for key, values in BAD_VALUES.items():
        section_name, _, field_name = key.partition(".")
        for value in values:
            path = tmp_path / "bad.toml"
            try:
                path.write_text(tomli_w.dumps({section_name: {field_name: value}}))
            except TypeError:  # {1: 2}: no TOML table has an int key
                continue
            with pytest.raises(UserError) as caught:
                resolve("smoke", (), [path])
            assert str(caught.value).startswith(f"{path}: {key}="), str(caught.value)


@pytest.mark.parametrize("name, text, message", [
    ("typo.toml", "[train]\nepoch = 3\n",
     "unknown config key 'train.epoch'; did you mean train.epochs? (`python -m pipeline.run --help` lists every key)"),
    ("section.toml", "[trian]\nepochs = 3\n", "unknown config key 'trian.epochs'; did you mean train.epochs?"),
    ("top.toml", "epochs = 3\n", "'epochs' = 3 is not in a section (did you mean train.epochs?); put each key in "),
    ("bad.toml", "[train]\nepochs = 3\nbatch_size 32\n", "not valid TOML: Expected '=' after a key in a key/value "
                                                         "pair (at line 3, column 12)"),
    ("bad.json", '{"train": {"epochs": 3,}}', "not valid JSON at line 1, column 24: Expecting property name"),
    ("list.json", "[1, 2]", "holds a JSON list, not sections"),
    ("section.json", '{"train": 3}', "'train' = 3 is not in a section"),
    ("binary.toml", b"[train]\nepochs = \xff\n", "not UTF-8 text (byte 17); save it as UTF-8"),
    ("my.yaml", "train:\n  epochs: 3\n", "a config file is TOML (.toml) or JSON (.json)"),
])
def test_a_bad_file_is_one_line_naming_it(name, text, message, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = refused(capsys, "--workdir", str(tmp_path / "work"), "--preset", "smoke", "--config", str(path))
    assert line.startswith(f"error: {path}: {message}"), line
    assert not (tmp_path / "work").exists()


def test_a_missing_file_is_named_and_a_later_file_is_not_read_first(tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    line = refused(capsys, "--config", str(missing), "--config", str(tmp_path / "also_missing.json"))
    assert line.startswith(f"error: {missing}: no such config file; check the path")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    assert refused(capsys, "--config", str(folder)).startswith(f"error: {folder}: cannot read it (Is a directory)")


def test_a_string_for_a_number_names_the_type_a_file_needs(tmp_path):
    path = write(tmp_path / "my.toml", '[model]\nconv_widths = "16, 32"\n')
    with pytest.raises(UserError, match=r"my.toml: model.conv_widths='16, 32' is not a valid list of ints, e.g. "
                                        r"\[32, 64\]; fix the value \(default: \(32, 64\)\)$"):
        resolve("default", (), [path])


@pytest.mark.parametrize("argv", [["--config", "{bad}"], ["--config", "{good}", "--config", "{bad}"]])
def test_the_cli_refuses_a_bad_file_with_exit_2_and_leaves_no_run_folder(argv, tmp_path):
    files = {"bad": write(tmp_path / "bad.toml", '[train]\nepochs = "3"\n'),
             "good": write(tmp_path / "good.toml", "[train]\nepochs = 2\n")}
    argv = [arg.format(**files) for arg in argv]
    result = run_pipeline_cli(tmp_path / "work", "--preset", "smoke", *argv, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {files['bad']}: train.epochs='3' is not a valid int (a whole number); fix the " \
                            "value (default: 0)\n"
    assert not (tmp_path / "work").exists() and result.run_dirs == []


def printed_config(capsys, *argv: str) -> str:
    assert run.main([*argv, "--print-config"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


@pytest.mark.parametrize("preset", PRESETS)
def test_print_config_reads_back_to_the_same_config_for_every_preset(preset, tmp_path, capsys):
    path = tmp_path / "printed.toml"
    path.write_text(printed_config(capsys, "--workdir", str(tmp_path / "work"), "--preset", preset))
    assert not (tmp_path / "work").exists()  # nothing ran: no workdir
    assert resolve("default", (), [path]) == resolve(preset)
    assert resolve(preset, (), [path]) == resolve(preset)
    assert resolve_settings("default", (), [path]) == resolve_settings(preset)  # `auto` and "" kept, not resolved


def test_print_config_round_trips_dicts_tuples_empty_values_and_what_toml_cannot_hold(tmp_path, network, capsys):
    settings = [f"model.builder={network}", 'model.options={"width": 24, "blocks": [1, [2, 3]], '
                '"head": {"dropout": 0.5, "names": ["a", "b\\"c\\u00e9\\u007f"]}, "empty": {}, "text": ""}',
                "data.class_names=", 'data.tfds_data_dir=a "quoted"\\path\tand tab', "train.profile_batches=()",
                "train.learning_rate=1e-06", "data.val_fraction=0.08333333333333333", f"data.source=folder:{tmp_path}",
                "data.image_size=(28, 28)"]
    for options in ('model.options={"width": 24}', 'model.options={"pool": null, "sizes": [1, null]}'):
        path = tmp_path / "printed.toml"
        path.write_text(printed_config(capsys, "--preset", "smoke", *settings, options))
        expected = resolve("smoke", [*settings, options])
        assert resolve("default", (), [path]) == expected
        assert resolve("fashion", (), [path]) == expected  # the preset's CNN keys drop out; class names set
    assert expected.model.options == {"pool": None, "sizes": [1, None]}
    assert 'options = "{\\"pool\\": null, \\"sizes\\": [1, null]}"' in path.read_text()  # TOML has no null


def test_print_config_shows_files_and_overrides_with_each_keys_meaning(tmp_path, capsys):
    path = write(tmp_path / "my.toml", "[train]\nepochs = 4\nseed = 9\n")
    text = printed_config(capsys, "--preset", "smoke", "--config", str(path), "train.seed=11")
    lines = text.splitlines()
    assert lines[0] == f"# Written by: python -m pipeline.run --preset smoke --config {path} train.seed=11 --print-config"
    assert "epochs = 4" in lines and "seed = 11" in lines and "conv_widths = [8, 16]" in lines
    assert 'model_name = ""' in lines and '# resolves to "digits" here' in lines
    for key, _, meaning in run.describe_keys():
        section_name, _, field_name = key.partition(".")
        section_lines = lines[lines.index(f"[{section_name}]"):]
        index = next(i for i, line in enumerate(section_lines) if line.startswith(f"{field_name} = "))
        comments = []
        while section_lines[index - 1 - len(comments)].startswith("# "):
            comments.insert(0, section_lines[index - 1 - len(comments)][2:])
        assert " ".join(line for line in comments if not line.startswith("resolves to")) == meaning, key


@pytest.fixture(scope="module")
def rerun_from_config_json(smoke_run, tmp_path_factory) -> tuple[dict, dict]:
    """In a copy of the shared smoke workdir: its command again, then a run from that run's config.json alone.

    The command runs again first, right before, so that both runs see the same code even while the
    working tree is being edited (a stage's code is part of its cache key).
    """
    workdir = tmp_path_factory.mktemp("rerun") / "work"
    shutil.copytree(smoke_run.workdir, workdir, symlinks=True)
    first = run_pipeline_cli(workdir, "--preset", "smoke", *SMOKE_OVERRIDES)  # smoke_run's command
    assert first.returncode == 0, first.stderr
    first_manifest = first.manifest  # read now: `manifest` is the newest run's
    again = run_pipeline_cli(workdir, "--config", str(first.run_dir / "config.json"))
    assert again.returncode == 0, again.stderr
    return first_manifest, again.manifest


def test_a_runs_config_json_repeats_it_fully_cached(rerun_from_config_json):
    first, again = rerun_from_config_json
    # Every stage cached, but tune and push: off in both (tune.max_seconds=0, no export.push_to), they are skipped.
    assert [(stage["name"], stage["status"]) for stage in again["stages"]] == [
        (stage["name"], "skipped" if stage["name"] in OFF_BY_DEFAULT else "cached") for stage in first["stages"]]
    assert [stage["status"] for stage in first["stages"] if stage["name"] == "tune"] == ["skipped"]
    assert again["config"] == first["config"] and again["results"] == first["results"]
    assert again["run_id"] != first["run_id"]


def test_print_config_to_a_closed_pipe_exits_141_without_a_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as after `| head -1` has read its line
    try:
        result = subprocess.run([sys.executable, "-m", "pipeline.run", "--print-config"], cwd=REPO_DIR,
                                env=QUIET_ENV, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")
