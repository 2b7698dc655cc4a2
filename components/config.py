"""The config sections: one frozen dataclass per stage (and one for the model).

Every field is declared with `setting(default, meaning, check)`: its default, one line saying what
it means (shown by `--help`), and the check that guards it. A section checks its fields when it is
built, so a value that cannot work is refused once, here, when the config is resolved and before any
work starts; the stages trust what they receive.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from components.backbones import BACKBONES, WEIGHTS_CHOICES, WEIGHTS_SUFFIX
from components.errors import UserError
from components.remote import is_url
from components.user_code import find_function


@dataclass(frozen=True)
class Check:
    """What a good value is: a test, and the words that tell the user what to give instead."""

    test: Callable[[Any], bool]
    expects: str  # completes "use ...", e.g. "a number above 0"


def setting(default: Any, meaning: str, check: Check | None = None) -> Any:
    """A config field: its default, its one-line meaning and its check.

    A dict default (`model.options`) is given to each section as its own copy, as dataclasses require.
    """
    metadata = {"meaning": meaning, "check": check}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(item: dataclasses.Field) -> Any:
    """A field's default value, whether it was given as a value or as a factory (dicts)."""
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


def one_of(*options: Any) -> Check:
    return Check(lambda value: value in options, "one of " + ", ".join(str(option) for option in options))


def between(low: float, high: float) -> Check:
    return Check(lambda value: low <= value <= high, f"a value from {low:g} to {high:g}")


def at_least(low: float) -> Check:
    return Check(lambda value: value >= low, f"a value of at least {low:g}")


def above(low: float) -> Check:
    return Check(lambda value: value > low, f"a value above {low:g}")


def _is_size(value: tuple[int, ...]) -> bool:
    return value == () or (len(value) == 2 and 1 <= min(value) and max(value) <= 4096)


def _is_profile_range(value: tuple[int, ...]) -> bool:
    return value == () or (len(value) == 2 and 1 <= value[0] <= value[1])


def is_class_name(name: str) -> bool:
    """Printable and non-empty: `labels.txt` holds one name per line, and a line break would shift them."""
    return bool(name.strip()) and name.isprintable()


def _is_class_list(text: str) -> bool:
    names = [name.strip() for name in text.split(",")]
    return text == "" or (all(map(is_class_name, names)) and len(set(names)) == len(names))


SOURCE_KINDS = ("digits", "idx", "npz", "folder", "tfds")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _is_source(text: str) -> bool:
    kind, colon, argument = text.partition(":")
    return (kind == "digits" and not colon) or (kind in SOURCE_KINDS[1:] and bool(argument.strip()))


def is_model_name(text: str) -> bool:
    """A single plain folder name: it can never point outside `saved_models/`."""
    return bool(MODEL_NAME.fullmatch(text)) and ".." not in text


def is_bucket_url(text: str) -> bool:
    """`PROTOCOL://BUCKET[/PATH]` of a store other than the local disk (components.remote.is_url), bucket named."""
    return is_url(text) and bool(text.partition("://")[2].strip("/"))


class Section:
    """Base of every config section: checks each field, then the section as a whole, when built."""

    name: ClassVar[str]  # the section's name in `section.key=value`

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            check = item.metadata.get("check")
            value = getattr(self, item.name)
            if check is not None and not check.test(value):
                raise UserError(f"{self.name}.{item.name}={value!r} cannot work; use {check.expects} "
                                f"(default: {default_of(item)!r})")
        self.check_together()

    def check_together(self) -> None:
        """Checks that involve several fields of the section; none by default."""


