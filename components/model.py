"""The network: the built-in CNN, a pretrained backbone or a user's own (`model.builder`), wrapped to take raw pixels.

A network maps *normalized* images to class *logits*; the pipeline wraps every network the same way:
raw pixels 0..255 -> `normalize` (the training split's mean and std) -> the network -> `probabilities`,
a float32 softmax. Training reads the logits (a numerically stable loss, with label smoothing); every
export serves the probabilities. docs/your-network.md is the contract, with the reasons.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import keras
import numpy as np

from components.backbones import BACKBONES, WEIGHTS_CHOICES, check_imagenet_reachable
from components.config import BUILT_IN_BUILDERS, ModelConfig
from components.errors import UserError
from components.user_code import load_function, module_path, split_target

# Keras's default, 0.99, leaves the moving statistics far from the data's after a few hundred steps
# (small data sets train for no more); 0.9 is PyTorch's default and settles within a few dozen.
BATCH_NORM_MOMENTUM = 0.9
OUTPUT_NAME = "probabilities"  # the softmax layer, and the exported models' output


def build_model(config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int,
                mean: float, std: float, synchronized_batch_norm: bool = False,
                load_weights: bool = True) -> keras.Model:
    """The classifier: raw pixels in, float32 class probabilities out, the network in between.

    Args:
        config: the `model` section: the builder and its settings.
        image_shape: (height, width, channels) from the data's schema.
        num_classes: width of the output.
        mean, std: pixel statistics of the training split; the first layer normalizes with them, so
            the model (and every export of it) takes pixel values as they come, 0..255.
        synchronized_batch_norm: batch statistics over all replicas' examples (data-parallel training),
            so every replica ends with the same moving averages; applied to the network's batch norms.
        load_weights: give a backbone its `model.weights`; False when trained weights will replace them.

    Raises:
        UserError: the network returns another width than `num_classes`, or ends in a softmax.
    """
    network = build_network(config, image_shape, num_classes, load_weights)
    for layer in all_layers(network):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized_batch_norm  # read when the layer is called, not when built
    inputs = keras.Input(shape=image_shape, name="pixels")
    if config.builder in BACKBONES:  # scales its pixels as it was pretrained to, inside itself
        logits = network(inputs)
    else:
        logits = network(keras.layers.Rescaling(scale=1.0 / std, offset=-mean / std, name="normalize")(inputs))
    check_logits(network, logits, image_shape, num_classes, config.builder)
    outputs = keras.layers.Activation("softmax", dtype="float32", name=OUTPUT_NAME)(logits)
    return keras.Model(inputs, outputs, name="classifier")


def build_network(config: ModelConfig, input_shape: tuple[int, int, int], num_classes: int,
                  load_weights: bool = True) -> keras.Model:
    """The network `model.builder` names, to logits (not yet wrapped): from normalized images, or from raw
    pixels for a backbone."""
    if config.builder == "cnn":
        return cnn(input_shape, num_classes, **{key: getattr(config, key) for key in ModelConfig.CNN_KEYS})
    if config.builder in BACKBONES:
        weights = config.weights if load_weights else "none"
        return backbone_network(config.builder, input_shape, num_classes, weights,
                                **config.options)
    network = load_function(config.builder, "model.builder")(tuple(input_shape), num_classes, **config.options)
    if not isinstance(network, keras.Layer):
        raise UserError(f"model.builder={config.builder} returned {type(network).__name__}, not a Keras model; "
                        "return a keras.Model (Sequential, functional or subclassed) that gives logits")
    return network


def logits_of(model: keras.Model) -> keras.KerasTensor:
    """The logits inside a model `build_model` made: what its softmax reads."""
    return model.get_layer(OUTPUT_NAME).input


def check_logits(network: keras.Layer, logits: keras.KerasTensor, input_shape: tuple[int, int, int],
                 num_classes: int, builder: str) -> None:
    """Refuse a network whose output is not `num_classes` logits per image, with one line naming the setting.

    A softmax at the end is found by what it does (every row non-negative, summing to 1 on random
    inputs), so it is caught in Sequential, functional and subclassed networks alike. Trained on, it
    would be a softmax of probabilities: a loss that barely moves, and an export that serves them.
    """
    if tuple(logits.shape[1:]) != (num_classes,):
        raise UserError(f"model.builder={builder} returns outputs of shape {tuple(logits.shape)}, and the data "
                        f"has {num_classes} classes; return (batch, num_classes) logits (the builder is "
                        f"called with num_classes={num_classes})")
    probe = np.random.default_rng(0).normal(size=(4, *input_shape)).astype("float32")
    outputs = keras.ops.convert_to_numpy(network(probe, training=False)).astype("float64")
    if np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        raise UserError(f"model.builder={builder} ends in a softmax (its outputs are probabilities); return "
                        "logits instead: drop the final softmax, the pipeline adds one in float32 "
                        "(docs/your-network.md says why)")


def all_layers(layer: keras.Layer) -> Iterator[keras.Layer]:
    """`layer` and every layer inside it, nested models' included, depth first."""
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from all_layers(inner)


