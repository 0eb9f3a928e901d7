"""What `evaluate_robustness` accepts, made uniform: evaluation data as arrays, datasets or a source's name."""

import numpy as np
import tensorflow as tf

from nsladv.errors import DataError
from nsladv.errors import ModelMismatchError

DEFAULT_BATCH_SIZE = 500


def evaluation_arrays(data, *, data_dir=None, input_range=(0.0, 1.0)):
    """(x, y, batch size) of evaluation data: arrays `(x, y)`, a dataset (batched or not) or a source's test split.

    A name or path (`nsladv.datasets.resolve`'s sources) gives its test split;
    arrays and unbatched datasets are attacked in batches of
    `DEFAULT_BATCH_SIZE`, a batched dataset in batches of its own size.
    """
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise DataError(f"Expected evaluation arrays as (x, y). Received: a {type(data).__name__} of {len(data)}")
        x, y = (np.asarray(part) for part in data)
        if x.shape[:1] != y.reshape(-1).shape[:1] or x.ndim < 2:
            raise DataError(f"Expected images and labels with one row per example. Received: x {x.shape}, y {y.shape}")
        return _checked(x, y, DEFAULT_BATCH_SIZE)
    if not isinstance(data, tf.data.Dataset):
        from nsladv.datasets import sources

        data = sources.resolve(data, data_dir=data_dir, input_range=input_range).test
    spec = data.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise DataError(f"Expected a dataset of (x, y) pairs. Received: element_spec={spec!r}")
    if spec[1].shape.rank == 0:  # scalar labels: one example an element
        data = data.batch(DEFAULT_BATCH_SIZE)
    xs, ys = [], []
    for x, y in data:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y).reshape(-1))
    if not ys or sum(len(y) for y in ys) == 0:
        raise DataError("The evaluation data is empty. Received: 0 examples")
    return _checked(np.concatenate(xs), np.concatenate(ys), max(len(y) for y in ys))


def _checked(x, y, batch_size):
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        raise DataError(f"Expected integer class ids as labels. Received: labels of dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"Labels must be class ids >= 0. Received: labels down to {int(y.min())}")
    if np.issubdtype(x.dtype, np.integer):
        raise DataError(
            f"Expected float inputs in the model's input range (e.g. pixels / 255). Received: inputs of dtype {x.dtype}"
        )
    if x.ndim == 3:
        x = x[..., None]  # (n, height, width): grayscale images without a channel axis, as `resolve` reads them
    return x.astype(np.float32, copy=False), y.astype(np.int64), int(batch_size)


def output_classes(model, x):
    """The number of classes the model scores (its output's last axis), from one example."""
    outputs = model(tf.constant(x[:1]), training=False)
    if not isinstance(outputs, tf.Tensor) or outputs.shape.rank != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, tf.Tensor) else type(outputs).__name__
        raise ModelMismatchError(f"Expected a classifier with one output (batch, classes). Received: output {shape}")
    return int(outputs.shape[-1])