@dataclass(frozen=True)
class DataConfig(Section):
    name: ClassVar[str] = "data"
    source: str = setting("digits", "digits | idx:DIR (MNIST-format files) | npz:FILE | folder:DIR | tfds:NAME; "
                          "DIR and FILE may be bucket URLs (s3://, gs://; docs/buckets.md)",
                          Check(_is_source, "digits, idx:DIR, npz:FILE, folder:DIR or tfds:NAME (offline: digits, "
                                "or idx:/usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist)"))
    tfds_data_dir: str = setting("", "tfds: where TFDS keeps prepared datasets; \"\" = TFDS's default")
    class_names: str = setting("", "comma-separated class names replacing the source's; \"\" = keep them",
                               Check(_is_class_list, "distinct, printable, non-empty names separated by "
                                                     "commas"))
    download: bool = setting(False, "tfds: may download and prepare the dataset when it is not prepared yet")
    val_fraction: float = setting(0.1, "share of the training split carved out (stratified) for validation",
                                  between(0.001, 0.9))
    test_fraction: float = setting(0.2, "share held out for test, for sources without a test split",
                                   between(0.001, 0.9))
    max_train_examples: int = setting(0, "cap on training examples after the split, stratified; 0 = all",
                                      at_least(0))
    seed: int = setting(0, "seed of the validation (and test) carve-out", between(0, 2**32 - 1))
    image_size: tuple[int, ...] = setting((), "(height, width) every image is resized to, from any source; () = "
                                          "the source's own size (folder: the most common size, upright; other "
                                          "sizes are bad files)",
                                          Check(_is_size, "(height, width) from 1 to 4096, e.g. (28, 28)"))
    channels: int = setting(0, "folder: 1 (grayscale) or 3 (RGB) every image is converted to; 0 = the most "
                            "common", one_of(0, 1, 3))
    on_bad_file: str = setting("fail", "folder: fail | skip: an unreadable image stops the run, or is skipped",
                               one_of("fail", "skip"))
    shard_mb: float = setting(128.0, "target size of one TFRecord shard file, in MB; tf.data reads shards in "
                              "parallel and workers split them", between(0.01, 4096))

    def check_together(self) -> None:
        self._check_source_path()
        if self.source.startswith("folder:"):
            return
        for key, default in (("channels", 0), ("on_bad_file", "fail")):  # image_size resizes every source
            if getattr(self, key) != default:
                raise UserError(f"data.{key}={getattr(self, key)!r} applies only to folder: sources, and "
                                f"data.source={self.source!r} is not one; remove data.{key}")


    def _check_source_path(self) -> None:
        kind, _, argument = self.source.partition(":")
        if is_url(argument):
            if kind not in ("idx", "npz", "folder"):
                raise UserError(f"data.source={self.source}: a bucket URL works with idx:, npz: and folder: "
                                "sources only; copy the data to a local folder, or use one of those formats")
            return  # a bucket is listed by ingest's fingerprint, before any stage runs: one line if it fails
        path = Path(argument)
        if kind in ("idx", "folder") and not path.is_dir():
            what = ("MNIST-format files (Fashion-MNIST: apt-get install dataset-fashion-mnist)" if kind == "idx"
                    else "one sub-folder of images per class")
            raise UserError(f"data.source={self.source}: no such folder; point it at a folder of {what}")
        if kind == "npz" and not path.is_file():
            raise UserError(f"data.source={self.source}: no such file; point it at a file written by "
                            "numpy.savez(x_train=..., y_train=..., x_test=..., y_test=...)")


@dataclass(frozen=True)
class ValidateConfig(Section):
    name: ClassVar[str] = "validate"
    imbalance_warn_ratio: float = setting(10.0, "warn when the largest training class outnumbers the "
                                          "smallest by more than this", at_least(1))
    drift_warn_std: float = setting(0.5, "warn when test's pixel mean or std is further than this many "
                                    "train stds from train's", above(0))


@dataclass(frozen=True)
class PreprocessConfig(Section):
    name: ClassVar[str] = "preprocess"
    epsilon: float = setting(1e-6, "added to the pixel std so a constant image set cannot divide by zero",
                             between(1e-12, 1.0))


