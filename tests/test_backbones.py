"""The pretrained backbones (`model.builder=mobilenet_v3_small | efficientnet_v2_b0 | resnet50`): their weights,
their frozen first phase, their export, the images they take, and ImageNet weights out of reach."""

from __future__ import annotations

import socket
from pathlib import Path

import keras
import numpy as np
import pytest

from components.backbones import BACKBONES, check_imagenet_reachable, keras_cache_file
from components.config import ModelConfig
from components.export import INPUT_NAME, write_onnx
from components.model import BACKBONE_NAME, all_layers, build_model, logits_of
from components.onnx_session import onnx_session
from components.warm_start import weighted_leaves
from pipeline import run
from pipeline.config import resolve
from pipeline.orchestrator import execute_pipeline
from pipeline.selection import Selection
from tests.conftest import read_split
from tests.recorded_training import record_training, same_weights, weights_of

MOBILENET = "mobilenet_v3_small"


def backbone_of(model: keras.Model) -> keras.Model:
    """The keras.applications network inside a model `build_model` made for a backbone."""
    return next(layer for layer in all_layers(model) if layer.name == BACKBONE_NAME)


def save_body(path: Path, application: str = "MobileNetV3Small", **options) -> keras.Model:
    """An untrained keras.applications body (include_top=False, 32x32 RGB), its weights saved at `path`."""
    body = getattr(keras.applications, application)(input_shape=(32, 32, 3), include_top=False, weights=None,
                                                    **options)
    body.save_weights(path)
    return body


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory) -> tuple[Path, list[list[np.ndarray]]]:
    """A MobileNetV3Small body's weights file, and those weights, layer by layer."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet.weights.h5"
    return path, weights_of(save_body(path))


def test_a_backbone_built_with_a_weights_file_holds_exactly_the_files_weights(mobilenet_file):
    path, expected = mobilenet_file
    model = build_model(ModelConfig(builder=MOBILENET, weights=str(path)), (32, 32, 1), 10, 0.0, 1.0)
    loaded = weights_of(backbone_of(model))
    assert len(loaded) == len(expected) > 50
    assert all(same_weights(mine, theirs) for mine, theirs in zip(loaded, expected))
    fresh = weights_of(backbone_of(build_model(ModelConfig(builder=MOBILENET), (32, 32, 1), 10, 0.0, 1.0)))
    assert not all(same_weights(mine, theirs) for mine, theirs in zip(fresh, expected))  # the check can tell


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory) -> Path:
    """One workdir for this module's runs on the digits: ingest's 32x32 splits are made once."""
    return tmp_path_factory.mktemp("backbones")


@pytest.mark.slow  # 3 to 4 s each: a backbone built and its weights saved
@pytest.mark.parametrize("application, options", [("MobileNetV3Large", {}), ("MobileNetV3Small", {"alpha": 0.75})],
                         ids=["another network", "another width"])
def test_a_weights_file_of_another_network_is_refused_in_one_line(application, options, digits_workdir, tmp_path,
                                                                  capsys, recwarn):
    path = tmp_path / "other.weights.h5"
    save_body(path, application, **options)
    argv = ["--workdir", str(digits_workdir), "--preset", "smoke", f"model.builder={MOBILENET}",
            f"model.weights={path}"]
    assert run.main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(
        f"error: model.weights={path} does not fit {MOBILENET} (keras.applications.MobileNetV3Small, "
        "include_top=False): "), stderr
    # Keras warns once per layer it cannot match before it raises: the one line above must be all the user sees.
    assert not [warning for warning in recwarn if issubclass(warning.category, UserWarning)]


@pytest.mark.slow  # about 10 s: MobileNetV3's training step is traced once per phase
def test_the_frozen_phase_changes_no_backbone_weight_and_phase_two_does(mobilenet_file, digits_workdir, monkeypatch):
    path, expected = mobilenet_file
    recorder = record_training(monkeypatch)
    # Two epochs of 2 steps, the head alone for the first 40 % of the steps: phase one is epoch 1.
    config = resolve("smoke", [f"model.builder={MOBILENET}", f"model.weights={path}", "data.max_train_examples=64",
                               "train.epochs=2", "train.head_share=0.4", "train.precision=float32",
                               "train.log_images=0"])
    manifest = execute_pipeline(config, digits_workdir, Selection(last="train"))
    assert manifest["results"]["starting_weights"] == "file mobilenet.weights.h5"
    in_backbone = {id(layer) for layer in weighted_leaves(backbone_of(recorder.model))}
    body = [index for index, layer in enumerate(recorder.layers) if id(layer) in in_backbone]
    assert len(body) == len(expected)
    for index, weights in zip(body, expected):
        name = recorder.layers[index].name
        assert same_weights(recorder.at_start[index], weights), f"{name} does not start as the file's"
        assert same_weights(recorder.after_epoch[0][index], weights), f"{name} moved in phase one"
    assert not any(recorder.trainable_after_epoch[0][index] for index in body)
    # Phase two trains every layer of the body but its batch norms, whose statistics stay the file's. Not every
    # layer moves in two steps: an untrained MobileNetV3's activations shrink to about 1e-11 on the way up, and
    # some middle layers' gradients are too small to change a float32 weight. The top one always moves.
    assert [recorder.trainable_after_epoch[1][index] for index in body] == [
        not recorder.is_batch_norm(index) for index in body]
    moved = [index for index in body
             if not same_weights(recorder.after_epoch[1][index], recorder.after_epoch[0][index])]
    top = [index for index in body if not recorder.is_batch_norm(index)][-1]
    assert recorder.layers[top].name == "conv_1" and top in moved
    assert not [recorder.layers[index].name for index in moved if recorder.is_batch_norm(index)]
    head = recorder.index("logits")
    assert not same_weights(recorder.after_epoch[0][head], recorder.at_start[head])  # the head trained in phase one


def pictures(num_images: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Raw pixels 0..255 that differ between images as photos do (brightness and gradients per channel), not
    as noise, whose average over an image is the same for every image."""
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    ramp = np.linspace(0, 1, width)[None, None, :, None]
    base, slope = rng.uniform(0, 255, (2, num_images, 1, 1, channels))
    noise = rng.normal(0, 20, (num_images, height, width, channels))
    return np.clip(base + (slope - 128) * 2 * ramp + noise, 0, 255).astype(np.float32)


