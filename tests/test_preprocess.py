"""Preprocess: statistics come from the training split only."""

import json

import numpy as np
import pytest

from components.config import PreprocessConfig
from components.preprocess import preprocess
from tests.conftest import make_images
from tests.test_validate import write_splits


def test_statistics_come_from_train_only(tmp_path):
    train = make_images(4)
    bright_val = (np.full((6, 6, 6, 1), 255, np.uint8), np.repeat(np.arange(3), 2))
    splits = write_splits(tmp_path, train, val=bright_val)
    normalization = preprocess(PreprocessConfig(epsilon=1e-12), splits, tmp_path / "out")
    assert normalization.mean == pytest.approx(train[0].mean())
    assert normalization.std == pytest.approx(train[0].astype(np.float64).std(), abs=1e-9)
    assert json.loads(normalization.normalization_path.read_text())["mean"] == normalization.mean


def test_streamed_statistics_equal_numpy_on_the_whole_split(tmp_path, monkeypatch):
    import components.preprocess as preprocess_module

    rng = np.random.default_rng(3)
    train = (rng.integers(0, 256, (83, 7, 5, 3), dtype=np.uint8), np.arange(83) % 3)
    splits = write_splits(tmp_path / "data", train, shard_mb=5e-4)  # shards of about 5 images
    real_chunks = preprocess_module.image_chunks
    monkeypatch.setattr(preprocess_module, "image_chunks", lambda *args: real_chunks(*args, chunk_examples=6))
    normalization = preprocess(PreprocessConfig(epsilon=1e-12), splits, tmp_path / "out")
    pixels = train[0].astype(np.float64)
    assert normalization.mean == pytest.approx(pixels.mean(), rel=1e-12)
    assert normalization.std - 1e-12 == pytest.approx(pixels.std(), rel=1e-12)

