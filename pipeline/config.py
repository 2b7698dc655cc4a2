"""The run's configuration: the registry's config sections, presets, config files and `section.key=value` overrides.

The sections and their checks live in `components/config.py`; this module composes them. Settings
come in layers, each overriding the one before: the defaults, a preset, config files (TOML or JSON,
in the order given), the command line. Every layer is typed by the fields and checked by the
sections, so a preset, a file and a command-line override go through the same checks; an error in a
file names the file. Then the defaults that depend on other sections are filled in. `to_toml` writes
a config as a file that reads back to the same config (`--print-config`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import logging
import re
import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import tomli_w

from components.config import ModelConfig, Section, check_sections_together, default_of
from components.errors import UserError
from components.tune_space import check_tuning
from pipeline.registry import derived_defaults, sections

log = logging.getLogger(__name__)

# Keys a release removed, and what took their place: an older run's config.json still runs (`--config`), the
# key ignored with a warning; on the command line it is refused, with the nearest key as the hint.
RETIRED_KEYS = {"report.measure_latency": "export.measure_speed (export times every file it writes)"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

CONFIG_SUFFIXES = (".toml", ".json")


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
        "export.measure_speed": False,  # timings of a 3-epoch model tell nothing, and cost every test's export
    },
    # Fashion-MNIST from Debian's dataset-fashion-mnist: 0.9358 test accuracy in 4.5 to 6 minutes here.
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


@dataclass(frozen=True)
class Layer:
    """Settings from one place, applied over the layers before it: a preset, a config file, the command line."""

    values: Mapping[str, Any]  # "section.key" -> the value as written
    origin: str = ""  # the file they came from, named by their errors; "" for a preset or the command line
    typed: bool = True  # False: the command line's text, read as Python literals by each field's type


def resolve(preset: str = "default", overrides: Sequence[str] = (),
            config_files: Sequence[Path | str] = ()) -> PipelineConfig:
    """Build the run's config: the defaults, the preset, the config files in order, then the command line's overrides.

    Raises:
        UserError: an unknown preset or key, a value of the wrong type, a value that cannot work, or a
            config file that is missing or unreadable; an error that comes from a file names the file.
    """
    return fill_derived_defaults(resolve_settings(preset, overrides, config_files))


def resolve_settings(preset: str = "default", overrides: Sequence[str] = (),
                     config_files: Sequence[Path | str] = ()) -> PipelineConfig:
    """The config as `resolve` builds it, before the defaults derived from other sections are filled in.

    `--print-config` writes this: a file that keeps `export.model_name=""` and `train.augment=auto`
    derives them again when someone edits its data source. The layers are merged first and the
    sections built once, from the final values: a section checks its fields together, so a value
    is judged with the others it will run with, whichever layer set them.
    """
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    later = [*(read_config_file(Path(path)) for path in config_files),
             Layer(dict(parse_override(text) for text in overrides), typed=False)]
    values, origins = _typed_values([Layer(_preset_values(preset, later)), *later])
    _check_preset_fits_source(preset, values, {key for layer in later for key in layer.values}, origins)
    try:
        return _with_values(default_config(), values)
    except UserError as error:  # it starts with the key it refuses: `section.key=value ...`, `tune.space['x']: ...`
        key = re.match(r"\w+\.\w+", str(error))
        raise _named(origins.get(key.group() if key else "", ""), error) from None


def _preset_values(preset: str, later: Sequence[Layer]) -> dict[str, Any]:
    """The preset's overrides, less the built-in CNN's keys when a later layer chooses another network.

    With another `model.builder` those keys mean nothing (`ModelConfig.check_together` refuses them
    when set), and a preset sets them for the CNN it was tuned with, not for the user's network.
    """
    builder = next((layer.values["model.builder"] for layer in reversed(later) if "model.builder" in layer.values),
                   PRESETS[preset].get("model.builder", "cnn"))
    cnn_keys = {f"model.{key}" for key in ModelConfig.CNN_KEYS}
    return {key: value for key, value in PRESETS[preset].items() if builder == "cnn" or key not in cnn_keys}


def _typed_values(layers: Sequence[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every layer's values typed by their fields, a later layer's winning; and the file each value came from."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        for key, raw in layer.values.items():
            try:
                values[key] = coerce(raw, _field_type(*_split_key(key)), key, layer.typed)
            except UserError as error:
                raise _named(layer.origin, error) from None
            origins[key] = layer.origin
    return values, origins


def _check_preset_fits_source(preset: str, values: Mapping[str, Any], set_later: set[str],
                              origins: Mapping[str, str]) -> None:
    """A preset's class names belong to its source: with another source they would label it wrongly."""
    preset_values = PRESETS[preset]
    source = preset_values.get("data.source", _default_of("data.source"))
    if "data.class_names" in preset_values and "data.source" in set_later and "data.class_names" not in set_later \
            and values["data.source"] != source:
        raise _named(origins["data.source"], UserError(
            f"--preset {preset} names the classes of {source}, and data.source={values['data.source']} is another "
            "source; also give data.class_names (\"\" keeps the source's own names)"))