def spread_logits(model: keras.Model, name: str, images: np.ndarray) -> None:
    """Scale the untrained logits layer so the probabilities on `images` spread out.

    An untrained body's features are tiny (about 1e-11 for MobileNetV3) and alike, so every class gets
    0.1 and any two models would agree to 1e-4; scaled, the logits vary by about 3 between images.
    """
    network = model.get_layer(name)  # the backbone under its head, from raw pixels to logits
    features = keras.Model(network.input, network.get_layer("pool").output).predict(images, verbose=0)
    logits = network.get_layer("logits")
    kernel = np.random.default_rng(1).normal(size=logits.kernel.shape)
    scale = 3.0 / ((features - features.mean(axis=0)) @ kernel).std()
    logits.kernel.assign(kernel * scale)
    logits.bias.assign(-(features.mean(axis=0) @ kernel) * scale)


@pytest.mark.parametrize("name, channels", [
    # The digits' case (grayscale, made RGB inside the model) took 19 s of the default suite's 150.
    pytest.param(MOBILENET, 1, marks=pytest.mark.slow),
    pytest.param(MOBILENET, 3, marks=pytest.mark.slow),
    pytest.param("efficientnet_v2_b0", 3, marks=pytest.mark.slow),  # tf2onnx takes about 25 s on each of these
    pytest.param("resnet50", 3, marks=pytest.mark.slow),
])
def test_the_exported_onnx_model_matches_keras(name, channels, tmp_path):
    shape = (32, 32, channels)
    model = build_model(ModelConfig(builder=name), shape, 10, 0.0, 1.0)
    images = pictures(16, shape)
    spread_logits(model, name, images)
    expected = model.predict(images, verbose=0)
    assert expected.std(axis=0).mean() > 0.05  # the probabilities differ between images: the comparison can tell
    write_onnx(model, shape, tmp_path / "model.onnx", opset=17)
    actual = onnx_session(tmp_path / "model.onnx").run(None, {INPUT_NAME: images})[0]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.slow  # 6 s: a MobileNet built and run
