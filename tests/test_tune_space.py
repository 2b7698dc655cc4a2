"""tune.space: every space that cannot be searched refused in one line before any work; good ones as dimensions."""

import json

import pytest

from components.config import ModelConfig, TrainConfig, TuneConfig
from components.errors import UserError
from components.tune_space import (
    Dimension,
    apply_values,
    check_tuning,
    config_value,
    default_space,
    including,
    parse_space,
)
from pipeline import run

MLP = "examples/networks.py:mlp"
RESNET = "examples/networks.py:small_resnet"

NOT_SEARCHABLE = "is not a setting a search may change"
REFUSED = "is not a value of"
NOT_A_SPACE = "cannot be searched; give [LOW, HIGH]"
OTHER_NETWORK = "search model.options.NAME instead"
# (the key the error names, the space, why it is refused, further overrides): every kind of space that cannot be
# searched, each with the reason its own check gives (not another check's, which could hide a missing one).
BAD_SPACES = [
    ("train.learnin_rate", {"train.learnin_rate": [0.001, 0.01]}, NOT_SEARCHABLE, ()),  # no such setting
    # Settings that say where or how a run runs, not what it learns.
    ("train.seed", {"train.seed": [0, 10]}, NOT_SEARCHABLE, ()),
    ("data.source", {"data.source": ["digits", "idx:/tmp"]}, NOT_SEARCHABLE, ()),
    ("tune.max_seconds", {"tune.max_seconds": [30, 60]}, NOT_SEARCHABLE, ()),
    ("train.max_seconds", {"train.max_seconds": [10, 60]}, NOT_SEARCHABLE, ()),
    ("model.builder", {"model.builder": ["cnn", MLP]}, NOT_SEARCHABLE, ()),
    ("train.learning_rate", {"train.learning_rate": [0.01, 0.001]}, "LOW must be below HIGH", ()),
    ("train.learning_rate", {"train.learning_rate": [0.01, 0.01]}, "LOW must be below HIGH", ()),
    ("train.learning_rate", {"train.learning_rate": [0.01, 0.001, "log"]}, "LOW must be below HIGH", ()),
    ("model.dropout", {"model.dropout": [0.0, 0.5, "log"]}, "a log range starts above 0", ()),  # 0 is a dropout
    ("train.learning_rate", {"train.learning_rate": [0, 0.01, "log"]}, "a log range starts above 0", ()),
    ("train.learning_rate", {"train.learning_rate": ["a", 0.01, "log"]}, "a log range takes two numbers", ()),
    ("train.batch_size", {"train.batch_size": [16.5, 64]}, "takes whole numbers", ()),  # a float range, int setting
    ("train.epochs", {"train.epochs": [2, 8.5]}, "takes whole numbers", ()),
    ("model.dropout", {"model.dropout": [0, 2]}, REFUSED, ()),  # an end its setting refuses
    ("train.learning_rate", {"train.learning_rate": [0, 0.01]}, REFUSED, ()),
    ("train.batch_size", {"train.batch_size": [0, 64]}, REFUSED, ()),
    ("train.augment", {"train.augment": ["sideways"]}, REFUSED, ()),  # a choice its setting refuses
    ("train.augment", {"train.augment": {"choices": ["none", "sideways"]}}, REFUSED, ()),
    ("model.conv_widths", {"model.conv_widths": [[16, 32], [0, 8]]}, REFUSED, ()),
    ("model.dense_units", {"model.dense_units": [0, 64, -5]}, REFUSED, ()),
    ("model.padding", {"model.padding": ["same", "full"]}, REFUSED, ()),
    ("model.options.width", {"model.options.width": [8, 32]}, "model.builder=cnn takes no model.options", ()),
    ("model.dropout", {"model.dropout": [0.0, 0.5]}, OTHER_NETWORK, (f"model.builder={MLP}",)),  # a CNN key
    ("model.conv_widths", {"model.conv_widths": [[8], [16]]}, OTHER_NETWORK, (f"model.builder={RESNET}",)),
    ("model.dense_units", {"model.dense_units": {"choices": []}}, "at least one value", ()),  # nothing to choose
    ("model.dense_units", {"model.dense_units": {"choices": 64}}, "at least one value", ()),
    ("model.dense_units", {"model.dense_units": []}, NOT_A_SPACE, ()),
    ("model.dropout", {"model.dropout": 0.3}, NOT_A_SPACE, ()),  # not a list
    ("model.dropout", {"model.dropout": "0.3"}, NOT_A_SPACE, ()),
    ("model.dropout", {"model.dropout": {"low": 0.0, "high": 0.5}}, NOT_A_SPACE, ()),
    # Values of another type than the setting's (each raised TypeError inside a check, or passed).
    ("model.conv_widths", {"model.conv_widths": [32, 64, 128]}, "search a choice of lists", ()),  # not lists
    ("model.dropout", {"model.dropout": ["a", "b"]}, REFUSED, ()),
    ("train.max_shift", {"train.max_shift": [0.05, 0.2, "lin"]}, REFUSED, ()),  # a typo of "log": a choice
    ("model.dense_units", {"model.dense_units": [0, 64, 128.5]}, REFUSED, ()),  # not whole
    ("model.batch_norm", {"model.batch_norm": [0, 1]}, REFUSED, ()),  # true or false, not a range
    ("train.augment", {"train.augment": [1, 2, 3]}, REFUSED, ()),
]


