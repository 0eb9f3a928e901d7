"""nsladv.radii: radii as numbers or fractions, read without TensorFlow (the command line's flags)."""

import subprocess
import sys

import numpy as np
import pytest

from nsladv.errors import SettingsError
from nsladv.radii import parse_radii
from nsladv.radii import parse_radius


@pytest.mark.parametrize("text, value", [("0.3", 0.3), ("8/255", 8 / 255), (" 1/4 ", 0.25), (2, 2.0)])
def test_radii_read_numbers_and_fractions(text, value):
    assert parse_radius(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "-1/255", "1/0", "abc", "nan", True, None])
def test_bad_radii(text):
    with pytest.raises(SettingsError, match=r"`epsilon` must be a (finite )?number > 0"):
        parse_radius(text)


def test_radii_lists_are_sorted_and_deduplicated():
    assert parse_radii("0.3,8/255,0.3") == [pytest.approx(8 / 255), 0.3]
    assert parse_radii(0.1) == [0.1]


def test_numpy_radii_are_read_too():
    assert parse_radii(np.array([0.3, 0.1])) == [0.1, 0.3] and parse_radii(np.float32(0.5)) == [0.5]


def test_reading_radii_does_not_load_tensorflow():
    code = "import sys; from nsladv.radii import parse_radii; parse_radii('8/255'); print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
