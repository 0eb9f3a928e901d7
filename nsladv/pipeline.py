"""A pipeline: the definition of one hardening job, and where pipelines are found.

A pipeline names a dataset, a base-model builder, the threat model, the
regularization, the schedule and the export name; `nsladv harden` runs it.
Pipelines live in `pipelines/<name>.py` (a module defining `PIPELINE`) or in
any Python file a user points at.
"""

import dataclasses
import importlib
import importlib.util
import pathlib
from collections.abc import Callable

from nsladv.attacks import FGSM
from nsladv.attacks import Attack
from nsladv.attacks import pgd
from nsladv.configs import Regularization
from nsladv.configs import ThreatModel
from nsladv.configs import keyword_only


class PipelineNotFoundError(LookupError):
    """No pipeline by that name or path."""


@keyword_only
@dataclasses.dataclass(frozen=True)
class Pipeline:
    """One hardening job.

    Args:
        name: the export name (`saved_models/<name>/<version>`).
        build_model: `(input_shape, num_classes) -> keras.Model` returning
            logits; called once per model (hardened, baseline).
        dataset: a TFDS name (default: the offline MNIST digits).
        threat: the training `ThreatModel`.
        regularization: the `Regularization`.
        epochs: training epochs.
        batch_size: global batch size.
        learning_rate: Adam's learning rate (cosine-decayed to 0 over training
            when `decay_learning_rate`).
        decay_learning_rate: cosine decay of the learning rate.
        shift_augmentation: random shifts of up to this many pixels in
            training (0: none).
        epsilon_warmup_epochs: epochs over which epsilon ramps from 0.
        multiplier_warmup_epochs: epochs over which the multiplier ramps.
        eval_epsilons: the evaluation grid.
        eval_attacks: the evaluation attacks (default FGSM and PGD-40 with
            3 restarts, L-inf).
        large_epsilon: a destroying radius for the gradient-masking check.
        validation_fraction: share of train held out for validation.
        seed: the random seed.
        description: one line for listings.
    """

    name: str = "model"
    build_model: Callable = None
    dataset: str = "mnist_offline"
    threat: ThreatModel = dataclasses.field(default_factory=lambda: ThreatModel(epsilon=0.3, clip_range=(0, 1)))
    regularization: Regularization = dataclasses.field(default_factory=Regularization)
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    decay_learning_rate: bool = True
    shift_augmentation: int = 0
    epsilon_warmup_epochs: int = 0
    multiplier_warmup_epochs: int = 0
    eval_epsilons: tuple = (0.1, 0.2, 0.3)
    eval_attacks: tuple = (FGSM, pgd(40, 3))
    large_epsilon: float = 0.5
    validation_fraction: float = 0.1
    seed: int = 0
    description: str = ""

    def __post_init__(self):
        if not callable(self.build_model):
            raise ValueError(
                "A pipeline needs `build_model(input_shape, num_classes) -> keras.Model`. "
                f"Received: build_model={self.build_model!r}"
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
        if not all(isinstance(a, Attack) for a in self.eval_attacks):
            raise ValueError(f"`eval_attacks` must be nsladv Attacks. Received: {self.eval_attacks!r}")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def get_config(self):
        """JSON-ready settings, for reports and export metadata."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "threat": self.threat.get_config(),
            "regularization": self.regularization.get_config(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "decay_learning_rate": self.decay_learning_rate,
            "shift_augmentation": self.shift_augmentation,
            "epsilon_warmup_epochs": self.epsilon_warmup_epochs,
            "multiplier_warmup_epochs": self.multiplier_warmup_epochs,
            "eval_epsilons": list(self.eval_epsilons),
            "eval_attacks": [a.get_config() for a in self.eval_attacks],
            "large_epsilon": self.large_epsilon,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }


DEFAULT_PIPELINE = "mnist"


def available_pipelines():
    """{name: description} of the pipelines in the `pipelines` package."""
    package = importlib.import_module("pipelines")
    found = {}
    for path in sorted(pathlib.Path(package.__file__).parent.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        found[path.stem] = _load_module(f"pipelines.{path.stem}").PIPELINE.description
    return found


def load_pipeline(name_or_path=DEFAULT_PIPELINE):
    """The `PIPELINE` of `pipelines/<name>.py`, or of a Python file's path."""
    if str(name_or_path).endswith(".py"):
        path = pathlib.Path(name_or_path)
        if not path.is_file():
            raise PipelineNotFoundError(f"No pipeline file at {path}. Received: {name_or_path!r}")
        spec = importlib.util.spec_from_file_location(f"nsladv_user_pipeline_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = _load_module(f"pipelines.{name_or_path}")
        except ModuleNotFoundError as error:
            if error.name != f"pipelines.{name_or_path}":
                raise
            raise PipelineNotFoundError(
                f"Unknown pipeline {name_or_path!r}. Available: {', '.join(available_pipelines())}; "
                "or give the path of a .py file that defines PIPELINE."
            ) from None
    pipeline = getattr(module, "PIPELINE", None)
    if not isinstance(pipeline, Pipeline):
        raise PipelineNotFoundError(
            f"{name_or_path!r} must define PIPELINE = nsladv.Pipeline(...). Received: PIPELINE={pipeline!r}"
        )
    return pipeline


def _load_module(name):
    return importlib.import_module(name)
