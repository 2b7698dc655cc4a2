"""Networks of your own, for `model.builder=examples/networks.py:FUNCTION` (docs/your-network.md).

Each function follows the contract: it takes the input shape (height, width, channels), the number
of classes and its own settings (from `model.options`), and returns a Keras model from *normalized*
images to `num_classes` *logits*. The pipeline adds the normalization in front and the softmax
behind, trains on the logits, and exports, evaluates and serves the whole.

    python -m pipeline.run model.builder=examples/networks.py:small_resnet 'model.options={"width": 16}'
    python -m pipeline.run model.builder=examples/networks.py:mlp 'model.options={"hidden": [128, 64]}'
"""

from __future__ import annotations

import keras


def small_resnet(input_shape: tuple[int, int, int], num_classes: int, width: int = 16,
                 blocks_per_stage: int = 1, stages: int = 2) -> keras.Model:
    """A functional ResNet: a stem, `stages` stages of residual blocks (each stage halves the image and
    doubles the width), global average pooling and the logits."""
    inputs = keras.Input(shape=input_shape)
    x = _conv_bn(inputs, width, strides=1)
    x = keras.layers.ReLU()(x)
    for stage in range(stages):
        for block in range(blocks_per_stage):
            halve = stage > 0 and block == 0 and min(x.shape[1:3]) >= 2
            x = _residual_block(x, width * 2**stage, strides=2 if halve else 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(num_classes)(x)  # no softmax: the pipeline adds it
    return keras.Model(inputs, logits, name="small_resnet")


def _conv_bn(x: keras.KerasTensor, width: int, strides: int) -> keras.KerasTensor:
    x = keras.layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False)(x)
    return keras.layers.BatchNormalization()(x)


def _residual_block(x: keras.KerasTensor, width: int, strides: int) -> keras.KerasTensor:
    """Two 3x3 convolutions added to the input (a 1x1 projection where the shape changes)."""
    shortcut = x
    if strides != 1 or x.shape[-1] != width:
        shortcut = keras.layers.Conv2D(width, 1, strides=strides, use_bias=False)(x)
        shortcut = keras.layers.BatchNormalization()(shortcut)
    y = keras.layers.ReLU()(_conv_bn(x, width, strides))
    y = _conv_bn(y, width, strides=1)
    return keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))


def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...] = (128,),
        dropout: float = 0.1) -> keras.Model:
    """A Sequential multilayer perceptron: flatten, dense layers with dropout, the logits."""
    layers: list[keras.Layer] = [keras.layers.Flatten()]
    for units in hidden:
        layers += [keras.layers.Dense(units, activation="relu"), keras.layers.Dropout(dropout)]
    return keras.Sequential([*layers, keras.layers.Dense(num_classes)], name="mlp")


class TinyConvNet(keras.Model):
    """A subclassed network: layers made in `__init__`, wired in `call`."""

    def __init__(self, num_classes: int, width: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(width, 3, padding="same", activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.classify = keras.layers.Dense(num_classes)

    def call(self, images, training=False):
        return self.classify(self.pool(self.norm(self.conv(images), training=training)))


def tiny_subclassed(input_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> keras.Model:
    """A subclassed network (`TinyConvNet`): Keras builds it when the pipeline first calls it."""
    return TinyConvNet(num_classes, width, name="tiny_subclassed")
