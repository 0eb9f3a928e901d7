"""The command line's value types: each parses one flag's text or says what it expected and what it received.

argparse calls them (`type=values.radius`); a bad value is a usage error that
names the flag. TensorFlow is not imported here, so `--help` stays fast.
"""

import argparse

from nsladv.errors import SettingsError


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}")
    return value


def positive_float(text):
    return number(text, lambda v: v > 0, "a number > 0")


def non_negative_float(text):
    return number(text, lambda v: v >= 0, "a number >= 0")


def number(text, ok, expected):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}") from None
    if not ok(value) or value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
    return value


def ema_momentum(text):
    return number(text, lambda v: 0 <= v < 1, "a momentum in [0, 1) (0: no average)")


def radius(text):
    from nsladv.radii import parse_radius

    try:
        return parse_radius(text)
    except SettingsError:
        raise argparse.ArgumentTypeError(f"expected a radius > 0 such as 0.3 or 8/255, received {text!r}") from None


def epsilons(text):
    from nsladv.radii import parse_radii

    try:
        return tuple(parse_radii(text))
    except SettingsError:
        raise argparse.ArgumentTypeError(
            f"expected radii > 0 separated by commas (0.1,8/255), received {text!r}"
        ) from None


def model_name(text):
    from nsladv.export import check_model_name

    try:
        check_model_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected letters, digits, '_', '.' or '-' (a TF Serving model name), received {text!r}"
        ) from None
    return text


def fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], received {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], received {text!r}")
    return value
