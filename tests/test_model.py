"""The built-in CNN through the model wrapper: shapes, exact parameter counts, raw-pixel normalization."""

import keras
import numpy as np
import pytest

from components.config import ModelConfig
from components.errors import UserError
from components.model import build_model, forward_flops

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


def test_forward_flops_counts_the_convolutions_and_dense_layers_inside_the_wrapped_network():
    model = build_model(SMALL, (8, 8, 1), 10, mean=0.0, std=1.0)
    # conv 8x8x4 outputs of 3x3x1, pooled to 4x4; conv 4x4x8 of 3x3x4; dense 32->16; dense 16->10
    assert forward_flops(model) == 2 * (8 * 8 * 4 * 9 + 4 * 4 * 8 * 9 * 4 + 32 * 16 + 16 * 10)


@pytest.mark.parametrize("widths, convs", [((8, 8, 8), 1), ((8,), 3)])
def test_a_network_that_shrinks_the_images_to_nothing_is_refused_with_the_keys_to_change(widths, convs):
    config = ModelConfig(conv_widths=widths, convs_per_block=convs, padding="valid")
    with pytest.raises(UserError, match=r"6x6 images shrink to nothing in conv block \d with model.padding=valid"):
        build_model(config, (6, 6, 1), 3, 0.0, 1.0)
    build_model(ModelConfig(conv_widths=widths, convs_per_block=convs, padding="same"), (6, 6, 1), 3, 0.0, 1.0)