# What model.options may set for a backbone (its default is backbone_network's, in model.py: code, fingerprinted).
BACKBONE_OPTIONS = ("dropout",)
BUILT_IN_BUILDERS = ("cnn", *BACKBONES)


def _is_builder(text: str) -> bool:
    module, colon, function = text.rpartition(":")
    return text in BUILT_IN_BUILDERS or (bool(colon) and bool(module.strip()) and function.isidentifier())


def _is_weights(text: str) -> bool:
    return text in WEIGHTS_CHOICES or text.endswith(WEIGHTS_SUFFIX)


def _is_json_object(value: dict) -> bool:
    try:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value) and \
            json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class ModelConfig(Section):
    name: ClassVar[str] = "model"
    # The built-in network's keys: with another builder they have no meaning (its settings go in `options`).
    CNN_KEYS: ClassVar[tuple[str, ...]] = ("conv_widths", "convs_per_block", "padding", "dense_units", "dropout",
                                           "batch_norm")
    builder: str = setting("cnn", "the network: cnn (the built-in CNN, the keys below), a pretrained backbone "
                           "(mobilenet_v3_small | efficientnet_v2_b0 | resnet50, docs/pretrained.md) or "
                           "MODULE:FUNCTION, your own: FUNCTION(input_shape, num_classes, **model.options) returns "
                           "a Keras model from normalized images to logits (docs/your-network.md)",
                           Check(_is_builder, f"cnn, {', '.join(BACKBONES)}, or MODULE:FUNCTION (a module on "
                                 "PYTHONPATH or a .py file), e.g. examples/networks.py:small_resnet"))
    options: dict = setting({}, "keyword arguments for your own builder, a JSON object, e.g. {\"width\": 24}; "
                            "a backbone takes {\"dropout\": RATE} (default 0.2)",
                            Check(_is_json_object, "a JSON object with string keys, e.g. {\"width\": 24}"))
    weights: str = setting("none", "a backbone's starting weights: none (random) | imagenet (Keras's download, "
                           "cached in ~/.keras/models) | PATH to a .weights.h5 file saved from the same "
                           "keras.applications network built with include_top=False",
                           Check(_is_weights, f"none, imagenet, or a path ending in {WEIGHTS_SUFFIX}"))
    init: str = setting("", "warm start from an export's weights: saved_models/NAME (its newest version) or "
                        "saved_models/NAME/VERSION; \"\" = from model.builder's own weights (docs/pretrained.md)")
    conv_widths: tuple[int, ...] = setting((32, 64), "filters per conv block; each block halves the image "
                                           "size", Check(lambda v: 1 <= len(v) <= 16 and 1 <= min(v) and max(v) <= 4096,
                                                         "1 to 16 filter counts from 1 to 4096, e.g. (32, 64)"))
    convs_per_block: int = setting(1, "3x3 convolutions in each block", between(1, 8))
    padding: str = setting("same", "same | valid: \"valid\" shrinks each conv's output by 2 pixels (cheaper)",
                           one_of("same", "valid"))
    dense_units: int = setting(128, "width of the hidden dense layer; 0 = none", between(0, 65536))
    dropout: float = setting(0.3, "dropout rate before the classifier", between(0, 0.95))
    batch_norm: bool = setting(True, "batch normalization after every convolution")

    def check_together(self) -> None:
        self._check_starting_weights()
        if self.builder in BACKBONES:
            self._check_backbone()
            return
        if self.builder == "cnn":
            if self.options:
                raise UserError(f"model.options={self.options!r} passes settings to a builder of your own, and "
                                f"model.builder=cnn is the built-in CNN; set its keys instead "
                                f"(model.{', model.'.join(self.CNN_KEYS)})")
            return
        find_function(self.builder, "model.builder")
        self._refuse_cnn_keys("is another network", "your builder's settings go in model.options")

    def _check_starting_weights(self) -> None:
        if self.weights != "none" and self.builder not in BACKBONES:
            raise UserError(f"model.weights={self.weights} gives a backbone's weights, and "
                            f"model.builder={self.builder} is no backbone; use model.builder="
                            f"{' | '.join(BACKBONES)}, or model.init to start from an export of this network")
        if self.weights not in WEIGHTS_CHOICES and not Path(self.weights).expanduser().is_file():
            raise UserError(f"model.weights={self.weights}: no such file; give a {WEIGHTS_SUFFIX} file saved with "
                            "save_weights from the same keras.applications network (include_top=False)")
        if self.init and self.weights != "none":
            raise UserError(f"model.init={self.init} and model.weights={self.weights} both give the starting "
                            "weights; keep one of them")
        if self.init:  # the folder only: train's fingerprint hashes its weights, once, when it runs
            from components.saved_models import parent_version_dir  # only then: it loads NumPy (hashing)

            parent_version_dir(self.init)

    def _check_backbone(self) -> None:
        unknown = sorted(set(self.options) - set(BACKBONE_OPTIONS))
        if unknown:
            raise UserError(f"model.options={self.options!r}: {self.builder} takes only "
                            f"{', '.join(BACKBONE_OPTIONS)}; remove {', '.join(unknown)}")
        dropout = self.options.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 0.95:
            raise UserError(f"model.options={self.options!r}: dropout must be a number from 0 to 0.95")
        self._refuse_cnn_keys("is a backbone", "its head's dropout goes in model.options={\"dropout\": RATE}")

    def _refuse_cnn_keys(self, network: str, instead: str) -> None:
        """One line for a built-in CNN key set beside another `model.builder`, which would ignore it."""
        defaults = type(self)()
        for key in self.CNN_KEYS:
            if getattr(self, key) != getattr(defaults, key):
                raise UserError(f"model.{key}={getattr(self, key)!r} sets the built-in CNN, and "
                                f"model.builder={self.builder} {network}; remove model.{key} ({instead})")


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "single", "mirrored", "multi_worker")
AUGMENTATIONS = ("auto", "none", "shift", "shift+flip")


