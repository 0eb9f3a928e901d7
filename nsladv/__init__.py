"""nsladv: harden existing Keras 3 models against adversarial inputs.

The public API:

- `wrap(model, **settings)` -> `AdversarialModel`, the training wrapper;
- `ThreatModel`, `Regularization`: the settings, frozen and serializable;
- `NeighborBuilder`: adversarial neighbors of a batch, through NSL.
"""

from nsladv.configs import Regularization
from nsladv.configs import ThreatModel
from nsladv.neighbors import NeighborBuilder
from nsladv.version import __version__
from nsladv.wrapper import AdversarialModel
from nsladv.wrapper import wrap

__all__ = [
    "AdversarialModel",
    "NeighborBuilder",
    "Regularization",
    "ThreatModel",
    "__version__",
    "wrap",
]
