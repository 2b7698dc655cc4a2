"""The run's configuration: the registry's config sections, presets, and `section.key=value` overrides.

The sections and their checks live in `components/config.py`; this module composes them, applies
presets and the command line's overrides (typed by the field, checked by the section), and fills the
defaults that depend on other sections. Presets are named sets of overrides, so a preset and a
command-line override go through the same checks.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from components.config import Section, augmentation_for, default_of, model_name_from_source
from components.errors import UserError
from pipeline.registry import sections


@dataclass(frozen=True)
class PipelineConfig:
    """One run's config: a section per name (`config.train.epochs`), in pipeline order."""

    sections: Mapping[str, Section]

    def __getattr__(self, name: str) -> Section:
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(name) from None


def default_config() -> PipelineConfig:
    """Every section at its defaults."""
    return PipelineConfig({name: section() for name, section in sections().items()})


PRESETS: dict[str, dict[str, Any]] = {
    # The digits run: about 15 seconds on 2 cores, including TensorFlow's start-up and the export.
    "default": {},
    # Seconds, for tests: a few short epochs of a small network, the profiler off.
    "smoke": {
        "model.conv_widths": (8, 16),
        "model.dense_units": 32,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.augment": "none",  # three epochs are too few to learn from shifted images
        "train.log_images": 4,
    },
    # Fashion-MNIST from Debian's dataset-fashion-mnist: 0.9358 test accuracy in about 4.5 minutes here.
    "fashion": {
        "data.source": "idx:/usr/share/datasets/fashion-mnist",
        "data.val_fraction": 1 / 12,  # 5,000 of the 60,000 training images
        "data.class_names": "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot",
        "model.conv_widths": (32, 64, 128),
        "model.dense_units": 256,
        "model.dropout": 0.1,  # with shifts, flips and label smoothing, more dropout underfits in 20 epochs
        "train.epochs": 20,  # 18 gave 0.9350, at no measured gain in wall time (266 s, train stage)
        "train.batch_size": 128,  # 256 (learning rate 4.2e-3) ran 12 % faster but reached 0.9340
        "train.learning_rate": 3e-3,
        "train.max_shift": 0.07,  # 2 pixels of 28
    },
}


def valid_keys() -> list[str]:
    """All `section.key` names a user may override, in pipeline order."""
    return [f"{name}.{item.name}" for name, section in sections().items() for item in dataclasses.fields(section)]


def describe_keys() -> list[tuple[str, Any, str]]:
    """(key, default, meaning) of every key, for `--help`."""
    return [(f"{name}.{item.name}", default_of(item), item.metadata["meaning"])
            for name, section in sections().items() for item in dataclasses.fields(section)]


def parse_override(text: str) -> tuple[str, str]:
    """Split `section.key=value` into its key and raw value."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise UserError(f"override {text!r} is not of the form section.key=value (e.g. train.epochs=3)")
    return key.strip(), value.strip()


def resolve(preset: str = "default", overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Build the run's config: the defaults, then the preset, then the command line's overrides.

    Raises:
        UserError: an unknown preset or key, a value of the wrong type, or a value that cannot work.
    """
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    command_line = dict(parse_override(text) for text in overrides)
    _check_preset_fits_source(preset, command_line)
    config = apply_overrides(default_config(), PRESETS[preset])
    config = apply_overrides(config, command_line)
    return _fill_derived_defaults(config)


def _check_preset_fits_source(preset: str, command_line: Mapping[str, Any]) -> None:
    """A preset's class names belong to its source: with another source they would label it wrongly."""
    if "data.source" in command_line and "data.class_names" in PRESETS[preset] \
            and "data.class_names" not in command_line:
        raise UserError(f"--preset {preset} names the classes of {PRESETS[preset]['data.source']}, and "
                        f"data.source={command_line['data.source']} is another source; also give "
                        "data.class_names (\"\" keeps the source's own names)")


def apply_overrides(config: PipelineConfig, overrides: Mapping[str, Any]) -> PipelineConfig:
    """Return a copy of `config` with `section.key` overrides applied, each typed by its field.

    The overrides of one section are applied together, so checks that involve several fields see
    the final values whatever order the keys came in.
    """
    changes: dict[str, dict[str, Any]] = {}
    for key, raw in overrides.items():
        section_name, field_name = _split_key(key)
        hint = typing.get_type_hints(type(config.sections[section_name]))[field_name]
        changes.setdefault(section_name, {})[field_name] = coerce(raw, hint, key)
    updated = dict(config.sections)
    for section_name, values in changes.items():
        updated[section_name] = dataclasses.replace(config.sections[section_name], **values)
    return PipelineConfig(updated)


def to_dict(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """The config as plain JSON-ready data."""
    return {name: dataclasses.asdict(section) for name, section in config.sections.items()}


def coerce(raw: Any, annotation: Any, key: str) -> Any:
    """Turn a raw override (a string from the CLI, or a Python value from a preset) into the field's type."""
    if annotation is str:
        return raw if isinstance(raw, str) else str(raw)
    value = _literal(raw) if isinstance(raw, str) else raw
    kind = tuple if typing.get_origin(annotation) is tuple else annotation
    converted = _CONVERTERS[kind](value)
    if converted is None:
        expected = {tuple: "tuple of ints, e.g. (32, 64)", dict: 'JSON object, e.g. {"width": 24}'}.get(
            kind, kind.__name__)
        raise UserError(f"{key}={raw!r} is not a valid {expected}; fix the value (default: {_default_of(key)!r})")
    return converted


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value if isinstance(value, bool) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _to_float(value: Any) -> float | None:
    return float(value) if _is_int(value) or isinstance(value, float) else None


def _to_int_tuple(value: Any) -> tuple[int, ...] | None:
    value = (value,) if _is_int(value) else value
    if isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        return tuple(value)
    return None


def _to_dict(value: Any) -> dict | None:
    if isinstance(value, str):  # JSON (true, null) where Python's literals did not parse
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, dict) else None


_CONVERTERS = {bool: _to_bool, int: lambda v: v if _is_int(v) else None, float: _to_float, tuple: _to_int_tuple,
               dict: _to_dict}


def _split_key(key: str) -> tuple[str, str]:
    """`section.key` checked against the registry; an unknown one gets the nearest valid key."""
    section_name, _, field_name = key.partition(".")
    if key in valid_keys():
        return section_name, field_name
    nearest = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.6)
    hint = f"did you mean {nearest[0]}?" if nearest else f"sections are {', '.join(sections())}"
    raise UserError(f"unknown config key {key!r}; {hint} (`python -m pipeline.run --help` lists every key)")


def _fill_derived_defaults(config: PipelineConfig) -> PipelineConfig:
    """Defaults that come from another section: the model's name and the augmentation from the data."""
    derived = {}
    if not config.export.model_name:
        derived["export.model_name"] = model_name_from_source(config.data.source)
    if config.train.augment == "auto":
        derived["train.augment"] = augmentation_for(config.data.source)
    return apply_overrides(config, derived)


def _default_of(key: str) -> Any:
    section_name, _, field_name = key.partition(".")
    return getattr(default_config().sections[section_name], field_name)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
