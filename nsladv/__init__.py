"""nsladv: harden existing Keras 3 models against adversarial inputs.

The public API:

- `wrap(model, **settings)` -> `AdversarialModel`, the training wrapper;
- `ThreatModel`, `Regularization`, `GraphRegularization`: the settings,
  frozen and serializable;
- `NeighborBuilder`: adversarial neighbors of a batch, through NSL;
- `EpsilonWarmup`, `MultiplierWarmup`: warm-up callbacks;
- `Attack`, `FGSM`, `pgd`, `evaluate_robustness`: white-box evaluation;
- `export_model`: the TF Serving layout;
- `Pipeline`, `GraphSetup`, `load_pipeline`, `harden`: the end-to-end job;
- `data`, `distribute`, `graph`, `tuning`, `serving`: TFDS pipelines, strategy choice, natural
  graph neighbors, keras-tuner search, the local TF Serving API.

Names load on first use, so `import nsladv` (and `nsladv --help`) does not
wait for TensorFlow.
"""

import importlib

from nsladv.version import __version__

_EXPORTS = {
    "AdversarialModel": "nsladv.wrapper",
    "wrap": "nsladv.wrapper",
    "ThreatModel": "nsladv.configs",
    "Regularization": "nsladv.configs",
    "GraphRegularization": "nsladv.configs",
    "NeighborBuilder": "nsladv.neighbors",
    "EpsilonWarmup": "nsladv.schedules",
    "MultiplierWarmup": "nsladv.schedules",
    "Attack": "nsladv.attacks",
    "FGSM": "nsladv.attacks",
    "pgd": "nsladv.attacks",
    "evaluate_robustness": "nsladv.evaluation",
    "export_model": "nsladv.export",
    "Pipeline": "nsladv.pipeline",
    "GraphSetup": "nsladv.pipeline",
    "load_pipeline": "nsladv.pipeline",
    "harden": "nsladv.hardening",
}
_SUBMODULES = ("data", "distribute", "graph", "tuning", "serving")

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"nsladv.{name}")
    else:
        raise AttributeError(f"module 'nsladv' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