def test_grayscale_becomes_three_channels_inside_the_model():
    gray = build_model(ModelConfig(builder=MOBILENET), (32, 32, 1), 10, 0.0, 1.0)
    rgb = build_model(ModelConfig(builder=MOBILENET), (32, 32, 3), 10, 0.0, 1.0)
    assert gray.input.shape[-1] == 1 and backbone_of(gray).input.shape[-1] == 3
    images = pictures(8, (32, 32, 1))
    spread_logits(gray, MOBILENET, images)
    rgb.set_weights(gray.get_weights())  # the same network: only the input differs
    logits = [keras.Model(model.input, logits_of(model)).predict(batch, verbose=0)
              for model, batch in ((gray, images), (rgb, np.repeat(images, 3, axis=-1)))]
    assert logits[0].std(axis=0).mean() > 1  # they differ between images: the comparison can tell
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("builder, image_shape", [(MOBILENET, [32, 32, 1]), ("cnn", [8, 8, 1])])
def test_8x8_digits_are_ingested_at_32x32_for_a_backbone_and_kept_at_8x8_for_the_cnn(builder, image_shape,
                                                                                       digits_workdir):
    manifest = execute_pipeline(resolve("smoke", [f"model.builder={builder}"]), digits_workdir,
                                Selection(last="ingest"))
    assert manifest["artifacts"]["ingest"]["image_shape"] == image_shape
    images, _ = read_split(Path(manifest["run_dir"]) / "ingest", "test", limit=4)
    assert images.shape == (4, *image_shape)


def test_an_image_size_below_a_backbones_smallest_is_refused_before_any_work(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path / "work"), "--preset", "smoke", f"model.builder={MOBILENET}",
            "data.image_size=(16, 32)"]
    assert run.main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(
        f"error: data.image_size=(16, 32) is smaller than model.builder={MOBILENET} takes; give at least (32, 32)"), \
        stderr
    assert not (tmp_path / "work").exists()


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache (`$KERAS_HOME`), no proxy, and Keras's own download made to fail the test if called."""
    (tmp_path / "keras").mkdir()  # as Keras makes it when it is imported
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)

    def download(*args, **kwargs):
        raise AssertionError(f"Keras tried to download {args or kwargs}: it would retry for minutes offline")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", download)
    return tmp_path / "keras"


def test_offline_imagenet_weights_fail_in_one_line_naming_the_host_and_the_local_ways(keras_home, monkeypatch,
                                                                                     digits_workdir, capsys):
    probes = []

    def unreachable(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    argv = ["--workdir", str(digits_workdir), "--preset", "smoke", f"model.builder={MOBILENET}",
            "model.weights=imagenet"]
    assert run.main(argv) == 2
    stderr = capsys.readouterr().err
    cached = keras_home / "models" / BACKBONES[MOBILENET].weights_file
    assert stderr.count("\n") == 1 and stderr.startswith("error: model.weights=imagenet: cannot reach "
                                                         "storage.googleapis.com:443"), stderr
    assert f" to {cached}, or give model.weights=PATH to a .weights.h5 file saved from " \
           "keras.applications.MobileNetV3Small(include_top=False)" in stderr
    assert [address for address, _ in probes] == [("storage.googleapis.com", 443)]
    assert all(0 < timeout <= 10 for _, timeout in probes)  # one probe of seconds, not Keras's retries


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_imagenet_weights_in_keras_cache_are_used_without_probing_the_network(name, keras_home, monkeypatch):
    def probe(*args, **kwargs):
        raise AssertionError("probed the network although the weights are in Keras's cache")

    monkeypatch.setattr(socket, "create_connection", probe)
    cached = keras_home / "models" / BACKBONES[name].weights_file
    assert keras_cache_file(BACKBONES[name]) == cached
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    check_imagenet_reachable(name)
    cached.unlink()
    with pytest.raises(AssertionError, match="probed the network"):
        check_imagenet_reachable(name)

