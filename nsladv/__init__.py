"""nsladv: harden existing Keras 3 models against adversarial inputs.

The public API:

- `wrap(model, **settings)` -> `AdversarialModel`, the training wrapper;
- `ThreatModel`, `Regularization`: the settings, frozen and serializable;
- `NeighborBuilder`: adversarial neighbors of a batch, through NSL;
- `EpsilonWarmup`, `MultiplierWarmup`: warm-up callbacks;
- `Attack`, `FGSM`, `pgd`, `evaluate_robustness`: white-box evaluation;
- `export_model`: the TF Serving layout;
- `Pipeline`, `load_pipeline`, `harden`: the end-to-end job;
- `data`: TFDS datasets and tf.data pipelines.
"""

from nsladv import data
from nsladv.attacks import FGSM
from nsladv.attacks import Attack
from nsladv.attacks import pgd
from nsladv.configs import Regularization
from nsladv.configs import ThreatModel
from nsladv.evaluation import evaluate_robustness
from nsladv.export import export_model
from nsladv.hardening import harden
from nsladv.neighbors import NeighborBuilder
from nsladv.pipeline import Pipeline
from nsladv.pipeline import load_pipeline
from nsladv.schedules import EpsilonWarmup
from nsladv.schedules import MultiplierWarmup
from nsladv.version import __version__
from nsladv.wrapper import AdversarialModel
from nsladv.wrapper import wrap

__all__ = [
    "FGSM",
    "AdversarialModel",
    "Attack",
    "EpsilonWarmup",
    "MultiplierWarmup",
    "NeighborBuilder",
    "Pipeline",
    "Regularization",
    "ThreatModel",
    "__version__",
    "data",
    "evaluate_robustness",
    "export_model",
    "harden",
    "load_pipeline",
    "pgd",
    "wrap",
]
