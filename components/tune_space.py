"""The tune stage's search space: which settings a search may change, over which values, and how to apply them.

A dimension names a setting as the command line does (`train.learning_rate`, `model.dropout`, or
`model.options.NAME` for a network of your own) and gives its values as `tune.space` writes them:

- `[LOW, HIGH]`: a range (whole numbers when the setting takes them and both ends are whole);
- `[LOW, HIGH, "log"]`: a range sampled on a log scale (LOW above 0);
- `[A, B, C, ...]` or `{"choices": [A, B]}`: a choice among values (a setting that takes a tuple, such
  as `model.conv_widths`, is given a choice of lists).

Every end and every choice passes the setting's own check, so a space is refused once, when the config
is resolved, not after minutes of search. This module imports neither TensorFlow nor Optuna: the CLI
checks `tune.space` without them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from components.backbones import BACKBONES
from components.config import ModelConfig, Section, TrainConfig
from components.errors import UserError, first_line

# The train settings a search may change: those that shape what is learned, not where or how it runs.
TUNABLE_TRAIN_KEYS = ("learning_rate", "batch_size", "warmup", "label_smoothing", "augment", "max_shift", "epochs",
                      "patience", "head_share", "unfreeze_share", "fine_tune_lr_scale")
OPTIONS_PREFIX = "model.options."
LOG = "log"


@dataclass(frozen=True)
class Dimension:
    """One setting searched: a range (`low`, `high`, on a log scale or not) or a choice among `choices`."""

    key: str  # "train.learning_rate", "model.dropout", "model.options.width"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    integer: bool = False  # a range of whole numbers
    choices: tuple[Any, ...] = ()  # JSON values; a list stands for a tuple setting's value

    def suggest(self, trial: Any) -> Any:
        """This dimension's value for an Optuna trial (a choice of lists goes through Optuna as JSON text)."""
        if self.choices:
            text = trial.suggest_categorical(self.key, [json.dumps(choice) for choice in self.choices])
            return json.loads(text)
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def holds(self, value: Any) -> bool:
        """Whether `value` (as the config holds it) is one of this dimension's values."""
        if self.choices:
            return any(_same(choice, value) for choice in self.choices)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return is_number and self.low <= value <= self.high and (not self.integer or float(value).is_integer())

    def as_optuna(self, value: Any) -> Any:
        """`value` (which `holds`) as Optuna stores this dimension's parameter: a choice as the JSON text of the
        choice it equals (0 and 0.0 are one value, but only one of "0" and "0.0" is among Optuna's choices)."""
        if not self.choices:
            return value
        return json.dumps(next(choice for choice in self.choices if _same(choice, value)))

    def describe(self) -> str:
        """How `tune.space` writes it, e.g. `[0.001, 0.01, "log"]` (a choice of two numbers: `{"choices": [A, B]}`)."""
        if len(self.choices) == 2 and all(_is_number(choice) for choice in self.choices):
            return json.dumps({"choices": list(self.choices)})
        if self.choices:
            return json.dumps(list(self.choices))
        return json.dumps([self.low, self.high, LOG] if self.log else [self.low, self.high])


