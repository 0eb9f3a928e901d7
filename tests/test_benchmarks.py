"""What the benchmarks measure on: recipe choices are made with them, so they never read test digits."""

import numpy as np
import pytest
import tensorflow as tf

import nsladv
from benchmarks import time_to_robust
from nsladv.datasets.loading import spread_rows


def test_time_to_robust_scores_validation_digits_the_monitor_does_not_read():
    pipeline = nsladv.load_pipeline("mnist")
    total = 6000
    labels = np.arange(total)  # each digit's label is its row, to see which rows were taken
    validation = tf.data.Dataset.from_tensor_slices((np.zeros((total, 2, 2, 1), np.float32), labels))
    x, y = time_to_robust.evaluation_digits(validation, pipeline, 200)
    assert x.shape == (200, 2, 2, 1) and len(set(y)) == 200
    assert not set(y) & set(spread_rows(total, pipeline.monitor_examples))
    assert y.min() < 100 and y.max() > total - 100  # spread over the whole split, not its head


def test_time_to_robust_reads_no_test_split(monkeypatch):
    """main() builds its evaluation from the validation split; touching the test split fails this test."""

    class Splits:
        def __init__(self, real):
            self.train, self.validation = real.train.take(256), real.validation

        @property
        def test(self):
            raise AssertionError("the benchmark read the test split")

    seen = {}

    def recorded(validation, pipeline, count):
        seen["validation"] = validation
        raise SystemExit(0)  # stop before any training

    monkeypatch.setattr(time_to_robust.data, "load", lambda *a, **k: Splits(_tiny_splits()))
    monkeypatch.setattr(time_to_robust, "evaluation_digits", recorded)
    monkeypatch.setattr("sys.argv", ["time_to_robust", "--precision", "float32"])
    with pytest.raises(SystemExit):
        time_to_robust.main()
    assert seen["validation"] is not None


def _tiny_splits():
    class Real:
        x = np.zeros((300, 28, 28, 1), np.float32)
        train = tf.data.Dataset.from_tensor_slices((x, np.zeros(300, np.int64)))
        validation = tf.data.Dataset.from_tensor_slices((x[:60], np.zeros(60, np.int64)))

    return Real()
