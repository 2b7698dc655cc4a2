"""The input pipeline: every image once per epoch, seeded per epoch, augmentations that keep the image."""

import numpy as np
import pytest
import tensorflow as tf

from components.batches import (
    BatchPlan,
    evaluation_batches,
    flip_images,
    shift_images,
    steps_per_epoch,
    steps_per_execution,
    training_batches,
)


def _data(count=50, size=6):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (count, size, size, 1), dtype=np.uint8)  # no zeros: shifts show as zeros
    return images, np.arange(count) % 5


def _plan(batch_size=16, seed=3, epochs=3, first_epoch=0, augment="none", count=50, **more):
    """A BatchPlan whose epochs are the number of full batches `count` images make."""
    return BatchPlan(5, batch_size, steps_per_epoch(count, batch_size), seed, epochs, first_epoch, augment, **more)


def _epochs(dataset):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def _indices(images, batch):
    return [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) for image in batch]


def test_each_epoch_has_full_batches_of_distinct_images_as_uint8_with_one_hot_labels():
    images, labels = _data()
    batches = _epochs(training_batches(images, labels, _plan()))
    assert len(batches) == 3 * steps_per_epoch(50, 16) == 3 * 3  # 48 of 50 images each epoch
    assert all(b[0].shape == (16, 6, 6, 1) and b[0].dtype == np.uint8 for b in batches)
    epochs = [[i for b in batches[e * 3:(e + 1) * 3] for i in _indices(images, b[0])] for e in range(3)]
    for order in epochs:
        assert len(set(order)) == 48 and order != sorted(order)  # distinct images, shuffled
    assert len({frozenset(set(range(50)) - set(order)) for order in epochs}) > 1  # other images left out
    one_hot = np.concatenate([b[1] for b in batches[:3]])
    np.testing.assert_array_equal(one_hot.argmax(axis=1), labels[epochs[0]])


def test_fewer_images_than_a_batch_make_one_short_batch():
    images, labels = _data(count=5)
    batches = _epochs(training_batches(images, labels, _plan(epochs=1, count=5)))
    assert steps_per_epoch(5, 16) == 1 and [b[0].shape[0] for b in batches] == [5]


@pytest.mark.parametrize("steps, expected", [(430, 10), (429, 13), (20, 20), (64, 32), (113, 1), (1, 1)])
def test_steps_per_execution_divides_the_epoch(steps, expected):
    assert steps_per_execution(steps) == expected


def test_keras_epochs_stay_aligned_with_the_data_with_several_steps_per_execution(recwarn):
    import keras

    images, labels = _data(count=280)
    steps = steps_per_epoch(280, 8)  # 35: executions of 7 steps
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    model.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution(steps))
    model.fit(training_batches(images, labels, _plan(8, 0, 4, count=280)), epochs=4, steps_per_epoch=steps, verbose=0)
    assert int(model.optimizer.iterations) == 4 * steps
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]


@pytest.mark.parametrize("augment", ["none", "shift", "shift+flip"])
def test_a_resumed_epoch_sees_the_same_batches_as_an_uninterrupted_run(augment):
    images, labels = _data()
    whole = _epochs(training_batches(images, labels, _plan(augment=augment)))
    resumed = _epochs(training_batches(images, labels, _plan(first_epoch=2, augment=augment)))
    for (a, b), (c, d) in zip(whole[6:], resumed, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    other_seed = _epochs(training_batches(images, labels, _plan(seed=4, first_epoch=2, augment=augment)))
    assert not np.array_equal(other_seed[0][0], resumed[0][0])


def test_pipelines_share_each_epoch_without_overlap_and_take_the_same_number_of_batches():
    images, labels = _data(count=64)
    alone = _epochs(training_batches(images, labels, _plan(batch_size=8, epochs=2, count=64)))
    halves = [_epochs(training_batches(images, labels, BatchPlan(5, 4, 8, 3, 2, pipeline=index, num_pipelines=2)))
              for index in (0, 1)]
    assert [len(half) for half in halves] == [16, 16]  # 8 batches an epoch each: the steps stay in step
    for epoch in range(2):
        seen = [i for half in halves for b in half[epoch * 8:(epoch + 1) * 8] for i in _indices(images, b[0])]
        assert sorted(seen) == list(range(64))  # together every image once, none twice
        order = [i for b in alone[epoch * 8:(epoch + 1) * 8] for i in _indices(images, b[0])]
        assert set(seen[:32]) == set(order[0::2])  # pipeline 0 takes every other image of the epoch's order


def test_shift_moves_each_image_by_its_own_whole_pixel_offset_within_the_limit():
    images, _ = _data(count=64, size=8)
    shifted = shift_images(tf.constant(images), 2, tf.constant([1, 2], tf.int64)).numpy()
    assert shifted.dtype == np.uint8 and shifted.shape == images.shape
    offsets = set()
    for original, moved in zip(images[..., 0], shifted[..., 0]):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(np.roll(np.pad(original, 2), (dy, dx), axis=(0, 1))[2:-2, 2:-2], moved)]
        assert len(matches) == 1  # the image itself, moved, zero-filled: nothing interpolated or lost
        offsets.add(matches[0])
    assert len(offsets) > 10  # per image, not one offset for the batch