def _named(origin: str, error: UserError) -> UserError:
    """The error, prefixed with the file its value came from (`my.toml: ...`), if it came from one."""
    return UserError(f"{origin}: {error}") if origin else error


def apply_overrides(config: PipelineConfig, overrides: Mapping[str, Any]) -> PipelineConfig:
    """Return a copy of `config` with `section.key` overrides applied, each typed by its field.

    The overrides of one section are applied together, so checks that involve several fields see
    the final values whatever order the keys came in.
    """
    return _with_values(config, {key: coerce(raw, _field_type(*_split_key(key)), key)
                                 for key, raw in overrides.items()})


def _with_values(config: PipelineConfig, values: Mapping[str, Any]) -> PipelineConfig:
    """A copy of `config` with typed `section.key` values; each changed section is built (and checked) once."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section_name, _, field_name = key.partition(".")
        changes.setdefault(section_name, {})[field_name] = value
    updated = dict(config.sections)
    for section_name, section_values in changes.items():
        updated[section_name] = dataclasses.replace(config.sections[section_name], **section_values)
    check_sections_together(updated)
    check_tuning(updated)
    return PipelineConfig(updated)


def _field_type(section_name: str, field_name: str) -> Any:
    return typing.get_type_hints(sections()[section_name])[field_name]


def to_dict(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """The config as plain JSON-ready data."""
    return {name: dataclasses.asdict(section) for name, section in config.sections.items()}


def read_config_file(path: Path) -> Layer:
    """A config file's settings: TOML with a table per section, or JSON shaped as a run's `config.json`.

    Values keep the types the file gives them (`coerce(..., typed=True)`): `conv_widths = [16, 32]`,
    `epochs = 3`; a string is text, never read as a number or a list.

    Raises:
        UserError: naming the file: not .toml or .json, missing or unreadable, not parsable (with its
            line), or a value outside a section.
    """
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise UserError(f"{path}: a config file is TOML (.toml) or JSON (.json); give one of those "
                        "(`python -m pipeline.run --print-config > my.toml` writes one to start from)")
    return Layer(_section_values(_parse_config(path, _read_config_text(path)), path), origin=str(path))


def _read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark some editors write is no error
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file; check the path (`python -m pipeline.run --print-config "
                        "> my.toml` writes one to start from)") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror}); give a readable .toml or .json file") from None


def _parse_config(path: Path, text: str) -> Any:
    """The file's data, parsed as its suffix says."""
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}") \
                from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # its message ends with the line and column
        raise UserError(f"{path}: not valid TOML: {error}") from None


def _section_values(data: Any, path: Path) -> dict[str, Any]:
    """`{"train": {"epochs": 3}}` as `{"train.epochs": 3}`; anything outside a section's table is refused."""
    example = '[train] then epochs = 3 (JSON: {"train": {"epochs": 3}})'
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a JSON {type(data).__name__}, not sections; write a table per section, "
                        f"e.g. {example}")
    values: dict[str, Any] = {}
    for section_name, table in data.items():
        if not isinstance(table, dict):
            homes = [key for key in valid_keys() if key.endswith(f".{section_name}")]
            hint = f" (did you mean {' or '.join(homes)}?)" if homes else ""
            raise UserError(f"{path}: {section_name!r} = {table!r} is not in a section{hint}; put each key in "
                            f"its section's table: {example}")
        values.update({f"{section_name}.{key}": value for key, value in table.items()})
    for key in RETIRED_KEYS.keys() & values.keys():
        log.warning("%s: %s is retired, ignored; its place: %s", path, key, RETIRED_KEYS[key])
        del values[key]
    return values


