"""The one door to nsladv's optional packages: a missing extra is one line naming the `pip install` that fixes it."""

import importlib
import importlib.util

from nsladv.errors import MissingExtraError

# extra -> (what needs it, the packages it installs)
EXTRAS = {
    "serve": ("`nsladv serve` (nsladv.serving)", "prometheus-client"),
    "tune": ("`nsladv tune` (nsladv.tuning)", "keras-tuner and tensorboard"),
    "plot": ("The robustness plot", "matplotlib"),
}


def require(module, extra):
    """`importlib.import_module(module)`, or a MissingExtraError saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but something it imports is broken: keep the real error
        feature, packages = EXTRAS[extra]
        raise MissingExtraError(
            f"{feature} needs {packages}, which {'is' if ' and ' not in packages else 'are'} not installed: "
            f"pip install 'nsladv[{extra}]'. Received: ModuleNotFoundError for {module!r}"
        ) from None


def available(module):
    """Whether `module` can be imported (for parts that are skipped, not refused, without their extra)."""
    return importlib.util.find_spec(module) is not None