def test_flip_mirrors_about_half_of_the_images_and_leaves_the_rest():
    images, _ = _data(count=200)
    flipped = flip_images(tf.constant(images), tf.constant([5, 6], tf.int64)).numpy()
    mirrored = [np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, images)]
    kept = [np.array_equal(f, o) for f, o in zip(flipped, images)]
    assert all(m != k for m, k in zip(mirrored, kept))
    assert 70 < sum(mirrored) < 130


def test_evaluation_batches_keep_the_order_and_every_image():
    images, labels = _data(count=20)
    batches = _epochs(evaluation_batches(images, labels, 5, batch_size=8))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]).argmax(axis=1), labels)


def _shards(tmp_path, count=64, shard_mb=None):
    """`count` distinct 6x6 images written as the train split in ingest's format, ~8 images a shard."""
    from tests.test_validate import write_splits

    images, labels = _data(count=count)
    splits = write_splits(tmp_path / "splits", (images, labels), shard_mb=shard_mb or 8 * 36 / 1e6)
    return images, splits


def _streamed(splits, plan, shuffle_examples=16):
    from components.batches import streamed_training_batches
    from components.shards.layout import split_files
    from components.shards.tf_reader import parse_examples

    return _epochs(streamed_training_batches(split_files(splits, "train"), parse_examples((6, 6, 1), "uint8"),
                                             (6, 6, 1), plan, shuffle_examples))


@pytest.mark.parametrize("num_shards", [8, 7])  # by whole files; by record when the files do not divide
def test_streamed_pipelines_share_each_epoch_evenly_and_each_image_once(tmp_path, num_shards):
    images, splits = _shards(tmp_path, shard_mb=64 * 36 / num_shards / 1e6 + 1e-9)
    from components.shards.layout import split_files

    assert len(split_files(splits, "train")) == num_shards
    halves = [_streamed(splits, BatchPlan(5, 4, 8, 3, 2, pipeline=index, num_pipelines=2)) for index in (0, 1)]
    assert [len(half) for half in halves] == [16, 16]
    for epoch in range(2):
        seen = [i for half in halves for b in half[epoch * 8:(epoch + 1) * 8] for i in _indices(images, b[0])]
        assert sorted(seen) == list(range(64))  # disjoint, and together every image once
    first_epoch = [i for b in halves[0][:8] for i in _indices(images, b[0])]
    assert first_epoch != sorted(first_epoch)  # shuffled


def test_streaming_under_a_global_seed_of_0_is_seeded_and_resumes_as_it_ran(tmp_path):
    """train.seed=0 sets TensorFlow's global seed to 0, under which a tensor-seeded shuffle could not be traced."""
    import keras

    _, splits = _shards(tmp_path)
    keras.utils.set_random_seed(0)
    try:
        whole = _streamed(splits, _plan(batch_size=8, epochs=2, count=64))
        again = _streamed(splits, _plan(batch_size=8, epochs=2, count=64))
        resumed = _streamed(splits, _plan(batch_size=8, epochs=2, first_epoch=1, count=64))
    finally:
        tf.random.set_seed(None)
    for (a, b), (c, d) in zip(whole, again, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    for (a, _), (c, _) in zip(whole[8:], resumed, strict=True):
        np.testing.assert_array_equal(a, c)


def test_a_streamed_epoch_is_shuffled_with_labels_kept_and_resumes_as_it_ran(tmp_path):
    images, splits = _shards(tmp_path)
    labels = np.arange(64) % 5
    whole = _streamed(splits, _plan(batch_size=8, epochs=3, count=64, augment="shift+flip"))
    resumed = _streamed(splits, _plan(batch_size=8, epochs=3, first_epoch=2, count=64, augment="shift+flip"))
    for (a, b), (c, d) in zip(whole[16:], resumed, strict=True):  # epoch 2, as an uninterrupted run saw it
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    plain = _streamed(splits, _plan(batch_size=8, epochs=2, count=64))
    orders = [[i for b in plain[e * 8:(e + 1) * 8] for i in _indices(images, b[0])] for e in range(2)]
    assert all(sorted(order) == list(range(64)) for order in orders) and orders[0] != orders[1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in plain[:8]]).argmax(axis=1), labels[orders[0]])


def test_every_input_pipeline_runs_without_tf_data_autotuning(tmp_path):
    """Deleting an autotuned iterator can wait for its tuning thread: up to a minute at the end of training.

    Each of the four pipelines train() and validation build must have autotuning off (and so no such
    thread), and still produce its batches.
    """
    from components.batches import streamed_evaluation_batches, streamed_training_batches
    from components.shards.layout import split_files
    from components.shards.tf_reader import parse_examples

    images, labels = _data(count=64)
    _, splits = _shards(tmp_path)
    files, parse = split_files(splits, "train"), parse_examples((6, 6, 1), "uint8")
    plan = _plan(batch_size=8, epochs=1, count=64)
    pipelines = {
        "training_batches": training_batches(images, labels, plan),
        "streamed_training_batches": streamed_training_batches(files, parse, (6, 6, 1), plan, 16),
        "evaluation_batches": evaluation_batches(images, labels, 5, 16),
        "streamed_evaluation_batches": streamed_evaluation_batches(files, parse, 5, 16),
    }
    for name, dataset in pipelines.items():
        assert dataset.options().autotune.enabled is False, name
        assert sum(len(batch) for batch, _ in dataset) == 64, name