@dataclass(frozen=True)
class TrainConfig(Section):
    name: ClassVar[str] = "train"
    epochs: int = setting(0, "most passes over the training split; 0 = sized to the data (about 80,000 "
                          "images seen, 6 to 46 passes)", between(0, 100_000))
    batch_size: int = setting(64, "examples per step on each replica (the global batch is this times the "
                              "replicas)", between(1, 1_000_000))
    learning_rate: float = setting(3e-3, "peak Adam learning rate: warmed up to, then decayed to 0 along a "
                                   "cosine", between(1e-8, 10))
    warmup: float = setting(0.05, "share of the planned steps spent warming the learning rate up from 0",
                            between(0, 0.5))
    label_smoothing: float = setting(0.1, "share of each label's probability spread over the other classes",
                                     between(0, 0.5))
    augment: str = setting("auto", "auto | none | shift | shift+flip: random shifts (and left-right flips) "
                           "of training images; auto: shift+flip for data a flip keeps the class of "
                           "(fashion_mnist, cifar10), shift otherwise", one_of(*AUGMENTATIONS))
    max_shift: float = setting(0.1, "largest random shift, as a share of the image size (at least 1 pixel)",
                               between(0.01, 0.5))
    patience: int = setting(10, "epochs without a lower validation loss before training stops; 0 = never "
                            "stop early. The best epoch's weights are kept either way", between(0, 100_000))
    max_seconds: float = setting(0.0, "time budget for training, in seconds: the learning-rate schedule is "
                                 "planned to end within it; 0 = none", between(0, 1e7))
    precision: str = setting("auto", "auto | float32 | mixed_float16 | mixed_bfloat16 (auto: float16 on GPUs "
                             ">= 7.0, bfloat16 on CPUs with AVX512_BF16 or AMX, else float32)", one_of(*PRECISIONS))
    strategy: str = setting("auto", "auto | single | mirrored | multi_worker (auto: data-parallel over all GPUs "
                            "when there are 2+; multi_worker: over the workers TF_CONFIG lists, each running "
                            "the same command)", one_of(*STRATEGIES))
    in_memory_mb: float = setting(64.0, "a training split up to this size (MB of pixels) is loaded into memory "
                                  "and gathered from; a larger one is streamed from its shards; 0 = always stream",
                                  between(0, 1e6))
    shuffle_mb: float = setting(64.0, "memory for the streamed training split's shuffle buffer, in MB of pixels "
                                "(at least 1,024 images)", between(0.01, 1e6))
    xla: str = setting("auto", "auto | on | off: compile training with XLA (auto: on GPUs only; on CPUs it "
                       "measured 4x slower)", one_of("auto", "on", "off"))
    seed: int = setting(42, "seeds Python, NumPy, TensorFlow, the shuffle and the augmentation",
                        between(0, 2**32 - 1))
    deterministic: bool = setting(False, "TF op determinism: byte-identical reruns on GPUs too, at a cost "
                                  "(CPU runs are repeatable without it)")
    profile_batches: tuple[int, ...] = setting((), "first and last batch traced by the profiler; () = off",
                                               Check(_is_profile_range, "(first, last) batch numbers from 1, "
                                                     "first <= last, or () for off"))
    log_images: int = setting(16, "training images written to TensorBoard's Images tab; 0 = none",
                              between(0, 64))
    head_share: float = setting(0.2, "training from trained weights under a new head (a backbone with "
                                "model.weights=imagenet|PATH, or model.init with other classes): share of the planned "
                                "steps that train the head alone, the body frozen; 0 = fine-tune from the start",
                                between(0, 0.9))
    unfreeze_share: float = setting(1.0, "after the head's phase: share of the body's layers, from the top, "
                                    "trained too (1 = all); the body's batch norms stay in inference mode",
                                    between(0.01, 1))
    fine_tune_lr_scale: float = setting(0.1, "after the head's phase: the learning rate (of every weight, the "
                                        "head's too) as a multiple of the schedule's, warmed up again",
                                        between(1e-4, 1))


