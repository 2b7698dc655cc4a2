"""`model.builder`: a network of one's own, by config; its contract, its early checks, its rebuild.

The networks in examples/networks.py (functional, Sequential, subclassed) go through the same
wrapper as the built-in CNN; bad builders are refused with one line naming `model.builder`, before
any stage runs where the file alone tells, and before training where only the data's classes tell.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from components.config import ModelConfig
from components.errors import UserError
from components.model import NetworkSpec, build_model, load_trained, logits_of
from pipeline.config import resolve
from pipeline.registry import stage
from tests.conftest import REPO_DIR, run_pipeline_cli

EXAMPLES = REPO_DIR / "examples" / "networks.py"
SHAPE = (8, 8, 1)
PIXELS = np.random.default_rng(1).uniform(0, 255, (6, *SHAPE)).astype("float32")


def example(function: str, **options) -> ModelConfig:
    return ModelConfig(builder=f"{EXAMPLES}:{function}", options=options)


def write_builder(tmp_path: Path, body: str, name: str = "nets.py") -> str:
    """A user's network file outside the package; returns its `model.builder` for function `build`."""
    path = tmp_path / name
    path.write_text("import keras\n\n" + textwrap.dedent(body))
    return f"{path}:build"


@pytest.mark.parametrize("function, options, parameters", [
    ("mlp", {"hidden": [32]}, (64 * 32 + 32) + (32 * 10 + 10)),
    ("tiny_subclassed", {"width": 4}, (9 * 4 + 4) + 4 * 4 + (4 * 10 + 10)),
    ("small_resnet", {"width": 4}, None),
])
def test_every_kind_of_network_is_wrapped_to_take_pixels_and_give_float32_probabilities(function, options,
                                                                                         parameters):
    model = build_model(example(function, **options), SHAPE, 10, mean=80.0, std=60.0)
    assert [layer.name for layer in model.layers][:2] == ["pixels", "normalize"]
    assert model.layers[-1].name == "probabilities" and model.output.dtype == "float32"
    assert tuple(logits_of(model).shape) == (None, 10)
    probabilities = model.predict(PIXELS, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    if parameters is not None:
        assert model.count_params() == parameters


def test_the_network_receives_normalized_pixels():
    model = build_model(example("mlp"), SHAPE, 3, mean=100.0, std=50.0)
    network = model.layers[2]
    seen = keras.Model(model.input, network.input)
    out = seen.predict(np.full((1, *SHAPE), 150.0, "float32"), verbose=0)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_options_reach_the_builder():
    narrow = build_model(example("mlp", hidden=[4]), SHAPE, 3, 0.0, 1.0)
    wide = build_model(example("mlp", hidden=[40]), SHAPE, 3, 0.0, 1.0)
    assert narrow.count_params() == (64 * 4 + 4) + (4 * 3 + 3)
    assert wide.count_params() == (64 * 40 + 40) + (40 * 3 + 3)


@pytest.mark.parametrize("function", ["small_resnet", "tiny_subclassed"])
def test_batch_norm_inside_any_network_is_synchronized_across_replicas(function):
    model = build_model(example(function, width=4), SHAPE, 3, 0.0, 1.0, synchronized_batch_norm=True)
    norms = [layer for layer in _all(model) if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.synchronized for layer in norms)
    single = build_model(example(function, width=4), SHAPE, 3, 0.0, 1.0)
    assert not any(layer.synchronized for layer in _all(single) if isinstance(layer, keras.layers.BatchNormalization))


def _all(layer):
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from _all(inner)


def test_a_mixed_precision_network_keeps_a_float32_softmax():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(example("tiny_subclassed", width=4), SHAPE, 3, 0.0, 1.0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits_of(model).dtype == "float16"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("builder, message", [
    ("nope_no_such_module:build", "model.builder=nope_no_such_module:build: no module named 'nope_no_such_module'"),
    ("examples/no_such_file.py:build", "model.builder=examples/no_such_file.py:build: no such file"),
    ("examples/networks.py:resnet50", "defines no 'resnet50'; name one of its functions (TinyConvNet, mlp, "
                                      "small_resnet, tiny_subclassed)"),
    ("examples/networks.py", "model.builder='examples/networks.py' cannot work; use cnn, mobilenet_v3_small, "
                             "efficientnet_v2_b0, resnet50, or MODULE:FUNCTION"),
    ("examples/networks.py:", "cannot work; use cnn, mobilenet_v3_small, efficientnet_v2_b0, resnet50, or "
                              "MODULE:FUNCTION"),
])
def test_a_builder_that_is_not_there_is_refused_when_the_config_is_resolved(builder, message, monkeypatch):
    monkeypatch.chdir(REPO_DIR)
    with pytest.raises(UserError) as caught:
        resolve("default", [f"model.builder={builder}"])
    assert message in str(caught.value)


def test_a_syntax_error_in_the_builder_file_is_named_with_its_line(tmp_path):
    builder = write_builder(tmp_path, "def build(input_shape, num_classes):\n    return (\n")
    with pytest.raises(UserError, match=r"nets.py line \d+: .*; fix the syntax error"):
        resolve("default", [f"model.builder={builder}"])


@pytest.mark.parametrize("key, value", [("conv_widths", "(8,)"), ("convs_per_block", "2"), ("padding", "valid"),
                                        ("dense_units", "8"), ("dropout", "0.5"), ("batch_norm", "false")])
def test_every_cnn_key_set_with_another_builder_is_refused(key, value):
    assert key in ModelConfig.CNN_KEYS
    with pytest.raises(UserError, match=f"model.{key}=.* sets the built-in CNN, and model.builder=.* is another "
                                        "network; remove model.{key}".replace("{key}", key)):
        resolve("default", [f"model.builder={EXAMPLES}:mlp", f"model.{key}={value}"])


def test_the_cnn_keys_are_exactly_the_built_in_networks_parameters():
    import inspect

    from components.model import cnn

    assert tuple(inspect.signature(cnn).parameters)[2:] == ModelConfig.CNN_KEYS


def test_options_with_the_built_in_cnn_are_refused():
    with pytest.raises(UserError, match="model.options=.* passes settings to a builder of your own"):
        resolve("default", ['model.options={"width": 8}'])


@pytest.mark.parametrize("overrides, message", [
    (["model.builder=examples/networks.py:resnet50"], "error: model.builder=examples/networks.py:resnet50: "),
    (["model.builder=examples/networks.py:mlp", "model.dense_units=8"], "error: model.dense_units=8 sets the "
                                                                        "built-in CNN"),
    (["model.options=[1, 2]"], "error: model.options='[1, 2]' is not a valid JSON object"),
])
def test_the_cli_refuses_a_bad_builder_with_one_line_and_no_run_folder(tmp_path, overrides, message):
    run = run_pipeline_cli(tmp_path / "work", *overrides)
    assert run.returncode == 2
    assert run.stderr.startswith(message) and run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "work" / "runs").exists()


NOT_LOGITS = {
    "a Sequential ending in softmax": """
        def build(input_shape, num_classes):
            return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(num_classes, activation="softmax")])
        """,
    "a functional network ending in a Softmax layer": """
        def build(input_shape, num_classes):
            inputs = keras.Input(input_shape)
            x = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
            return keras.Model(inputs, keras.layers.Softmax()(x))
        """,
    "a subclassed network returning a softmax": """
        class Net(keras.Model):
            def __init__(self, num_classes):
                super().__init__()
                self.dense = keras.layers.Dense(num_classes)
            def call(self, x):
                return keras.ops.softmax(self.dense(keras.ops.reshape(x, (-1, 64))))

        def build(input_shape, num_classes):
            return Net(num_classes)
        """,
}


@pytest.mark.parametrize("body", NOT_LOGITS.values(), ids=NOT_LOGITS.keys())
def test_a_network_that_ends_in_softmax_is_refused(tmp_path, body):
    config = ModelConfig(builder=write_builder(tmp_path, body))
    with pytest.raises(UserError, match=r"model.builder=.*nets.py:build ends in a softmax \(its outputs are "
                                        r"probabilities\); return logits instead"):
        build_model(config, SHAPE, 3, 0.0, 1.0)


def test_a_network_ending_in_a_sigmoid_is_not_taken_for_a_softmax(tmp_path):
    body = """
        def build(input_shape, num_classes):
            return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(num_classes, activation="sigmoid")])
        """
    build_model(ModelConfig(builder=write_builder(tmp_path, body)), SHAPE, 3, 0.0, 1.0)


@pytest.mark.parametrize("width, shape", [("num_classes + 1", "(None, 4)"), ("1", "(None, 1)")])
def test_an_output_of_the_wrong_width_is_refused_naming_the_classes(tmp_path, width, shape):
    body = f"""
        def build(input_shape, num_classes):
            return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense({width})])
        """
    with pytest.raises(UserError, match=rf"returns outputs of shape {re_escape(shape)}, and the data has 3 classes; "
                                        r"return \(batch, num_classes\) logits"):
        build_model(ModelConfig(builder=write_builder(tmp_path, body)), SHAPE, 3, 0.0, 1.0)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_an_output_that_is_not_one_vector_per_image_is_refused(tmp_path):
    body = """
        def build(input_shape, num_classes):
            return keras.Sequential([keras.layers.Conv2D(num_classes, 1)])
        """
    with pytest.raises(UserError, match=r"returns outputs of shape \(None, 8, 8, 3\)"):
        build_model(ModelConfig(builder=write_builder(tmp_path, body)), SHAPE, 3, 0.0, 1.0)


def test_a_builder_returning_something_else_than_a_model_is_refused(tmp_path):
    body = """
        def build(input_shape, num_classes):
            return "a model"
        """
    with pytest.raises(UserError, match="returned str, not a Keras model"):
        build_model(ModelConfig(builder=write_builder(tmp_path, body)), SHAPE, 3, 0.0, 1.0)


def test_an_error_inside_the_users_code_is_theirs_to_see(tmp_path):
    body = """
        def build(input_shape, num_classes, width=8):
            raise ZeroDivisionError("the user's own bug")
        """
    with pytest.raises(ZeroDivisionError, match="the user's own bug"):
        build_model(ModelConfig(builder=write_builder(tmp_path, body)), SHAPE, 3, 0.0, 1.0)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("function, file_name", [("tiny_subclassed", "model.weights.h5"), ("mlp", "model.keras")])
def test_a_trained_network_is_rebuilt_in_float32_with_its_weights(tmp_path, policy, function, file_name):
    config = example(function)
    keras.mixed_precision.set_global_policy(policy)
    try:
        trained = build_model(config, SHAPE, 3, 80.0, 60.0)
        trained.set_weights([np.random.default_rng(i).normal(size=w.shape) for i, w in enumerate(trained.get_weights())])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    weights_path = tmp_path / file_name
    trained.save(weights_path) if file_name == "model.keras" else trained.save_weights(weights_path)
    NetworkSpec.of(config, SHAPE, 3, 80.0, 60.0).write(tmp_path / "network.json")
    keras.mixed_precision.set_global_policy(policy)  # whatever policy is current, the rebuild is float32
    try:
        rebuilt = load_trained(tmp_path / "network.json", weights_path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {layer.compute_dtype for layer in _all(rebuilt) if layer.weights} == {"float32"}
    for ours, theirs in zip(rebuilt.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(ours, np.asarray(theirs, dtype="float32"))
    atol = 1e-6 if policy == "float32" else 5e-2
    np.testing.assert_allclose(rebuilt.predict(PIXELS, verbose=0), trained.predict(PIXELS, verbose=0), atol=atol)


def test_a_builder_file_is_recorded_by_absolute_path_so_later_stages_find_it_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_DIR)
    spec = NetworkSpec.of(ModelConfig(builder="examples/networks.py:mlp"), SHAPE, 3, 0.0, 1.0)
    assert spec.model["builder"] == f"{EXAMPLES}:mlp"
    monkeypatch.chdir(tmp_path)
    assert spec.build().count_params() == (64 * 128 + 128) + (128 * 3 + 3)


def test_editing_the_builder_file_changes_trains_fingerprint_and_nothing_else_does(tmp_path):
    body = """
        def build(input_shape, num_classes):
            return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(num_classes)])
        """
    builder = write_builder(tmp_path, body)
    config = resolve("default", [f"model.builder={builder}"])
    watches = stage("train").watches
    before = watches(config)
    assert watches(config) == before
    (tmp_path / "nets.py").write_text((tmp_path / "nets.py").read_text().replace("Flatten()", "Flatten(), "
                                                                                 "keras.layers.Dropout(0.1)"))
    assert watches(config) != before
    assert watches(resolve("default", [])) is None  # the built-in CNN is project code: its code fingerprint covers it
