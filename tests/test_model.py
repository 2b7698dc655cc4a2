"""The model builder: shapes, exact parameter counts, raw-pixel normalization, float32 twins."""

import keras
import numpy as np
import pytest

from components.config import ModelConfig
from components.errors import UserError
from components.model import as_float32, build_model

SMALL = ModelConfig(conv_widths=(4, 8), convs_per_block=1, dense_units=16, dropout=0.1, batch_norm=True)


def test_output_shape_and_probabilities():
    model = build_model(SMALL, (8, 8, 1), 10, mean=80.0, std=60.0)
    probabilities = model.predict(np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 1)), verbose=0)
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_exact_parameter_count_with_batch_norm():
    model = build_model(SMALL, (8, 8, 1), 10, mean=0.0, std=1.0)
    # conv 3*3*1*4 + bn 4*4 + conv 3*3*4*8 + bn 8*4 + dense (2*2*8)*16+16 + dense 16*10+10
    assert model.count_params() == 36 + 16 + 288 + 32 + 528 + 170
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert non_trainable == 2 * (4 + 8)  # moving mean and variance


def test_exact_parameter_count_without_batch_norm_and_valid_padding():
    config = ModelConfig(conv_widths=(4, 8), dense_units=0, batch_norm=False, padding="valid")
    model = build_model(config, (28, 28, 1), 10, mean=0.0, std=1.0)
    # 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5; convs have biases without batch norm
    assert model.count_params() == (9 * 4 + 4) + (9 * 4 * 8 + 8) + (5 * 5 * 8 * 10 + 10)


def test_input_normalization_uses_the_given_statistics():
    model = build_model(SMALL, (8, 8, 1), 10, mean=100.0, std=50.0)
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    out = normalize.predict(np.array([[[[100.0]] * 8] * 8, [[[150.0]] * 8] * 8]), verbose=0)
    np.testing.assert_allclose(out[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_float32_twin_of_a_mixed_precision_model(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = build_model(SMALL, (8, 8, 1), 10, mean=80.0, std=60.0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.get_layer("logits").compute_dtype != "float32"
    assert mixed.output.dtype == "float32"  # the softmax stays float32
    twin = as_float32(mixed)
    assert {layer.compute_dtype for layer in twin.layers if layer.weights} == {"float32"}
    for a, b in zip(mixed.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    pixels = np.random.default_rng(1).uniform(0, 255, (16, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(twin.predict(pixels, verbose=0), mixed.predict(pixels, verbose=0), atol=3e-2)


@pytest.mark.parametrize("widths, convs", [((8, 8, 8), 1), ((8,), 3)])
def test_a_network_that_shrinks_the_images_to_nothing_is_refused_with_the_keys_to_change(widths, convs):
    config = ModelConfig(conv_widths=widths, convs_per_block=convs, padding="valid")
    with pytest.raises(UserError, match=r"6x6 images shrink to nothing in conv block \d with model.padding=valid"):
        build_model(config, (6, 6, 1), 3, 0.0, 1.0)
    build_model(ModelConfig(conv_widths=widths, convs_per_block=convs, padding="same"), (6, 6, 1), 3, 0.0, 1.0)
