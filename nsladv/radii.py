"""Radii as people write them: numbers, or fractions of the pixel range such as `8/255`.

Free of TensorFlow, so the command line can read its flags before TensorFlow loads.
"""

import fractions
import math

from nsladv.errors import SettingsError
from nsladv.settings_checks import is_number


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
    elif is_number(value):
        number = float(value)
    else:
        raise SettingsError(f"`{name}` must be a number > 0. Received: {name}={value!r}")
    if not math.isfinite(number) or number <= 0:
        raise SettingsError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return number


def parse_radii(values, *, name="epsilons"):
    """Sorted radii from one radius, a comma-separated text (`"0.1,8/255"`) or a sequence of them."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    elif hasattr(values, "tolist"):  # a NumPy array or scalar
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        values = [values]
    radii = sorted({parse_radius(v, name=name) for v in values})
    if not radii:
        raise SettingsError(f"`{name}` must name at least one radius > 0. Received: {name}={values!r}")
    return radii
