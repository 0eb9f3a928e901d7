"""nsladv: harden existing Keras 3 models against adversarial inputs.

The library (what a user imports to harden their own model):

- `wrap(model, **settings)` -> `AdversarialModel`, the training wrapper;
- `ThreatModel`, `Regularization`, `GraphRegularization`: the settings,
  frozen and serializable;
- `NeighborBuilder`: adversarial neighbors of a batch, through NSL;
- `EpsilonWarmup`, `MultiplierWarmup`: warm-up callbacks;
- `Attack`, `FGSM`, `pgd`, `evaluate_robustness`: white-box evaluation
  (`nsladv.robustness`);
- `export_model`: the TF Serving layout;
- `graph`, `datasets` (also as `data`), `distribute`, `tuning`, `serving`:
  natural graph neighbors, TFDS pipelines, strategy choice, keras-tuner
  search, the local TF Serving API.

The jobs built on it (`nsladv.jobs`, and the `nsladv` command):

- `Pipeline`, `GraphSetup`, `load_pipeline`, `harden`.

Names load on first use, so `import nsladv` (and `nsladv --help`) does not
wait for TensorFlow.
"""

import importlib

from nsladv.version import __version__ as __version__

_EXPORTS = {
    "AdversarialModel": "nsladv.wrapper",
    "wrap": "nsladv.wrapper",
    "ThreatModel": "nsladv.configs",
    "Regularization": "nsladv.configs",
    "GraphRegularization": "nsladv.configs",
    "NeighborBuilder": "nsladv.neighbors",
    "EpsilonWarmup": "nsladv.schedules",
    "MultiplierWarmup": "nsladv.schedules",
    "Attack": "nsladv.robustness.attacks",
    "FGSM": "nsladv.robustness.attacks",
    "pgd": "nsladv.robustness.attacks",
    "evaluate_robustness": "nsladv.robustness.evaluation",
    "export_model": "nsladv.export",
    "Pipeline": "nsladv.jobs.pipeline",
    "GraphSetup": "nsladv.jobs.pipeline",
    "load_pipeline": "nsladv.jobs.pipeline",
    "harden": "nsladv.jobs.harden",
}
_SUBMODULES = {
    "data": "nsladv.datasets",
    "datasets": "nsladv.datasets",
    "distribute": "nsladv.distribute",
    "graph": "nsladv.graph",
    "robustness": "nsladv.robustness",
    "tuning": "nsladv.tuning",
    "serving": "nsladv.serving",
}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'nsladv' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