def to_toml(config: PipelineConfig, header: Iterable[str] = ()) -> str:
    """The config as a TOML file that `--config` reads back to the same config.

    A table per section, every key after a comment saying what it means (nanoGPT's way) and, for a
    value filled in from other settings (`export.model_name=""`), what it resolves to. tomli_w writes
    the values; a tuple is written on one line, and a dict as a table of its own at the end of its
    section (TOML's inline tables may not span lines), or, if it holds null, which TOML lacks, as
    its JSON text, which a dict field reads as well.

    Args:
        config: what `resolve_settings` returned: derived values are noted, not written.
        header: comment lines for the top of the file.
    """
    resolved = fill_derived_defaults(config)
    lines = [f"# {line}".rstrip() for line in header]
    for name, section in config.sections.items():
        lines += ["", f"[{name}]"]
        tables: list[str] = []
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            comment = textwrap.wrap(item.metadata["meaning"], 98, initial_indent="# ", subsequent_indent="# ",
                                    break_long_words=False, break_on_hyphens=False)
            if getattr(resolved.sections[name], item.name) != value:
                comment.append(f"# resolves to {json.dumps(getattr(resolved.sections[name], item.name))} here")
            table = _toml_table(name, item.name, value) if isinstance(value, dict) and value else None
            if table is None:
                lines += [*comment, _toml_assignment(item.name, value)]
            else:
                tables += ["", *comment, table]
        lines += tables
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_assignment(key: str, value: Any) -> str:
    """`key = value` on one line."""
    if isinstance(value, tuple):  # of ints (the only tuples); tomli_w would give each item a line
        return f"{key} = [{', '.join(str(item) for item in value)}]"
    if value == {}:
        return f"{key} = {{}}"
    if isinstance(value, dict):  # one TOML cannot hold: the field reads JSON text too
        value = json.dumps(value)
    return tomli_w.dumps({key: value}).rstrip("\n")


def _toml_table(section_name: str, key: str, value: dict) -> str | None:
    """`[section.key]` and the dict's items; None if TOML cannot hold it (a null)."""
    try:
        return tomli_w.dumps({section_name: {key: value}}).rstrip("\n")
    except TypeError:
        return None


def coerce(raw: Any, annotation: Any, key: str, typed: bool = False) -> Any:
    """Turn a raw value into the field's type.

    Args:
        raw: the command line's text, read as a Python literal unless the field is a str; or, with
            `typed`, a value that has its type already (a preset's Python value, a config file's).
        annotation: the field's type.
        key: `section.key`, for the error.
        typed: a string is then text only: it fits a str field, and a dict field as JSON text. An int
            fits a float field; nothing else is converted.

    Raises:
        UserError: a value of another type, with the field's default.
    """
    kind = tuple if typing.get_origin(annotation) is tuple else annotation
    value = _literal(raw) if isinstance(raw, str) and not typed and kind is not str else raw
    text_for_another_type = typed and isinstance(raw, str) and kind not in (str, dict)
    converted = None if text_for_another_type else _CONVERTERS[kind](value)
    if converted is None:
        expected = (_EXPECTED_IN_FILES if typed else _EXPECTED).get(kind, kind.__name__)
        raise UserError(f"{key}={raw!r} is not a valid {expected}; fix the value (default: {_default_of(key)!r})")
    return converted


_EXPECTED = {tuple: "tuple of ints, e.g. (32, 64)", dict: 'JSON object, e.g. {"width": 24}'}
_EXPECTED_IN_FILES = {str: "str (text in quotes)", bool: "bool (true or false)", int: "int (a whole number)",
                      float: "float (a number)", tuple: "list of ints, e.g. [32, 64]",
                      dict: 'table (TOML) or object (JSON), e.g. {"width": 24}'}


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


_CONVERTERS = {str: lambda v: v if isinstance(v, str) else None, bool: _to_bool,
               int: lambda v: v if _is_int(v) else None, float: _to_float, tuple: _to_int_tuple, dict: _to_dict}


def _split_key(key: str) -> tuple[str, str]:
    """`section.key` checked against the registry; an unknown one gets the nearest valid key."""
    section_name, _, field_name = key.partition(".")
    if key in valid_keys():
        return section_name, field_name
    nearest = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.6)
    hint = f"did you mean {nearest[0]}?" if nearest else f"sections are {', '.join(sections())}"
    raise UserError(f"unknown config key {key!r}; {hint} (`python -m pipeline.run --help` lists every key)")


def fill_derived_defaults(config: PipelineConfig) -> PipelineConfig:
    """Defaults that come from another section: the model's name and the augmentation from the data.

    Only the keys left to the data, at their field's default (`""`, `auto`), are filled in.
    """
    left_to_data = {key: value for key, value in derived_defaults(config.data.source).items()
                    if _value_of(config, key) == _default_of(key)}
    return _with_values(config, left_to_data)


def _value_of(config: PipelineConfig, key: str) -> Any:
    section_name, _, field_name = key.partition(".")
    return getattr(config.sections[section_name], field_name)


def _default_of(key: str) -> Any:
    return _value_of(default_config(), key)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
