"""Pipeline configuration: one frozen dataclass per stage, presets, and `section.key=value` overrides.

Every field has a default and a comment saying what it means. Presets are named sets of
overrides, so a preset and a command-line override go through the same typed checks.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from pipeline.errors import UserError


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # digits | idx:DIR (MNIST-format files) | npz:FILE | folder:DIR | tfds:NAME
    tfds_data_dir: str = ""  # where TFDS keeps prepared datasets; "" = TFDS's default (~/tensorflow_datasets)
    class_names: str = ""  # comma-separated class names replacing the source's ("" = keep; IDX files have none)
    download: bool = False  # tfds: may download and prepare the dataset when it is not prepared yet
    val_fraction: float = 0.1  # share of the training split carved out (stratified) for validation
    test_fraction: float = 0.2  # share held out for test, only for sources without a test split (digits)
    max_train_examples: int = 0  # cap on training examples after the split, stratified; 0 = all
    seed: int = 0  # seed of the validation (and test) carve-out
    image_size: tuple[int, ...] = ()  # folder: (height, width) every image is resized to; () = the first image's size
    channels: int = 0  # folder: 1 (grayscale) or 3 (RGB) every image is converted to; 0 = the first image's
    on_bad_file: str = "fail"  # folder: fail | skip: an unreadable image stops the run, or is skipped and counted


@dataclass(frozen=True)
class ValidateConfig:
    imbalance_warn_ratio: float = 10.0  # warn when the largest training class outnumbers the smallest by more
    drift_warn_std: float = 0.5  # warn when test's pixel mean or std is further than this many train stds from train's


@dataclass(frozen=True)
class PreprocessConfig:
    epsilon: float = 1e-6  # added to the pixel std so a constant image set cannot divide by zero


@dataclass(frozen=True)
class ModelConfig:
    conv_widths: tuple[int, ...] = (32, 64)  # filters per conv block; each block halves the image size
    convs_per_block: int = 1  # 3x3 convolutions in each block
    padding: str = "same"  # same | valid: "valid" shrinks each conv's output by 2 pixels (cheaper)
    dense_units: int = 128  # width of the hidden dense layer; 0 = none
    dropout: float = 0.3  # dropout rate before the classifier, 0..1
    batch_norm: bool = True  # batch normalization after every convolution


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # passes over the training split
    batch_size: int = 64  # examples per step
    learning_rate: float = 2e-3  # peak Adam learning rate, decayed to 0 along a cosine
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16 (auto: float16 on GPUs >= 7.0)
    strategy: str = "auto"  # auto | single | mirrored (auto: data-parallel over all GPUs when there are 2+)
    seed: int = 42  # seeds Python, NumPy, TensorFlow and the tf.data shuffle
    deterministic: bool = True  # TF op determinism: byte-identical reruns, somewhat slower on GPU
    profile_batches: tuple[int, ...] = (2, 4)  # first and last batch traced by the profiler; () = off
    log_images: int = 16  # training images written to TensorBoard's Images tab; 0 = none


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 512  # examples per inference step
    min_accuracy: float = 0.0  # test accuracy a model needs to be blessed (exported)
    max_regression: float = 0.01  # largest drop in test accuracy from the newest export still blessed
    fail_if_not_blessed: bool = False  # exit code 1 instead of 0 when the model is not blessed


@dataclass(frozen=True)
class ExportConfig:
    model_name: str = "digits_cnn"  # saved_models/<model_name>/<version>/
    parity_examples: int = 256  # test images on which Keras, SavedModel and ONNX Runtime must agree
    parity_atol: float = 1e-4  # largest allowed absolute difference between their probabilities
    onnx_opset: int = 17  # ONNX opset of model.onnx


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


PRESETS: dict[str, dict[str, Any]] = {
    # The digits run: about a minute on 2 cores, including TensorFlow's start-up and the export.
    "default": {},
    # Seconds, for tests: a few short epochs of a small network, the profiler off.
    "smoke": {
        "model.conv_widths": (8, 16),
        "model.dense_units": 32,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.profile_batches": (),
        "train.log_images": 4,
        "export.model_name": "smoke_cnn",
    },
    # Fashion-MNIST from Debian's dataset-fashion-mnist, tuned for about 5 minutes of training.
    "fashion": {
        "data.source": "idx:/usr/share/datasets/fashion-mnist",
        "data.val_fraction": 1 / 12,  # 5,000 of the 60,000 training images
        "data.class_names": "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot",
        "model.conv_widths": (32, 64),
        "model.dense_units": 128,
        "model.dropout": 0.3,
        "train.epochs": 18,
        "train.batch_size": 128,
        "train.learning_rate": 3e-3,
        "export.model_name": "fashion_cnn",
    },
}


# Values a field's type alone does not rule out; checked with every override, before any work starts.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.on_bad_file": ("fail", "skip"),
    "model.padding": ("same", "valid"),
    "train.precision": ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "train.strategy": ("auto", "single", "mirrored"),
}
RANGES: dict[str, tuple[float, float]] = {  # inclusive bounds
    "data.val_fraction": (1e-9, 1 - 1e-9),
    "data.test_fraction": (1e-9, 1 - 1e-9),
    "model.dropout": (0.0, 0.99),
    "train.epochs": (1, 1e9),
    "train.batch_size": (1, 1e9),
}


def valid_keys(config: PipelineConfig | None = None) -> list[str]:
    """All `section.key` names a user may override."""
    config = config or PipelineConfig()
    return [
        f"{section.name}.{key.name}"
        for section in dataclasses.fields(config)
        for key in dataclasses.fields(getattr(config, section.name))
    ]


def parse_override(text: str) -> tuple[str, str]:
    """Split `section.key=value` into its key and raw value."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise UserError(f"override {text!r} is not of the form section.key=value (e.g. train.epochs=3)")
    return key.strip(), value.strip()


