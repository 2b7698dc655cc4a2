"""The network: a small VGG-style CNN that takes raw pixels and returns class probabilities."""

from __future__ import annotations

import keras

from components.config import ModelConfig
from components.errors import UserError

# Keras's default, 0.99, leaves the moving statistics far from the data's after a few hundred steps
# (small data sets train for no more); 0.9 is PyTorch's default and settles within a few dozen.
BATCH_NORM_MOMENTUM = 0.9


def build_model(config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int,
                mean: float, std: float, synchronized_batch_norm: bool = False) -> keras.Model:
    """Build the classifier.

    The first layer normalizes raw pixels with the training split's statistics, so the model (and
    every export of it) takes pixel values as they come, 0..255. Each conv block ends in a 2x2 max
    pool while the image is at least 2 pixels wide; the softmax is float32 under any precision policy.

    Args:
        config: the `model` section.
        image_shape: (height, width, channels) from the data's schema.
        num_classes: width of the output.
        mean, std: pixel statistics of the training split.
        synchronized_batch_norm: batch statistics over all replicas' examples (data-parallel training),
            so every replica ends with the same moving averages.
    """
    check_fits(config, image_shape)
    inputs = keras.Input(shape=image_shape, name="pixels")
    x = keras.layers.Rescaling(scale=1.0 / std, offset=-mean / std, name="normalize")(inputs)
    for width in config.conv_widths:
        x = _conv_block(x, width, config, synchronized_batch_norm)
    x = keras.layers.Flatten()(x)
    if config.dense_units:
        x = keras.layers.Dense(config.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="cnn")


def check_fits(config: ModelConfig, image_shape: tuple[int, int, int]) -> None:
    """Refuse a network whose "valid" convolutions would shrink these images to nothing."""
    size = min(image_shape[:2])
    for block, _ in enumerate(config.conv_widths, start=1):
        for _ in range(config.convs_per_block):
            size -= 2 if config.padding == "valid" else 0
            if size < 1:
                raise UserError(f"{image_shape[0]}x{image_shape[1]} images shrink to nothing in conv block {block} "
                                f"with model.padding=valid; use model.padding=same or fewer blocks in "
                                f"model.conv_widths={config.conv_widths}")
        size = size // 2 if size >= 2 else size


def _conv_block(x, width: int, config: ModelConfig, synchronized_batch_norm: bool = False):
    """`convs_per_block` 3x3 convolutions, the last one pooled before its batch norm and ReLU.

    Max pooling commutes with ReLU and batch norm's per-channel affine map (for a positive scale),
    so normalizing after the pool costs a quarter of the work at nearly the same result.
    """
    for index in range(config.convs_per_block):
        x = keras.layers.Conv2D(width, 3, padding=config.padding, use_bias=not config.batch_norm)(x)
        if index == config.convs_per_block - 1 and min(x.shape[1:3]) >= 2:
            x = keras.layers.MaxPooling2D(2)(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, synchronized=synchronized_batch_norm)(x)
        x = keras.layers.ReLU()(x)
    return x


def as_float32(model: keras.Model) -> keras.Model:
    """A float32 twin of `model` with the same weights, for export and serving on any device.

    Mixed-precision layers record their policy in the model's config; rewriting it to float32
    and copying the weights gives a twin whose numbers ONNX Runtime and TF Serving reproduce.
    """
    config = _replace_dtype_policies(model.get_config())
    twin = keras.Model.from_config(config)
    twin.set_weights([w.astype("float32") for w in model.get_weights()])
    return twin


def _replace_dtype_policies(node):
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy":
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {key: _replace_dtype_policies(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_dtype_policies(value) for value in node]
    return node


def forward_flops(model: keras.Model) -> int:
    """Floating-point operations of one image's forward pass through the convolutions and dense layers.

    Counts a multiply-add as 2, as matmul peak figures do; pooling, batch norm and activations are
    left out (they move memory more than they compute). A training step costs about 3x this per
    image: the forward pass, then the gradients with respect to activations and to weights.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width, filters = layer.output.shape[1:]
            kernel_height, kernel_width, channels, _ = layer.kernel.shape
            total += 2 * height * width * filters * kernel_height * kernel_width * channels
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)