def default_space(model: ModelConfig, planned_epochs: int) -> tuple[Dimension, ...]:
    """The space searched when `tune.space` is empty, for this network and data size.

    The ranges sit around the defaults (measured on digits and Fashion-MNIST, docs/tuning.md); the
    epochs range is set by the epochs the defaults plan for this many images, so a search on 4k images
    and one on 60k images both explore half to twice their own default.
    """
    train = (Dimension("train.learning_rate", 1e-3, 1e-2, log=True),
             Dimension("train.batch_size", choices=(32, 64, 128)),
             Dimension("train.label_smoothing", 0.0, 0.2),
             Dimension("train.max_shift", 0.05, 0.2),
             Dimension("train.epochs", max(1, planned_epochs // 2), max(2, 2 * planned_epochs), integer=True))
    if model.builder == "cnn":
        return train + (Dimension("model.dropout", 0.0, 0.5),
                        Dimension("model.conv_widths", choices=([16, 32], [32, 64], [48, 96], [64, 128])),
                        Dimension("model.dense_units", choices=(0, 64, 128, 256)))
    if model.builder in BACKBONES:
        return train + (Dimension(OPTIONS_PREFIX + "dropout", 0.0, 0.5),)
    return train  # a network of your own: its options' ranges are yours to give in tune.space


def including(space: tuple[Dimension, ...], values: Mapping[str, Any]) -> tuple[Dimension, ...]:
    """`space` widened to hold `values` (the config's own): a value outside a range moves its end, one missing
    from a choice joins it. The default space starts from the config as given, whatever it sets."""
    widened = []
    for dimension in space:
        value = values.get(dimension.key)
        if value is None or dimension.holds(value):
            widened.append(dimension)
        elif dimension.choices:
            widened.append(dataclasses.replace(dimension, choices=(*dimension.choices, value)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (value > 0 or not dimension.log):
            widened.append(dataclasses.replace(dimension, low=min(dimension.low, value), high=max(dimension.high,
                                                                                                    value)))
        else:
            widened.append(dimension)
    return tuple(widened)


def parse_space(space: Mapping[str, Any], train: TrainConfig, model: ModelConfig) -> tuple[Dimension, ...]:
    """`tune.space` as dimensions, each checked against its setting.

    Raises:
        UserError: one line naming the key: not a setting a search may change, a range that cannot be
            sampled (LOW >= HIGH, a log range from 0 or below, the wrong kind of value), or an end or choice
            its setting refuses.
    """
    return tuple(_dimension(key, values, train, model) for key, values in space.items())


def _dimension(key: str, values: Any, train: TrainConfig, model: ModelConfig) -> Dimension:
    where = f"tune.space[{key!r}]"
    target = _target(key, train, model, where)
    dimension = _read_values(key, values, where, _is_whole_setting(key, target))
    for value in (dimension.choices or (dimension.low, dimension.high)):
        try:
            apply_values({key: value}, train, model)
        except (UserError, TypeError, ValueError) as error:  # a section's own check may meet another type
            raise UserError(f"{where}: {value!r} is not a value of {key}: {first_line(error)}") from None
    return dimension


def _target(key: str, train: TrainConfig, model: ModelConfig, where: str) -> Section | None:
    """The section `key` sets (None for a `model.options.NAME`), or one line saying why it cannot be searched."""
    section_name, _, name = key.partition(".")
    tunable = ", ".join([f"train.{name}" for name in TUNABLE_TRAIN_KEYS] + [f"model.{name}" for name in
                                                                            ModelConfig.CNN_KEYS])
    if key.startswith(OPTIONS_PREFIX) and name.partition(".")[2]:
        if model.builder == "cnn":
            raise UserError(f"{where}: model.builder=cnn takes no model.options; search its own keys "
                            f"(model.{', model.'.join(ModelConfig.CNN_KEYS)})")
        return None
    if section_name == "train" and name in TUNABLE_TRAIN_KEYS:
        return train
    if section_name == "model" and name in ModelConfig.CNN_KEYS:
        if model.builder != "cnn":
            raise UserError(f"{where}: model.{name} sets the built-in CNN, and model.builder={model.builder} is "
                            f"another network; search model.options.NAME instead")
        return model
    raise UserError(f"{where}: {key} is not a setting a search may change; use one of {tunable}, or "
                    "model.options.NAME for a network of your own")


def _is_whole_setting(key: str, target: Section | None) -> bool | None:
    """Whether the setting takes whole numbers; None for a model option, whose type its ends tell."""
    if target is None:
        return None
    return typing.get_type_hints(type(target))[key.partition(".")[2]] is int


def _read_values(key: str, values: Any, where: str, whole: bool | None) -> Dimension:
    """A dimension from `[LOW, HIGH]`, `[LOW, HIGH, "log"]`, `[A, B, ...]` or `{"choices": [...]}`.

    A range is of whole numbers when its setting takes them (`whole`), or, for a model option (`whole` is
    None: the builder's types are not known), when both ends are whole.
    """
    if isinstance(values, dict) and set(values) == {"choices"}:
        values = values["choices"]
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: give {{\"choices\": [A, B, ...]}} with at least one value")
        return Dimension(key, choices=tuple(values))
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}={values!r} cannot be searched; give [LOW, HIGH], [LOW, HIGH, \"log\"], "
                        "[A, B, C, ...] or {\"choices\": [A, B]}")
    log = len(values) == 3 and values[2] == LOG
    ends = values[:2] if log else values
    if len(ends) != 2 or not all(_is_number(end) for end in ends):
        if log:
            raise UserError(f"{where}: a log range takes two numbers, [LOW, HIGH, \"log\"]")
        return Dimension(key, choices=tuple(values))
    low, high = ends
    if low >= high:
        raise UserError(f"{where}={values!r}: LOW must be below HIGH (for one value, set {key} itself)")
    if log and low <= 0:
        raise UserError(f"{where}={values!r}: a log range starts above 0")
    integer = all(isinstance(end, int) for end in ends) and whole is not False
    if whole and not integer:
        raise UserError(f"{where}={values!r}: {key} takes whole numbers; give whole ends")
    return Dimension(key, low, high, log=log, integer=integer)


def _same(a: Any, b: Any) -> bool:
    """Whether two values are one as JSON sees them (a tuple and its list, 64 and 64.0)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def apply_values(values: Mapping[str, Any], train: TrainConfig, model: ModelConfig) -> tuple[TrainConfig, ModelConfig]:
    """The two sections with `values` (by `section.key`, as JSON gives them) set, each checked as the CLI would.

    Raises:
        UserError: a value its setting refuses.
    """
    train_values: dict[str, Any] = {}
    model_values: dict[str, Any] = {}
    options = dict(model.options)
    for key, value in values.items():
        section_name, _, name = key.partition(".")
        if key.startswith(OPTIONS_PREFIX):
            options[key[len(OPTIONS_PREFIX):]] = value
        elif section_name == "train":
            train_values[name] = _as_field(TrainConfig, name, value)
        else:
            model_values[name] = _as_field(ModelConfig, name, value)
    if options != model.options:
        model_values["options"] = options
    return dataclasses.replace(train, **train_values), dataclasses.replace(model, **model_values)


def _as_field(section: type[Section], name: str, value: Any) -> Any:
    """A JSON value as the field holds it: a list of whole numbers as a tuple, a whole float as an int for an
    int field, an int as a float for a float field.

    Raises:
        UserError: a value of another type (text for a number, 0.5 for a whole number, 1 for true/false).
    """
    annotation = typing.get_type_hints(section)[name]
    kind = tuple if typing.get_origin(annotation) is tuple else annotation
    if kind is int and _is_number(value) and float(value).is_integer():
        return int(value)
    if kind is float and _is_number(value):
        return float(value)
    if kind is tuple and isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    if (kind is bool and isinstance(value, bool)) or (kind is str and isinstance(value, str)):
        return value
    expected = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
                tuple: "a list of whole numbers (search a choice of lists, e.g. [[32, 64], [64, 128]])",
                }.get(kind, getattr(kind, "__name__", str(kind)))
    raise UserError(f"{section.name}.{name}={value!r} is not {expected}")


def config_value(key: str, train: TrainConfig, model: ModelConfig) -> Any:
    """The value the config gives `key`, as JSON holds it (None for a model option it does not set)."""
    if key.startswith(OPTIONS_PREFIX):
        return model.options.get(key[len(OPTIONS_PREFIX):])
    section_name, _, name = key.partition(".")
    value = getattr(train if section_name == "train" else model, name)
    return list(value) if isinstance(value, tuple) else value



def check_tuning(sections: Mapping[str, Section]) -> None:
    """Checks of the tune section against train's and the model's, once every section is built.

    Raises:
        UserError: a search under train.strategy=multi_worker (each worker would sample its own values) or with
            a warm start (`model.init`: trials train from scratch), a `tune.space` without a budget to search it,
            or a space `parse_space` refuses.
    """
    tune, train, model = sections.get("tune"), sections.get("train"), sections.get("model")
    if tune is None or not isinstance(train, TrainConfig) or not isinstance(model, ModelConfig):
        return
    if tune.space and not tune.max_seconds:
        raise UserError(f"tune.space={dict(tune.space)!r} is set and tune.max_seconds=0 runs no search; give the "
                        "search a budget, e.g. tune.max_seconds=600")
    if tune.max_seconds and train.strategy == "multi_worker":
        raise UserError(f"tune.max_seconds={tune.max_seconds:g} searches in one process, and "
                        "train.strategy=multi_worker trains on several: tune on one machine first "
                        "(train.strategy=auto), then train with the values it chose (runs show lists them) on the "
                        "workers")
    if tune.max_seconds and model.init:
        raise UserError(f"tune.max_seconds={tune.max_seconds:g} searches with trials trained from scratch, and "
                        f"model.init={model.init} starts train from a trained network: the values found would be "
                        "for another start; tune without model.init, or set the values yourself")
    parse_space(tune.space, train, model)