def cnn(input_shape: tuple[int, int, int], num_classes: int, conv_widths: tuple[int, ...] = (32, 64),
        convs_per_block: int = 1, padding: str = "same", dense_units: int = 128, dropout: float = 0.3,
        batch_norm: bool = True) -> keras.Model:
    """The built-in network (`model.builder=cnn`): VGG-style conv blocks, a dense layer, the logits.

    Each conv block ends in a 2x2 max pool while the image is at least 2 pixels wide. Its settings
    are the `model.*` keys, so it follows the same contract as a user's builder.
    """
    check_fits(input_shape, conv_widths, convs_per_block, padding)
    inputs = keras.Input(shape=input_shape, name="normalized")
    x = inputs
    for width in conv_widths:
        x = _conv_block(x, width, convs_per_block, padding, batch_norm)
    x = keras.layers.Flatten()(x)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="cnn")


def check_fits(image_shape: tuple[int, int, int], conv_widths: tuple[int, ...], convs_per_block: int,
               padding: str) -> None:
    """Refuse a CNN whose "valid" convolutions would shrink these images to nothing."""
    size = min(image_shape[:2])
    for block, _ in enumerate(conv_widths, start=1):
        for _ in range(convs_per_block):
            size -= 2 if padding == "valid" else 0
            if size < 1:
                raise UserError(f"{image_shape[0]}x{image_shape[1]} images shrink to nothing in conv block {block} "
                                f"with model.padding=valid; use model.padding=same or fewer blocks in "
                                f"model.conv_widths={tuple(conv_widths)}")
        size = size // 2 if size >= 2 else size


def _conv_block(x: keras.KerasTensor, width: int, convs_per_block: int, padding: str,
                batch_norm: bool) -> keras.KerasTensor:
    """`convs_per_block` 3x3 convolutions, the last one pooled before its batch norm and ReLU.

    Max pooling commutes with ReLU and batch norm's per-channel affine map (for a positive scale),
    so normalizing after the pool costs a quarter of the work at nearly the same result.
    """
    for index in range(convs_per_block):
        x = keras.layers.Conv2D(width, 3, padding=padding, use_bias=not batch_norm)(x)
        if index == convs_per_block - 1 and min(x.shape[1:3]) >= 2:
            x = keras.layers.MaxPooling2D(2)(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM)(x)
        x = keras.layers.ReLU()(x)
    return x


BACKBONE_NAME = "backbone"  # the keras.applications network inside a backbone's model: the body its head sits on
HEAD_DROPOUT = 0.2  # a backbone head's dropout when model.options gives none


