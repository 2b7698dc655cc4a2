"""The built-in pretrained backbones (`model.builder=mobilenet_v3_small | efficientnet_v2_b0 | resnet50`).

Each is a `keras.applications` network without its ImageNet classifier (`include_top=False`). This
table says what the rest of the pipeline must know of one without importing TensorFlow: the smallest
image it takes, where Keras downloads its ImageNet weights from, and the file name Keras caches them
under. `components/model.py` builds them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from components.errors import UserError

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """One `keras.applications` network, as the pipeline uses it."""

    application: str  # the function in keras.applications
    weights_file: str  # the no-top ImageNet weights, as Keras names them in its cache (~/.keras/models/)
    weights_folder: str  # under KERAS_APPLICATIONS_URL
    # How its pixels were scaled when it was pretrained, done by the pipeline's `PixelScaling` layer:
    # "inside" (the application scales them itself), "caffe" (BGR less ImageNet's mean pixel), "torch"
    # (0..1, less ImageNet's mean, over its std; Keras's own layer for it does not convert to ONNX).
    input_scaling: str = "inside"
    min_size: int = 32  # keras.applications refuses smaller images

    @property
    def weights_url(self) -> str:
        return f"{KERAS_APPLICATIONS_URL}{self.weights_folder}/{self.weights_file}"


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v3_small": Backbone("MobileNetV3Small", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                                   "mobilenet_v3"),
    "efficientnet_v2_b0": Backbone("EfficientNetV2B0", "efficientnetv2-b0_notop.h5", "efficientnet_v2",
                                   input_scaling="torch"),
    "resnet50": Backbone("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet",
                         input_scaling="caffe"),
}
WEIGHTS_CHOICES = ("none", "imagenet")  # or a PATH to a .weights.h5 file
WEIGHTS_SUFFIX = ".weights.h5"


def keras_cache_file(backbone: Backbone) -> Path:
    """Where Keras keeps the backbone's ImageNet weights once downloaded: `$KERAS_HOME`, else ~/.keras (or
    /tmp/.keras where the home folder is not writable), as `keras.utils.get_file` decides."""
    if "KERAS_HOME" in os.environ:
        home = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = (Path.home() if os.access(Path.home(), os.W_OK) else Path("/tmp")) / ".keras"
    if not os.access(home, os.W_OK):  # Keras makes the folder when it is imported
        home = Path("/tmp") / ".keras"
    return home / "models" / backbone.weights_file


def check_imagenet_reachable(name: str, timeout_seconds: float = 5.0) -> None:
    """Fail in seconds when ImageNet weights are neither in Keras's cache nor downloadable.

    Keras's own download would wait on its retries; this probes the host first, as the TFDS source
    does. Behind an HTTP(S) proxy the probe is skipped: the proxy, not this machine, reaches the host.

    Raises:
        UserError: one line naming the host and the two ways to give the weights locally.
    """
    backbone = BACKBONES[name]
    cached = keras_cache_file(backbone)
    if cached.is_file() or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return
    host = urlsplit(backbone.weights_url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout_seconds).close()
    except OSError as error:
        raise UserError(
            f"model.weights=imagenet: cannot reach {host}:443 to download {backbone.weights_file} ({error}); "
            f"copy that file (from {backbone.weights_url}) to {cached}, or give "
            f"model.weights=PATH to a {WEIGHTS_SUFFIX} file saved from keras.applications.{backbone.application}"
            "(include_top=False)") from None
