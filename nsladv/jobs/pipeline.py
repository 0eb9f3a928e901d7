"""A pipeline: the definition of one hardening job, and where pipelines are found.

A pipeline names a dataset, a base-model builder, the threat model, the
regularization, the schedule and the export name; `nsladv harden` runs it.
Pipelines live in `pipelines/<name>.py` (a module defining `PIPELINE`) or in
any Python file a user points at.
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import pathlib
import traceback
from collections.abc import Callable
from collections.abc import Mapping

import keras

from nsladv.configs import GraphRegularization
from nsladv.configs import KeywordOnly
from nsladv.configs import Regularization
from nsladv.configs import ThreatModel
from nsladv.datasets.sources import check_input_range
from nsladv.datasets.sources import check_source
from nsladv.datasets.sources import describe
from nsladv.datasets.sources import fingerprint_arrays
from nsladv.errors import PipelineLoadError
from nsladv.errors import PipelineNotFoundError
from nsladv.errors import SettingsError
from nsladv.export import check_model_name
from nsladv.robustness.base import AttackSettings
from nsladv.robustness.sets import attack_set
from nsladv.settings_checks import integer
from nsladv.settings_checks import number


@dataclasses.dataclass(frozen=True, kw_only=True)
class GraphSetup(KeywordOnly):
    """A pipeline's natural graph: built over every training image, labelled or not.

    Args:
        regularization: the `GraphRegularization` (its `max_neighbors` is
            how many neighbors each sample gets; required here).
        similarity_threshold: the smallest cosine similarity of an edge.
        lsh_splits, lsh_rounds: NSL's LSH settings (0 splits: all pairs).
        embed: `images -> [num_images, dim]` embeddings; `None` for the raw
            pixels. A pretrained encoder goes here.
        train_on_all: with `labels_per_class`, train on every image: the
            unlabelled ones (sample weight 0) act through the graph term
            only, so agreement spreads along the whole graph (see
            `nsladv.graph.semi_supervised_rows`). False trains on the
            labelled images and their neighbors only, as `nsl.tools.pack_nbrs`
            packs them. The `without_graph` model sees the same batches.
        labelled_share: with `train_on_all`, the share of each epoch the
            (repeated) labelled images make.
        edges: a user's graph instead of building one: an NSL TSV file
            (`source<TAB>target<TAB>weight`, as NSL's graph builder writes
            it) whose ids are the examples' ids (`Splits.train_ids`: an
            image's path relative to the data folder, or a row number). Edges
            naming ids outside the training split are counted and reported.
    """

    regularization: GraphRegularization = None
    similarity_threshold: float = 0.8
    lsh_splits: int = 0
    lsh_rounds: int = 1
    embed: Callable = None
    train_on_all: bool = True
    labelled_share: float = 0.25
    edges: object = None

    def __post_init__(self):
        if not isinstance(self.regularization, GraphRegularization) or self.regularization.max_neighbors is None:
            raise ValueError(
                "GraphSetup needs `regularization=nsladv.GraphRegularization(..., max_neighbors=K)`. "
                f"Received: regularization={self.regularization!r}"
            )
        if self.embed is not None and not callable(self.embed):
            raise ValueError(f"`embed` must be callable or None. Received: embed={self.embed!r}")
        if self.edges is not None and not pathlib.Path(self.edges).is_file():
            raise SettingsError(f"No graph file (NSL TSV) at {self.edges}. Received: edges={str(self.edges)!r}")

    def get_config(self):
        return {
            "regularization": self.regularization.get_config(),
            "similarity_threshold": self.similarity_threshold,
            "lsh_splits": self.lsh_splits,
            "lsh_rounds": self.lsh_rounds,
            "train_on_all": self.train_on_all,
            "labelled_share": self.labelled_share,
            "embedding": "raw pixels" if self.embed is None else getattr(self.embed, "__name__", repr(self.embed)),
            "edges_tsv": None if self.edges is None else str(self.edges),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pipeline(KeywordOnly):
    """One hardening job.

    Args:
        name: the export name (`saved_models/<name>/<version>`).
        build_model: `(input_shape, num_classes) -> keras.Model` returning
            logits; called once per model (hardened, baseline).
        dataset: the data, any source `nsladv.datasets.resolve` reads: a
            TFDS name (default: the offline MNIST digits), an image folder,
            a `.npz` in the keras.datasets layout, arrays `(x, y)` or a
            `tf.data.Dataset`. Validation is carved from its training data.
        input_range: `(low, high)` of the model's inputs: integer pixels are
            scaled to it, float ones must lie in it (the threat model's
            `clip_range`, when set, must equal it).
        threat: the training `ThreatModel`.
        regularization: the `Regularization`.
        epochs: training epochs.
        batch_size: global batch size.
        learning_rate: Adam's learning rate (cosine-decayed to 0 over training
            when `decay_learning_rate`).
        decay_learning_rate: cosine decay of the learning rate.
        ema_momentum: keep an exponential moving average of the weights
            with this momentum (Adam's `use_ema`, updated every step) and use
            it in place of the raw weights: the monitor measures and keeps
            the average, and the trained model ends with it (None: off).
        shift_augmentation: random shifts of up to this many pixels in
            training (0: none).
        epsilon_warmup_epochs: epochs over which epsilon ramps from 0, per
            batch (a fraction of an epoch is fine: 0.5 ramps over the first
            half of the first epoch).
        multiplier_warmup_epochs: epochs over which the multiplier ramps.
        eval_epsilons: the evaluation grid.
        eval_attacks: the evaluation attacks, run as a cascade (default the
            "standard" set: FGSM, APGD-CE, APGD-T on 3 target classes, APGD-CE
            with 20 restarts on the 5% of the examples left that came closest
            to being fooled, Square with 1,000 queries; see
            `nsladv.robustness.ATTACK_SETS`).
        eval_examples: evaluate on this many examples spread evenly over the
            evaluated split (None: all of them).
        eval_split: the split evaluated: "test", for the figures reported,
            or "validation", for choosing settings without reading the test
            split: the validation examples the robustness monitor does not
            attack (it picks the epoch on its own).
        large_epsilon: a destroying radius for the gradient-masking check.
        validation_fraction: share of train held out for validation.
        train_examples: train on this many training examples, spread evenly
            over the training split (None: all of them).
        monitor_examples: after every epoch of adversarial training, attack
            this many validation examples with PGD-10 at the training
            epsilon; the most robust epoch's weights are kept and a collapse
            (catastrophic overfitting) stops training (0: no monitor; see
            `nsladv.guards.RobustnessMonitor`).
        labels_per_class: train on only this many labelled images per class
            (chosen with `seed`; None: all).
        graph: a `GraphSetup` to add the graph term; the job then also
            trains the same model without it (`without_graph`) and reports
            both.
        seed: the random seed.
        description: one line for listings.
    """

    name: str = "model"
    build_model: Callable = None
    dataset: object = "mnist_offline"
    input_range: tuple = (0.0, 1.0)
    threat: ThreatModel = dataclasses.field(default_factory=lambda: ThreatModel(epsilon=0.3, clip_range=(0, 1)))
    regularization: Regularization = dataclasses.field(default_factory=Regularization)
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    decay_learning_rate: bool = True
    ema_momentum: float = None
    shift_augmentation: int = 0
    epsilon_warmup_epochs: float = 0
    multiplier_warmup_epochs: float = 0
    eval_epsilons: tuple = (0.1, 0.2, 0.3)
    eval_attacks: tuple = dataclasses.field(default_factory=lambda: attack_set("standard"))
    eval_examples: int = None
    eval_split: str = "test"
    large_epsilon: float = 0.5
    validation_fraction: float = 0.1
    train_examples: int = None
    monitor_examples: int = 500
    labels_per_class: int = None
    graph: GraphSetup = None
    seed: int = 0
    description: str = ""

    def __post_init__(self):
        check_model_name(self.name)
        check_source(self.dataset)
        low, high = check_input_range(self.input_range)
        object.__setattr__(self, "input_range", (low, high))
        clip = self.threat.clip_range
        if clip is not None and not isinstance(clip, Mapping) and tuple(float(c) for c in clip) != (low, high):
            raise SettingsError(
                "The threat model's `clip_range` must be the data's `input_range`, where the images live. "
                f"Received: clip_range={tuple(clip)!r}, input_range={(low, high)!r}"
            )
        if not callable(self.build_model):
            raise ValueError(
                "A pipeline needs `build_model(input_shape, num_classes) -> keras.Model`. "
                f"Received: build_model={self.build_model!r}"
            )
        integer("monitor_examples", self.monitor_examples, minimum=0)
        if self.eval_split not in EVAL_SPLITS:
            raise SettingsError(f"`eval_split` must be one of {EVAL_SPLITS}. Received: eval_split={self.eval_split!r}")
        for name in ("epochs", "batch_size"):
            integer(name, getattr(self, name))
        if self.ema_momentum is not None and (
            not isinstance(self.ema_momentum, float) or not 0.0 < self.ema_momentum < 1.0
        ):
            raise ValueError(
                f"`ema_momentum` must be a float in (0, 1) or None. Received: ema_momentum={self.ema_momentum!r}"
            )
        for name in ("epsilon_warmup_epochs", "multiplier_warmup_epochs"):
            number(name, getattr(self, name), what="a number of epochs")
        for name in ("train_examples", "eval_examples", "labels_per_class"):
            integer(name, getattr(self, name), optional=True)
        if self.graph is not None and not isinstance(self.graph, GraphSetup):
            raise ValueError(f"`graph` must be an nsladv.GraphSetup or None. Received: graph={self.graph!r}")
        if not all(isinstance(a, AttackSettings) for a in self.eval_attacks):
            raise ValueError(
                "`eval_attacks` must be nsladv attacks (Attack, APGD, FAB, Closest, Square: "
                "nsladv.robustness.AttackSettings). "
                f"Received: {self.eval_attacks!r}"
            )

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def optimizer(self, steps_per_epoch, epochs=None):
        """The training optimizer: Adam at `learning_rate`, cosine-decayed to 0 over `epochs` (default: the
        pipeline's) epochs of `steps_per_epoch` steps when `decay_learning_rate`, averaging the weights when
        `ema_momentum` is set."""
        learning_rate = self.learning_rate
        if self.decay_learning_rate:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                learning_rate, decay_steps=max(1, (epochs or self.epochs) * steps_per_epoch)
            )
        if self.ema_momentum is None:
            return keras.optimizers.Adam(learning_rate)
        return keras.optimizers.Adam(learning_rate, use_ema=True, ema_momentum=self.ema_momentum)

    def with_overrides(
        self,
        *,
        seed=None,
        epsilon=None,
        steps=None,
        multiplier=None,
        batch_size=None,
        learning_rate=None,
        norm=None,
        eval_epsilons=None,
        distance=None,
        ema_momentum=None,
        eval_split=None,
    ):
        """A copy with the command line's common overrides applied (None: keep).

        Step sizes are fractions of the radius: a new `epsilon` keeps the step
        size's share of it, and scales the evaluation radii with it (unless
        `eval_epsilons` are given); new `steps` keep the distance the steps
        travel together (steps x step size). A new `norm` also evaluates in
        it (`nsladv.robustness.attack_set`'s sets for that norm). An
        `ema_momentum` of 0 turns the weights' average off.
        """
        changes = {}
        if distance is not None:
            changes["regularization"] = self.regularization.replace(distance=distance)
        if ema_momentum is not None:
            changes["ema_momentum"] = None if ema_momentum == 0 else float(ema_momentum)
        if eval_split is not None:
            changes["eval_split"] = eval_split
        if seed is not None:
            changes["seed"] = seed
        if batch_size is not None:
            changes["batch_size"] = batch_size
        if learning_rate is not None:
            changes["learning_rate"] = learning_rate
        if multiplier is not None:
            regularization = changes.get("regularization", self.regularization)
            changes["regularization"] = regularization.replace(multiplier=multiplier)
        threat = self.threat
        if epsilon is not None or steps is not None or (norm is not None and norm != threat.norm):
            if isinstance(threat.epsilon, Mapping):
                raise SettingsError(
                    "--epsilon, --steps and --norm need a single epsilon in the pipeline's threat model. "
                    f"Received: epsilon={dict(threat.epsilon)!r}"
                )
            new_epsilon = threat.epsilon if epsilon is None else epsilon
            new_steps = threat.steps if steps is None else steps
            relative = threat.relative_step_size() * threat.steps / new_steps
            step_size = None if threat.step_size is None else relative * new_epsilon
            changes["threat"] = threat.replace(
                epsilon=new_epsilon, steps=new_steps, step_size=step_size, norm=norm or threat.norm
            )
            if eval_epsilons is None and epsilon is not None:
                eval_epsilons = tuple(e * new_epsilon / threat.epsilon for e in self.eval_epsilons)
        if norm is not None and norm != threat.norm:
            changes["eval_attacks"] = attack_set("standard", norm=norm, clip_range=self.input_range)
            changes["large_epsilon"] = None if norm != "linf" else self.large_epsilon
        if eval_epsilons is not None:
            changes["eval_epsilons"] = tuple(float(e) for e in eval_epsilons)
        return self.replace(**changes)

    def get_config(self):
        """JSON-ready settings, for reports and export metadata."""
        return {
            "name": self.name,
            "dataset": describe(self.dataset),
            "dataset_fingerprint": fingerprint_arrays(self.dataset),
            "input_range": list(self.input_range),
            "threat": self.threat.get_config(),
            "regularization": self.regularization.get_config(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "decay_learning_rate": self.decay_learning_rate,
            "ema_momentum": self.ema_momentum,
            "shift_augmentation": self.shift_augmentation,
            "epsilon_warmup_epochs": self.epsilon_warmup_epochs,
            "multiplier_warmup_epochs": self.multiplier_warmup_epochs,
            "eval_epsilons": list(self.eval_epsilons),
            "eval_attacks": [a.get_config() for a in self.eval_attacks],
            "eval_examples": self.eval_examples,
            "eval_split": self.eval_split,
            "large_epsilon": self.large_epsilon,
            "validation_fraction": self.validation_fraction,
            "train_examples": self.train_examples,
            "monitor_examples": self.monitor_examples,
            "labels_per_class": self.labels_per_class,
            "graph": None if self.graph is None else self.graph.get_config(),
            "seed": self.seed,
        }


DEFAULT_PIPELINE = "mnist"
EVAL_SPLITS = ("test", "validation")


def available_pipelines():
    """{name: description} of the pipelines in the `pipelines` package; one that does not load says why."""
    listing = {}
    for name in _pipeline_names():
        try:
            listing[name] = load_pipeline(name).description
        except PipelineLoadError as error:
            listing[name] = f"(does not load: {error})"
    return listing


def load_pipeline(name_or_path=DEFAULT_PIPELINE):
    """The `PIPELINE` of `pipelines/<name>.py`, or of a Python file's path.

    Raises:
        PipelineNotFoundError: no pipeline by that name, or no such file.
        PipelineLoadError: the module exists but fails to load (a syntax or
            import error, invalid settings) or defines no `PIPELINE`.
    """
    text = str(name_or_path)
    if text.endswith(".py"):
        path = pathlib.Path(text)
        if not path.is_file():
            raise PipelineNotFoundError(f"No pipeline file at {path}. Received: {name_or_path!r}")
        spec = importlib.util.spec_from_file_location(f"nsladv_user_pipeline_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        with _loading(f"pipeline file {path}"):
            spec.loader.exec_module(module)
    else:
        if not text.isidentifier() or text not in _pipeline_names():
            raise PipelineNotFoundError(
                f"Unknown pipeline {text!r}. Available: {', '.join(_pipeline_names())}; "
                "or give the path of a .py file that defines PIPELINE."
            )
        with _loading(f"pipeline {text!r}"):
            module = _load_module(f"nsladv.pipelines.{text}")
    pipeline = getattr(module, "PIPELINE", None)
    if not isinstance(pipeline, Pipeline):
        raise PipelineLoadError(
            f"{text!r} must define PIPELINE = nsladv.Pipeline(...). Received: PIPELINE={pipeline!r}"
        )
    return pipeline


@contextlib.contextmanager
def _loading(what):
    """Turns any failure while running a pipeline's module into a PipelineLoadError that says where."""
    try:
        yield
    except PipelineLoadError:
        raise
    except Exception as error:
        if isinstance(error, SyntaxError):
            message, where = error.msg, (error.filename, error.lineno)
        else:
            message = str(error).splitlines()[0] if str(error) else ""
            frames = [
                f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith((_LIBRARY_DIR, "<"))
            ]
            where = (frames[-1].filename, frames[-1].lineno) if frames else None
        place = f" ({where[0]}, line {where[1]})" if where else ""
        raise PipelineLoadError(
            f"The {what} could not be loaded: {type(error).__name__}: {message}{place}. "
            "Fix it, or run with --debug for the traceback."
        ) from error


# nsladv's own folder: the last frame outside it is the user's line.
_LIBRARY_DIR = str(pathlib.Path(__file__).resolve().parent.parent) + os.sep


def _pipeline_names():
    package = importlib.import_module("nsladv.pipelines")
    return [p.stem for p in sorted(pathlib.Path(package.__file__).parent.glob("*.py")) if not p.stem.startswith("_")]


def _load_module(name):
    return importlib.import_module(name)