def backbone_network(name: str, input_shape: tuple[int, int, int], num_classes: int, weights: str = "none",
                     dropout: float = HEAD_DROPOUT) -> keras.Model:
    """A `keras.applications` backbone (`model.builder=<name>`) under a global-pooling head, from raw pixels.

    Grayscale images become 3 channels inside the network, so consumers still send the data's own
    pixels. Each backbone scales its pixels as it was pretrained to: MobileNetV3 inside itself, the
    others through `PixelScaling`. Images smaller than the backbone's minimum are resized up at
    ingest (`data.image_size`); here they are refused.

    Args:
        name: a key of `components.backbones.BACKBONES`.
        input_shape: (height, width, channels) of the data, 1 or 3 channels.
        num_classes: width of the logits.
        weights: none (random), imagenet (Keras's download), or a path to a `.weights.h5` file saved
            from the same application with include_top=False.
        dropout: rate before the logits.

    Raises:
        UserError: images below the backbone's minimum size, ImageNet weights out of reach, or a weights
            file of another network or shape.
    """
    spec = BACKBONES[name]
    height, width, channels = input_shape
    if min(height, width) < spec.min_size:
        raise UserError(f"{height}x{width} images are smaller than model.builder={name} takes; resize them to at "
                        f"least {spec.min_size}x{spec.min_size} with data.image_size")
    inputs = keras.Input(shape=input_shape, name="raw_pixels")
    x = keras.layers.Concatenate(name="to_rgb")([inputs] * 3) if channels == 1 else inputs
    if spec.input_scaling != "inside":
        x = PixelScaling(*PIXEL_SCALING[spec.input_scaling], name=f"{spec.input_scaling}_input")(x)
    if weights == "imagenet":
        check_imagenet_reachable(name)
    application = getattr(keras.applications, spec.application)
    options = {"include_preprocessing": False} if spec.input_scaling == "torch" else {}
    body = application(input_shape=(height, width, 3), include_top=False,
                       weights="imagenet" if weights == "imagenet" else None, **options)
    if weights not in WEIGHTS_CHOICES:
        _load_backbone_weights(body, Path(weights).expanduser(), name)
    body.name = BACKBONE_NAME
    for layer in all_layers(body):  # Keras's applications use 0.99 or 0.999: see BATCH_NORM_MOMENTUM
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
    x = keras.layers.GlobalAveragePooling2D(name="pool")(body(x))
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def _load_backbone_weights(body: keras.Model, path: Path, name: str) -> None:
    """Load a `.weights.h5` file into a backbone; one line when it holds another network's weights.

    Before it raises, Keras warns once per layer it cannot match (about 190 lines for another
    network): kept back when the load fails, so the one line is what the user reads; passed on if it works.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            body.load_weights(path)
        except (ValueError, KeyError, OSError) as error:
            raise UserError(f"model.weights={path} does not fit {name} (keras.applications."
                            f"{BACKBONES[name].application}, include_top=False): {_mismatch(error)}; give weights "
                            "saved with save_weights from that network") from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _mismatch(error: Exception) -> str:
    """What Keras's load error says is wrong, on one line: its first line that names a shape or a count."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "shape" in line or "expected" in line]
    line = (telling or lines or [type(error).__name__])[0]
    return line.split(" Target variable:")[0].rstrip(":. ")  # not the variable's values that follow


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # of 0..1 RGB pixels
PIXEL_SCALING = {  # per channel: scale, offset, and whether RGB becomes BGR first
    "caffe": ((1.0, 1.0, 1.0), (-103.939, -116.779, -123.68), True),  # keras.applications.resnet50.preprocess_input
    "torch": (tuple(1 / (255 * std) for std in IMAGENET_STD),  # EfficientNetV2-B0's include_preprocessing
              tuple(-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD)), False),
}