def coerce(raw: Any, annotation: Any, key: str) -> Any:
    """Turn a raw override (a string from the CLI, or a Python value from a preset) into the field's type."""
    value = _literal(raw) if isinstance(raw, str) else raw
    if annotation is str:
        return raw if isinstance(raw, str) else str(raw)
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typing.get_origin(annotation) is tuple:
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        if isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
    name = "tuple of ints, e.g. (32, 64)" if typing.get_origin(annotation) is tuple else annotation.__name__
    raise UserError(f"{key}={raw!r} is not a valid {name}; fix the value (default: {_default_of(key)!r})")


def apply_overrides(config: PipelineConfig, overrides: Mapping[str, Any]) -> PipelineConfig:
    """Return a copy of `config` with `section.key` overrides applied, each typed by its field.

    Raises:
        UserError: on an unknown key (the message lists the valid ones) or a value of the wrong type.
    """
    for key, raw in overrides.items():
        section_name, _, field_name = key.partition(".")
        hints = _section_hints(config, section_name)
        if field_name not in hints:
            raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys(config))}")
        section = getattr(config, section_name)
        value = coerce(raw, hints[field_name], key)
        _check_allowed(key, value)
        section = dataclasses.replace(section, **{field_name: value})
        config = dataclasses.replace(config, **{section_name: section})
    return config


def resolve(preset: str = "default", overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Build the run's config: the defaults, then the preset, then the command line's overrides."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    config = apply_overrides(PipelineConfig(), PRESETS[preset])
    return apply_overrides(config, dict(parse_override(text) for text in overrides))


def to_dict(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """The config as plain JSON-ready data."""
    return dataclasses.asdict(config)


def _section_hints(config: PipelineConfig, section_name: str) -> dict[str, Any]:
    sections = {f.name for f in dataclasses.fields(config)}
    if section_name not in sections:
        raise UserError(
            f"unknown config section {section_name!r}; valid keys: {', '.join(valid_keys(config))}"
        )
    return typing.get_type_hints(type(getattr(config, section_name)))


def _check_allowed(key: str, value: Any) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"{key}={value!r} is not one of {', '.join(CHOICES[key])}")
    if key in RANGES and not RANGES[key][0] <= value <= RANGES[key][1]:
        low, high = RANGES[key]
        raise UserError(f"{key}={value!r} is out of range; use a value from {low:g} to {high:g}")


def _default_of(key: str) -> Any:
    section_name, _, field_name = key.partition(".")
    return getattr(getattr(PipelineConfig(), section_name), field_name)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
