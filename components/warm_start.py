"""Where training starts: an export's weights (`model.init`), or a backbone's, and the body a new head sits on.

A warm start rebuilds the parent's network for this run's classes and copies every layer whose
weights have the same shapes. With the same classes that is every layer, and training simply goes
on. With other classes, the layers that depend on the number of classes (the classifier) start
fresh, and the copied ones are the *body*, which `train_schedule.HeadFirst` freezes while the new
head learns. A backbone with trained weights (`model.weights=imagenet|PATH`) has the same shape:
the `keras.applications` network is the body, the pooling head is new.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from components.backbones import BACKBONES
from components.config import ModelConfig
from components.errors import UserError
from components.model import BACKBONE_NAME, NetworkSpec, all_layers, load_trained
from components.saved_models import Parent, read_metadata

log = logging.getLogger(__name__)


def weighted_leaves(layer: keras.Layer) -> list[keras.Layer]:
    """The layers inside `layer` that hold weights themselves (not through nested layers), in build order."""
    return [inner for inner in all_layers(layer) if not getattr(inner, "layers", None) and inner.weights]


def start_from_parent(model: keras.Model, spec: NetworkSpec, parent: Parent,
                      class_names: tuple[str, ...]) -> list[keras.Layer]:
    """Give `model` the weights of the export `parent`; returns the body (empty when every layer was reused).

    Args:
        model: the freshly built model of this run.
        spec: how this run's network is built: it must be the parent's network for the same input shape.
        parent: the export `model.init` names.
        class_names: this run's classes; other classes than the parent's get a new head.

    Raises:
        UserError: the parent is another network or takes another input shape.
    """
    theirs = NetworkSpec.read(parent.version_dir / "network.json")
    _check_same_network(theirs, spec, parent)
    parent_model = load_trained(parent.version_dir / "network.json", parent.version_dir / "model.weights.h5")
    same_classes = tuple(read_metadata(parent.version_dir)["class_names"]) == tuple(class_names)
    mine, their_layers = weighted_leaves(model), weighted_leaves(parent_model)
    if len(mine) != len(their_layers):  # the same settings built another network: the builder's code changed
        raise UserError(f"model.init={parent.label} has {len(their_layers)} layers with weights, and this run's "
                        f"{spec.name} has {len(mine)}; its builder's code changed since: warm start from a version "
                        "trained with this code, or remove model.init")
    body, head = [], []
    for layer, their_layer in zip(mine, their_layers):
        weights = their_layer.get_weights()
        if [w.shape for w in weights] == [tuple(v.shape) for v in layer.weights]:
            layer.set_weights(weights)
            body.append(layer)
        else:
            head.append(layer)
    if not head and not same_classes:  # as many classes, other names: the classifier still starts fresh
        head = [body.pop()]
        _reinitialize(head[0])
    log.info("train: warm start from %s: %d layers reused%s", parent.label, len(body),
             f", a new head of {len(head)} layer(s)" if head else "")
    return body if head else []


def backbone_body(model: keras.Model) -> list[keras.Layer]:
    """A backbone's pretrained layers: the `keras.applications` network under the head."""
    return weighted_leaves(next(layer for layer in all_layers(model) if layer.name == BACKBONE_NAME))


def _check_same_network(theirs: NetworkSpec, mine: NetworkSpec, parent: Parent) -> None:
    their_network, my_network = _network_settings(theirs), _network_settings(mine)
    differ = [key for key in sorted(set(their_network) | set(my_network))
              if their_network.get(key) != my_network.get(key) and key != "builder"]
    same_builder = their_network["builder"] == my_network["builder"]
    if same_builder and not differ and tuple(theirs.image_shape) == tuple(mine.image_shape):
        return
    shown = differ if same_builder else []  # another builder: its name is the difference (the CNN's keys would mislead)
    raise UserError(
        f"model.init={parent.label} is {_describe(theirs, their_network, shown)}, and this run trains "
        f"{_describe(mine, my_network, shown)}; a warm start needs the same network and input shape: set "
        "model.* and data.image_size as the parent's, or remove model.init")


def _network_settings(spec: NetworkSpec) -> dict[str, Any]:
    """The `model` settings that shape the network's weights, as JSON has them (tuples as lists): not where its
    weights come from, nor its dropout (no weights), which a warm start may change."""
    settings = {key: value for key, value in json.loads(json.dumps(spec.model)).items()
                if key not in ("weights", "init", "dropout")}
    if settings["builder"] in BACKBONES:
        settings["options"] = {key: value for key, value in settings.get("options", {}).items() if key != "dropout"}
    return settings


def _describe(spec: NetworkSpec, settings: dict[str, Any], keys: list[str]) -> str:
    """`cnn with conv_widths=[8, 16] on 8x8x1 images`: the network, the settings that differ, the input."""
    differing = f" with {', '.join(f'{key}={settings.get(key)}' for key in keys)}" if keys else ""
    return f"{spec.name}{differing} on {'x'.join(map(str, spec.image_shape))} images"


def _reinitialize(layer: keras.Layer) -> None:
    """New weights from the layer's own initializers (a Dense or Conv layer's kernel and bias)."""
    for variable, initializer in ((getattr(layer, "kernel", None), getattr(layer, "kernel_initializer", None)),
                                  (getattr(layer, "bias", None), getattr(layer, "bias_initializer", None))):
        if variable is not None and initializer is not None:
            variable.assign(initializer(variable.shape, variable.dtype))


@dataclass(frozen=True)
class StartingPoint:
    """What training starts from: the weights' source, and the body phase one freezes ([] = no phases)."""

    body: list[keras.Layer]
    weights: str  # random | imagenet | file NAME | saved_models/NAME/VERSION
    parent: str = ""  # the export warm-started from, NAME/VERSION


def starting_point(model: keras.Model, spec: NetworkSpec, config: ModelConfig, parent: Parent | None,
                   class_names: tuple[str, ...]) -> StartingPoint:
    """Give `model` its starting weights where they come from an export; say where they came from.

    A backbone's own weights (`model.weights`) were given when it was built; its body is the
    pretrained network, unless it starts from random weights (then nothing is frozen).
    """
    if parent is not None:
        return StartingPoint(start_from_parent(model, spec, parent, class_names), f"saved_models/{parent.label}",
                             parent.label)
    if config.builder in BACKBONES and config.weights != "none":
        source = "imagenet" if config.weights == "imagenet" else f"file {Path(config.weights).name}"
        return StartingPoint(backbone_body(model), source)
    return StartingPoint([], "random")