PRUNERS = ("median", "hyperband", "none")
MIN_TUNE_SECONDS = 30.0  # below this a search is one trial of the defaults, cut short: no search at all


def _is_budget(seconds: float) -> bool:
    return seconds == 0 or seconds >= MIN_TUNE_SECONDS


@dataclass(frozen=True)
class TuneConfig(Section):
    name: ClassVar[str] = "tune"
    max_seconds: float = setting(0.0, "time budget of a hyper-parameter search before train, in seconds (start-up "
                                 "included): Optuna trials on the training split, scored on validation; train then "
                                 "uses the best values found; 0 = no search", Check(_is_budget, f"0 (no search) or "
                                 f"at least {MIN_TUNE_SECONDS:g} seconds, e.g. 600"))
    space: dict = setting({}, "the settings searched, a JSON object of section.key: [LOW, HIGH], [LOW, HIGH, \"log\"], "
                          "[A, B, C, ...] or {\"choices\": [A, B]}, e.g. {\"train.learning_rate\": [1e-4, 1e-2, "
                          "\"log\"], \"model.dropout\": [0.0, 0.5]}; {} = the default space for model.builder "
                          "(docs/tuning.md)", Check(_is_json_object, "a JSON object with string keys, e.g. "
                                                    "{\"model.dropout\": [0.0, 0.5]}"))
    max_trials: int = setting(0, "most trials, the first being the config as given; 0 = as many as the budget "
                              "allows", at_least(0))
    pruner: str = setting("median", "median | hyperband | none: when a trial is stopped early, judged by its "
                          "validation accuracy against the other trials' at the same tenth of their schedules",
                          one_of(*PRUNERS))


