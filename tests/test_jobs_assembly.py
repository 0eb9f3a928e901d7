"""A pipeline's data as the jobs use it (`nsladv.jobs.assembly`): what is trained on, watched and evaluated."""

import pathlib

import numpy as np
import pytest

from nsladv import datasets as data
from nsladv import load_pipeline
from nsladv.errors import SettingsError
from nsladv.jobs.assembly import describe_data
from nsladv.jobs.assembly import pipeline_data

TINY = str(pathlib.Path(__file__).parent / "tiny_pipeline.py")


def _arrays(batched):
    return data.as_arrays(batched.unbatch())


def test_the_validation_split_is_evaluated_without_the_digits_the_monitor_reads(data_dir):
    """Settings chosen on validation digits never read the test split, nor the monitor's digits."""
    pipeline = load_pipeline(TINY).replace(eval_split="validation")
    chosen = pipeline_data(pipeline, data_dir=data_dir, eval_examples=300)
    splits = chosen.splits
    x, y = _arrays(chosen.test)
    assert chosen.eval_split == "validation" and chosen.evaluated == len(y) == 300
    validation_x, _ = data.as_arrays(splits.validation)
    monitored_x, _ = data.as_arrays(data.spread(splits.validation, pipeline.monitor_examples))
    flat = {row.tobytes() for row in validation_x.reshape(len(validation_x), -1)}
    monitored = {row.tobytes() for row in monitored_x.reshape(len(monitored_x), -1)}
    evaluated = [row.tobytes() for row in x.reshape(len(x), -1)]
    assert all(e in flat for e in evaluated) and not monitored & set(evaluated)
    test_x, _ = data.as_arrays(splits.test)
    assert not {row.tobytes() for row in test_x.reshape(len(test_x), -1)} & set(evaluated)
    assert (
        "300 validation examples evaluated (those the monitor does not read; no test split)" in describe_data(chosen)[0]
    )
    # The rows are those unmonitored_rows names, spread evenly over the free ones.
    rows = data.unmonitored_rows(len(validation_x), pipeline.monitor_examples, 300)
    np.testing.assert_array_equal(x, validation_x[rows])


def test_the_test_split_stays_the_default(data_dir):
    chosen = pipeline_data(load_pipeline(TINY), data_dir=data_dir, eval_examples=40)
    x, _ = _arrays(chosen.test)
    test_x, _ = data.as_arrays(data.spread(chosen.splits.test, 40))
    assert chosen.eval_split == "test" and chosen.evaluated == 40
    np.testing.assert_array_equal(x, test_x)


def test_a_monitor_that_reads_every_validation_digit_leaves_nothing_to_evaluate(data_dir):
    pipeline = load_pipeline(TINY).replace(eval_split="validation", monitor_examples=6000)
    with pytest.raises(
        SettingsError, match=r"none are left.*Received: monitor_examples=6000, 6000 validation examples"
    ):
        pipeline_data(pipeline, data_dir=data_dir)
    with pytest.raises(SettingsError, match=r"`eval_split` must be one of \('test', 'validation'\)"):
        load_pipeline(TINY).replace(eval_split="train")


def test_unmonitored_rows():
    np.testing.assert_array_equal(data.unmonitored_rows(10, 3), [1, 2, 3, 5, 6, 7, 8])  # the monitor reads 0, 4, 9
    assert data.unmonitored_rows(10, 0, 2).tolist() == [0, 9]
    assert data.unmonitored_rows(10, 10).size == 0
