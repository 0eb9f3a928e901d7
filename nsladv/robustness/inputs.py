"""What `evaluate_robustness` accepts, made uniform: radii, evaluation data, attacks by name or in a list."""

import fractions
import numbers

import numpy as np
import tensorflow as tf

from nsladv.errors import DataError
from nsladv.errors import ModelMismatchError
from nsladv.errors import SettingsError

DEFAULT_BATCH_SIZE = 500


def parse_radius(value, *, name="epsilon"):
    """A radius > 0 from a number or a text such as `"0.3"` or `"8/255"`.

    Raises:
        SettingsError: not a finite number > 0.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(fractions.Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise SettingsError(
                f"`{name}` must be a number > 0, or a fraction such as 8/255. Received: {name}={value!r}"
            ) from None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise SettingsError(f"`{name}` must be a number > 0. Received: {name}={value!r}")
    if not np.isfinite(number) or number <= 0:
        raise SettingsError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return number


def parse_radii(values, *, name="epsilons"):
    """Sorted radii from one radius, a comma-separated text (`"0.1,8/255"`) or a sequence of them."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    elif not isinstance(values, (list, tuple, np.ndarray)):
        values = [values]
    radii = sorted({parse_radius(v, name=name) for v in values})
    if not radii:
        raise SettingsError(f"`{name}` must name at least one radius > 0. Received: {name}={values!r}")
    return radii


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