@dataclass(frozen=True)
class EvaluateConfig(Section):
    name: ClassVar[str] = "evaluate"
    batch_size: int = setting(512, "examples per inference step", between(1, 1_000_000))
    min_accuracy: float = setting(0.0, "test accuracy a model needs to be blessed (exported), on top of "
                                  "evaluate.max_p_value's test", between(0, 1))
    max_p_value: float = setting(0.01, "blessed only if the test accuracy beats always answering the training split's "
                                 "commonest class at this significance (one-sided binomial test); 1 = no such test",
                                 Check(lambda value: 0 < value <= 1, "a value above 0 and at most 1 (1 = no test)"))
    max_regression: float = setting(0.01, "largest drop in test accuracy from the newest export still blessed",
                                    between(0, 1))
    fail_if_not_blessed: bool = setting(False, "exit code 1 instead of 0 when the model is not blessed")


@dataclass(frozen=True)
class ExportConfig(Section):
    name: ClassVar[str] = "export"
    model_name: str = setting("", "saved_models/<model_name>/<version>/; \"\" = named after the data "
                              "(digits, fashion_mnist, the folder's name)",
                              Check(lambda v: v == "" or is_model_name(v),
                                    "a plain folder name of letters, digits, _ . - (no / or ..), e.g. digits"))
    parity_examples: int = setting(256, "test images on which Keras, SavedModel and ONNX Runtime must agree",
                                   between(1, 100_000))
    parity_atol: float = setting(1e-4, "largest allowed absolute difference between their probabilities",
                                 between(1e-9, 0.1))
    onnx_opset: int = setting(17, "ONNX opset of model.onnx", between(13, 18))
    int8: bool = setting(False, "also write model_int8.tflite and model_int8.onnx (8-bit integer weights and "
                         "activations, calibrated on training images); each is published only if it keeps "
                         "int8_max_drop")
    int8_max_drop: float = setting(0.5, "percentage points of test accuracy an int8 file may lose against its "
                                   "float twin; more and it is left out, the reason in metadata.json, the model "
                                   "card and report.html", between(0.0, 100.0))
    calibration_examples: int = setting(256, "training images the int8 files are calibrated on (the value range "
                                        "of every activation)", between(1, 100_000))
    score_examples: int = setting(10_000, "test images each exported file is scored on: its accuracy, its "
                                  "agreement with the Keras model, the int8 gate", between(1, 10_000_000))
    measure_speed: bool = setting(True, "time each exported file here (batch 1 p50/p99, batch 256 images/s) "
                                  "for metadata.json, the model card and report.html")
    push_to: str = setting("", "a bucket URL to copy each blessed version to, as <push_to>/<model_name>/<number>/ "
                           "(TF Serving's layout; numbered after the bucket's newest), e.g. s3://BUCKET/models; "
                           "\"\" = no push",
                           Check(lambda v: v == "" or is_bucket_url(v),
                                 "\"\" or a bucket URL such as s3://BUCKET/models or gs://BUCKET/models (the local "
                                 "copy is saved_models/ already)"))


@dataclass(frozen=True)
class ReportConfig(Section):
    name: ClassVar[str] = "report"
    mistakes: int = setting(32, "misclassified test images shown in report.html and TensorBoard, most confident "
                            "first; 0 = none", between(0, 400))


def check_sections_together(sections: Mapping[str, Section]) -> None:
    """Checks that involve two sections, once every section is built: a backbone's smallest image."""
    data, model = sections.get("data"), sections.get("model")
    if not isinstance(data, DataConfig) or not isinstance(model, ModelConfig) or model.builder not in BACKBONES:
        return
    smallest = BACKBONES[model.builder].min_size
    if data.image_size and min(data.image_size) < smallest:
        raise UserError(f"data.image_size={data.image_size} is smaller than model.builder={model.builder} takes; "
                        f"give at least ({smallest}, {smallest}), or () to let ingest resize smaller images up to "
                        f"{smallest}x{smallest}")
