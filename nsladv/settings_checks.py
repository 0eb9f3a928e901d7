"""Checks of numeric settings: one rule for "an integer" and "a number" (never a bool), one message for each.

Every message says what was expected and what was received, as the rest of nsladv's errors do:
"`steps` must be an integer >= 1. Received: steps=0".
"""

import math
import numbers

import numpy as np


def is_integer(value, *, numpy=False):
    """Whether `value` is an int (a NumPy integer too with `numpy`), and not a bool."""
    kinds = (int, np.integer) if numpy else int
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))


def is_number(value):
    """Whether `value` is a real number (int, float or NumPy's), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def integer(name, value, *, minimum=1, optional=False, numpy=False, error=ValueError):
    """`value` when it is an integer >= `minimum` (or None, with `optional`); else `error` saying so."""
    if optional and value is None:
        return value
    if not is_integer(value, numpy=numpy) or value < minimum:
        alternative = " or None" if optional else ""
        raise error(f"`{name}` must be an integer >= {minimum}{alternative}. Received: {name}={value!r}")
    return value


def number(name, value, *, minimum=0, above=False, finite=True, what=None, error=ValueError):
    """`value` when it is a number >= `minimum` (> with `above`; finite with `finite`); else `error` saying so."""
    what = what or ("a finite number" if finite else "a number")
    if not is_number(value) or not (value > minimum if above else value >= minimum) or finite and math.isinf(value):
        raise error(f"`{name}` must be {what} {'>' if above else '>='} {minimum:g}. Received: {name}={value!r}")
    return value
