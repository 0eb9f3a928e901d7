"""The one rule for numeric settings: integers and numbers, never bools, each refusal saying what it received."""

import math

import numpy as np
import pytest

from nsladv.errors import SettingsError
from nsladv.settings_checks import integer
from nsladv.settings_checks import number


@pytest.mark.parametrize("value", [True, 1.0, "3", None, 0, -2, np.int64(3)])
def test_integer_refuses_what_is_not_an_int_at_least_the_minimum(value):
    with pytest.raises(ValueError, match=rf"^`steps` must be an integer >= 1. Received: steps={value!r}$"):
        integer("steps", value)


def test_integer_takes_ints_numpy_ints_when_asked_and_none_when_optional():
    assert integer("steps", 3) == 3 and integer("odi", 0, minimum=0) == 0
    assert integer("nodes", np.int64(4), numpy=True) == 4
    assert integer("count", None, optional=True) is None
    with pytest.raises(ValueError, match=r"an integer >= 1 or None. Received: count=0"):
        integer("count", 0, optional=True)
    with pytest.raises(SettingsError, match=r"`block_size` must be an integer >= 1"):
        integer("block_size", np.bool_(True), numpy=True, error=SettingsError)


@pytest.mark.parametrize("value", [True, "1", None, -0.5, math.nan, math.inf])
def test_number_refuses_bools_text_negatives_nan_and_infinity(value):
    with pytest.raises(ValueError, match=r"^`multiplier` must be a finite number >= 0. Received: multiplier="):
        number("multiplier", value)


def test_number_bounds_and_words():
    assert number("multiplier", 0) == 0 and number("epochs", math.inf, finite=False) == math.inf
    with pytest.raises(ValueError, match=r"^`epsilon` must be a finite number > 0. Received: epsilon=0$"):
        number("epsilon", 0, above=True)
    with pytest.raises(ValueError, match=r"must be a number of epochs >= 0. Received: warmup=-1"):
        number("warmup", -1, what="a number of epochs")