@keras.saving.register_keras_serializable(package="pipeline")
class PixelScaling(keras.layers.Layer):
    """A backbone's pretraining input as a layer, so exports take raw pixels: `pixels * scale + offset` per
    channel, after RGB becomes BGR where `bgr`."""

    def __init__(self, scale: tuple[float, ...], offset: tuple[float, ...], bgr: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset, self.bgr = tuple(scale), tuple(offset), bgr

    def call(self, pixels):
        pixels = keras.ops.flip(pixels, axis=-1) if self.bgr else pixels
        scale = keras.ops.cast(keras.ops.convert_to_tensor(self.scale), pixels.dtype)
        return pixels * scale + keras.ops.cast(keras.ops.convert_to_tensor(self.offset), pixels.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale, "offset": self.offset, "bgr": self.bgr}


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """What rebuilds a trained model from code: written by train as `network.json`, read by later stages.

    A network is rebuilt and given its trained weights, rather than deserialized by Keras, so a
    user's subclassed network needs no `get_config` nor registration to be evaluated and exported.
    """

    model: dict[str, Any]  # the `model` section; a builder's .py path made absolute
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: float
    std: float

    @classmethod
    def of(cls, config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int, mean: float,
           std: float) -> NetworkSpec:
        model = dataclasses.asdict(config)
        if config.builder not in BUILT_IN_BUILDERS:
            module, function = split_target(config.builder, "model.builder")
            if module.endswith(".py") or "/" in module:  # the same file from any later working folder
                model["builder"] = f"{module_path(module, 'model.builder', config.builder)}:{function}"
        return cls(model, tuple(image_shape), num_classes, float(mean), float(std))

    @property
    def name(self) -> str:
        """The network as a summary names it: cnn, or MODULE:FUNCTION with a file's folders left out."""
        module, _, function = self.model["builder"].rpartition(":")
        return f"{Path(module).name}:{function}" if module else self.model["builder"]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> NetworkSpec:
        fields = json.loads(path.read_text())
        return cls(fields["model"], tuple(fields["image_shape"]), fields["num_classes"], fields["mean"],
                   fields["std"])

    def build(self) -> keras.Model:
        """The model, freshly built in the current precision policy, with untrained weights."""
        config = ModelConfig(**{**self.model, "conv_widths": tuple(self.model["conv_widths"]), "weights": "none",
                                "init": ""})
        return build_model(config, self.image_shape, self.num_classes, self.mean, self.std, load_weights=False)


def load_trained(network_path: Path, weights_path: Path) -> keras.Model:
    """A trained model as export publishes it: rebuilt in float32 and given its trained weights.

    Mixed precision keeps its variables in float32, so the weights of a model trained in float16 or
    bfloat16 load as they are; the float32 model is what ONNX Runtime and TF Serving reproduce.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = NetworkSpec.read(network_path).build()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.load_weights(weights_path)
    return model


def forward_flops(model: keras.Model) -> int:
    """Floating-point operations of one image's forward pass through the convolutions and dense layers.

    Counts a multiply-add as 2, as matmul peak figures do; pooling, batch norm and activations are
    left out (they move memory more than they compute), and so are layers of other kinds in a
    user's network. A training step costs about 3x this per image: the forward pass, then the
    gradients with respect to activations and to weights.
    """
    return int(sum(_layer_flops(layer) for layer in all_layers(model)))


def _output_shape(layer: keras.Layer) -> tuple[int, ...]:
    """A layer's output shape: from its call in a functional graph, else from the shape it was built for.

    Layers inside a subclassed network are called in `call`, which records no graph; Keras keeps the
    input shape each layer was built with (a private attribute, hence the fallback to 0 FLOPs).
    """
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):  # never called in a graph, or called more than once
        shapes = getattr(layer, "_build_shapes_dict", None) or {}
        return tuple(layer.compute_output_shape(next(iter(shapes.values())))) if shapes else (0, 0, 0, 0)


def _layer_flops(layer: keras.Layer) -> int:
    if isinstance(layer, keras.layers.Dense):
        return 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    if not isinstance(layer, keras.layers.Conv2D):
        return 0
    height, width, filters = _output_shape(layer)[1:]
    kernel_height, kernel_width, channels, _ = layer.kernel.shape
    return 2 * height * width * filters * kernel_height * kernel_width * channels