def _refused_in_one_line(argv: list[str], tmp_path, capsys) -> str:
    """The CLI's error line for `argv`, after checking it is one line, exit 2 and no workdir made."""
    assert run.main(["--workdir", str(tmp_path / "work"), "--preset", "smoke", *argv]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    assert not (tmp_path / "work").exists()  # refused before any work: no run folder, no workdir
    return stderr


@pytest.mark.parametrize("key, space, reason, overrides", BAD_SPACES,
                         ids=[json.dumps(space) + "".join(overrides) for _, space, _, overrides in BAD_SPACES])
def test_a_space_that_cannot_be_searched_is_one_line_exit_2_and_no_run_folder(key, space, reason, overrides,
                                                                               tmp_path, capsys):
    stderr = _refused_in_one_line(["tune.max_seconds=30", f"tune.space={json.dumps(space)}", *overrides],
                                  tmp_path, capsys)
    assert stderr.startswith(f"error: tune.space[{key!r}]")  # says which key of the space
    assert reason in stderr


def test_a_space_without_a_budget_is_refused(tmp_path, capsys):
    stderr = _refused_in_one_line(['tune.space={"model.dropout": [0.0, 0.5]}'], tmp_path, capsys)
    assert "tune.space" in stderr and "tune.max_seconds" in stderr


def test_a_search_with_multi_worker_training_is_refused(tmp_path, capsys):
    stderr = _refused_in_one_line(["tune.max_seconds=30", "train.strategy=multi_worker"], tmp_path, capsys)
    assert "tune.max_seconds" in stderr and "train.strategy=multi_worker" in stderr


def test_a_search_with_a_warm_start_is_refused(monkeypatch):
    import components.saved_models

    monkeypatch.setattr(components.saved_models, "parent_version_dir", lambda init: init)  # any export will do
    sections = {"tune": TuneConfig(max_seconds=30), "train": TrainConfig(), "model": ModelConfig(init="saved_models/x")}
    with pytest.raises(UserError, match=r"^tune.max_seconds=30 searches with trials trained from scratch, and "
                                        r"model.init=saved_models/x"):
        check_tuning(sections)
    check_tuning({**sections, "tune": TuneConfig()})  # no search: a warm start alone is fine


def test_good_spaces_parse_to_their_dimensions():
    space = {"train.learning_rate": [1e-4, 1e-2, "log"], "train.batch_size": [16, 128], "train.epochs": [2, 8],
             "model.dense_units": [0, 64, 128], "model.dropout": [0, 0.5], "train.label_smoothing": [0.0, 0.2],
             "model.conv_widths": [[8, 16], [16, 32, 64]], "train.augment": {"choices": ["none", "shift"]},
             "train.warmup": {"choices": [0.0, 0.1]}, "model.batch_norm": [True, False]}
    dimensions = parse_space(space, TrainConfig(), ModelConfig())
    assert dimensions == (
        Dimension("train.learning_rate", 1e-4, 1e-2, log=True),
        Dimension("train.batch_size", 16, 128, integer=True),  # whole ends of an int setting: whole numbers
        Dimension("train.epochs", 2, 8, integer=True),
        Dimension("model.dense_units", choices=(0, 64, 128)),  # three numbers: a choice, not a range
        Dimension("model.dropout", 0, 0.5),  # whole ends of a float setting: still real numbers
        Dimension("train.label_smoothing", 0.0, 0.2),
        Dimension("model.conv_widths", choices=([8, 16], [16, 32, 64])),
        Dimension("train.augment", choices=("none", "shift")),
        Dimension("train.warmup", choices=(0.0, 0.1)),  # two numbers as a choice
        Dimension("model.batch_norm", choices=(True, False)),
    )
    assert [dimension.integer for dimension in dimensions[:5]] == [False, True, True, False, False]
    assert all(isinstance(end, int) for end in (dimensions[1].low, dimensions[1].high))


def test_a_network_of_your_own_searches_its_options_whole_numbers_for_whole_ends():
    model = ModelConfig(builder=RESNET, options={"width": 16})
    space = {"model.options.width": [8, 64], "model.options.rate": [0.1, 0.5], "model.options.act": ["relu", "gelu"]}
    assert parse_space(space, TrainConfig(), model) == (
        Dimension("model.options.width", 8, 64, integer=True),  # a builder's type is unknown: its ends say
        Dimension("model.options.rate", 0.1, 0.5),
        Dimension("model.options.act", choices=("relu", "gelu")))


def test_apply_values_sets_each_key_as_its_field_holds_it_and_checks_it():
    train, model = apply_values({"model.conv_widths": [4, 8], "train.batch_size": 64.0, "model.dropout": 0,
                                 "train.learning_rate": 0.004, "train.augment": "none"}, TrainConfig(), ModelConfig())
    assert model.conv_widths == (4, 8)  # a JSON list as the tuple the field holds
    assert train.batch_size == 64 and isinstance(train.batch_size, int)
    assert model.dropout == 0.0 and isinstance(model.dropout, float)
    assert (train.learning_rate, train.augment) == (0.004, "none")
    assert (train.epochs, model.dense_units) == (TrainConfig().epochs, ModelConfig().dense_units)  # the rest as given
    with pytest.raises(UserError, match="model.dropout"):
        apply_values({"model.dropout": 2}, TrainConfig(), ModelConfig())
    with pytest.raises(UserError, match="train.augment"):
        apply_values({"train.augment": "sideways"}, TrainConfig(), ModelConfig())
    _, model = apply_values({"model.options.width": 24}, TrainConfig(), ModelConfig(builder=RESNET,
                                                                                   options={"width": 16, "x": 1}))
    assert model.options == {"width": 24, "x": 1}


def test_config_value_is_the_config_value_as_json_holds_it():
    model = ModelConfig(conv_widths=(8, 16))
    assert config_value("model.conv_widths", TrainConfig(), model) == [8, 16]
    assert config_value("train.batch_size", TrainConfig(batch_size=32), model) == 32
    assert config_value("model.options.width", TrainConfig(), ModelConfig(builder=RESNET)) is None


def test_the_default_space_suits_the_network_and_holds_the_defaults():
    cnn = default_space(ModelConfig(), planned_epochs=10)
    keys = [dimension.key for dimension in cnn]
    assert keys == ["train.learning_rate", "train.batch_size", "train.label_smoothing", "train.max_shift",
                    "train.epochs", "model.dropout", "model.conv_widths", "model.dense_units"]
    epochs = cnn[keys.index("train.epochs")]
    assert (epochs.low, epochs.high, epochs.integer) == (5, 20, True)
    for dimension in cnn:  # the defaults are a point of the space: the first trial is them as given
        assert dimension.holds(config_value(dimension.key, TrainConfig(epochs=10), ModelConfig())), dimension.key
    smoke = ModelConfig(conv_widths=(8, 16), dense_units=32)  # values outside the space: it widens to hold them
    widened = including(default_space(smoke, 10), {"model.conv_widths": [8, 16], "model.dense_units": 32,
                                                   "train.learning_rate": 0.03})
    by_key = {dimension.key: dimension for dimension in widened}
    assert by_key["model.conv_widths"].choices[-1] == [8, 16] and by_key["model.dense_units"].choices[-1] == 32
    assert (by_key["train.learning_rate"].low, by_key["train.learning_rate"].high) == (1e-3, 0.03)
    backbone = [dimension.key for dimension in default_space(ModelConfig(builder="mobilenet_v3_small"), 10)]
    assert backbone == keys[:5] + ["model.options.dropout"]
    assert [dimension.key for dimension in default_space(ModelConfig(builder=MLP), 10)] == keys[:5]
